"""The errors featurewell raises on purpose.

Every expected failure is a `FeaturewellError`; anything else that escapes is a bug. The gRPC layer
maps this tree to status codes in exactly one place (`featurewell.serving.status`), so the rest of
the code raises domain errors and never touches gRPC.

    FeaturewellError
    ├── DefinitionError        a feature repo is invalid (raised while loading it)
    ├── TransformFailed        an on-demand transform raised or returned the wrong shape
    ├── Overloaded             the server is at its limit of calls in flight: shed, retry later
    ├── RequestError           the caller asked for something that cannot be served as asked
    │   ├── InvalidRequest     malformed input: bad key type, lengths, empty or oversized batch
    │   ├── UnknownFeature     a feature, view, version or transform that does not exist
    │   ├── EntityNotFound     strict mode and some entities have no stored row
    │   ├── DeadlineExceeded   the caller's deadline expired (or leaves no time) before the answer
    │   ├── Unauthenticated    no verified identity where one is required, or a bad credential
    │   └── PermissionDenied   the caller's principal may not read or write a view
    └── StoreError             the online store could not answer
        ├── StoreUnavailable   no connection, cluster down, node unreachable
        │   └── StoreUnreachable  no node of the cluster answers at all (down, not misconfigured)
        ├── StoreTimeout       the store did not answer within the call's budget
        └── CorruptRow         a stored row does not match its view's schema

StorePermissionDenied is a StoreError too: Redis's ACL refused this process's user a command or
a key (NOPERM).
"""

from __future__ import annotations


class FeaturewellError(Exception):
    """Base of every error featurewell raises deliberately."""


class ConfigError(FeaturewellError):
    """A setting cannot be honoured at start-up: a port in use, an unreadable file."""


class DefinitionError(FeaturewellError):
    """A feature definition is invalid. The message names the object and what to change."""


class TransformFailed(FeaturewellError):
    """An on-demand transform raised, or returned outputs that do not match its declaration.
    A bug in the feature repo, not in the request."""


class Overloaded(FeaturewellError):
    """The server is serving as many calls as it may at once; this one was shed unserved, so
    retrying it (after a backoff, or on another replica) is safe."""


class RequestError(FeaturewellError):
    """The request cannot be served as asked; retrying it unchanged will fail again."""


class InvalidRequest(RequestError):
    """Malformed request: wrong key type, mismatched column lengths, empty or oversized batch."""


class UnknownFeature(RequestError):
    """A referenced feature, view, version or on-demand transform is not defined."""


class EntityNotFound(RequestError):
    """Strict mode: some requested entities have no stored row."""


class DeadlineExceeded(RequestError):
    """The caller's deadline expired, or leaves too little time, before the answer was ready."""


class Unauthenticated(RequestError):
    """Authentication is required and the call has no verified identity, or it sent a token
    that is unknown, expired or badly signed. The message says what to send."""


class PermissionDenied(RequestError):
    """The call's principal may not read or write a view (its Access policy); the message
    names the principal and the view."""


class StoreError(FeaturewellError):
    """The online store failed to answer."""


class StoreUnavailable(StoreError):
    """The online store (or one of its nodes) cannot be reached."""


class StoreUnreachable(StoreUnavailable):
    """No Redis Cluster node answered: every one refused the connection or timed out. Unlike
    a refused password, a TLS failure or a node that is not a cluster node, waiting may fix it
    (a server starts NOT_SERVING and retries)."""

    def __init__(self, message: str, nodes: list[str]) -> None:
        super().__init__(message)
        self.nodes = nodes  # "host:port" of every node tried


class StoreTimeout(StoreError):
    """The online store did not answer within the time the call allowed."""


class CorruptRow(StoreError):
    """A stored row does not decode with its view's schema (was a view changed without a new
    version?)."""


class StorePermissionDenied(StoreError):
    """Redis refused a command or key to this process's ACL user (NOPERM): a deployment that
    gave the process a role without the permission, not a fault of the caller, and retrying it
    unchanged fails again."""


# The most characters of caller input an error message echoes: a 60 MB entity key must not
# come back in a status message (nor fill the logs).
SHOWN_CHARS = 80


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` cut to `limit` characters, saying how long it was: for echoing caller
    input in error messages."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes) else len(text)
    return f"{text[:limit]}... ({size} chars)"
