"""Channel settings shared by the sync and async clients: deadlines, read retries, keepalive,
DNS round robin, message size limits and TLS, all expressed as gRPC channel options so both
clients behave identically and no retry loop is written twice."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from featurewell.client._near_options import NearCache

_SERVICE = "featurewell.v1.FeatureService"
RECEIVE_WINDOW_BYTES = 4 * 1024 * 1024  # per stream: whole answers, not 64 KB at a time


@dataclass(frozen=True)
class ClientOptions:
    """How a client talks to featurewell.

    timeout: default deadline of a read, in seconds (writes get ten times as long).
    read_attempts: attempts of a read (GetFeatures, ListFeatures) that failed with UNAVAILABLE,
        RESOURCE_EXHAUSTED or CANCELLED (a shed call: never started, so safe to repeat), within
        the call's deadline, throttled while most attempts fail; 1 turns retries off. Writes
        are never retried.
    retry_backoff_s / retry_max_backoff_s: the first and the largest pause between attempts
        (exponential, randomised by gRPC).
    keepalive_s: ping an idle-but-busy connection this often to notice dead peers fast.
    max_message_mb: the largest message either way.
    tls: False for plaintext, True for TLS with the system's roots, or PEM root certificates.
    caller: who is calling, a model name and version ("ranker/3.2"), sent with every call as
        `x-featurewell-model` metadata; servers record which views each caller reads
        (`featurewell lineage`). With authentication on it names the model within the
        authenticated principal; it grants nothing.
    client_cert / client_key: PEM client certificate chain and private key for mTLS (servers
        with `tls_client_ca_file`); needs `tls`.
    token: a bearer token sent as `authorization: Bearer <token>` with every call, or a
        function returning the current one (called per call: rotate by returning a new one;
        cache it yourself). Needs `tls`: a token in plaintext is anyone's.
    near_cache: True or a `NearCache` to keep hot single-entity answers in this process,
        invalidated by the server within a hard TTL (docs/near-cache.md); off by default.
    """

    timeout: float = 1.0
    read_attempts: int = 3
    retry_backoff_s: float = 0.01
    retry_max_backoff_s: float = 0.2
    keepalive_s: float = 30.0
    max_message_mb: int = 64
    tls: bool | bytes = False
    caller: str = ""
    client_cert: bytes | None = None
    client_key: bytes | None = None
    token: str | Callable[[], str] | None = None
    near_cache: bool | NearCache = False

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if not 1 <= self.read_attempts <= 5:
            raise ValueError(f"read_attempts must be 1-5 (gRPC's limit), got {self.read_attempts}")
        if not (self.caller.isascii() and self.caller.isprintable() and len(self.caller) <= 200):
            raise ValueError(
                f"caller must be printable ASCII, at most 200 characters: {self.caller!r}"
            )
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together: give both for mTLS")
        if (self.client_cert is not None or self.token is not None) and self.tls is False:
            raise ValueError(
                "client_cert and token need tls=True (or PEM roots): credentials travel only "
                "over TLS"
            )

    @property
    def near_cache_options(self) -> NearCache | None:
        if self.near_cache is False:
            return None
        return NearCache() if self.near_cache is True else self.near_cache

    def bearer(self) -> str | None:
        """The `authorization` value for the next call, or None without a token."""
        if self.token is None:
            return None
        token = self.token() if callable(self.token) else self.token
        return f"Bearer {token}"

    def channel_options(self, target: str) -> list[tuple[str, Any]]:
        size = self.max_message_mb * 1024 * 1024
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            ("grpc.keepalive_time_ms", int(self.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            # A restarted server pod should be found again in well under a second.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(self._service_config())),
            # A ranker's answer (500 rows: ~80 KB) arrives in one go when the stream's window
            # holds it. gRPC's default 64 KB window, grown by BDP probing, made the server wait
            # for a window update mid-answer: with this fixed 4 MB window a ranking call's p50
            # fell 13% and its p99 15-30% on loopback (docs/performance.md). It is a bound on
            # what one stream may have in flight towards this client, which asked for it.
            ("grpc.http2.lookahead_bytes", RECEIVE_WINDOW_BYTES),
            ("grpc.http2.bdp_probe", 0),
        ]
        if target.startswith("dns:"):
            # Every address the name resolves to gets calls in turn (a headless Service).
            options.append(("grpc.lb_policy_name", "round_robin"))
        return options

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls is False:
            return None
        roots = self.tls if isinstance(self.tls, bytes) else None
        return grpc.ssl_channel_credentials(
            root_certificates=roots,
            private_key=self.client_key,
            certificate_chain=self.client_cert,
        )

    def _service_config(self) -> dict[str, Any]:
        reads = [{"service": _SERVICE, "method": m} for m in ("GetFeatures", "ListFeatures")]
        config: dict[str, Any] = {"name": reads}
        if self.read_attempts > 1:
            config["retryPolicy"] = {
                "maxAttempts": self.read_attempts,
                "initialBackoff": f"{self.retry_backoff_s:.3f}s",
                "maxBackoff": f"{self.retry_max_backoff_s:.3f}s",
                "backoffMultiplier": 2,
                # CANCELLED: a busy server's gRPC core refused the call before any work
                # (max_pending_calls), so repeating a read is safe.
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED"],
            }
            # Retries stop while more than half of recent attempts failed, so an overloaded
            # fleet is not handed a retry storm on top of its load.
            return {
                "methodConfig": [config],
                "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
            }
        return {"methodConfig": [config]}
