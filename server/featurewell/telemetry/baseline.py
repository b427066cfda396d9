"""Drift baselines: what each feature's values looked like in training.

A baseline is a binned distribution (numeric: shares between quantile edges; string: shares of
the top categories plus "other") with its mean, std and default rate. It comes either from the
expected statistics in the definitions (`Stats`: a normal distribution of that mean and std) or,
better, from a training data set with one command (`featurewell baseline`), saved as JSON and
given to the server with `--drift-baseline`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.definitions import Feature, FeatureView, Kind, Registry
from featurewell.errors import DefinitionError

BINS = 10  # numeric baselines: deciles
TOP_CATEGORIES = 20  # string baselines: the most common categories, the rest is "other"
NUMERIC_KINDS = (Kind.INT64, Kind.FLOAT32, Kind.FLOAT64, Kind.BOOL)


@dataclass(frozen=True, slots=True)
class Baseline:
    """One feature's training distribution. Numeric: `edges` are the k-1 inner bin edges and
    `shares` the k bins' shares (bin i holds edges[i-1] < x <= edges[i]). Categorical:
    `shares[i]` is the share of `categories[i]`, and the last share is every other value's."""

    view: str
    feature: str
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    shares: tuple[float, ...] = ()
    mean: float | None = None
    std: float | None = None
    default_rate: float | None = None
    rows: int = 0
    origin: str = ""

    @property
    def categorical(self) -> bool:
        return bool(self.categories)


def drift_features(view: FeatureView) -> list[Feature]:
    """The features drift is computed for: scalars and strings (not embeddings or lists)."""
    return [f for f in view.features if f.dtype.kind in (*NUMERIC_KINDS, Kind.STRING)]


def from_values(
    view: str, feature: str, values: Any, *, default_rate: float | None = None, origin: str = ""
) -> Baseline:
    """A baseline from training values (numeric array, or strings)."""
    array = np.asarray(values)
    if array.dtype.kind in "OUS":
        tally = Counter(str(v) for v in array.tolist())
        total = sum(tally.values())
        if total == 0:
            raise DefinitionError(f"baseline of {view}:{feature}: no values")
        top = tally.most_common(TOP_CATEGORIES)
        shares = [n / total for _, n in top]
        return Baseline(
            view,
            feature,
            categories=tuple(c for c, _ in top),
            shares=(*shares, max(0.0, 1.0 - sum(shares))),
            default_rate=default_rate,
            rows=total,
            origin=origin,
        )
    numbers = array.astype(np.float64)
    numbers = numbers[np.isfinite(numbers)]
    if len(numbers) == 0:
        raise DefinitionError(f"baseline of {view}:{feature}: no finite values")
    edges = np.unique(np.quantile(numbers, np.linspace(0, 1, BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, numbers, side="left"), minlength=len(edges) + 1)
    return Baseline(
        view,
        feature,
        edges=tuple(edges.tolist()),
        shares=tuple((counts / len(numbers)).tolist()),
        mean=float(numbers.mean()),
        std=float(numbers.std()),
        default_rate=default_rate,
        rows=len(numbers),
        origin=origin,
    )


def from_stats(view: FeatureView, feature: Feature) -> Baseline | None:
    """A baseline from a feature's `Stats`, or None when they cannot make one."""
    stats = feature.expected
    if stats is None:
        return None
    origin = "definitions"
    if stats.categories:
        categories = tuple(stats.categories)
        shares = tuple(stats.categories.values())
        return Baseline(
            view.ref,
            feature.name,
            categories=categories,
            shares=(*shares, max(0.0, 1.0 - sum(shares))),
            default_rate=stats.default_rate,
            origin=origin,
        )
    if stats.mean is None or stats.std is None or stats.std == 0:
        return None
    low = -math.inf if stats.min is None else stats.min
    high = math.inf if stats.max is None else stats.max
    # Deciles of the normal distribution, cut to [min, max].
    cdf_low, cdf_high = (
        _normal_cdf(low, stats.mean, stats.std),
        _normal_cdf(high, stats.mean, stats.std),
    )
    targets = [cdf_low + (cdf_high - cdf_low) * q / BINS for q in range(1, BINS)]
    edges = tuple(_normal_quantile(p, stats.mean, stats.std) for p in targets)
    return Baseline(
        view.ref,
        feature.name,
        edges=edges,
        shares=(1 / BINS,) * BINS,
        mean=stats.mean,
        std=stats.std,
        default_rate=stats.default_rate,
        origin=origin,
    )


def for_registry(
    registry: Registry, computed: Mapping[tuple[str, str], Baseline] | None = None
) -> dict[tuple[str, str], Baseline]:
    """The baseline of every drift-monitored feature: `computed` (from a training set) where it
    has one, else the definitions' Stats. Keyed by (view ref, feature)."""
    out: dict[tuple[str, str], Baseline] = {}
    for view in registry.views.values():
        for feature in drift_features(view):
            key = (view.ref, feature.name)
            baseline = (computed or {}).get(key) or from_stats(view, feature)
            if baseline is not None:
                out[key] = baseline
    return out


def compute(
    registry: Registry, tables: Mapping[str, Any], exclude: Iterable[str] = ()
) -> list[Baseline]:
    """Baselines from training tables: `tables[view ref]` is a pyarrow table holding the view's
    feature columns. `exclude` names features ("view:feature") not to monitor, such as
    timestamps, which drift by nature. A null in training is what serving answers with the
    default, so the null share is the expected default rate."""
    skipped = set(exclude)
    out: list[Baseline] = []
    for ref, table in tables.items():
        view = registry.view(*_split_ref(ref))
        for feature in drift_features(view):
            if feature.name not in table.column_names or _excluded(view, feature, skipped):
                continue
            column = table.column(feature.name)
            rate = column.null_count / len(column) if len(column) else None
            column = column.drop_null()
            if feature.dtype.kind is Kind.STRING:
                values: npt.NDArray[Any] = np.asarray(column.to_pylist(), dtype=object)
            else:
                values = _numbers(column)
            out.append(
                from_values(
                    view.ref, feature.name, values, default_rate=rate, origin="training data"
                )
            )
    return out


def save(baselines: Iterable[Baseline], path: str | Path) -> None:
    rows = [asdict(b) for b in baselines]
    Path(path).write_text(json.dumps({"version": 1, "features": rows}, indent=1))


def load(path: str | Path) -> dict[tuple[str, str], Baseline]:
    """Baselines saved by `save`; a clear error for a file that is not one."""
    try:
        data = json.loads(Path(path).read_text())
        rows = data["features"]
        baselines = [
            Baseline(**{**row, **{k: tuple(row[k]) for k in ("edges", "categories", "shares")}})
            for row in rows
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DefinitionError(f"cannot read the drift baseline {path}: {exc}") from None
    return {(b.view, b.feature): b for b in baselines}


def _excluded(view: FeatureView, feature: Feature, skipped: set[str]) -> bool:
    return bool({f"{view.name}:{feature.name}", f"{view.ref}:{feature.name}"} & skipped)


def _numbers(column: Any) -> npt.NDArray[np.float64]:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _split_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition("@v")
    return name, int(version) if version else None


def _normal_cdf(x: float, mean: float, std: float) -> float:
    if math.isinf(x):
        return 0.0 if x < 0 else 1.0
    return 0.5 * (1 + math.erf((x - mean) / (std * math.sqrt(2))))


def _normal_quantile(p: float, mean: float, std: float) -> float:
    """Inverse of `_normal_cdf` by bisection (no scipy; 60 halvings are exact to a double)."""
    low, high = mean - 40 * std, mean + 40 * std
    for _ in range(60):
        middle = (low + high) / 2
        if _normal_cdf(middle, mean, std) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2
