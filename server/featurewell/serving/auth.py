"""Who is calling: the principal of every FeatureService call, from its verified client
certificate (mTLS) or bearer token, checked by one interceptor before the handler runs.

- mTLS: gRPC core has verified the certificate chain against `tls_client_ca_file` during the
  handshake (a missing or foreign certificate never gets this far). The principal is the
  certificate's SPIFFE/URI SAN, else its first DNS SAN, else its CN.
- Bearer tokens (`authorization: Bearer <token>`), verified locally, never over the network:
  a token file maps the SHA-256 of each token to a principal (the file holds no secret and is
  re-read when it changes, so tokens rotate without a restart); a JWT is verified against the
  keys of a JWKS file, with its issuer, audience and expiry, and its principal is `sub`.
  Verified JWTs are cached by their hash until they expire, so a call costs a hash and a dict
  lookup, not a signature check.

A certificate wins over a token. Without either, the call is anonymous (principal None): refused
with UNAUTHENTICATED when `auth_required` is on. A token that is sent but unknown, expired or
badly signed is refused either way. Health and reflection are not intercepted (probes).
The handler reads the principal with `principal()` (a context variable set for the call).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
import jwt

from featurewell.errors import ConfigError, Unauthenticated
from featurewell.serving.status import status_for
from featurewell.settings import AuthSettings

log = logging.getLogger("featurewell.auth")

_PRINCIPAL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "featurewell_principal", default=None
)
SERVICE_PREFIX = "/featurewell.v1.FeatureService/"
FILE_CHECK_S = 1.0  # how often token and JWKS files are checked for changes
JWT_CACHE_ENTRIES = 10_000
JWT_LEEWAY_S = 5  # clock skew allowed on exp/nbf/iat
# Keys of `context.auth_context()` in order of preference: a SPIFFE ID, any URI SAN, a DNS SAN.
_SAN_KEYS = ("peer_spiffe_id", "peer_uri", "peer_dns")
SEND = (
    "send a client certificate signed by the server's client CA (mTLS), or "
    "'authorization: Bearer <token>' metadata (ClientOptions(token=...))"
)


def principal() -> str | None:
    """The verified principal of the call being served (None: anonymous or auth off)."""
    return _PRINCIPAL.get()


def token_digest(token: str) -> str:
    """How the tokens file names a token: the hex SHA-256 of its text."""
    return hashlib.sha256(token.encode()).hexdigest()


def certificate_principal(auth: Mapping[str, Sequence[bytes]]) -> str | None:
    """The principal a verified client certificate names, from `context.auth_context()`."""
    if not auth.get("x509_pem_cert"):
        return None  # plaintext, or TLS without a client certificate
    for key in _SAN_KEYS:
        values = auth.get(key)
        if values:
            return values[0].decode()
    for value in auth.get("x509_subject_alternative_name", ()):  # gRPC without peer_* keys
        return value.decode()
    common = auth.get("x509_common_name", [b""])[0]
    return common.decode() or None


class _Watched:
    """A file re-read (by `parse`) when its mtime or size changes, checked at most every
    FILE_CHECK_S; a file that fails to parse keeps the previous contents (logged)."""

    def __init__(self, path: str, parse: Callable[[bytes], Any], what: str) -> None:
        self.path, self._parse, self._what = Path(path), parse, what
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        self.value: Any = None
        self.version = 0
        try:
            self.refresh(force=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {what} {str(self.path)!r}: {exc}") from None

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        self._next_check = now + FILE_CHECK_S
        stat = os.stat(self.path)
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        self.value = self._parse(self.path.read_bytes())
        self._stamp = stamp
        self.version += 1
        if not force:
            log.info("reloaded %s %s", self._what, self.path)

    def current(self) -> Any:
        try:
            self.refresh()
        except (OSError, ValueError) as exc:  # mid-rotation or broken: keep the last good one
            log.warning("cannot reload %s %s (keeping the last): %s", self._what, self.path, exc)
        return self.value


def parse_tokens(raw: bytes) -> dict[str, str]:
    """Lines '<sha256 hex> <principal>'; blank lines and '#' comments are skipped."""
    out: dict[str, str] = {}
    for number, line in enumerate(raw.decode().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        digest, name = digest.lower(), name.strip()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            raise ValueError(f"line {number}: expected '<sha256 hex of the token> <principal>'")
        out[digest] = name
    return out


def parse_jwks(raw: bytes) -> dict[str | None, jwt.PyJWK]:
    """Keys by `kid` (a set of one key also answers tokens without a kid)."""
    try:
        keys = jwt.PyJWKSet.from_dict(json.loads(raw)).keys
    except (jwt.PyJWKSetError, jwt.InvalidKeyError, json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"not a usable JWKS: {exc}") from None
    out: dict[str | None, jwt.PyJWK] = {key.key_id: key for key in keys}
    if len(keys) == 1:
        out[None] = keys[0]
    return out


class Authenticator:
    """Finds and verifies the identity of a call. Raises Unauthenticated."""

    def __init__(self, settings: AuthSettings, client_certificates: bool = False) -> None:
        """`client_certificates`: the server verifies them (tls_client_ca_file); without it no
        call can carry one, and the certificate lookup is skipped."""
        self.required = settings.required
        self._certificates = client_certificates
        self._tokens = (
            _Watched(settings.tokens_file, parse_tokens, "auth_tokens_file")
            if settings.tokens_file
            else None
        )
        self._jwks = (
            _Watched(settings.jwks_file, parse_jwks, "auth_jwks_file")
            if settings.jwks_file
            else None
        )
        self._issuer, self._audience = settings.jwt_issuer, settings.jwt_audience
        self._verified: dict[str, tuple[str, float]] = {}  # JWT sha256 -> (principal, exp)
        self._jwks_version = 0

    def identify(self, context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
        if self._certificates:
            named = certificate_principal(context.auth_context())  # type: ignore[arg-type]
            if named is not None:
                return named
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = value.decode() if isinstance(value, bytes) else value
                break
        if token is None:
            if self.required:
                raise Unauthenticated(f"this server requires authentication: {SEND}")
            return None
        scheme, _, credential = token.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Unauthenticated(f"the authorization metadata must be 'Bearer <token>'; {SEND}")
        return self.verify_token(credential.strip())

    def verify_token(self, token: str) -> str:
        digest = token_digest(token)
        if self._tokens is not None:
            named: str | None = self._tokens.current().get(digest)
            if named is not None:
                return named
        if self._jwks is not None and token.count(".") == 2:
            return self._verify_jwt(token, digest)
        raise Unauthenticated(
            "the bearer token is not known to this server (revoked, mistyped, or meant for "
            f"another service); {SEND}"
        )

    def _verify_jwt(self, token: str, digest: str) -> str:
        assert self._jwks is not None
        keys: dict[str | None, jwt.PyJWK] = self._jwks.current()
        if self._jwks.version != self._jwks_version:  # keys rotated: verify everything again
            self._jwks_version = self._jwks.version
            self._verified.clear()
        cached = self._verified.get(digest)
        if cached is not None:
            if cached[1] > time.time():
                return cached[0]
            del self._verified[digest]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = keys.get(kid)
            if key is None:
                raise Unauthenticated(
                    f"the bearer JWT's key id {kid!r} is not in the server's JWKS; {SEND}"
                )
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                issuer=self._issuer,
                leeway=JWT_LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(f"the bearer JWT has expired; {SEND}") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the bearer JWT is not valid ({exc}); {SEND}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated(f"the bearer JWT has no usable 'sub' claim; {SEND}")
        if len(self._verified) >= JWT_CACHE_ENTRIES:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[digest] = (subject, float(claims["exp"]))
        return subject


Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every FeatureService call before its handler; other services (health,
    reflection) pass untouched. Wrapped handlers are built once per method."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        # Told of every refused call (method, code, started/ended ns, message): the server
        # counts them with the other answered calls (featurewell_requests_total by code).
        self.on_refused: Callable[[str, grpc.StatusCode, int, int, str], None] | None = None

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(SERVICE_PREFIX):
            return handler
        # Unary calls, and the server-streaming SubscribeInvalidations (it answers with
        # context.write, so the same coroutine wrapper holds its principal for the stream).
        streaming = handler.unary_stream is not None
        behaviour = handler.unary_stream if streaming else handler.unary_unary
        if behaviour is None:
            return handler
        wrapped = (
            grpc.unary_stream_rpc_method_handler
            if streaming
            else grpc.unary_unary_rpc_method_handler
        )(
            self._authenticated(method[len(SERVICE_PREFIX) :], behaviour),  # type: ignore[arg-type]
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._handlers[method] = wrapped
        return wrapped

    def _authenticated(self, name: str, handler: Handler) -> Handler:
        identify = self.authenticator.identify

        async def authenticated(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                named = identify(context)
            except Unauthenticated as exc:
                await self._refuse(name, exc, context)
            token = _PRINCIPAL.set(named)
            try:
                return await handler(request, context)
            finally:
                _PRINCIPAL.reset(token)

        return authenticated

    async def _refuse(
        self, name: str, error: Unauthenticated, context: grpc.aio.ServicerContext[Any, Any]
    ) -> NoReturn:
        code, message = status_for(error, name)
        if self.on_refused is not None:
            now = time.perf_counter_ns()
            self.on_refused(name, code, now, now, message)
        await context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")
