"""`featurewell probe`: a gRPC health check over TLS (and mTLS), for Kubernetes exec probes.

Kubernetes' own gRPC probe speaks plaintext only, so with serving TLS on the chart runs this in
the pod instead: it connects to the pod's own port, checks the server's certificate against the
CA, presents the pod's certificate when the server wants client certificates, and exits 0 only
when `grpc.health.v1.Health/Check` answers SERVING.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featurewell.commands._command import Command, number
from featurewell.errors import ConfigError, FeaturewellError
from featurewell.settings import Settings


class NotServing(FeaturewellError):
    """The health check did not answer SERVING (the CLI exits 2 with the reason)."""


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port to check")
    parser.add_argument(
        "--service", default="", help="the health service name ('': the whole server)"
    )
    parser.add_argument("--ca-file", type=Path, help="PEM CA that signed the server's certificate")
    parser.add_argument("--cert-file", type=Path, help="PEM client certificate (mTLS)")
    parser.add_argument("--key-file", type=Path, help="PEM private key of --cert-file")
    parser.add_argument(
        "--server-name", default="", help="the name the server's certificate must carry"
    )
    parser.add_argument("--timeout", type=number(positive=True), default=2.0, help="seconds")


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def check(
    address: str,
    service: str = "",
    *,
    ca: bytes | None = None,
    cert: bytes | None = None,
    key: bytes | None = None,
    server_name: str = "",
    timeout: float = 2.0,
) -> None:
    """Raise NotServing unless the server at `address` reports SERVING for `service`. With `ca`,
    over TLS (presenting `cert` and `key` when given)."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if ca is None:
        channel = grpc.insecure_channel(address)
    else:
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        channel = grpc.secure_channel(address, credentials, options)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise NotServing(f"{address}: {exc.code().name}: {exc.details()}") from None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        raise NotServing(f"{address} {service or 'server'}: {status}")


def _probe(_settings: Settings, args: argparse.Namespace) -> None:
    if bool(args.cert_file) != bool(args.key_file):
        raise ConfigError("--cert-file and --key-file go together")
    if args.cert_file and not args.ca_file:
        raise ConfigError("--cert-file needs --ca-file (TLS)")
    check(
        args.address,
        args.service,
        ca=_read(args.ca_file),
        cert=_read(args.cert_file),
        key=_read(args.key_file),
        server_name=args.server_name,
        timeout=args.timeout,
    )


COMMANDS = (
    Command(
        "probe",
        "exit 0 when a server's gRPC health check answers SERVING (TLS and mTLS too)",
        _probe,
        arguments=_arguments,
        repo=False,
    ),
)
