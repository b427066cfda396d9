"""The Prometheus metrics a server exports, and how a finished call updates them.

Names follow Prometheus conventions (`featurewell_` prefix, base units, `_total` counters).
Labels are bounded: methods and gRPC codes are enums, views and features come from the
registry, nodes from the cluster; never entity keys or request data. In multi-process mode
(`--workers N`) gauges say how the workers' values combine (`multiprocess_mode`).
"""

from __future__ import annotations

import time

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from featurewell.definitions import Registry
from featurewell.engine.calls import FeatureResult, WriteResult
from featurewell.store.batch import FailureReason, NodeTiming
from featurewell.telemetry._histogram import PendingCount, PendingHistogram, Tally
from featurewell.values import DATA_LOSS, FALLBACK, FALLBACK_CACHE, NOT_FOUND, PRESENT, STALE

# Fine enough below 5 ms to judge a sub-millisecond SLO; budgets (5 ms, 15 ms) are bucket edges,
# so "p99 within budget" is read off the buckets exactly, without interpolation.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.0025,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
# A paced young pass takes ~0.5 ms, a full or unpaced one tens of milliseconds.
GC_PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
ROW_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
FEATURE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# Value ages from seconds (streamed) to a month (weekly batch jobs plus slack).
AGE_BUCKETS = (
    1,
    5,
    15,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    7200,
    21600,
    43200,
    86400,
    172800,
    604800,
    2592000,
)
STATUS_NAMES = {
    PRESENT: "present",
    NOT_FOUND: "not_found",
    STALE: "stale",
    FALLBACK: "fallback",
    FALLBACK_CACHE: "fallback_cache",
    DATA_LOSS: "data_loss",
}
# The wire's FallbackReason names, lower-cased.
REASON_NAMES = {
    FailureReason.TIMEOUT: "store_timeout",
    FailureReason.UNAVAILABLE: "store_unavailable",
    FailureReason.CIRCUIT_OPEN: "circuit_open",
}
# Known label values, created at 0 when a server starts or reloads (Prometheus' "avoid missing
# metrics"): a series that appears only once something happened makes `rate()` and the
# dashboard's panels empty until then, and an alert on it blind to the first occurrence.
METHODS = ("GetFeatures", "WriteFeatures", "ListFeatures")
SHED_METHODS = ("GetFeatures", "WriteFeatures")  # the calls max_in_flight counts
SHED_REASONS = ("max_in_flight", "adaptive_limit", "deadline")  # as serving/overload.py
GC_GENERATIONS = (0, 1, 2)
GC_TRIGGERS = ("paced", "automatic")  # as serving/gc_pacing.py
WRITE_OUTCOMES = ("written", "skipped_older")
FALLBACK_SOURCES = ("cache", "default")
RELOAD_RESULTS = ("ok", "failed")
# Why a near-cache stream ended with a reset (serving/invalidations.py): its subscriber fell
# behind, the definitions changed, the masters changed, the Redis feed lost a connection or saw
# a flush, the server is stopping.
NEAR_CACHE_RESETS = (
    "fell_behind",
    "reloaded",
    "masters_changed",
    "connection_lost",
    "flushed",
    "stopping",
)


class ServerMetrics:
    """Every metric of one server process, in its own registry (tests run several servers in
    one process)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "featurewell_requests",
            "Calls answered, by method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "featurewell_request_duration_seconds",
            "Time from the handler taking a call to its answer, for calls answered OK, by "
            "method and shape (single: one entity row; batch: more).",
            ["method", "shape"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_rows = Histogram(
            "featurewell_request_rows",
            "Entity rows per call.",
            ["method"],
            buckets=ROW_BUCKETS,
            registry=registry,
        )
        self.request_features = Histogram(
            "featurewell_request_features",
            "Feature columns answered per GetFeatures call.",
            buckets=FEATURE_BUCKETS,
            registry=registry,
        )
        self.store_seconds = Histogram(
            "featurewell_store_duration_seconds",
            "Time from sending a pipelined batch to a Redis node to its reply, by node.",
            ["node"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.served_rows = Counter(
            "featurewell_served_rows",
            "View rows served (one entity's values of one view), by view and status.",
            ["view", "status"],
            registry=registry,
        )
        self.value_age = Histogram(
            "featurewell_served_value_age_seconds",
            "Age of the values served (now minus their event time), by view; rows with a value "
            "only (not the defaults of missing rows).",
            ["view"],
            buckets=AGE_BUCKETS,
            registry=registry,
        )
        self.fallback_rows = Counter(
            "featurewell_fallback_rows",
            "Rows served from a fallback because Redis could not answer, by view, reason and "
            "source (cache: the last cached row; default: the feature defaults).",
            ["view", "reason", "source"],
            registry=registry,
        )
        self.corrupt_rows = Counter(
            "featurewell_corrupt_rows",
            "Stored rows that did not decode with their view's schema (bad size or lengths, "
            "invalid UTF-8, a key of another Redis type), served as DATA_LOSS with the "
            "defaults, by view. Any increase needs a look: re-write the rows.",
            ["view"],
            registry=registry,
        )
        self.written_rows = Counter(
            "featurewell_written_rows",
            "Rows written through WriteFeatures, by view and outcome (written, or skipped_older "
            "because Redis held a newer event).",
            ["view", "outcome"],
            registry=registry,
        )
        self.shed_calls = Counter(
            "featurewell_shed_calls",
            "Calls refused before any work, by reason: max_in_flight or adaptive_limit "
            "(RESOURCE_EXHAUSTED: the server is busy), deadline (DEADLINE_EXCEEDED: the call's "
            "remaining deadline cannot cover an answer). Calls gRPC refuses at "
            "max_concurrent_rpcs never reach Python and are not counted here.",
            ["method", "reason"],
            registry=registry,
        )
        self.gc_pause_seconds = Histogram(
            "featurewell_gc_pause_seconds",
            "Garbage-collector passes in the server process and how long each stopped it, by "
            "generation (0: young, 2: full) and trigger (paced: at a moment no call was in a "
            "handler; automatic: CPython's threshold, at any moment, so calls may wait on it). "
            "Automatic passes in steady serving say pacing does not keep up: "
            "docs/architecture.md.",
            ["generation", "trigger"],
            buckets=GC_PAUSE_BUCKETS,
            registry=registry,
        )
        self.reloads = Counter(
            "featurewell_reloads",
            "Feature repo reloads, by result (ok: swapped in; failed: previous one kept).",
            ["result"],
            registry=registry,
        )
        self.deprecated_reads = Counter(
            "featurewell_deprecated_reads",
            "GetFeatures calls that read a view version marked deprecated in its definition, "
            "by view (name@vN: only deprecated versions, so bounded by the repo). "
            "`featurewell impact VIEW@vN` says who the callers are.",
            ["view"],
            registry=registry,
        )
        self.near_cache_subscribers = Gauge(
            "featurewell_near_cache_subscribers",
            "Open SubscribeInvalidations streams: client near caches listening for writes.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.near_cache_resets = Counter(
            "featurewell_near_cache_resets",
            "Near-cache streams ended with a reset, by reason (each client drops every answer "
            "it holds and subscribes again). fell_behind: raise near_cache_buffer or find the "
            "slow client; connection_lost or masters_changed: Redis trouble or a failover.",
            ["reason"],
            registry=registry,
        )
        self.near_cache_invalidations = Counter(
            "featurewell_near_cache_invalidations",
            "Row invalidations sent to near-cache subscribers (one per row and subscriber).",
            registry=registry,
        )
        self.build_info = Gauge(
            "featurewell_build_info",
            "Always 1; the running version in a label.",
            ["version"],
            registry=registry,
            multiprocess_mode="max",
        )
        # A read's updates wait in `tally` for `flush` (telemetry/_histogram.py).
        self.tally = tally = Tally()
        self._single = tally.histogram(self.request_seconds.labels("GetFeatures", "single"))
        self._batch = tally.histogram(self.request_seconds.labels("GetFeatures", "batch"))
        self._read_rows = tally.histogram(self.request_rows.labels("GetFeatures"))
        self._read_features = tally.histogram(self.request_features)
        self._ok = self.requests.labels("GetFeatures", "OK")
        self._reads = 0  # answered since the last flush
        # Each view object's series (`view.ref` formats a string): id -> (view, series).
        self._by_view: dict[int, tuple[object, _ViewSeries]] = {}
        self._views: dict[str, _ViewSeries] = {}
        self._nodes: dict[tuple[str, int], PendingHistogram] = {}
        for method in METHODS:
            self.requests.labels(method, "OK")
        self.request_seconds.labels("WriteFeatures", "batch")
        self.request_rows.labels("WriteFeatures")
        for method in SHED_METHODS:
            for reason in SHED_REASONS:
                self.shed_calls.labels(method, reason)
        for generation in GC_GENERATIONS:
            for trigger in GC_TRIGGERS:
                self.gc_pause_seconds.labels(str(generation), trigger)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        for reason in NEAR_CACHE_RESETS:
            self.near_cache_resets.labels(reason)

    def use(self, registry: Registry) -> None:
        """Start every view's labelled series at 0: served rows by status, value ages, corrupt
        rows, fallback rows by reason and source, written rows by outcome. A reload adds the
        new views' (series of views gone stay: their counts are history)."""
        self._by_view.clear()
        for view in registry.views.values():
            ref = view.ref
            self._view(ref)
            for reason in REASON_NAMES.values():
                for source in FALLBACK_SOURCES:
                    self.fallback_rows.labels(ref, reason, source)
            for outcome in WRITE_OUTCOMES:
                self.written_rows.labels(ref, outcome)

    def record_read(self, result: FeatureResult, seconds: float) -> None:
        """An answered GetFeatures call: its time (`record_read_time`) and what it served
        (`record_served`). Pending until `flush` (the servicer's, FLUSH_EVERY_S after;
        fallbacks are counted at once)."""
        self._reads += 1
        (self._single if result.rows == 1 else self._batch).observe(seconds)
        self.record_served(result)

    def record_read_time(self, rows: int, seconds: float) -> None:
        """An answered GetFeatures call's time, alone: `record_served` follows for it later
        (telemetry/alike.py counts calls answered alike together)."""
        self._reads += 1
        (self._single if rows == 1 else self._batch).observe(seconds)

    def record_served(self, result: FeatureResult, calls: int = 1, at_us: int = 0) -> None:
        """What `calls` answers of `result` served: their shape, per-node store time, each
        view's statuses and value ages (at wall-clock `at_us`; 0: now) and the rows served
        from fallbacks."""
        self._read_rows.observe_times(result.rows, calls)
        self._read_features.observe_times(len(result.columns), calls)
        for timing in result.timings.nodes:
            if timing.answered_ns:  # batches with no answer are counted as fallbacks instead
                seconds = (timing.answered_ns - timing.sent_ns) / 1e9
                self._node(timing).observe_times(seconds, calls)
        now_us = at_us or time.time_ns() // 1000
        by_view = self._by_view
        for served in result.served:
            view = served.view
            known = by_view.get(id(view))
            if known is not None and known[0] is view:
                series = known[1]
            else:
                series = self._view(view.ref)
                by_view[id(view)] = (view, series)
            statuses = served.statuses
            if len(statuses) == 1:
                status = int(statuses[0])
                series.rows[status].inc(calls)
                if status == DATA_LOSS:
                    series.corrupt.inc(calls)
                if status in (PRESENT, STALE):
                    age = (now_us - int(served.rows.event_time_us[0])) / 1e6
                    series.age.observe_times(age, calls)
                continue
            counts = np.bincount(statuses, minlength=len(series.rows)).tolist()
            for status, count in enumerate(counts):
                if count:
                    series.rows[status].inc(count * calls)
            if counts[DATA_LOSS]:
                series.corrupt.inc(counts[DATA_LOSS] * calls)
            with_value = counts[PRESENT] + counts[STALE]
            if with_value == len(statuses):  # the usual case: no mask to build
                ages = (now_us - served.rows.event_time_us) / 1e6
            elif with_value:
                valued = (statuses == PRESENT) | (statuses == STALE)
                ages = (now_us - served.rows.event_time_us[valued]) / 1e6
            else:
                continue
            series.age.observe_many(ages, calls)
        for fallback in result.fallbacks:
            reason = REASON_NAMES[fallback.reason]
            served_by = fallback.from_cache, fallback.from_default  # as FALLBACK_SOURCES
            for source, rows in zip(FALLBACK_SOURCES, served_by, strict=True):
                if rows:
                    self.fallback_rows.labels(fallback.view, reason, source).inc(rows * calls)

    def flush(self) -> None:
        """Add the reads recorded since the last flush to the exported metrics; their count
        last, so a scrape that sees a call counted sees all it recorded."""
        self.tally.flush()
        if self._reads:
            self._ok.inc(self._reads)
            self._reads = 0

    def record_write(self, result: WriteResult, seconds: float) -> None:
        self.requests.labels("WriteFeatures", "OK").inc()
        self.request_seconds.labels("WriteFeatures", "batch").observe(seconds)
        self.request_rows.labels("WriteFeatures").observe(result.written + result.skipped_older)
        self.written_rows.labels(result.view, "written").inc(result.written)
        self.written_rows.labels(result.view, "skipped_older").inc(result.skipped_older)

    def record_call(self, method: str, code: str) -> None:
        """A call answered with anything but a recorded success (errors, ListFeatures)."""
        self.requests.labels(method, code).inc()

    def _view(self, ref: str) -> _ViewSeries:
        series = self._views.get(ref)
        if series is None:
            series = self._views[ref] = _ViewSeries(self, ref)
        return series

    def _node(self, timing: NodeTiming) -> PendingHistogram:
        child = self._nodes.get(timing.node)
        if child is None:
            host, port = timing.node
            node = self.store_seconds.labels(f"{host}:{port}")
            child = self._nodes[timing.node] = self.tally.histogram(node)
        return child


class _ViewSeries:
    """One view's pre-bound children, pending in the metrics' tally: `rows[status]` (index =
    status number), `age` and `corrupt`."""

    def __init__(self, metrics: ServerMetrics, ref: str) -> None:
        tally = metrics.tally
        placeholder = tally.counter(metrics.served_rows.labels(ref, "present"))
        self.rows: list[PendingCount] = [placeholder] * (max(STATUS_NAMES) + 1)
        for status, name in STATUS_NAMES.items():
            self.rows[status] = tally.counter(metrics.served_rows.labels(ref, name))
        self.age = tally.histogram(metrics.value_age.labels(ref))
        self.corrupt = tally.counter(metrics.corrupt_rows.labels(ref))
