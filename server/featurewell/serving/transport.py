"""How callers reach the server: the gRPC server with its core options and the authentication
interceptor, the listening address, and TLS or mTLS on it (settings; docs/security/identity.md).

Kept apart from serving/server.py, which starts, reloads and stops what listens here: every
setting that decides who may connect, and how, is read in this module.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from featurewell.errors import ConfigError
from featurewell.serving.auth import Authenticator, AuthInterceptor
from featurewell.serving.grpc_options import connection_limits, pending_limits
from featurewell.settings import Settings


def grpc_server(settings: Settings) -> tuple[grpc.aio.Server, AuthInterceptor | None]:
    """A gRPC server, not yet listening, and its authentication interceptor (None: off)."""
    authenticating = _interceptor(settings)
    server = grpc.aio.server(
        interceptors=[authenticating] if authenticating is not None else None,
        # Past it gRPC answers RESOURCE_EXHAUSTED before any handler: serving/overload.py
        maximum_concurrent_rpcs=settings.serving.max_concurrent_rpcs or None,
        options=[
            ("grpc.max_send_message_length", settings.serving.max_message_bytes),
            ("grpc.so_reuseport", 1 if settings.serving.workers > 1 else 0),
            *connection_limits(settings.serving),
            *pending_limits(settings.serving),
        ],
    )
    return server, authenticating


def listen(server: grpc.aio.Server, settings: Settings) -> int:
    """Add the listening port (TLS when a certificate is set); returns the bound port."""
    address = f"{settings.listen.host}:{settings.serving.port}"
    if not settings.serving.tls_cert_file:
        return server.add_insecure_port(address)
    try:
        key = Path(settings.serving.tls_key_file).read_bytes()
        chain = Path(settings.serving.tls_cert_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS certificate or key: {exc}") from exc
    return server.add_secure_port(address, _credentials(settings, key, chain))


def _credentials(settings: Settings, key: bytes, chain: bytes) -> grpc.ServerCredentials:
    """TLS; with tls_client_ca_file, mTLS: gRPC refuses handshakes without a client certificate
    that this CA signed, so a call that reaches a handler carries a verified one."""
    if not settings.serving.tls_client_ca_file:
        return grpc.ssl_server_credentials([(key, chain)])
    try:
        roots = Path(settings.serving.tls_client_ca_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read tls_client_ca_file: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=roots, require_client_auth=True
    )


def _interceptor(settings: Settings) -> AuthInterceptor | None:
    """The authentication interceptor, when any identity is in play; none (today's path,
    untouched) with authentication off."""
    auth = settings.auth
    if not (auth.required or auth.configured or settings.serving.tls_client_ca_file):
        return None
    if auth.required and not (auth.configured or settings.serving.tls_client_ca_file):
        raise ConfigError(
            "auth_required is on but no caller could authenticate: set tls_client_ca_file "
            "(mTLS), auth_tokens_file or auth_jwks_file"
        )
    certificates = bool(settings.serving.tls_client_ca_file)
    return AuthInterceptor(Authenticator(auth, client_certificates=certificates))
