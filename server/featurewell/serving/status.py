"""Errors -> gRPC status codes, in exactly one place.

Expected errors (`FeaturewellError`) become their status code with the message as written, which
says what to fix. Anything else is a bug: logged with its traceback, answered INTERNAL.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from featurewell.errors import (
    CorruptRow,
    DeadlineExceeded,
    DefinitionError,
    EntityNotFound,
    FeaturewellError,
    InvalidRequest,
    Overloaded,
    StoreError,
    TransformFailed,
    UnknownFeature,
)

log = logging.getLogger("featurewell.serving")

_CODES: tuple[tuple[type[FeaturewellError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownFeature, grpc.StatusCode.NOT_FOUND),
    (EntityNotFound, grpc.StatusCode.NOT_FOUND),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (CorruptRow, grpc.StatusCode.DATA_LOSS),
    (StoreError, grpc.StatusCode.UNAVAILABLE),
    (TransformFailed, grpc.StatusCode.INTERNAL),
    (DefinitionError, grpc.StatusCode.FAILED_PRECONDITION),
)


def code_for(error: FeaturewellError) -> grpc.StatusCode:
    """The status code for an expected error. A store timeout under the server's own cap is
    UNAVAILABLE (worth a retry); one the caller's deadline imposed arrives as DeadlineExceeded."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext[Request, Response]], Awaitable[Response]]


def translate_errors(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Wrap a servicer method so every error leaves as a gRPC status with a useful message."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Request, context: grpc.aio.ServicerContext[Request, Response]
    ) -> Response:
        try:
            return await handler(self, request, context)
        except FeaturewellError as exc:
            await context.abort(code_for(exc), str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("bug while serving %s", handler.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error in {handler.__name__}; the server log has the traceback",
            )
        raise AssertionError("unreachable: context.abort raises")

    return wrapper
