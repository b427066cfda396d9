"""`featurewell validate`: before promoting a new version, compare what it would serve with what
the current one serves, for the same entities, through the serving path itself.

Entities are sampled from the new version's keys in the online store (SCAN on every master),
or given. For each feature both versions have:
- numbers: PSI of the new values over the old values' deciles, the mean shift in old standard
  deviations, the std ratio, and the share of entities whose value is unchanged;
- strings: PSI over the old categories, and the share unchanged;
- embeddings of one dimension: the mean cosine similarity per entity (other dimensions: not
  comparable, said so).
Features only one version has are listed. So is each version's share of entities with a row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.definitions import Feature, FeatureView, Kind
from featurewell.engine.calls import Budget, FeatureRequest, InputColumn
from featurewell.engine.engine import FeatureEngine
from featurewell.errors import InvalidRequest
from featurewell.store.keys import entity_of_tag
from featurewell.store.sampling import sample_tags
from featurewell.telemetry.baseline import from_values
from featurewell.telemetry.drift import psi, shares_of
from featurewell.values import PRESENT, STALE


@dataclass(frozen=True)
class FeatureComparison:
    feature: str
    compared: int
    psi: float = math.nan
    mean_shift: float = math.nan
    std_ratio: float = math.nan
    unchanged: float = math.nan  # share of entities with the same value in both
    cosine: float = math.nan  # embeddings: mean cosine similarity
    note: str = ""


@dataclass(frozen=True)
class Validation:
    old: str
    new: str
    entities: int
    present_old: float
    present_new: float
    features: list[FeatureComparison]

    def worst_psi(self) -> float:
        values = [f.psi for f in self.features if not math.isnan(f.psi)]
        return max(values, default=0.0)


async def sample_entities(
    engine: FeatureEngine, view: FeatureView, count: int
) -> list[tuple[Any, ...]]:
    """Up to `count` entity keys that have a row of `view`, from every master."""
    cluster = engine.store.cluster
    integer = [t.kind is Kind.INT64 for t in view.entity.join_keys.values()]
    per_node = max(1, count // max(1, len(cluster.slot_map.nodes)) + 1)
    tags = await sample_tags(cluster, view, per_node)
    return [entity_of_tag(tag, integer) for tag in tags[:count]]


async def validate(
    engine: FeatureEngine,
    old: FeatureView,
    new: FeatureView,
    entities: list[tuple[Any, ...]],
    progress: Callable[[int, int], None] | None = None,
) -> Validation:
    """Compare `old` and `new` on `entities`; `progress(rows_read, rows_to_read)` after each
    version's read (two reads of every entity)."""
    if old.name != new.name or old.version == new.version:
        raise InvalidRequest("validate compares two versions of one view")
    if not entities:
        raise InvalidRequest(
            f"no entities to compare: {new.ref} has no rows yet; backfill it first"
        )
    names = list(old.entity.key_names)
    columns = {
        name: InputColumn(old.entity.join_keys[name].kind, [e[i] for e in entities])
        for i, name in enumerate(names)
    }
    served = {}
    for view in (old, new):
        refs = [f"{view.name}@v{view.version}:{f.name}" for f in view.features]
        result = await engine.get_features(FeatureRequest(tuple(refs), columns, {}), Budget(5.0))
        served[view.version] = {c.name.split(":", 1)[1]: c for c in result.columns}
        if progress is not None:
            progress(len(served) * len(entities), 2 * len(entities))
    present = {}
    for view in (old, new):
        first = next(iter(served[view.version].values()))
        present[view.version] = _present(first.statuses, len(entities))
    both = present[old.version] & present[new.version]
    comparisons = []
    for feature in old.features:
        if feature.name not in new.feature_index:
            comparisons.append(FeatureComparison(feature.name, 0, note=f"only in {old.ref}"))
            continue
        after = new.features[new.feature_index[feature.name]]
        if feature.dtype.is_list or after.dtype.is_list:
            comparisons.append(FeatureComparison(feature.name, 0, note="lists: not compared"))
            continue
        before_values = _rows(served[old.version][feature.name].values, len(entities))[both]
        after_values = _rows(served[new.version][feature.name].values, len(entities))[both]
        comparisons.append(_compare(feature, after, before_values, after_values))
    comparisons += [
        FeatureComparison(f.name, 0, note=f"only in {new.ref}")
        for f in new.features
        if f.name not in old.feature_index
    ]
    return Validation(
        old.ref,
        new.ref,
        len(entities),
        float(present[old.version].mean()),
        float(present[new.version].mean()),
        comparisons,
    )


def render(report: Validation) -> str:
    lines = [
        f"{report.old} -> {report.new}: {report.entities:,} entities; with a row: "
        f"{report.present_old:.1%} -> {report.present_new:.1%}",
        f"{'feature':<28} {'compared':>8} {'psi':>7} {'mean shift':>10} {'std ratio':>9} "
        f"{'unchanged':>9} {'cosine':>7}  note",
    ]
    for f in report.features:
        lines.append(
            f"{f.feature:<28} {f.compared:>8,} {_num(f.psi):>7} {_num(f.mean_shift):>10} "
            f"{_num(f.std_ratio):>9} {_pct(f.unchanged):>9} {_num(f.cosine):>7}  {f.note}"
        )
    return "\n".join(lines)


def _compare(before: Feature, after: Feature, old: Any, new: Any) -> FeatureComparison:
    count = len(old)
    if count == 0:
        return FeatureComparison(before.name, 0, note="no entity has both rows")
    if before.dtype != after.dtype:
        if before.dtype.kind is Kind.EMBEDDING and after.dtype.kind is Kind.EMBEDDING:
            return FeatureComparison(
                before.name,
                count,
                note=(f"not comparable: {before.dtype.dim} vs {after.dtype.dim} dims"),
            )
        return FeatureComparison(before.name, count, note=f"type {before.dtype} -> {after.dtype}")
    kind = before.dtype.kind
    if kind is Kind.EMBEDDING:
        norms = np.linalg.norm(old, axis=1) * np.linalg.norm(new, axis=1)
        dots = (old * new).sum(axis=1)
        cosine = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
        return FeatureComparison(
            before.name,
            count,
            cosine=float(cosine.mean()),
            unchanged=float(np.mean(np.all(old == new, axis=1))),
        )
    baseline = from_values("old", before.name, old)
    shift = ratio = math.nan
    if kind is not Kind.STRING:
        numbers = np.asarray(new, np.float64)
        if baseline.std:
            assert baseline.mean is not None
            shift = (float(numbers.mean()) - baseline.mean) / baseline.std
            ratio = float(numbers.std()) / baseline.std
    changed = psi(np.asarray(baseline.shares), shares_of(baseline, np.asarray(new)))
    same = float(np.mean(np.asarray(old) == np.asarray(new)))
    return FeatureComparison(
        before.name, count, psi=changed, mean_shift=shift, std_ratio=ratio, unchanged=same
    )


def _present(statuses: npt.NDArray[np.uint8], rows: int) -> npt.NDArray[np.bool_]:
    status = np.broadcast_to(statuses, (rows,))
    return np.asarray((status == PRESENT) | (status == STALE), dtype=bool)


def _rows(values: Any, rows: int) -> Any:
    array = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    return np.broadcast_to(array, (rows, *array.shape[1:])) if len(array) == 1 else array


def _num(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"
