"""Errors -> gRPC status codes, in exactly one place.

Expected errors (`FeaturewellError`) become their status code with the message as written, which
says what to fix. Anything else is a bug: logged with its traceback, answered INTERNAL.
"""

from __future__ import annotations

import logging

import grpc

from featurewell.errors import (
    CorruptRow,
    DeadlineExceeded,
    DefinitionError,
    EntityNotFound,
    FeaturewellError,
    InvalidRequest,
    Overloaded,
    PermissionDenied,
    StoreError,
    StorePermissionDenied,
    TransformFailed,
    Unauthenticated,
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
    # Before StoreError: the server's Redis user lacks a permission, which no retry fixes.
    (StorePermissionDenied, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreError, grpc.StatusCode.UNAVAILABLE),
    (TransformFailed, grpc.StatusCode.INTERNAL),
    (DefinitionError, grpc.StatusCode.FAILED_PRECONDITION),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
)


def code_for(error: FeaturewellError) -> grpc.StatusCode:
    """The status code for an expected error. A store timeout under the server's own cap is
    UNAVAILABLE (worth a retry); one the caller's deadline imposed arrives as DeadlineExceeded."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def status_for(error: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status code and message a call that raised `error` answers with. Anything but a
    `FeaturewellError` is a bug: logged with its traceback, answered INTERNAL."""
    if isinstance(error, FeaturewellError):
        return code_for(error), _capped(str(error))
    log.error("bug while serving %s", method, exc_info=error)
    return grpc.StatusCode.INTERNAL, (
        f"internal error in {method}; the server log has the traceback"
    )


# The longest status message sent: messages echo caller input (most cut it to a few dozen
# characters with errors.shown); this bounds any that does not.
MESSAGE_CHARS = 1024


def _capped(message: str) -> str:
    if len(message) <= MESSAGE_CHARS:
        return message
    return f"{message[:MESSAGE_CHARS]}... (message cut at {MESSAGE_CHARS} characters)"
