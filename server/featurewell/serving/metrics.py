"""Prometheus metrics of the resilience machinery: hot-key cache, fallbacks, circuit breakers,
load shedding, reloads.

Recorded at the edges: the service counts what a call's result reports (fallbacks) or what it
refused (shed calls), and the cache and breaker counters are read at scrape time from the objects
that keep them, so no metric code runs inside the store's hot loops. Labels are bounded: views
come from the registry, nodes from the cluster, reasons from an enum; never entity keys.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from featurewell.serving.engine import FeatureResult
from featurewell.store.breaker import BreakerState
from featurewell.store.cluster import FailureReason
from featurewell.store.online import OnlineStore

# The wire's FallbackReason names, lower-cased.
_REASONS = {
    FailureReason.TIMEOUT: "store_timeout",
    FailureReason.UNAVAILABLE: "store_unavailable",
    FailureReason.CIRCUIT_OPEN: "circuit_open",
}


# Fine enough below 5 ms to judge a sub-millisecond SLO; budgets (5 ms, 15 ms) are bucket edges,
# so "p99 within budget" is read off the buckets exactly, without interpolation.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005,
    0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class ServerMetrics:
    """One registry per server (tests run several servers in one process)."""

    def __init__(self, store: OnlineStore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "featurewell_request_duration_seconds",
            "Time from the handler taking a call to its answer, by method and shape (single: "
            "one entity row; batch: more).",
            ["method", "shape"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._single_read = self.request_seconds.labels("GetFeatures", "single")
        self._batch_read = self.request_seconds.labels("GetFeatures", "batch")
        self._write = self.request_seconds.labels("WriteFeatures", "batch")
        self.fallback_values = Counter(
            "featurewell_fallback_values",
            "Rows served from a fallback because Redis could not answer, by view, reason and "
            "source (cache: the last cached row; default: the feature defaults).",
            ["view", "reason", "source"],
            registry=self.registry,
        )
        self.shed_calls = Counter(
            "featurewell_shed_calls",
            "Calls refused with RESOURCE_EXHAUSTED because max_in_flight calls were running.",
            ["method"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "featurewell_reloads",
            "Feature repo reloads, by result (ok: swapped in; failed: previous one kept).",
            ["result"],
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(store))

    def record_read(self, result: FeatureResult, seconds: float) -> None:
        """A GetFeatures call's time, and the rows it served from fallbacks."""
        (self._single_read if result.rows == 1 else self._batch_read).observe(seconds)
        for fallback in result.fallbacks:
            reason = _REASONS[fallback.reason]
            if fallback.from_cache:
                self.fallback_values.labels(fallback.view, reason, "cache").inc(fallback.from_cache)
            if fallback.from_default:
                self.fallback_values.labels(fallback.view, reason, "default").inc(
                    fallback.from_default
                )

    def record_write(self, seconds: float) -> None:
        self._write.observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP on its own port; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)


class _StoreCollector(Collector):
    def __init__(self, store: OnlineStore) -> None:
        self._store = store

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        cache = self._store.cache
        if cache is not None:
            stats = cache.stats
            for name, value, text in (
                ("hits", stats.hits, "Rows answered from the hot-key cache."),
                ("misses", stats.misses, "Cache lookups that had to go to Redis."),
                ("admissions", stats.admissions, "Keys admitted once they proved hot."),
                ("evictions", stats.evictions, "Entries evicted to stay within the bounds."),
                ("invalidations", stats.invalidations, "Entries dropped because of a write."),
            ):
                yield CounterMetricFamily(f"featurewell_cache_{name}", text, value=value)
            yield GaugeMetricFamily("featurewell_cache_entries", "Rows cached.", value=len(cache))
            yield GaugeMetricFamily(
                "featurewell_cache_bytes", "Approximate cache size.", value=cache.bytes
            )
        tracker = self._store.tracker
        if tracker is not None:
            yield CounterMetricFamily(
                "featurewell_cache_invalidation_streams_lost",
                "Invalidation connections lost (the cache stopped trusting its entries).",
                value=tracker.lost,
            )
        open_now = GaugeMetricFamily(
            "featurewell_redis_circuit_open",
            "1 while a Redis node's circuit breaker is open or probing.",
            labels=["node"],
        )
        opened = CounterMetricFamily(
            "featurewell_redis_circuit_opened",
            "Times a Redis node's circuit breaker opened.",
            labels=["node"],
        )
        for (host, port), breaker in list(self._store.cluster.breakers.items()):
            node = f"{host}:{port}"
            open_now.add_metric([node], 0 if breaker.state is BreakerState.CLOSED else 1)
            opened.add_metric([node], breaker.opened)
        yield open_now
        yield opened
