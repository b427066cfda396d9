"""Training/serving skew, measured: what GetFeatures answered (the served-feature log,
offline/served.py) against what a training set would hold for the same entity at the same
instant, feature by feature.

- Against the point-in-time join (offline/training.py, the rule training sets use): each logged
  record becomes a label at its `logged_at_us`, for the version it was served from (`view@vN`).
  Transforms are re-run offline on the joined inputs, for the entity keys the records of their
  input views logged in the same call and row (the logger writes a transform's outputs without
  keys); request context comes from logged columns of the same name, and a transform whose
  context was not logged is not compared, and says so.
- Against the batch engine for computed views, when their event log is given
  (offline/skew_batch.py).

How two values compare: offline/skew_compare.py. A record is compared by status first: a
value served with no row (NOT_FOUND) matches a join that found none; one found on one side only
is a mismatch. Records served degraded (FALLBACK, FALLBACK_CACHE, DATA_LOSS) are not compared
at all (`skipped`): a fallback default is an outage, not skew of the value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from featurewell.definitions import Feature, FeatureView, Registry
from featurewell.offline import served
from featurewell.offline.served_training import LoggedTable, read_logged, read_settled
from featurewell.offline.skew_batch import against_batch
from featurewell.offline.skew_compare import (
    COMPARED_STATUSES,
    EXAMPLES,
    FeatureSkew,
    Tolerance,
    differ,
)
from featurewell.offline.store import OfflineStore
from featurewell.offline.training import STATUS_SUFFIX, get_historical_features
from featurewell.offline.versions import ServedDefaults
from featurewell.values import PRESENT, STALE

__all__ = ["FeatureSkew", "Tolerance", "differ", "measure"]
DEFAULT_TOLERANCE = Tolerance()


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
    tolerance: Tolerance = DEFAULT_TOLERANCE,
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
            out += against_batch(view, log, logged, allowed_lateness_s, batch_times, tolerance)
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
