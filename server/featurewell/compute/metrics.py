"""Prometheus metrics of `featurewell stream`: throughput, lateness, duplicates, lag, rows.

Read at scrape time from the runner's own counters (plain integers), so the event loop never
touches a metric."""

from __future__ import annotations

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

from featurewell.compute.runner import StreamRunner
from featurewell.compute.stats import VISIBLE_BUCKETS_MS


class StreamCollector(Collector):
    def __init__(self, runner: StreamRunner) -> None:
        self.runner = runner

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


def stream_registry(runner: StreamRunner) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StreamCollector(runner))
    return registry
