"""Point-in-time-correct training sets: for each label row (entity keys + a timestamp), the values
the online store would have served at that instant, and nothing known only later.

The rule, per view and entity, mirrors the online store's compare-and-set on event time:
- a history row is known from `max(created, event_time)` (written, and not in the future);
- a row only takes effect if its event time is >= every row known before it (an older row
  written late never replaced a newer one online, so it does not here either);
- a label at time T gets the last effective row known at or before T (ties included: a value
  known at exactly T is known at T);
- past the view's `max_age` the value is kept and marked STALE, as serving does; no row at
  all gives the feature's default, marked NOT_FOUND.

On-demand transforms run the same function as the server on the joined columns (request
context comes from label columns of the same name), so training and serving share one code path.
The joins are DuckDB ASOF joins over the offline store's Parquet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from featurewell.definitions import Feature, FeatureType, Kind, Registry
from featurewell.engine.plan import Planner, ViewRead
from featurewell.errors import InvalidRequest
from featurewell.offline.store import OfflineStore
from featurewell.values import NOT_FOUND, PRESENT, STALE, worst_status

if TYPE_CHECKING:
    import duckdb

STATUS_SUFFIX = ":__status"


def get_historical_features(
    registry: Registry,
    labels: pa.Table,
    features: Sequence[str],
    offline: OfflineStore,
    *,
    timestamp_column: str = "event_timestamp",
    progress: Callable[[int, int], None] | None = None,
) -> pa.Table:
    """`labels` plus one column per requested feature (named as served: `view:feature`) and one
    status column per view or transform (`view:__status`, the `Status` numbers).
    `progress(rows_joined, rows_to_join)` after each view's join: label rows x views."""
    plan = Planner(registry).plan(list(features))
    rows = labels.num_rows
    if rows == 0:
        raise InvalidRequest("the label table is empty: nothing to build a training set for")
    if timestamp_column not in labels.column_names:
        raise InvalidRequest(
            f"the label table has no {timestamp_column!r} column; name its timestamp column "
            f"with timestamp_column= (it has {labels.column_names})"
        )
    label_ts = _microseconds(labels.column(timestamp_column), timestamp_column)
    fetched: dict[int, tuple[dict[str, Any], npt.NDArray[np.uint8]]] = {}
    import duckdb

    con = duckdb.connect()
    joins, joined = sum(len(group.reads) for group in plan.groups), 0
    try:
        for group in plan.groups:
            keys = _keys(labels, group.entity.join_keys)
            order = np.arange(rows, dtype=np.int64)
            con.register("labels", pa.table({**keys, "__ts": label_ts, "__row": order}))
            for read, wanted in zip(group.reads, group.wanted, strict=True):
                fetched[id(read)] = _join(con, registry, offline, read, sorted(wanted), label_ts)
                joined += 1
                if progress is not None:
                    progress(joined * rows, joins * rows)
            con.unregister("labels")
    finally:
        con.close()

    out: dict[str, Any] = {name: labels.column(name) for name in labels.column_names}
    statuses: dict[str, npt.NDArray[np.uint8]] = {}
    computed: dict[str, dict[str, Any]] = {}
    for step in plan.transforms:
        transform = step.transform
        columns = {alias: fetched[id(read)][0][name] for alias, read, name in step.inputs}
        for name in transform.context:
            if name not in labels.column_names:
                raise InvalidRequest(
                    f"transform {transform.name!r} needs request context {name!r}: add a "
                    "label column of that name"
                )
            columns[name] = labels.column(name).to_numpy()
        computed[transform.name] = transform.apply(columns, rows)
        statuses[transform.name] = _full(
            worst_status([fetched[id(r)][1] for _, r, _ in step.inputs]), rows
        )
    for output in plan.outputs:
        if output.read is not None:
            values, status = fetched[id(output.read)]
            out[output.name] = _arrow(output.feature, values[output.feature.name])
            statuses[output.name.split(":", 1)[0]] = status
        else:
            assert output.transform is not None
            value = _full(computed[output.transform.name][output.feature.name], rows)
            out[output.name] = _arrow(output.feature, value)
    for table, status in statuses.items():
        out[table + STATUS_SUFFIX] = pa.array(status, pa.uint8())
    return pa.table(out)


def _join(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    offline: OfflineStore,
    read: ViewRead,
    wanted: list[str],
    label_ts: npt.NDArray[np.int64],
) -> tuple[dict[str, Any], npt.NDArray[np.uint8]]:
    view = read.view
    source = offline.source_of(view, registry)
    rows = len(label_ts)
    if source is None:  # no history at all: every value NOT_FOUND, as serving a fresh store
        values = {name: _defaults(view.features[view.feature_index[name]], rows) for name in wanted}
        return values, np.full(rows, NOT_FOUND, np.uint8)
    keys = list(view.entity.key_names)
    on = " AND ".join(f'l."{k}" = h."{k}"' for k in keys)
    picked = ", ".join(f'h."{name}"' for name in wanted)
    event_time = (
        f'epoch_us("{source.event_time}")'
        if source.event_time_is_timestamp
        else f'"{source.event_time}"'
    )
    known = f'greatest("{source.created}", {event_time})' if source.created else event_time
    key_list = ", ".join(f'"{k}"' for k in keys)
    columns = ", ".join(f'"{name}"' for name in [*keys, *wanted])
    if source.dataset is not None:  # a Delta table: ties in `known` broken by scan order
        con.register("__delta", source.dataset)
        scan, order, params = "__delta", "'' AS __file, row_number() OVER () AS __line", []
    else:  # Parquet files: ties broken by file, then row
        scan = "read_parquet(?, filename = true, file_row_number = true)"
        order, params = "filename AS __file, file_row_number AS __line", [list(source.files)]
    joined = con.sql(
        f"""
        WITH history AS (
            SELECT {columns}, {event_time} AS __event_time, {known} AS __known, {order}
            FROM {scan}),
        effective AS (
            SELECT * FROM (
                SELECT *, max(__event_time) OVER (
                    PARTITION BY {key_list} ORDER BY __known, __file, __line
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS __best
                FROM history)
            WHERE __best IS NULL OR __event_time >= __best)
        SELECT l.__row, h.__event_time, {picked}
        FROM labels l ASOF LEFT JOIN effective h ON {on} AND l.__ts >= h.__known
        ORDER BY l.__row
        """,
        params=params,
    ).to_arrow_table()
    found_time = joined.column("__event_time")
    missing = np.asarray(found_time.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    status = np.full(rows, PRESENT, np.uint8)
    status[missing] = NOT_FOUND
    if read.max_age_us:
        ages = label_ts - np.asarray(pc.fill_null(found_time, 0).to_numpy(), np.int64)
        status[~missing & (ages > read.max_age_us)] = STALE
    values = {
        name: _numpy(view.features[view.feature_index[name]], joined.column(name), missing)
        for name in wanted
    }
    return values, status


def _keys(labels: pa.Table, join_keys: Mapping[str, FeatureType]) -> dict[str, pa.ChunkedArray]:
    out = {}
    for name, key_type in join_keys.items():
        if name not in labels.column_names:
            raise InvalidRequest(f"the label table lacks entity key column {name!r}")
        column = labels.column(name)
        is_string = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        if (key_type.kind is Kind.STRING) != is_string or not (
            is_string or pa.types.is_integer(column.type)
        ):
            raise InvalidRequest(
                f"entity key column {name!r} is {column.type}; the entity declares {key_type}"
            )
        out[name] = column
    return out


def _microseconds(column: pa.ChunkedArray, name: str) -> npt.NDArray[np.int64]:
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("us", tz=column.type.tz)).cast(pa.int64())
    elif not pa.types.is_integer(column.type):
        raise InvalidRequest(f"{name!r} must be a timestamp or integer µs, not {column.type}")
    if column.null_count:
        raise InvalidRequest(f"{name!r} has {column.null_count} empty timestamps")
    return np.asarray(column.to_numpy(), dtype=np.int64)


def _numpy(feature: Feature, column: pa.ChunkedArray, missing: npt.NDArray[np.bool_]) -> Any:
    """A joined column as the server hands it to transforms; the default where nothing was."""
    dtype = feature.dtype
    rows = len(column)
    if dtype.kind is Kind.EMBEDDING:
        out = np.tile(np.asarray(feature.default, np.float32), (rows, 1))
        present = ~missing
        if present.any():
            flat = pc.list_flatten(column.filter(pa.array(present)))
            out[present] = np.asarray(flat.to_numpy(), np.float32).reshape(-1, dtype.dim)
        return out
    if dtype.kind is Kind.STRING or dtype.is_list:
        default = feature.default
        out = np.empty(rows, dtype=object)
        for i, value in enumerate(column.to_pylist()):
            value = default if value is None else value
            out[i] = np.asarray(value, dtype.element_dtype) if dtype.is_list else value
        return out
    filled = pc.fill_null(column, pa.scalar(feature.default).cast(column.type))
    return np.asarray(filled.to_numpy(), dtype=dtype.element_dtype)


def _defaults(feature: Feature, rows: int) -> Any:
    dtype = feature.dtype
    if dtype.kind is Kind.EMBEDDING:
        return np.tile(np.asarray(feature.default, np.float32), (rows, 1))
    if dtype.kind is Kind.STRING or dtype.is_list:
        out = np.empty(rows, dtype=object)
        for i in range(rows):
            out[i] = feature.default
        return out
    return np.full(rows, feature.default, dtype=dtype.element_dtype)


def _full(values: Any, rows: int) -> Any:
    array = np.asarray(values) if not isinstance(values, np.ndarray) else values
    return np.broadcast_to(array, (rows, *array.shape[1:])).copy() if len(array) == 1 else array


def _arrow(feature: Feature, values: Any) -> pa.Array:
    dtype = feature.dtype
    if dtype.kind is Kind.EMBEDDING:
        flat = pa.array(np.ascontiguousarray(values, np.float32).ravel())
        return pa.FixedSizeListArray.from_arrays(flat, dtype.dim)
    if dtype.kind is Kind.STRING:
        return pa.array(list(values), pa.string())
    if dtype.is_list:
        return pa.array([np.asarray(v).tolist() for v in values])
    return pa.array(values)
