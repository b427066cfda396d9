"""Drift of served values against the training baseline, as Prometheus gauges.

A sampled share of calls (`drift_sample_rate`) feeds each monitored feature's bounded
reservoir; every `drift_window_s` the reservoirs with enough values are compared with their
baselines and start over, so the gauges describe the last window's traffic:

- PSI, population stability index, over the baseline's bins: sum((a - e) * ln(a / e)).
  Under 0.1 is noise, 0.1-0.25 a moderate shift, above 0.25 a major one (the alert's level).
- mean shift in baseline standard deviations, and the std ratio (numeric features);
- default rate: the share of rows served the default because the store had no value, or a
  null (NaN).

Defaults are left out of the distribution (they are the default rate's business), so an outage
does not read as drift.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Gauge

from featurewell.engine.calls import FeatureResult
from featurewell.telemetry.baseline import Baseline
from featurewell.values import PRESENT, STALE

MIN_SAMPLES = 100  # fewer values in a window say nothing: the gauges keep their last value
_FLOOR = 1e-4  # an empty bin's share, so ln(a / e) stays finite


def psi(expected: npt.NDArray[np.float64], actual: npt.NDArray[np.float64]) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.maximum(expected, _FLOOR)
    a = np.maximum(actual, _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def shares_of(baseline: Baseline, values: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """The share of `values` in each of the baseline's bins."""
    if baseline.categorical:
        index = {category: i for i, category in enumerate(baseline.categories)}
        other = len(baseline.categories)
        bins = np.fromiter((index.get(str(v), other) for v in values), np.int64, len(values))
    else:
        bins = np.searchsorted(np.asarray(baseline.edges), values.astype(np.float64), "left")
    counts = np.bincount(bins, minlength=len(baseline.shares)).astype(np.float64)
    return counts / max(1, len(values))


@dataclass(frozen=True, slots=True)
class DriftReport:
    """One feature's comparison over one window."""

    view: str
    feature: str
    samples: int
    psi: float
    mean_shift: float  # in baseline standard deviations; NaN for categorical
    std_ratio: float  # served std / baseline std; NaN for categorical
    default_rate: float


class Reservoir:
    """A uniform sample of at most `size` values from a stream (Algorithm R, vectorised), and
    how many rows were served the default."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.seen = 0
        self.defaults = 0
        self._rng = rng
        self._values: list[Any] = []

    def add(self, values: npt.NDArray[Any]) -> None:
        room = self.size - len(self._values)
        if room > 0:
            self._values.extend(values[:room].tolist())
            self.seen += min(room, len(values))
            values = values[room:]
        if len(values) == 0:
            return
        # The n-th value seen replaces a random slot with probability size / n.
        positions = self.seen + 1 + np.arange(len(values))
        slots = (self._rng.random(len(values)) * positions).astype(np.int64)
        for slot, value in zip(
            slots[slots < self.size].tolist(), values[slots < self.size].tolist(), strict=True
        ):
            self._values[slot] = value
        self.seen += len(values)

    def values(self) -> npt.NDArray[Any]:
        return np.asarray(self._values)


class DriftMonitor:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        sample_rate: float,
        reservoir_size: int,
        seed: int | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self._size = reservoir_size
        self._rng = np.random.default_rng(seed)
        self._draw = random.Random(seed).random
        self._baselines: dict[tuple[str, str], Baseline] = {}
        self._reservoirs: dict[tuple[str, str], Reservoir] = {}
        self._by_view: dict[str, list[str]] = {}
        self.reports: dict[tuple[str, str], DriftReport] = {}
        labels = ["view", "feature"]
        self._psi = Gauge(
            "featurewell_feature_drift_psi",
            "Population stability index of served values against the training baseline "
            "(last window; > 0.25 is a major shift).",
            labels,
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._mean_shift = Gauge(
            "featurewell_feature_mean_shift",
            "Served mean minus baseline mean, in baseline standard deviations (last window).",
            labels,
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self._std_ratio = Gauge(
            "featurewell_feature_std_ratio",
            "Served standard deviation over the baseline's (last window).",
            labels,
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self._default_rate = Gauge(
            "featurewell_feature_default_rate",
            "Share of sampled rows served the default (no value in the store) or a null (NaN).",
            labels,
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._samples = Gauge(
            "featurewell_feature_drift_samples",
            "Served values the last drift comparison was computed from.",
            labels,
            registry=registry,
            multiprocess_mode="livesum",
        )

    def use(self, baselines: Mapping[tuple[str, str], Baseline]) -> None:
        """Monitor these features from now on (start-up, reload)."""
        self._baselines = dict(baselines)
        self._reservoirs = {
            key: self._reservoirs.get(key) or Reservoir(self._size, self._rng) for key in baselines
        }
        self._by_view = {}
        for view, feature in baselines:
            self._by_view.setdefault(view, []).append(feature)

    def observe(self, result: FeatureResult, calls: int = 1) -> None:
        """Sample a served call, or `calls` calls answered `result` alike, each drawn on its
        own (most calls return at the first lines)."""
        if calls == 1:
            if self._draw() < self.sample_rate:
                self._add(result)
            return
        if self.sample_rate <= 0:
            return
        for _ in range(calls):
            if self._draw() < self.sample_rate:
                self._add(result)

    def _add(self, result: FeatureResult) -> None:
        for served in result.served:
            features = self._by_view.get(served.view.ref)
            if not features:
                continue
            valued = (served.statuses == PRESENT) | (served.statuses == STALE)
            defaults = len(valued) - int(np.count_nonzero(valued))
            for feature in features:
                values = served.rows.values.get(feature)
                if values is None:  # the call did not ask for this feature
                    continue
                assert isinstance(values, np.ndarray)  # drift features are scalar columns
                reservoir = self._reservoirs[(served.view.ref, feature)]
                kept = values[valued] if defaults else values
                nulls = 0
                if kept.dtype.kind == "f":  # a stored NaN is a null: counted, not binned
                    finite = ~np.isnan(kept)
                    nulls = len(kept) - int(np.count_nonzero(finite))
                    if nulls:
                        kept = kept[finite]
                reservoir.defaults += defaults + nulls
                reservoir.add(kept)

    def evaluate(self) -> list[DriftReport]:
        """Compare every reservoir holding enough values with its baseline, update the gauges
        and start the reservoirs over; returns the new reports."""
        reports: list[DriftReport] = []
        for key, reservoir in self._reservoirs.items():
            if len(reservoir.values()) < MIN_SAMPLES:
                continue
            report = compare(self._baselines[key], reservoir)
            self.reports[key] = report
            reports.append(report)
            self._psi.labels(*key).set(report.psi)
            self._default_rate.labels(*key).set(report.default_rate)
            self._samples.labels(*key).set(report.samples)
            if not math.isnan(report.mean_shift):
                self._mean_shift.labels(*key).set(report.mean_shift)
                self._std_ratio.labels(*key).set(report.std_ratio)
            self._reservoirs[key] = Reservoir(self._size, self._rng)
        return reports


def compare(baseline: Baseline, reservoir: Reservoir) -> DriftReport:
    values = reservoir.values()
    total = reservoir.seen + reservoir.defaults
    default_rate = reservoir.defaults / total if total else 0.0
    mean_shift = std_ratio = math.nan
    if not baseline.categorical:
        numbers = values.astype(np.float64)
        if baseline.mean is not None and baseline.std:
            mean_shift = (float(numbers.mean()) - baseline.mean) / baseline.std
            std_ratio = float(numbers.std()) / baseline.std
    return DriftReport(
        baseline.view,
        baseline.feature,
        len(values),
        psi(np.asarray(baseline.shares), shares_of(baseline, values)),
        mean_shift,
        std_ratio,
        default_rate,
    )
