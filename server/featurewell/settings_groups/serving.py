"""The serving process's groups: where it listens, the calls it takes (limits, admission and
overload, deadlines, connections, start and drain), and who may make them."""

from __future__ import annotations

from dataclasses import dataclass

from featurewell import faults
from featurewell.errors import ConfigError
from featurewell.settings_groups.group import Group, niceness, not_negative, positive, setting

MAX_GIL_SWITCH_INTERVAL_MS = 100.0  # twenty times CPython's default


@dataclass(frozen=True)
class ListenSettings(Group):
    title = "listening"
    host: str = setting("host", "Address to listen on (gRPC and /metrics).", "127.0.0.1")
    metrics_port: int = setting(
        "metrics_port",
        "Port of the Prometheus /metrics endpoint (0 picks a free one, -1 turns it off).",
        9464,
    )

    def check(self) -> None:
        if not -1 <= self.metrics_port < 65536:
            raise ConfigError(
                f"setting metrics_port must be -1 (off) or 0-65535, got {self.metrics_port}"
            )


@dataclass(frozen=True)
class ServingSettings(Group):
    title = "serving"
    port: int = setting("port", "gRPC port (0 picks a free one).", 50051)
    workers: int = setting("workers", "Server processes sharing the port via SO_REUSEPORT.", 1)
    tls_cert_file: str = setting(
        "tls_cert_file", "PEM certificate chain: serve TLS (with tls_key_file).", ""
    )
    tls_key_file: str = setting("tls_key_file", "PEM private key of tls_cert_file.", "")
    tls_client_ca_file: str = setting(
        "tls_client_ca_file",
        "PEM CA bundle: with tls_cert_file and tls_key_file, require and verify client "
        "certificates (mTLS); the caller's principal comes from its certificate.",
        "",
    )
    store_timeout_ms: float = setting(
        "store_timeout_ms",
        "Longest a call waits for Redis; a shorter client deadline shortens it further.",
        50.0,
    )
    deadline_margin_ms: float = setting(
        "deadline_margin_ms",
        "Time kept back from the client's deadline for the answer's trip to the client; the "
        "server adds the time its answers measurably need (serving/overload.py).",
        2.0,
    )
    write_timeout_s: float = setting(
        "write_timeout_s", "Longest a write batch waits for Redis to confirm it.", 10.0
    )
    max_rows: int = setting(
        "max_rows", "Largest batch: entity rows per GetFeatures/WriteFeatures call.", 10_000
    )
    max_features: int = setting(
        "max_features", "Most feature references per GetFeatures call.", 1_000
    )
    max_message_mb: int = setting(
        "max_message_mb", "Largest gRPC message, request or response.", 64
    )
    max_in_flight: int = setting(
        "max_in_flight",
        "Calls served at once per process; more are shed at once with RESOURCE_EXHAUSTED.",
        256,
    )
    # Overload control (serving/overload.py, docs/resilience.md "Overload").
    max_concurrent_rpcs: int = setting(
        "max_concurrent_rpcs",
        "Calls a server process holds at once, queued before their handler included (gRPC's "
        "maximum_concurrent_rpcs; health checks count too): more are answered "
        "RESOURCE_EXHAUSTED at once, before any work, instead of waiting in a queue until their "
        "deadline (0: no limit).",
        128,
    )
    max_pending_calls: int = setting(
        "max_pending_calls",
        "Calls gRPC's core may hold that this process has not yet taken up (it is busy): more "
        "are answered RESOURCE_EXHAUSTED by gRPC's C core at once, the cheapest refusal there "
        "is (clients see CANCELLED), instead of queueing until their deadline (0: gRPC's "
        "default, 1000 then 3000). Past capacity answered calls wait behind this many, each "
        "the loop's time per call: (latency budget - a call's own time) / that bounds it; the "
        "Helm chart sets 4.",
        16,
    )
    overload_latency_ms: float = setting(
        "overload_latency_ms",
        "Handler time above which the adaptive concurrency limit backs off (AIMD: x0.9 on a "
        "slower call, +1 on one in time, within max_in_flight); calls beyond the limit are shed "
        "with RESOURCE_EXHAUSTED (0: no adaptive limit, only max_in_flight).",
        20.0,
    )
    grpc_threads_nice: int = setting(
        "grpc_threads_nice",
        "Niceness added to gRPC core's own threads (Linux; 0: off, up to 19). Past capacity "
        "they spend the event loop's core refusing calls; at a lower priority they take it in "
        'fewer, larger turns and the loop answers more (docs/resilience.md, "Overload"), but '
        "refusals wait longer and, on a host shared with other busy processes, so does I/O "
        "(the Helm chart sets 10: a pod's cgroup weighs them against its own loop only).",
        0,
    )
    reload_interval_s: float = setting(
        "reload_interval_s",
        "How often to check the feature repo's files for changes and reload (0: only on SIGHUP).",
        0.0,
    )
    versions_poll_s: float = setting(
        "versions_poll_s",
        "How often servers read the default versions `featurewell promote` sets (shared "
        "through Redis).",
        1.0,
    )
    drain_delay_s: float = setting(
        "drain_delay_s",
        "On SIGTERM, how long to keep serving while health reports NOT_SERVING.",
        0.0,
    )
    grace_period_s: float = setting(
        "grace_period_s", "On SIGTERM, how long in-flight calls may finish.", 10.0
    )
    gc_gen0_threshold: int = setting(
        "gc_gen0_threshold",
        "Allocations between CPython's automatic young-generation GC passes, which may land "
        "inside calls: the backstop for a server never idle (gc_pace_objects).",
        50_000,
    )
    gc_pace_objects: int = setting(
        "gc_pace_objects",
        "Young objects that prompt a small GC pass as soon as no call is in a handler, so "
        "calls do not wait on a large automatic one (0: off; else 100 to below "
        "gc_gen0_threshold).",
        1_000,
    )
    gc_gen1_every: int = setting(
        "gc_gen1_every",
        "Young-generation GC passes between two generation-1 passes. A generation-1 pass walks "
        "every object that survived since the last one (kept answers, cached rows), so fewer "
        "passes between make each shorter (docs/architecture.md#garbage-collection).",
        5,
    )
    gil_switch_interval_ms: float = setting(
        "gil_switch_interval_ms",
        "How long the event loop waits for another of the server's Python threads (the "
        "/metrics exposition, the served-log writer, a reload) before that thread must hand "
        "back the GIL. CPython's 5 ms made each /metrics scrape stall every call by 8-9 ms "
        "(docs/performance.md).",
        0.5,
    )
    row_type_checks: bool = setting(
        "row_type_checks",
        "Multi-view reads (one MGET per entity) see a key of another Redis type as missing "
        "(NOT_FOUND); on, rows they found missing are looked up again (TYPE, one more round "
        "trip for calls with missing views) so a foreign key is DATA_LOSS. Single-view reads "
        "report it always, at no cost.",
        False,
    )
    max_future_skew_s: float = setting(
        "max_future_skew_s",
        "Writes and events may carry event times at most this far ahead of the server's clock; "
        "later ones are refused (a future time would shadow every later write of its row).",
        300.0,
    )
    max_event_age_days: float = setting(
        "max_event_age_days",
        "Writes and events older than this are refused as absurd (raise it for old backfills).",
        3650.0,
    )
    max_entity_key_bytes: int = setting(
        "max_entity_key_bytes",
        "Longest entity key value in UTF-8 bytes that writes, events and reads accept.",
        1024,
    )
    # The one fault injection (it replaced inject_delay_ms, an every-call delay in ms: that is
    # single:<ms>ms,batch:<ms>ms), so a slowed server has one knob to set and one log line.
    fault_delay: str = setting(
        "fault_delay",
        "Fault injection (featurewell/faults.py) for the load-test gate, alert drills and tests: "
        "delay single-entity and/or batch GetFeatures calls, e.g. single:8ms or "
        "batch:8ms,single:2ms. Empty (off) in production.",
        "",
    )
    # HTTP/2 and gRPC limits against hostile or broken clients
    # (docs/security/requests-and-stored-data.md).
    max_request_mb: int = setting(
        "max_request_mb",
        "Largest request a call may send, in MiB (gRPC max receive message length); larger "
        "ones are refused with RESOURCE_EXHAUSTED before they are parsed.",
        16,
    )
    max_concurrent_streams: int = setting(
        "max_concurrent_streams",
        "Calls one client connection may have open at once (HTTP/2 MAX_CONCURRENT_STREAMS); "
        "more wait in the client.",
        256,
    )
    max_connection_idle_s: float = setting(
        "max_connection_idle_s",
        "Close a client connection with no calls for this long (GOAWAY; clients reconnect).",
        300.0,
    )
    max_connection_age_s: float = setting(
        "max_connection_age_s",
        "Close every client connection after this long (GOAWAY), so clients spread over new "
        "replicas and no connection lives forever (0: no limit).",
        1800.0,
    )
    max_connection_age_grace_s: float = setting(
        "max_connection_age_grace_s",
        "Calls still open on a connection closed for its age may finish within this.",
        30.0,
    )
    keepalive_min_interval_s: float = setting(
        "keepalive_min_interval_s",
        "Shortest interval between client keepalive pings the server accepts; a client pinging "
        "faster is disconnected (GOAWAY too_many_pings). The featurewell client pings every "
        "30 s.",
        10.0,
    )
    keepalive_permit_without_calls: bool = setting(
        "keepalive_permit_without_calls",
        "Accept keepalive pings on connections with no call open (off: idle connections may "
        "not keep themselves alive with pings).",
        False,
    )

    wait_for_redis: bool = setting(
        "redis_wait_at_start",
        "When no Redis Cluster node answers at start-up, start anyway NOT_SERVING and serve once "
        "the cluster answers (false: exit with an error instead).",
        True,
    )
    redis_retry_max_s: float = setting(
        "redis_retry_max_s",
        "Longest pause between start-up connection attempts (the pause doubles from 0.2 s up "
        "to it, jittered).",
        5.0,
    )
    near_cache_ttl_s: float = setting(
        "near_cache_ttl_s",
        "Longest a row may answer from a client's near cache (docs/near-cache.md); a view's is "
        "also at most cache_ttl_fraction of its max age. 0: no view may be near-cached.",
        1.0,
    )
    near_cache_buffer: int = setting(
        "near_cache_buffer",
        "Invalidated rows queued per near-cache subscriber; past it the subscriber's stream "
        "ends with a reset (it drops its cache and subscribes again).",
        10_000,
    )

    def check(self) -> None:
        positive(self, "redis_retry_max_s", "near_cache_buffer")
        not_negative(self, "near_cache_ttl_s")
        positive(self, "max_request_mb", "max_concurrent_streams")
        positive(self, "max_connection_idle_s", "keepalive_min_interval_s")
        not_negative(self, "max_connection_age_s", "max_connection_age_grace_s")
        positive(
            self,
            "workers",
            "store_timeout_ms",
            "max_rows",
            "max_features",
            "max_message_mb",
            "gc_gen0_threshold",
            "gc_gen1_every",
            "gil_switch_interval_ms",
            "write_timeout_s",
            "max_in_flight",
            "max_future_skew_s",
            "max_event_age_days",
            "max_entity_key_bytes",
        )
        not_negative(self, "reload_interval_s")
        if self.gil_switch_interval_ms > MAX_GIL_SWITCH_INTERVAL_MS:
            raise ConfigError(
                f"setting gil_switch_interval_ms must be at most {MAX_GIL_SWITCH_INTERVAL_MS:g} "
                f"(the loop's longest wait for the GIL), got {self.gil_switch_interval_ms:g}"
            )
        if self.gc_pace_objects and not 100 <= self.gc_pace_objects < self.gc_gen0_threshold:
            raise ConfigError(
                "setting gc_pace_objects must be 0 (off) or from 100 to below gc_gen0_threshold "
                f"({self.gc_gen0_threshold}), got {self.gc_pace_objects}: fewer makes a pass per "
                "call, and at the threshold CPython collects before pacing can"
            )
        faults.parse(self.fault_delay)
        not_negative(self, "max_concurrent_rpcs", "overload_latency_ms", "max_pending_calls")
        niceness(self, "grpc_threads_nice")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"setting port must be 0-65535, got {self.port}")
        if self.workers > 1 and self.port == 0:
            raise ConfigError("several workers need a fixed port, not port 0")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("settings tls_cert_file and tls_key_file go together: set both")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError(
                "setting tls_client_ca_file (mTLS) needs TLS: set tls_cert_file and tls_key_file"
            )

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024


@dataclass(frozen=True)
class AuthSettings(Group):
    title = "Authentication"
    required: bool = setting(
        "auth_required",
        "Refuse FeatureService calls without a verified identity (client certificate or "
        "bearer token) with UNAUTHENTICATED, and enforce the definitions' Access policies. "
        "Health and reflection stay open.",
        False,
    )
    tokens_file: str = setting(
        "auth_tokens_file",
        "Bearer tokens: lines '<sha256 hex of the token> <principal>' (no secrets in the "
        "file); re-read when it changes, so tokens rotate without a restart.",
        "",
    )
    jwks_file: str = setting(
        "auth_jwks_file",
        "JWKS file (JSON) whose keys verify bearer JWTs locally; the principal is the `sub` "
        "claim. Needs auth_jwt_issuer and auth_jwt_audience.",
        "",
    )
    jwt_issuer: str = setting("auth_jwt_issuer", "The `iss` every bearer JWT must carry.", "")
    jwt_audience: str = setting(
        "auth_jwt_audience", "The `aud` every bearer JWT must carry (this service).", ""
    )

    def check(self) -> None:
        if self.jwks_file and not (self.jwt_issuer and self.jwt_audience):
            raise ConfigError(
                "setting auth_jwks_file needs auth_jwt_issuer and auth_jwt_audience: a JWT is "
                "accepted only for the issuer and audience named"
            )
        if (self.jwt_issuer or self.jwt_audience) and not self.jwks_file:
            raise ConfigError("settings auth_jwt_issuer/audience need auth_jwks_file (the keys)")

    @property
    def configured(self) -> bool:
        """Whether any bearer-token source is set."""
        return bool(self.tokens_file or self.jwks_file)
