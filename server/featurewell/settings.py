"""Server settings: one frozen object, read once at start-up and passed down.

Each field can be set by an environment variable `FEATUREWELL_<FIELD>` or by the matching
`featurewell serve --<field>` flag (flags win). This module is the only place that reads the
environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from featurewell.store.connection import Address

ENV_PREFIX = "FEATUREWELL_"


def _doc(text: str, default: Any = MISSING, *, secret: bool = False) -> Any:
    if default is MISSING:
        return field(metadata={"doc": text})
    # A secret stays out of repr(), so logging the settings never prints it.
    return field(default=default, metadata={"doc": text}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    repo: str = _doc("Feature repo: a .py file, a folder with repo.py, or a module path.", "")
    redis: tuple[Address, ...] = _doc(
        "Redis Cluster seed nodes, comma-separated host:port.", (("127.0.0.1", 7000),)
    )
    redis_password: str = _doc(
        "Redis AUTH password; set FEATUREWELL_REDIS_PASSWORD (from a Secret), not the flag, "
        "which other users can see.",
        "",
        secret=True,
    )
    redis_tls: bool = _doc("Connect to Redis over TLS (nodes' tls-port).", False)
    redis_tls_ca_file: str = _doc(
        "PEM CA bundle that signed the Redis nodes' certificates (default: the system's).", ""
    )
    redis_tls_cert_file: str = _doc(
        "PEM client certificate, when Redis requires one (tls-auth-clients yes).", ""
    )
    redis_tls_key_file: str = _doc("PEM private key of redis_tls_cert_file.", "")
    redis_tls_check_hostname: bool = _doc(
        "Check that each node's certificate names the address CLUSTER SLOTS gives for it (an "
        "IP SAN when nodes announce IPs); turn off only with a private CA.",
        True,
    )
    host: str = _doc("Address to listen on.", "127.0.0.1")
    port: int = _doc("gRPC port (0 picks a free one).", 50051)
    metrics_port: int = _doc(
        "Port of the Prometheus /metrics endpoint (0 picks a free one, -1 turns it off).", 9464
    )
    workers: int = _doc("Server processes sharing the port via SO_REUSEPORT.", 1)
    tls_cert_file: str = _doc("PEM certificate chain: serve TLS (with tls_key_file).", "")
    tls_key_file: str = _doc("PEM private key of tls_cert_file.", "")
    store_timeout_ms: float = _doc(
        "Longest a call waits for Redis; a shorter client deadline shortens it further.", 50.0
    )
    deadline_margin_ms: float = _doc(
        "Time kept back from the client's deadline to build and send the answer.", 1.0
    )
    write_timeout_s: float = _doc("Longest a write batch waits for Redis to confirm it.", 10.0)
    connect_timeout_s: float = _doc("Timeout to connect to a Redis node.", 2.0)
    connections_per_node: int = _doc("Multiplexed connections per Redis master.", 2)
    max_rows: int = _doc("Largest batch: entity rows per GetFeatures/WriteFeatures call.", 10_000)
    max_features: int = _doc("Most feature references per GetFeatures call.", 1_000)
    max_message_mb: int = _doc("Largest gRPC message, request or response.", 64)
    max_in_flight: int = _doc(
        "Calls served at once per process; more are shed at once with RESOURCE_EXHAUSTED.", 256
    )
    cache_entries: int = _doc("Hot-key cache size in rows (0 turns the cache off).", 100_000)
    cache_mb: int = _doc("Hot-key cache size limit in MiB.", 256)
    cache_ttl_s: float = _doc(
        "Longest a cached row answers reads (invalidations usually end it sooner).", 5.0
    )
    cache_ttl_fraction: float = _doc(
        "A view's cache TTL never exceeds this fraction of its max age.", 0.1
    )
    cache_admit_after: int = _doc(
        "Fetches of a key (within the frequency window) before the cache admits it.", 2
    )
    fallback_horizon_s: float = _doc(
        "How long past its TTL a cached row may still be served when Redis fails.", 300.0
    )
    breaker_failures: int = _doc("Failed calls in a row that open a Redis node's circuit.", 3)
    breaker_open_ms: float = _doc(
        "How long an open circuit fails fast before a trial call probes the node.", 1000.0
    )
    reload_interval_s: float = _doc(
        "How often to check the feature repo's files for changes and reload (0: only on SIGHUP).",
        0.0,
    )
    drain_delay_s: float = _doc(
        "On SIGTERM, how long to keep serving while health reports NOT_SERVING.", 0.0
    )
    grace_period_s: float = _doc("On SIGTERM, how long in-flight calls may finish.", 10.0)
    gc_gen0_threshold: int = _doc("Allocations between young-generation GC passes.", 50_000)
    log_level: str = _doc("Python log level.", "INFO")
    traces_exporter: str = _doc(
        "OpenTelemetry trace exporter: otlp (gRPC), console, or none. Unset, it is taken from "
        "OTEL_TRACES_EXPORTER, or otlp when an OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set; the "
        "SDK reads the other OTEL_* variables (endpoint, sampler, service name) itself.",
        "none",
    )
    freshness_interval_s: float = _doc(
        "How often to read every view's write marker (newest event, last write) for the "
        "freshness gauges.",
        15.0,
    )
    drift_sample_rate: float = _doc(
        "Share of GetFeatures calls whose served values feed the drift reservoirs.", 0.01
    )
    drift_window_s: float = _doc(
        "Drift is compared with the baseline over windows of this length.", 300.0
    )
    drift_reservoir: int = _doc("Values kept per feature and window for drift (a sample).", 2048)
    drift_baseline: str = _doc(
        "Baseline JSON from `featurewell baseline` (training data); without it, the expected "
        "statistics (Stats) in the definitions.",
        "",
    )
    consumers_flush_s: float = _doc(
        "How often each server adds the callers it served (`x-featurewell-model`) and the views "
        "they read to Redis, for `featurewell lineage`.",
        10.0,
    )
    versions_poll_s: float = _doc(
        "How often servers read the default versions `featurewell promote` sets (shared "
        "through Redis).",
        1.0,
    )
    offline_dir: str = _doc(
        "Root of the offline store (feature history as Parquet): `featurewell stream` and "
        "`backfill` write to it, `training-set` reads it; empty: no history is written.",
        "",
    )
    offline_format: str = _doc(
        "Table format of the offline store: parquet (files by view, version and date) or delta "
        "(a Delta Lake table per view version; pip install 'featurewell[delta]').",
        "parquet",
    )
    inject_delay_ms: float = _doc(
        "Fault injection for testing alerts and the load-test gate: every GetFeatures waits "
        "this long first. Keep 0 in production.",
        0.0,
    )

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then `FEATUREWELL_*` variables, then `overrides` (None values ignored)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"traces_exporter": _otel_exporter(env)}
        for spec in fields(cls):
            raw = env.get(ENV_PREFIX + spec.name.upper())
            if raw is not None and raw != "":
                values[spec.name] = _parse(spec.name, raw, spec.type)
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = (
                    _parse(name, value, _type_of(name)) if isinstance(value, str) else value
                )
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = ("workers", "store_timeout_ms", "connect_timeout_s", "connections_per_node",
                    "max_rows", "max_features", "max_message_mb", "gc_gen0_threshold",
                    "write_timeout_s", "max_in_flight", "cache_mb", "cache_ttl_fraction",
                    "cache_admit_after", "breaker_failures", "breaker_open_ms",
                    "freshness_interval_s", "drift_window_s", "drift_reservoir")  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"setting {name} must be positive, got {getattr(self, name)}")
        for name in ("cache_entries", "cache_ttl_s", "fallback_horizon_s", "reload_interval_s",
                     "inject_delay_ms"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"setting {name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.drift_sample_rate <= 1:
            raise ValueError("setting drift_sample_rate must be in [0, 1] (a share of calls)")
        if self.traces_exporter not in ("otlp", "console", "none"):
            raise ValueError(
                f"setting traces_exporter must be otlp, console or none, got "
                f"{self.traces_exporter!r}"
            )
        if self.cache_ttl_fraction > 1:
            raise ValueError("setting cache_ttl_fraction must be at most 1 (a fraction of max age)")
        if not 0 <= self.port < 65536:
            raise ValueError(f"setting port must be 0-65535, got {self.port}")
        if not -1 <= self.metrics_port < 65536:
            raise ValueError(
                f"setting metrics_port must be -1 (off) or 0-65535, got {self.metrics_port}"
            )
        if self.offline_format not in ("parquet", "delta"):
            raise ValueError(
                f"setting offline_format must be parquet or delta, got {self.offline_format!r}"
            )
        if self.workers > 1 and self.port == 0:
            raise ValueError("several workers need a fixed port, not port 0")
        if not self.redis:
            raise ValueError("setting redis needs at least one host:port")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("settings tls_cert_file and tls_key_file go together: set both")
        if bool(self.redis_tls_cert_file) != bool(self.redis_tls_key_file):
            raise ValueError(
                "settings redis_tls_cert_file and redis_tls_key_file go together: set both"
            )
        uses_tls = self.redis_tls_ca_file or self.redis_tls_cert_file
        if uses_tls and not self.redis_tls:
            raise ValueError("redis_tls_* files are set but redis_tls is off: set redis_tls=true")

    def required_repo(self) -> str:
        """The feature repo, for the commands that cannot run without one."""
        if not self.repo:
            raise SystemExit("featurewell: --repo (or FEATUREWELL_REPO) is required")
        return self.repo

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024


def _otel_exporter(env: Mapping[str, str]) -> str:
    """Tracing from the standard OpenTelemetry variables: on only when asked for, since a
    feature server that exports to a collector nobody runs wastes time on every call."""
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return "none"
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        return named
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return "none"


def _type_of(name: str) -> str:
    for spec in fields(Settings):
        if spec.name == name:
            return str(spec.type)
    raise ValueError(f"unknown setting {name!r}")


def _parse(name: str, raw: str, kind: Any) -> Any:
    kind = str(kind)
    try:
        if kind.startswith("tuple"):
            return parse_addresses(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return _bool(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name}: cannot parse {raw!r} ({exc})") from None
    return raw


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_addresses(raw: str) -> tuple[Address, ...]:
    """'h1:7000,h2:7001' -> (('h1', 7000), ('h2', 7001))."""
    addresses = []
    for part in raw.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{part.strip()!r} is not host:port")
        addresses.append((host, int(port)))
    return tuple(addresses)
