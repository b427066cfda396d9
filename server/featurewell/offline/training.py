"""Point-in-time-correct training sets: for each label row (entity keys + a timestamp), the values
the online store would have served at that instant, and nothing known only later.

The rule, per view and entity, is the online store's compare-and-set (later event time wins;
equal event times: the later write wins), made total:
- a history row is known from `max(created, event_time)` (written, and not in the future);
- a label at time T gets, among the rows known at or before T, the one with the greatest
  event time, then the greatest `created`, then the greatest write order (offline/store.py:
  file write order, then row order). An older row written late never wins; an equal event time
  written later (a correction) does;
- past the view's `max_age` the value is kept and marked STALE, as serving does; no row at
  all gives the feature's default, marked NOT_FOUND.

Which version `view:feature` reads is the one servers serve (offline/versions.py), recorded in
the result's schema metadata. On-demand transforms run the same function as the server on the
joined columns (request context comes from label columns of the same name), so training and
serving share one code path.

The joins are DuckDB queries over the history files. Nothing relies on which of several equal
ASOF matches DuckDB returns (undocumented): each row gets its rank in the total order above,
only the rows that beat everything known at or before their own known time are kept, one per
known time, and the ASOF join then has exactly one candidate per (entity, known time).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from featurewell.definitions import Feature, FeatureType, Kind, Registry
from featurewell.engine.plan import Plan, Planner, ViewRead
from featurewell.errors import InvalidRequest
from featurewell.offline import versions as served_versions
from featurewell.offline.labels import microseconds
from featurewell.offline.store import HistorySource, OfflineStore
from featurewell.offline.versions import ServedDefaults
from featurewell.values import NOT_FOUND, PRESENT, STALE, worst_status

if TYPE_CHECKING:
    import duckdb

STATUS_SUFFIX = ":__status"
log = logging.getLogger("featurewell.training")
ENGINES = ("duckdb", "spark")
RETRIES = 8  # lists of history files that a compaction changed while they were read


def get_historical_features(
    registry: Registry,
    labels: pa.Table,
    features: Sequence[str],
    offline: OfflineStore,
    *,
    timestamp_column: str = "event_timestamp",
    defaults: ServedDefaults | None = None,
    progress: Callable[[int, int], None] | None = None,
    prune: bool = True,
    engine: str = "duckdb",
    spark_master: str | None = None,
) -> pa.Table:
    """`labels` plus one column per requested feature (named as served: `view:feature`) and one
    status column per view or transform (`view:__status`, the `Status` numbers).

    `view:feature` reads the version servers serve under `defaults` (the promoted defaults:
    `versions.load(file)`, or read from the cluster); None: each view's highest version. The
    versions used are in the result's schema metadata (`versions.recorded(table.schema.metadata)`).

    `prune`: read only the history files the labels' time range needs (offline/partitions.py:
    the same result, from fewer files); False reads every file.

    `engine`: "duckdb" (one process) or "spark" (offline/spark.py: the same rule as Spark
    jobs, on `spark_master`, default a local Spark; `pip install 'featurewell[spark]'`).
    """
    offline.check_exists()
    plan = Planner(served_versions.as_served(registry, defaults)).plan(list(features))
    rows = labels.num_rows
    if rows == 0:
        raise InvalidRequest("the label table is empty: nothing to build a training set for")
    if timestamp_column not in labels.column_names:
        raise InvalidRequest(
            f"the label table has no {timestamp_column!r} column; name its timestamp column "
            f"with timestamp_column= (it has {labels.column_names})"
        )
    label_ts = microseconds(labels.column(timestamp_column), timestamp_column)
    span = (int(label_ts.min()), int(label_ts.max())) if prune else None
    fetched: dict[int, tuple[dict[str, Any], npt.NDArray[np.uint8]]] = {}
    import duckdb

    if engine not in ENGINES:
        raise InvalidRequest(f"engine must be one of {ENGINES}, got {engine!r}")
    con = duckdb.connect()
    on_spark = None
    if engine == "spark":
        from featurewell.offline import spark as spark_engine

        on_spark = spark_engine.AsOf(spark_engine.session(spark_master))
    joins, joined = sum(len(group.reads) for group in plan.groups), 0
    try:
        for group in plan.groups:
            keys = _keys(labels, group.entity.join_keys)
            order = np.arange(rows, dtype=np.int64)
            keyed = pa.table({**keys, "__ts": label_ts, "__row": order})
            con.register("labels", keyed)
            for read, wanted in zip(group.reads, group.wanted, strict=True):
                join = (
                    functools.partial(_duckdb_rows, con)
                    if on_spark is None
                    else functools.partial(on_spark.rows, keyed)
                )
                fetched[id(read)] = _read(
                    join, registry, offline, read, sorted(wanted), label_ts, span
                )
                joined += 1
                if progress is not None:
                    progress(joined * rows, joins * rows)
            con.unregister("labels")
    finally:
        con.close()

    out, statuses = finish(plan, labels, fetched)
    for table, status in statuses.items():
        if (status == NOT_FOUND).all():
            log.warning(
                "%s: every value is NOT_FOUND: no history row was known at any label time", table
            )
    used = served_versions.used(plan, defaults)
    return pa.table(out).replace_schema_metadata(served_versions.metadata(used))


Fetched = dict[int, tuple[dict[str, Any], npt.NDArray[np.uint8]]]


def finish(
    plan: Plan, labels: pa.Table, fetched: Fetched
) -> tuple[dict[str, Any], dict[str, npt.NDArray[np.uint8]]]:
    """The output columns from the joined values and statuses of each read (`fetched`, by
    `id(read)`): the label columns, then each feature as served, with transforms run on the
    joined columns, then one status column per view or transform. Both engines run it (Spark
    per Arrow batch, offline/spark.py)."""
    rows = labels.num_rows
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
    return out, statuses


Rows = Callable[[HistorySource, list[str], list[str]], pa.Table]


def _read(
    join: Rows,
    registry: Registry,
    offline: OfflineStore,
    read: ViewRead,
    wanted: list[str],
    label_ts: npt.NDArray[np.int64],
    span: tuple[int, int] | None,
) -> tuple[dict[str, Any], npt.NDArray[np.uint8]]:
    """One view's join. `featurewell compact` removes merged inputs once the merged file is in
    place; a join that listed them just before reads a missing file, so it lists again."""
    import duckdb

    errors: tuple[type[Exception], ...] = (duckdb.IOException,)
    if not isinstance(join, functools.partial) or join.func is not _duckdb_rows:
        errors = (Exception,)  # Spark's errors for a missing file are Py4J/Spark exceptions
    for attempt in range(RETRIES):
        source = offline.source_of(read.view, registry, span)
        try:
            return _join(join, read, source, wanted, label_ts)
        except errors as exc:
            gone = source is not None and any(not Path(f).exists() for f in source.files)
            if not gone or attempt == RETRIES - 1:
                raise
            time.sleep(0.05 * attempt)
            log.info(
                "%s: history files were compacted while read (%s); reading again",
                read.view.ref,
                exc,
            )
    raise AssertionError("unreachable")


def _join(
    join: Rows,
    read: ViewRead,
    source: HistorySource | None,
    wanted: list[str],
    label_ts: npt.NDArray[np.int64],
) -> tuple[dict[str, Any], npt.NDArray[np.uint8]]:
    view = read.view
    rows = len(label_ts)
    if source is None or not source.files:  # no history (known by then): all NOT_FOUND
        values = {name: _defaults(view.features[view.feature_index[name]], rows) for name in wanted}
        return values, np.full(rows, NOT_FOUND, np.uint8)
    return from_joined(read, join(source, list(view.entity.key_names), wanted), wanted, label_ts)


def from_joined(
    read: ViewRead, joined: pa.Table, wanted: list[str], label_ts: npt.NDArray[np.int64]
) -> tuple[dict[str, Any], npt.NDArray[np.uint8]]:
    """Values (defaults where nothing was found) and statuses from a join's rows: per label, the
    winning row's `__event_time` (null: none) and its `wanted` columns."""
    view = read.view
    rows = len(label_ts)
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


def _duckdb_rows(
    con: duckdb.DuckDBPyConnection, source: HistorySource, keys: list[str], wanted: list[str]
) -> pa.Table:
    """Per label row (`labels`, registered), in label order: the winning row's event time (null:
    none) and its `wanted` columns."""
    on = " AND ".join(f'l."{k}" = h."{k}"' for k in keys)
    picked = ", ".join(f'h."{name}"' for name in wanted)
    event_time = (
        f'epoch_us("{source.event_time}")'
        if source.event_time_is_timestamp
        else f'"{source.event_time}"'
    )
    created = f'"{source.created}"' if source.created else event_time
    key_list = ", ".join(f'"{k}"' for k in keys)
    columns = ", ".join(f'h."{name}"' for name in [*keys, *wanted])
    # Files in write order (offline/store.py); a file's position and a row's number in it are
    # the write order that breaks ties of equal event time and equal created.
    con.register(
        "__files",
        pa.table(
            {"__path": list(source.files), "__file": pa.array(range(len(source.files)), pa.int64())}
        ),
    )
    try:
        joined = con.sql(
            f"""
            WITH history AS (
                SELECT {columns}, {event_time} AS __event_time, {created} AS __created,
                       greatest({created}, {event_time}) AS __known, f.__file,
                       h.file_row_number AS __line
                FROM read_parquet(?, filename = true, file_row_number = true,
                                  hive_partitioning = false) h
                JOIN __files f ON f.__path = h.filename),
            ranked AS (
                SELECT *, row_number() OVER (
                    PARTITION BY {key_list}
                    ORDER BY __event_time, __created, __file, __line) AS __rank
                FROM history),
            effective AS (
                SELECT * FROM ranked
                QUALIFY __rank = max(__rank) OVER (
                    PARTITION BY {key_list} ORDER BY __known
                    RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
            SELECT l.__row, h.__event_time, {picked}
            FROM labels l ASOF LEFT JOIN effective h ON {on} AND l.__ts >= h.__known
            ORDER BY l.__row
            """,
            params=[list(source.files)],
        ).to_arrow_table()
    finally:
        con.unregister("__files")
    return joined


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
