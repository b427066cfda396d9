"""The drift report behind `featurewell drift`: from a running server's /metrics, or offline
from a Parquet file of values (a new training set, a day of logged features) against the
baselines. And `featurewell baseline`, which computes baselines from training data."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from prometheus_client.parser import text_string_to_metric_families

from featurewell.definitions import Registry
from featurewell.errors import DefinitionError
from featurewell.telemetry import baseline as baselines
from featurewell.telemetry.baseline import Baseline
from featurewell.telemetry.drift import DriftReport, Reservoir, compare

MODERATE, MAJOR = 0.1, 0.25  # PSI levels (the alert fires above MAJOR)
_GAUGES = {
    "featurewell_feature_drift_psi": "psi",
    "featurewell_feature_mean_shift": "mean_shift",
    "featurewell_feature_std_ratio": "std_ratio",
    "featurewell_feature_default_rate": "default_rate",
    "featurewell_feature_drift_samples": "samples",
}


def from_metrics(url: str, timeout: float = 5.0) -> list[DriftReport]:
    """The drift gauges a server exports at `url` (its /metrics)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    values: dict[tuple[str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        field = _GAUGES.get(family.name)
        if field is None:
            continue
        for sample in family.samples:
            key = (sample.labels["view"], sample.labels["feature"])
            values.setdefault(key, {})[field] = sample.value
    return [
        DriftReport(
            view,
            feature,
            int(got.get("samples", 0)),
            got.get("psi", math.nan),
            got.get("mean_shift", math.nan),
            got.get("std_ratio", math.nan),
            got.get("default_rate", math.nan),
        )
        for (view, feature), got in sorted(values.items())
    ]


def from_data(
    registry: Registry, known: Mapping[tuple[str, str], Baseline], tables: Mapping[str, str]
) -> list[DriftReport]:
    """Compare Parquet files of values (`tables[view name or ref] = path`, columns named like
    the features) with the baselines."""
    reports = []
    for name, path in tables.items():
        ref = registry.view(*_split(name)).ref
        table = pq.read_table(path)
        for (view, feature), base in known.items():
            if view != ref or feature not in table.column_names:
                continue
            column = table.column(feature)
            values = np.asarray(column.to_pylist() if base.categorical else column.to_numpy())
            reservoir = Reservoir(max(1, len(values)), np.random.default_rng(0))
            reservoir.add(values)
            reports.append(compare(base, reservoir))
    return reports


def render(reports: list[DriftReport]) -> str:
    """A fixed-width table, worst PSI first, with a verdict per feature."""
    header = (
        f"{'feature':<44} {'samples':>8} {'psi':>7} {'shift sd':>8} {'std x':>6} "
        f"{'default':>8}  verdict"
    )
    lines = [header, "-" * len(header)]
    for r in sorted(reports, key=lambda r: -r.psi if not math.isnan(r.psi) else 0):
        verdict = "major drift" if r.psi > MAJOR else "moderate" if r.psi > MODERATE else "ok"
        lines.append(
            f"{r.view + ':' + r.feature:<44} {r.samples:>8} {r.psi:>7.3f} "
            f"{_num(r.mean_shift):>8} {_num(r.std_ratio):>6} {r.default_rate:>8.1%}  {verdict}"
        )
    if not reports:
        lines.append("(no drift measurements yet: features need baselines and served traffic)")
    return "\n".join(lines)


def compute_baselines(
    registry: Registry,
    data: Mapping[str, str] | None,
    out: str | Path,
    exclude: Iterable[str] = (),
) -> list[Baseline]:
    """Baselines from training data (`data[view ref or name] = parquet path`; by default each
    view's own ParquetSource), saved to `out` as JSON for `--drift-baseline`."""
    tables = {}
    if data:
        for name, given in data.items():
            view = registry.view(*_split(name))
            tables[view.ref] = pq.read_table(given)
    else:
        for view in registry.views.values():
            if view.source is None:
                continue
            path = Path(view.source.path)
            if not path.is_absolute() and registry.root is not None:
                path = registry.root / path
            if path.exists():
                tables[view.ref] = pq.read_table(path)
    if not tables:
        raise DefinitionError("no training data: pass --data view=file.parquet")
    computed = baselines.compute(registry, tables, exclude)
    baselines.save(computed, out)
    return computed


def describe(found: list[Baseline]) -> str:
    lines = []
    for b in found:
        if b.categorical:
            shape = f"{len(b.categories)} categories"
        else:
            shape = f"mean {b.mean:.4g}, std {b.std:.4g}, {len(b.shares)} bins"
        rate = f", default rate {b.default_rate:.1%}" if b.default_rate is not None else ""
        lines.append(f"{b.view}:{b.feature}: {b.rows:,} values, {shape}{rate}")
    return "\n".join(lines)


def _num(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _split(name: str) -> tuple[str, int | None]:
    view, _, version = name.partition("@v")
    return view, int(version) if version else None
