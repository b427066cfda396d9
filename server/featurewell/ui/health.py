"""Live health for the UI, from the servers' /metrics (the names docs/observability.md lists):
freshness against each view's SLA, the statuses served, drift PSI per feature against its
baseline, and latency p50/p99 per method.

A `Scraper` reads every URL every `interval_s` and keeps the last `kept` snapshots, summed
over the servers (several replicas answer for one repo). Latency quantiles come from the
histogram buckets' growth between consecutive snapshots, so each chart point describes the
calls of that interval, as `histogram_quantile(rate(...))` would; the table's come from the
growth over the whole history kept.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("featurewell.ui")

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]
# May the principal see this view (ref) and, if given, this feature of it? None: everything.
Visible = Callable[[str, str | None], bool]

LATENCY = "featurewell_request_duration_seconds_bucket"
SERVED = "featurewell_served_rows_total"
NEWEST = "featurewell_view_newest_event_timestamp_seconds"
LAST_WRITE = "featurewell_view_last_write_timestamp_seconds"
SLA = "featurewell_view_freshness_sla_seconds"
PSI = "featurewell_feature_drift_psi"
DRIFT_SAMPLES = "featurewell_feature_drift_samples"
STATUS_ORDER = ("present", "stale", "not_found", "fallback", "fallback_cache", "data_loss")


@dataclass(frozen=True)
class Snapshot:
    at: float  # unix seconds
    samples: Samples
    errors: tuple[str, ...]  # URLs that did not answer


def parse(text: str) -> Samples:
    """Every sample of one exposition, keyed by (name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            out[key] = sample.value
    return out


def merge(parts: Iterable[Samples]) -> Samples:
    """Several servers' samples summed (counters and buckets add; for the gauges shown, the
    freshness timestamps and drift values, the newest/largest is kept instead)."""
    out: Samples = {}
    for part in parts:
        for key, value in part.items():
            if key[0] in (NEWEST, LAST_WRITE, SLA, PSI, DRIFT_SAMPLES):
                out[key] = max(out.get(key, value), value)
            else:
                out[key] = out.get(key, 0.0) + value
    return out


class Scraper:
    def __init__(self, urls: list[str], interval_s: float = 5.0, kept: int = 120) -> None:
        self.urls = urls
        self.interval_s = interval_s
        self.history: deque[Snapshot] = deque(maxlen=kept)

    async def run(self) -> None:
        """Scrape until cancelled; a URL that fails is named in the snapshot, never raised."""
        while True:
            await self.scrape()
            await asyncio.sleep(self.interval_s)

    async def scrape(self) -> Snapshot:
        results = await asyncio.gather(*(asyncio.to_thread(_fetch, url) for url in self.urls))
        errors = tuple(
            f"{url}: {r}" for url, r in zip(self.urls, results, strict=True) if isinstance(r, str)
        )
        snapshot = Snapshot(time.time(), merge(r for r in results if isinstance(r, dict)), errors)
        self.history.append(snapshot)
        return snapshot


def _fetch(url: str) -> Samples | str:
    try:
        with urllib.request.urlopen(url, timeout=3.0) as answer:
            return parse(answer.read().decode())
    except (OSError, ValueError) as exc:
        return str(exc)


def report(history: list[Snapshot], visible: Visible | None) -> dict[str, Any]:
    """What the health panel shows, as plain data (the charts take it as JSON)."""
    if not history:
        return {
            "scraped": None,
            "errors": [],
            "freshness": [],
            "served": {},
            "drift": [],
            "latency": {},
            "latency_series": {},
        }
    last = history[-1]
    seen = visible or (lambda view, feature: True)
    return {
        "scraped": last.at,
        "errors": list(last.errors),
        "freshness": freshness(last, seen),
        "served": served(last, seen),
        "drift": drift(last, seen),
        "latency": {
            method: quantiles(buckets)
            for method, buckets in _growth(last, last).items()  # since the servers started
        },
        "latency_series": latency_series(history),
    }


def freshness(snapshot: Snapshot, seen: Visible) -> list[dict[str, Any]]:
    rows = []
    views = {_label(k, "view") for k in snapshot.samples if k[0] in (NEWEST, SLA)}
    for view in sorted(v for v in views if v and seen(v, None)):
        newest = snapshot.samples.get((NEWEST, (("view", view),)))
        sla = snapshot.samples.get((SLA, (("view", view),)))
        age = snapshot.at - newest if newest else None
        rows.append(
            {
                "view": view,
                "age_s": age,
                "sla_s": sla,
                "ok": None if age is None or sla is None else age <= sla,
            }
        )
    return rows


def served(snapshot: Snapshot, seen: Visible) -> dict[str, dict[str, float]]:
    """Rows served per view and status since the servers started."""
    out: dict[str, dict[str, float]] = {}
    for (name, labels), value in snapshot.samples.items():
        if name != SERVED:
            continue
        found = dict(labels)
        if seen(found["view"], None):
            out.setdefault(found["view"], {})[found["status"]] = value
    return dict(sorted(out.items()))


def drift(snapshot: Snapshot, seen: Visible) -> list[dict[str, Any]]:
    rows = []
    for (name, labels), value in snapshot.samples.items():
        if name != PSI:
            continue
        found = dict(labels)
        if seen(found["view"], found["feature"]):
            samples = snapshot.samples.get((DRIFT_SAMPLES, labels), 0.0)
            rows.append({**found, "psi": value, "samples": samples})
    return sorted(rows, key=lambda r: (r["view"], r["feature"]))


def latency_series(history: list[Snapshot]) -> dict[str, list[dict[str, Any]]]:
    """Per method, one point per scrape interval with calls: its time, p50 and p99 (ms)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for before, after in itertools.pairwise(history):
        for method, buckets in _growth(before, after).items():
            q = quantiles(buckets)
            if q["calls"]:
                out.setdefault(method, []).append({"at": after.at, **q})
    return out


def quantiles(buckets: list[tuple[float, float]]) -> dict[str, float]:
    """p50 and p99 in milliseconds from cumulative (upper bound, count) buckets, interpolated
    linearly inside the bucket as Prometheus' histogram_quantile does."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return {"calls": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
    return {
        "calls": total,
        "p50_ms": _quantile(0.5, buckets) * 1000,
        "p99_ms": _quantile(0.99, buckets) * 1000,
    }


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # beyond the last finite bucket: its edge, as Prometheus
            inside = count - lower_count
            share = (rank - lower_count) / inside if inside else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _growth(before: Snapshot, after: Snapshot) -> dict[str, list[tuple[float, float]]]:
    """Per method, the latency buckets' growth from `before` to `after` (shapes summed)."""
    grown: dict[str, dict[float, float]] = {}
    for key, value in after.samples.items():
        if key[0] != LATENCY:
            continue
        labels = dict(key[1])
        bound = float(labels["le"])
        delta = value - before.samples.get(key, 0.0) if before is not after else value
        per = grown.setdefault(labels["method"], {})
        per[bound] = per.get(bound, 0.0) + max(0.0, delta)
    return {method: sorted(b.items()) for method, b in sorted(grown.items())}


def _label(key: tuple[str, Labels], name: str) -> str:
    return dict(key[1]).get(name, "")
