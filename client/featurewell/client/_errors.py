"""Client errors: gRPC failures translated once, into a small typed tree.

FeatureClientError
├── InvalidArgument     the request is malformed (fix the call)
│   └── InvalidValues   raised by the client before any call: a write's values have no ValueType
│                       it can infer, or do not fit the one stated (the message names the
│                       feature and the fix)
├── NotFound            unknown feature/view, or strict mode and missing entities
├── DeadlineExceeded    no answer within the deadline
├── Unavailable         server or store unreachable (retryable)
├── ResourceExhausted   the server shed the call (overloaded) or a message was too large
├── Unauthenticated     no credentials where the server requires them, or a bad token
├── PermissionDenied    the caller's principal may not read or write a view
└── ServerError         anything else the server reported
"""

from __future__ import annotations

import grpc


class FeatureClientError(Exception):
    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


class InvalidArgument(FeatureClientError):
    pass


class InvalidValues(InvalidArgument):
    """A write's feature values the client cannot type or convert; nothing was sent. `.code` is
    INVALID_ARGUMENT, what the server answers for values of the wrong type."""

    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.INVALID_ARGUMENT)


class NotFound(FeatureClientError):
    pass


class DeadlineExceeded(FeatureClientError):
    pass


class Unavailable(FeatureClientError):
    pass


class ResourceExhausted(FeatureClientError):
    pass


class Unauthenticated(FeatureClientError):
    pass


class PermissionDenied(FeatureClientError):
    pass


class ServerError(FeatureClientError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[FeatureClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def translate(error: grpc.RpcError) -> FeatureClientError:
    """The one place gRPC failures (sync or aio) become client errors."""
    if isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        code, details = error.code(), error.details()
    else:
        code, details = grpc.StatusCode.UNKNOWN, str(error)
    kind = _BY_CODE.get(code, ServerError)
    return kind(f"{code.name}: {details}", code)
