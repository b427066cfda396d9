"""The groups of the stores the server reads and writes: the Redis Cluster (how to reach and
trust it), the hot-key cache in front of it, and the offline store of feature history."""

from __future__ import annotations

from dataclasses import dataclass

from featurewell.errors import ConfigError
from featurewell.settings_groups.group import Group, not_negative, positive, setting
from featurewell.store.connection import Address


@dataclass(frozen=True)
class RedisSettings(Group):
    title = "Redis Cluster"
    seeds: tuple[Address, ...] = setting(
        "redis", "Redis Cluster seed nodes, comma-separated host:port.", (("127.0.0.1", 7000),)
    )
    password: str = setting(
        "redis_password",
        "Redis AUTH password; set FEATUREWELL_REDIS_PASSWORD (from a Secret), not the flag, "
        "which other users can see.",
        "",
        secret=True,
    )
    username: str = setting(
        "redis_username",
        "Redis ACL user to AUTH as (AUTH <user> <password>); empty: Redis's default user. "
        "`featurewell redis-acl` prints the rules of each role.",
        "",
    )
    password_file: str = setting(
        "redis_password_file",
        "File holding the Redis password (a mounted Secret), read at every connect so a "
        "rotated password is picked up on reconnect; instead of redis_password.",
        "",
    )
    tls: bool = setting("redis_tls", "Connect to Redis over TLS (nodes' tls-port).", False)
    tls_ca_file: str = setting(
        "redis_tls_ca_file",
        "PEM CA bundle that signed the Redis nodes' certificates (default: the system's).",
        "",
    )
    tls_cert_file: str = setting(
        "redis_tls_cert_file",
        "PEM client certificate, when Redis requires one (tls-auth-clients yes).",
        "",
    )
    tls_key_file: str = setting("redis_tls_key_file", "PEM private key of redis_tls_cert_file.", "")
    tls_check_hostname: bool = setting(
        "redis_tls_check_hostname",
        "Check that each node's certificate names the address CLUSTER SLOTS gives for it (an "
        "IP SAN when nodes announce IPs); turn off only with a private CA.",
        True,
    )
    connect_timeout_s: float = setting(
        "connect_timeout_s", "Timeout to connect to a Redis node.", 2.0
    )
    connections_per_node: int = setting(
        "connections_per_node", "Multiplexed connections per Redis master.", 2
    )
    breaker_failures: int = setting(
        "breaker_failures", "Failed calls in a row that open a Redis node's circuit.", 3
    )
    breaker_open_ms: float = setting(
        "breaker_open_ms",
        "How long an open circuit fails fast before a trial call probes the node.",
        1000.0,
    )

    def check(self) -> None:
        positive(
            self, "connect_timeout_s", "connections_per_node", "breaker_failures", "breaker_open_ms"
        )
        if not self.seeds:
            raise ConfigError("setting redis needs at least one host:port")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError(
                "settings redis_tls_cert_file and redis_tls_key_file go together: set both"
            )
        if self.password and self.password_file:
            raise ConfigError("settings redis_password and redis_password_file both set: keep one")
        if (self.tls_ca_file or self.tls_cert_file) and not self.tls:
            raise ConfigError("redis_tls_* files are set but redis_tls is off: set redis_tls=true")


@dataclass(frozen=True)
class CacheSettings(Group):
    title = "hot-key cache"
    entries: int = setting(
        "cache_entries", "Hot-key cache size in rows (0 turns the cache off).", 100_000
    )
    mb: int = setting("cache_mb", "Hot-key cache size limit in MiB.", 256)
    ttl_s: float = setting(
        "cache_ttl_s",
        "Longest a cached row answers reads (invalidations usually end it sooner).",
        5.0,
    )
    ttl_fraction: float = setting(
        "cache_ttl_fraction", "A view's cache TTL never exceeds this fraction of its max age.", 0.1
    )
    admit_after: int = setting(
        "cache_admit_after",
        "Fetches of a key (within the frequency window) before the cache admits it.",
        2,
    )
    refresh_ahead: float = setting(
        "cache_refresh_ahead",
        "A cached row read in this last fraction of its TTL is fetched again in the background, "
        "so hot rows do not expire under their readers (0: off; docs/caching.md).",
        0.2,
    )
    fallback_horizon_s: float = setting(
        "fallback_horizon_s",
        "How long past its TTL a cached row may still be served when Redis fails.",
        300.0,
    )

    def check(self) -> None:
        positive(self, "mb", "ttl_fraction", "admit_after")
        not_negative(self, "entries", "ttl_s", "fallback_horizon_s", "refresh_ahead")
        if self.refresh_ahead >= 1:
            raise ConfigError(
                "setting cache_refresh_ahead must be below 1 (the last fraction of a TTL)"
            )
        if self.ttl_fraction > 1:
            raise ConfigError(
                "setting cache_ttl_fraction must be at most 1 (a fraction of max age)"
            )


@dataclass(frozen=True)
class OfflineSettings(Group):
    title = "offline store"
    dir: str = setting(
        "offline_dir",
        "Root of the offline store (feature history): `featurewell stream` and `backfill` "
        "write to it, `training-set` reads it; empty: no history is written.",
        "",
    )
    format: str = setting(
        "offline_format",
        "Table format of the offline store: parquet (files by view, version and date) or delta "
        "(a Delta Lake table per view version; pip install 'featurewell[delta]').",
        "parquet",
    )
    write_history: bool = setting(
        "offline_write_history",
        "Servers add the rows pushed with WriteFeatures to the offline history (created: when "
        "written), so pushed views train point in time; only with offline_dir.",
        True,
    )

    def check(self) -> None:
        if self.format not in ("parquet", "delta"):
            raise ConfigError(
                f"setting offline_format must be parquet or delta, got {self.format!r}"
            )
