"""Prometheus metrics of `featurewell stream`: throughput, lateness, duplicates, lag, rows.

Read at scrape time from the runner's own counters (plain integers), so the event loop never
touches a metric. The one figure the runner does not hold, the entries not yet read (Redis
Streams only), is asked of Redis on the runner's loop at each scrape (see `_unread`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from featurewell.compute.redis_streams import RedisStreamSource
from featurewell.compute.runner import StreamRunner
from featurewell.compute.stats import VISIBLE_BUCKETS_MS
from featurewell.store import streams
from featurewell.store.keys import stream_keys

_UNREAD_WAIT_S = 1.0  # a scrape waits this long for Redis's answer, then reports the last one


class StreamCollector(Collector):
    def __init__(self, runner: StreamRunner) -> None:
        """Made on the runner's event loop (as `featurewell stream` does), it can ask Redis for
        the unread entries; made elsewhere, that family is declared without samples."""
        self.runner = runner
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._unread_now: dict[int, int] = {}
        self._asking: concurrent.futures.Future[dict[int, int]] | None = None

    def collect(
        self,
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        runner = self.runner
        source = runner.source.name
        counters = runner.engine.counters
        events = CounterMetricFamily(
            "featurewell_stream_events",
            "Events read, by what became of them (applied; duplicate; late: past the allowed "
            "lateness; replayed: already in the checkpointed state).",
            labels=["source", "outcome"],
        )
        for outcome in ("applied", "duplicates", "late", "replayed"):
            events.add_metric([source, outcome.rstrip("s")], getattr(counters, outcome))
        yield events
        dead = CounterMetricFamily(
            "featurewell_stream_dead_letters",
            "Events refused and sent to the dead letters (not applied; the stream went on), by "
            "reason class: undecodable, missing_field, wrong_type, not_finite, entity_key, "
            "event_id, event_time, view_rejected.",
            labels=["source", "reason"],
        )
        for reason, count in runner.stats.dead_letters.items():
            dead.add_metric([source, reason], count)
        yield dead
        rows = CounterMetricFamily(
            "featurewell_stream_rows_written",
            "Feature rows written to the online store.",
            labels=["source"],
        )
        rows.add_metric([source], runner.stats.rows_written)
        yield rows
        refused = CounterMetricFamily(
            "featurewell_stream_rows_refused",
            "Computed rows the write validation refused (not written; the entity keeps its "
            "last good value): an aggregation out of its feature's range.",
            labels=["source"],
        )
        refused.add_metric([source], runner.stats.rows_refused)
        yield refused
        checkpoints = CounterMetricFamily(
            "featurewell_stream_checkpoints", "State checkpoints written.", labels=["source"]
        )
        checkpoints.add_metric([source], runner.stats.checkpoints)
        yield checkpoints
        behind = GaugeMetricFamily(
            "featurewell_stream_watermark_lag_seconds",
            "Now minus the partition's watermark (the newest event time read).",
            labels=["source", "partition"],
        )
        now = time.time()
        for partition, watermark in runner.engine.watermarks.items():
            behind.add_metric([source, str(partition)], max(0.0, now - watermark / 1e6))
        yield behind
        visible = HistogramMetricFamily(
            "featurewell_stream_visible_seconds",
            "From an event appended (its Redis Stream entry) to its entity's row written.",
            labels=["source"],
        )
        stats = runner.stats
        cumulative = np.cumsum(stats.visible_counts).tolist()
        # Prometheus spells bounds like Go floats ("10.0"); the helper is untyped.
        bounds = [floatToGoString(b / 1000) for b in VISIBLE_BUCKETS_MS]  # type: ignore[no-untyped-call]
        bounds.append("+Inf")
        visible.add_metric(
            [source], list(zip(bounds, cumulative, strict=True)), stats.visible_sum_ms / 1000
        )
        yield visible
        entities = GaugeMetricFamily(
            "featurewell_stream_entities", "Entities held in memory, by view.", labels=["view"]
        )
        for ref, state in runner.engine.views.items():
            entities.add_metric([ref], len(state.entities))
        yield entities
        sla = GaugeMetricFamily(
            "featurewell_stream_freshness_sla_seconds",
            "The tightest freshness SLA (freshness_sla, else max_age) of the views computed from "
            "the source: how far behind its watermark may fall (absent: no view has one).",
            labels=["source"],
        )
        slas = [p.view.sla for p in runner.programs.values() if p.view.sla is not None]
        if slas:
            sla.add_metric([source], min(slas).total_seconds())
        yield sla
        unread = GaugeMetricFamily(
            "featurewell_stream_unread_entries",
            "Entries of the partition's Redis Stream not yet delivered to the consumer group "
            "(XINFO GROUPS lag): the backlog (Redis Streams sources only).",
            labels=["source", "partition"],
        )
        for partition, count in sorted(self._unread().items()):
            unread.add_metric([source, str(partition)], count)
        yield unread

    def _unread(self) -> dict[int, int]:
        """Asked of Redis on the runner's loop (its connections live there), the scrape thread
        waiting up to `_UNREAD_WAIT_S`; a slow or failed answer leaves the previous one."""
        events = self.runner.events
        loop = self._loop
        if loop is None or loop.is_closed() or not isinstance(events, RedisStreamSource):
            return self._unread_now
        if self._asking is None or self._asking.done():
            self._asking = asyncio.run_coroutine_threadsafe(_unread_entries(events), loop)
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if not on_loop:  # waiting on the loop's own thread would only stall it
            concurrent.futures.wait([self._asking], timeout=_UNREAD_WAIT_S)
        asked = self._asking
        if asked.done() and not asked.cancelled() and asked.exception() is None:
            self._unread_now = asked.result()
        return self._unread_now


async def _unread_entries(events: RedisStreamSource) -> dict[int, int]:
    keys = stream_keys(events.source)
    return {
        p: await streams.lag(events.cluster, keys[p], events.group, events.timeout)
        for p in events.partitions
    }


def stream_registry(runner: StreamRunner) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StreamCollector(runner))
    return registry
