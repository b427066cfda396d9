"""Training/serving skew, measured: what GetFeatures answered (the served-feature log,
offline/served.py) against what a training set would hold for the same entity at the same
instant, feature by feature.

- Against the point-in-time join (offline/training.py, the rule training sets use): each logged
  record becomes a label at its `logged_at_us`, for the version it was served from (`view@vN`).
  Transforms are re-run offline on the joined inputs, for the entity keys the records of their
  input views logged in the same call and row (the logger writes a transform's outputs without
  keys); request context comes from logged columns of the same name, and a transform whose
  context was not logged is not compared, and says so.
- Against the batch engine (compute/batch.py) for computed views, when their event log is
  given: the served values as of the served row's event time (the time its values are as of).
  Each distinct event time is one batch computation, so at most `batch_times` of them (evenly
  spread) are compared.

How two values compare: integers, booleans and strings exactly; floats within a relative
tolerance (`rtol`, and `atol` near zero); embeddings by cosine similarity (at least `cosine`);
lists element by element. A record is compared by status first: a value served with no row
(NOT_FOUND) matches a join that found none; one found on one side only is a mismatch. Records
served degraded (FALLBACK, FALLBACK_CACHE, DATA_LOSS) are not compared at all (`skipped`): a
fallback default is an outage, not skew of the value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from featurewell.compute import batch
from featurewell.compute.program import compile_view
from featurewell.definitions import Feature, FeatureView, Kind, Registry
from featurewell.offline import served
from featurewell.offline.served_training import LoggedTable, read_logged, read_settled
from featurewell.offline.store import OfflineStore
from featurewell.offline.training import STATUS_SUFFIX, get_historical_features
from featurewell.offline.versions import ServedDefaults
from featurewell.values import NOT_FOUND, PRESENT, STALE

COMPARED_STATUSES = (PRESENT, STALE, NOT_FOUND)
EXAMPLES = 3


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 1e-5  # floats: |a - b| <= rtol * max(|a|, |b|) + atol
    atol: float = 1e-6
    cosine: float = 0.9999  # embeddings: cosine similarity at least this


@dataclass
class FeatureSkew:
    table: str  # `view@vN` or the transform
    feature: str
    against: str  # "offline" (the point-in-time join) or "batch" (the event log)
    compared: int = 0
    mismatched: int = 0
    status_mismatched: int = 0  # of `mismatched`: found on one side only
    skipped: int = 0  # served degraded (a fallback): not compared
    examples: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.mismatched / self.compared if self.compared else 0.0


def measure(
    registry: Registry,
    offline: OfflineStore,
    since_us: int | None,
    until_us: int | None,
    *,
    defaults: ServedDefaults | None = None,
    events: Mapping[str, pa.Table] | None = None,
    allowed_lateness_s: float = 3600.0,
    batch_times: int = 50,
    tolerance: Tolerance = Tolerance(),
) -> list[FeatureSkew]:
    """Skew of every view and transform logged in [since_us, until_us). `events`: per event
    source name, its log, for the batch comparison of the views computed from it."""
    offline.check_exists()
    out: list[FeatureSkew] = []
    root = offline.root / served.SERVED
    for folder in sorted(root.glob("*/v*")) if root.is_dir() else []:
        name, version = folder.parent.name, folder.name[1:]
        view = registry.views.get((name, int(version))) if version.isdigit() else None
        if name == served.TRANSFORMS:
            continue
        if view is None:  # served by other definitions than the repo's: say so, do not guess
            note = "not compared: the repo has no such view version"
            out.append(FeatureSkew(f"{name}@{folder.name}", "*", "offline", note=note))
            continue
        table = LoggedTable(f"{name}@v{view.version}", [folder], list(view.entity.key_names))
        table.outputs = list(view.feature_index)
        logged = read_logged(table, since_us, until_us)
        if logged.num_rows == 0:
            continue
        features = [view.features[view.feature_index[n]] for n in table.outputs]
        out += _against_offline(registry, offline, table, features, logged, defaults, tolerance)
        log = (events or {}).get(view.events.name) if view.events is not None else None
        if log is not None:
            out += _against_batch(view, log, logged, allowed_lateness_s, batch_times, tolerance)
    for folder in sorted((root / served.TRANSFORMS).glob("*")) if root.is_dir() else []:
        transform = registry.transforms.get(folder.name)
        if transform is None:
            note = "not compared: the repo has no such on-demand transform"
            out.append(FeatureSkew(folder.name, "*", "offline", note=note))
            continue
        table = LoggedTable(transform.name, [folder], [])
        table.outputs = list(transform.output_index)
        logged = read_logged(table, since_us, until_us)
        if logged.num_rows == 0:
            continue
        missing = [c for c in transform.context if c not in logged.column_names]
        if missing:
            note = f"not compared: its request context {missing} was not logged"
            out += [FeatureSkew(table.name, o, "offline", note=note) for o in table.outputs]
            continue
        table.keys = _input_keys(registry, transform.inputs.values())
        logged, unkeyed = _with_input_keys(root, table.keys, logged, since_us, until_us)
        if logged.num_rows == 0:
            note = f"not compared: no input view logged for its {unkeyed} records (keys unknown)"
            out += [FeatureSkew(table.name, o, "offline", note=note) for o in table.outputs]
            continue
        features = list(transform.outputs)
        found = _against_offline(registry, offline, table, features, logged, defaults, tolerance)
        for result in found:
            result.skipped += unkeyed
            if unkeyed:
                result.note = f"{unkeyed} records skipped: their input views were not logged"
        out += found
    return out


def _input_keys(registry: Registry, inputs: Iterable[str]) -> list[str]:
    """The entity key columns a transform's inputs are read by."""
    keys: list[str] = []
    for reference in inputs:
        name = reference.partition(":")[0].partition("@v")[0]
        view = max((v for (n, _), v in registry.views.items() if n == name), key=_version)
        keys += [k for k in view.entity.key_names if k not in keys]
    return keys


def _version(view: FeatureView) -> int:
    return view.version


def _with_input_keys(
    root: Path, keys: list[str], logged: pa.Table, since_us: int | None, until_us: int | None
) -> tuple[pa.Table, int]:
    """Transform records with their entity keys: the logger writes a transform's outputs
    without keys, so they come from the records its input views logged for the same call and
    row. Records with no such record are dropped (and counted)."""
    missing = [k for k in keys if k not in logged.column_names]
    if not missing:
        return logged, 0
    ordered = logged.append_column("__order", pa.array(range(logged.num_rows), pa.int64()))
    for folder in sorted(p for p in root.glob("*") if p.name != served.TRANSFORMS):
        wanted = [k for k in missing if k not in ordered.column_names]
        if not wanted:
            break
        views = [read_settled(v, since_us, until_us) for v in sorted(folder.glob("v*"))]
        views = [v for v in views if v.num_rows and all(k in v.column_names for k in wanted)]
        if not views:
            continue
        columns = ["request_id", "row", *wanted]
        rows = pa.concat_tables([v.select(columns) for v in views], promote_options="permissive")
        ordered = _join_rows(ordered, rows, wanted)
    present = pa.array(np.ones(ordered.num_rows, bool))
    for key in keys:
        if key not in ordered.column_names:
            return logged.slice(0, 0), logged.num_rows
        present = pc.and_(present, pc.is_valid(ordered.column(key)))
    keyed = ordered.filter(present).sort_by("__order").drop_columns(["__order"])
    return keyed, logged.num_rows - keyed.num_rows


def _join_rows(records: pa.Table, view_rows: pa.Table, keys: list[str]) -> pa.Table:
    """`records` plus `keys` from the view record of the same call and row; a view logged with
    one row for the call (a ranking call's user) gives it to every row."""
    import duckdb

    with duckdb.connect() as con:
        con.register("t", records)
        con.register("v", view_rows)
        picked = ", ".join(f'v."{k}"' for k in keys)
        return con.sql(
            f"""
            WITH v AS (SELECT *, count(*) OVER (PARTITION BY request_id) AS __rows FROM v)
            SELECT t.*, {picked} FROM t LEFT JOIN v ON t.request_id = v.request_id
                AND (t."row" = v."row" OR v.__rows = 1)
            """
        ).to_arrow_table()


def _against_offline(
    registry: Registry,
    offline: OfflineStore,
    table: LoggedTable,
    features: list[Feature],
    logged: pa.Table,
    defaults: ServedDefaults | None,
    tolerance: Tolerance,
) -> list[FeatureSkew]:
    transform = registry.transforms.get(table.name)
    context = list(transform.context) if transform is not None else []
    labels = pa.table(
        {
            **{k: logged.column(k) for k in [*table.keys, *context]},
            "__logged_at": logged.column("logged_at_us").cast(pa.timestamp("us", tz="UTC")),
        }
    )
    references = [f"{table.name}:{f.name}" for f in features]
    joined = get_historical_features(
        registry, labels, references, offline, timestamp_column="__logged_at", defaults=defaults
    )
    served_status = np.asarray(logged.column("status").to_numpy(), np.uint8)
    offline_status = np.asarray(joined.column(table.name + STATUS_SUFFIX).to_numpy(), np.uint8)
    results = []
    for feature, reference in zip(features, references, strict=True):
        result = _compare(
            table.name,
            feature,
            "offline",
            table.keys,
            logged,
            served_status,
            offline_status,
            joined.column(reference),
            tolerance,
        )
        results.append(result)
    return results


def _compare(
    table: str,
    feature: Feature,
    against: str,
    keys: list[str],
    logged: pa.Table,
    served_status: npt.NDArray[np.uint8],
    other_status: npt.NDArray[np.uint8],
    other: pa.ChunkedArray | pa.Array,
    tolerance: Tolerance,
) -> FeatureSkew:
    result = FeatureSkew(table, feature.name, against)
    if feature.name not in logged.column_names:
        result.note = "not logged (a feature added after these records)"
        return result
    counted = np.isin(served_status, COMPARED_STATUSES)
    result.skipped = int((~counted).sum())
    found = np.isin(served_status, (PRESENT, STALE))
    other_found = np.isin(other_status, (PRESENT, STALE))
    status_differs = counted & (found != other_found)
    both = found & other_found
    values = np.zeros(len(served_status), bool)
    if both.any():
        values[both] = differ(
            feature, logged.column(feature.name).filter(both), other.filter(both), tolerance
        )
    bad = status_differs | values
    result.compared = int(counted.sum())
    result.mismatched = int(bad.sum())
    result.status_mismatched = int(status_differs.sum())
    served_values = logged.column(feature.name)
    for row in np.flatnonzero(bad)[:EXAMPLES].tolist():
        result.examples.append(
            {
                "request_id": logged.column("request_id")[row].as_py(),
                "row": logged.column("row")[row].as_py(),
                **{k: logged.column(k)[row].as_py() for k in keys},
                "logged_at_us": logged.column("logged_at_us")[row].as_py(),
                "served": served_values[row].as_py(),
                "served_status": int(served_status[row]),
                against: other[row].as_py(),
                f"{against}_status": int(other_status[row]),
            }
        )
    return result


def differ(
    feature: Feature,
    served_values: pa.ChunkedArray | pa.Array,
    other: pa.ChunkedArray | pa.Array,
    tolerance: Tolerance,
) -> npt.NDArray[np.bool_]:
    """Per row, whether the two values differ under the feature type's rule (module docstring)."""
    kind = feature.dtype.kind
    if kind in (Kind.FLOAT32, Kind.FLOAT64):
        a = np.asarray(pc.cast(served_values, pa.float64()).to_numpy(zero_copy_only=False))
        b = np.asarray(pc.cast(other, pa.float64()).to_numpy(zero_copy_only=False))
        close = np.abs(a - b) <= tolerance.rtol * np.maximum(np.abs(a), np.abs(b)) + tolerance.atol
        return np.asarray(~(close | (np.isnan(a) & np.isnan(b))), bool)
    if kind is Kind.EMBEDDING:
        dim = feature.dtype.dim
        a = _matrix(served_values, dim)
        b = _matrix(other, dim)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        dot = (a * b).sum(axis=1)
        zero = norms == 0
        cosine = np.where(zero, 0.0, dot / np.where(zero, 1.0, norms))
        same_zero = zero & (np.abs(a).sum(axis=1) == 0) & (np.abs(b).sum(axis=1) == 0)
        return np.asarray(~(same_zero | (cosine >= tolerance.cosine)), bool)
    if feature.dtype.is_list:
        return np.array(
            [
                not _same(x, y, tolerance)
                for x, y in zip(served_values.to_pylist(), other.to_pylist(), strict=True)
            ],
            bool,
        )
    equal = pc.equal(served_values, pc.cast(other, served_values.type))
    return np.asarray(pc.fill_null(pc.invert(equal), True).to_numpy(zero_copy_only=False), bool)


def _matrix(column: pa.ChunkedArray | pa.Array, dim: int) -> npt.NDArray[np.float64]:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return np.asarray(flat, np.float64).reshape(-1, dim)


def _same(a: Any, b: Any, tolerance: Tolerance) -> bool:
    """Two Python values (lists, scalars) under the same rules as `differ`."""
    if isinstance(a, list | tuple | np.ndarray) or isinstance(b, list | tuple | np.ndarray):
        a, b = list(np.asarray(a).tolist()), list(np.asarray(b).tolist())
        return len(a) == len(b) and all(_same(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(float(a)) and math.isnan(float(b)):
            return True
        return math.isclose(float(a), float(b), rel_tol=tolerance.rtol, abs_tol=tolerance.atol)
    return bool(a == b)


def _against_batch(
    view: Any,
    log: pa.Table,
    logged: pa.Table,
    allowed_lateness_s: float,
    batch_times: int,
    tolerance: Tolerance,
) -> list[FeatureSkew]:
    """Served values of a computed view against the batch engine as of each served row's event
    time (up to `batch_times` distinct times, evenly spread)."""
    program = compile_view(view)
    accepted = batch.accepted_events(log, int(allowed_lateness_s * 1e6))
    table = f"{view.name}@v{view.version}"
    results = [FeatureSkew(table, f.name, "batch") for f in view.features]
    status = np.asarray(logged.column("status").to_numpy(), np.uint8)
    times = np.asarray(logged.column("event_time").to_numpy(), np.int64)
    found = np.isin(status, (PRESENT, STALE))
    distinct = np.unique(times[found])
    if len(distinct) > batch_times:
        distinct = distinct[np.linspace(0, len(distinct) - 1, batch_times).astype(int)]
    keys = list(zip(*(logged.column(k).to_pylist() for k in view.entity.key_names), strict=True))
    note = "" if len(np.unique(times[found])) <= batch_times else f"{batch_times} times sampled"
    for as_of in distinct.tolist():
        computed = batch.compute(program, accepted, as_of)
        for row in np.flatnonzero(found & (times == as_of)).tolist():
            expected = computed.get(keys[row]) or [batch.empty_value(f) for f in program.features]
            for n, result in enumerate(results):
                value = logged.column(result.feature)[row].as_py()
                result.compared += 1
                if not _same(value, _plain(expected[n]), tolerance):
                    result.mismatched += 1
                    if len(result.examples) < EXAMPLES:
                        result.examples.append(
                            {
                                "request_id": logged.column("request_id")[row].as_py(),
                                "entity": keys[row],
                                "event_time": as_of,
                                "served": value,
                                "batch": _plain(expected[n]),
                            }
                        )
    for result in results:
        result.skipped = int((~found).sum())
        result.note = note
    return results


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def served_root(offline: OfflineStore) -> Path:
    return offline.root / served.SERVED
