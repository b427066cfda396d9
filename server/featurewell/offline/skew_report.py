"""What `featurewell skew` shows: a table per feature with example rows, and, in continuous mode,
the Prometheus gauges of the latest run (`featurewell_skew_mismatch_ratio`,
`featurewell_skew_compared_rows`), labelled by view, version, feature and what was compared
against (offline: the point-in-time join; batch: the event log). Labels come from the repo's
definitions, so they are bounded."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from featurewell.offline.skew import FeatureSkew


def render(results: Sequence[FeatureSkew], threshold: float) -> str:
    if not results:
        return "no served records in the window: nothing to compare"
    lines = [
        f"{'feature':<44} {'against':<8} {'compared':>9} {'mismatched':>10} {'ratio':>8} "
        f"{'skipped':>8}"
    ]
    for r in results:
        mark = "  SKEW" if r.compared and r.ratio > threshold else ""
        lines.append(
            f"{r.table + ':' + r.feature:<44} {r.against:<8} {r.compared:>9,} {r.mismatched:>10,} "
            f"{r.ratio:>8.3%} {r.skipped:>8,}{mark}"
        )
        if r.status_mismatched:
            lines.append(f"    {r.status_mismatched:,} of them found on one side only")
        if r.note:
            lines.append(f"    {r.note}")
        for example in r.examples:
            lines.append(f"    e.g. {json.dumps(example, default=str)}")
    return "\n".join(lines)


def as_json(results: Sequence[FeatureSkew]) -> list[dict[str, object]]:
    return [
        {
            "table": r.table,
            "feature": r.feature,
            "against": r.against,
            "compared": r.compared,
            "mismatched": r.mismatched,
            "ratio": r.ratio,
            "status_mismatched": r.status_mismatched,
            "skipped": r.skipped,
            "examples": r.examples,
            "note": r.note,
        }
        for r in results
    ]


class SkewCollector(Collector):
    """The latest run's figures, swapped in whole after each run (a scrape never sees half)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: list[FeatureSkew] = []
        self._runs = 0
        self._last_run_s = 0.0

    def update(self, results: Sequence[FeatureSkew], finished_s: float) -> None:
        with self._lock:
            self._results = list(results)
            self._runs += 1
            self._last_run_s = finished_s

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            results, last = self._results, self._last_run_s
        labels = ["view", "version", "feature", "against"]
        ratio = GaugeMetricFamily(
            "featurewell_skew_mismatch_ratio",
            "Share of the served values compared in the latest window that differ from what "
            "training would hold (against=offline: the point-in-time join; batch: the event log).",
            labels=labels,
        )
        compared = GaugeMetricFamily(
            "featurewell_skew_compared_rows",
            "Served values compared in the latest window (degraded answers not counted).",
            labels=labels,
        )
        for r in results:
            if r.feature == "*":  # a logged table the repo does not define: no series
                continue
            view, _, version = r.table.partition("@v")
            names = [view, version, r.feature, r.against]
            ratio.add_metric(names, r.ratio)
            compared.add_metric(names, r.compared)
        yield ratio
        yield compared
        finished = GaugeMetricFamily(
            "featurewell_skew_last_run_timestamp_seconds",
            "When the latest skew comparison finished (0: none yet).",
        )
        finished.add_metric([], last)
        yield finished


def skew_registry(collector: SkewCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    return registry
