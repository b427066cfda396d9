"""The hot-key cache's and the circuit breakers' own counters, copied into Prometheus metrics.

The cache and breakers count in plain integers (no metric code in their hot loops); `sync`
copies them into counters and gauges, at scrape time in a single process and once a second
from the telemetry loop, which is what multi-process mode needs (the parent that serves
/metrics cannot ask the workers).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.registry import Collector

from featurewell.store.breaker import BreakerState
from featurewell.store.online import OnlineStore

_CACHE_COUNTS = (
    ("hits", "Rows answered from the hot-key cache."),
    ("misses", "Cache lookups that had to go to Redis."),
    ("admissions", "Keys admitted once they proved hot."),
    ("evictions", "Entries evicted to stay within the bounds."),
    ("invalidations", "Entries dropped because of a write."),
    ("refreshes", "Entries fetched again in the background before their TTL ended."),
)


class StoreStats(Collector):
    """Registered in the server's registry so a scrape syncs first; yields nothing itself."""

    def __init__(self, store: OnlineStore, registry: CollectorRegistry) -> None:
        self._store = store
        # Registered before the metrics it feeds: a scrape collects in registration order, so
        # this syncs them before they are read.
        self._ready = False
        registry.register(self)
        self._cache_counts = {
            name: Counter(f"featurewell_cache_{name}", text, registry=registry)
            for name, text in _CACHE_COUNTS
        }
        self._entries = Gauge(
            "featurewell_cache_entries",
            "Rows cached.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._bytes = Gauge(
            "featurewell_cache_bytes",
            "Approximate cache size.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._lost = Counter(
            "featurewell_cache_invalidation_streams_lost",
            "Invalidation connections lost (the cache stopped trusting its entries).",
            registry=registry,
        )
        self._cut = Counter(
            "featurewell_cache_tracked_connections_lost",
            "Tracked data connections closed (the cache stopped trusting that node's entries).",
            registry=registry,
        )
        self._refresh_failed = Counter(
            "featurewell_cache_refresh_failures",
            "Refresh-ahead reads that failed in part or whole (their rows expire as usual).",
            registry=registry,
        )
        self._open = Gauge(
            "featurewell_redis_circuit_open",
            "1 while a Redis node's circuit breaker is open or probing.",
            ["node"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._opened = Counter(
            "featurewell_redis_circuit_opened",
            "Times a Redis node's circuit breaker opened.",
            ["node"],
            registry=registry,
        )
        self._copied: dict[str, int] = {}
        self._ready = True

    def collect(self) -> Iterable[object]:  # type: ignore[override]
        if self._ready:
            self.sync()
        return ()

    def sync(self) -> None:
        cache = self._store.cache
        if cache is not None:
            stats = cache.stats
            for name, counter in self._cache_counts.items():
                self._advance(name, counter, getattr(stats, name))
            self._entries.set(len(cache))
            self._bytes.set(cache.bytes)
        tracker = self._store.tracker
        if tracker is not None:
            self._advance("lost", self._lost, tracker.lost)
            self._advance("cut", self._cut, tracker.cut)
        refresher = self._store.refresher
        if refresher is not None:
            self._advance("refresh failed", self._refresh_failed, refresher.failed)
        cluster = self._store.cluster
        for host, port in cluster.masters:  # known nodes start at 0: panels and alerts see them
            if (host, port) not in cluster.breakers:
                self._open.labels(f"{host}:{port}").set(0)
                self._opened.labels(f"{host}:{port}")
        for (host, port), breaker in list(cluster.breakers.items()):
            node = f"{host}:{port}"
            self._open.labels(node).set(0 if breaker.state is BreakerState.CLOSED else 1)
            self._advance(f"opened {node}", self._opened.labels(node), breaker.opened)

    def _advance(self, key: str, counter: Counter, total: int) -> None:
        """Move `counter` up to `total` (counts only grow; a restart starts both at 0)."""
        delta = total - self._copied.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            self._copied[key] = total
