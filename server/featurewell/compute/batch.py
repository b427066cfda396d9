"""The batch engine: computed features as of any time, from the whole event log, with DuckDB.

The log is a table (Parquet, or events exported from a stream) with the source's key and field
columns, `event_time` (int64 µs), `event_id`, and the delivery order: `_partition`, and
`_pos_major`/`_pos_minor` (a Redis Stream id's two parts, or a Kafka offset and 0). Without the
order columns, file order in partition 0 is assumed.

The streaming engine's rules become SQL: an event older than its partition's watermark (the
greatest event time before it, in delivery order) minus the allowed lateness is dropped; a
repeated event id (per entity) counts once; a value as of T covers events with event time <= T
in T's tile and the (window / tile - 1) tiles before it. Row-level expressions (`of=`,
`weight=`, `where=`) are the definitions' own functions, run with numpy over the columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from featurewell.compute.program import FeatureProgram, ViewProgram
from featurewell.definitions import Kind

if TYPE_CHECKING:
    import duckdb

EntityKey = tuple[Any, ...]
ORDER = ("_partition", "_pos_major", "_pos_minor")


def accepted_events(
    log: pa.Table, allowed_lateness_us: int, threads: int | None = None
) -> pa.Table:
    """The events the streaming engine would apply (lateness rule; duplicates not yet removed),
    in delivery order. `threads` caps DuckDB's threads (default: every core)."""
    log = _with_order(log)
    with _duckdb(threads) as con:
        con.register("log", log)
        return con.sql(
            """
            SELECT * EXCLUDE (watermark) FROM (
                SELECT *, max(event_time) OVER (
                    PARTITION BY _partition ORDER BY _pos_major, _pos_minor
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS watermark
                FROM log)
            WHERE watermark IS NULL OR event_time >= watermark - ?
            ORDER BY _partition, _pos_major, _pos_minor
            """,
            params=[allowed_lateness_us],
        ).to_arrow_table()


def compute(
    program: ViewProgram, accepted: pa.Table, as_of_us: int, threads: int | None = None
) -> dict[EntityKey, list[Any]]:
    """Every entity's values as of `as_of_us`, for entities with any counted event (others
    hold the defaults). `threads` caps DuckDB's threads (default: every core)."""
    keys = list(program.view.entity.key_names)
    key_list = ", ".join(f'"{k}"' for k in keys)
    with _duckdb(threads) as con:
        con.register("accepted", accepted)
        events = con.sql(
            f"""
            SELECT * FROM accepted
            WHERE event_time <= ?
            QUALIFY row_number() OVER (
                PARTITION BY {key_list}, event_id ORDER BY _partition, _pos_major, _pos_minor) = 1
            """,
            params=[as_of_us],
        ).to_arrow_table()
    if events.num_rows == 0:
        return {}
    # What expressions see, as in the streaming engine: the source's columns and event_time.
    visible = [*program.source.columns, "event_time"]
    columns = {name: numpy_column(events.column(name)) for name in [*visible, "event_id"]}
    rows = events.num_rows
    current_tile = as_of_us // program.tile_us
    tiles = columns["event_time"] // program.tile_us
    derived: dict[str, Any] = {name: columns[name] for name in keys}
    derived["event_time"] = columns["event_time"]
    derived["event_id"] = columns["event_id"]
    vectors: dict[int, tuple[Any, Any, Any]] = {}
    expression_columns = {name: columns[name] for name in visible}
    for n, feature in enumerate(program.features):
        value, weight, keep = feature.inputs(expression_columns, rows)
        if feature.tiles:
            keep = keep & (tiles > current_tile - feature.tiles)
        if feature.feature.dtype.kind is Kind.EMBEDDING:
            vectors[n] = (value, weight, keep)
            continue
        derived[f"v{n}"] = value
        derived[f"w{n}"] = weight if weight is not None else np.ones(rows)
        derived[f"k{n}"] = keep
    table = pa.table({name: pa.array(_list(column)) for name, column in derived.items()})
    found: dict[EntityKey, list[Any]] = {}
    with _duckdb(threads) as con:
        con.register("events", table)
        for n, feature in enumerate(program.features):
            if n in vectors:
                per_entity = _vector_mean(table, keys, *vectors[n])
            else:
                per_entity = _aggregate(con, feature, n, keys, key_list, as_of_us)
            for key, value in per_entity.items():
                found.setdefault(key, [None] * len(program.features))[n] = value
    return {
        key: [_finish(feature, values[n]) for n, feature in enumerate(program.features)]
        for key, values in found.items()
    }


def _aggregate(
    con: duckdb.DuckDBPyConnection,
    feature: FeatureProgram,
    n: int,
    keys: list[str],
    key_list: str,
    as_of_us: int,
) -> dict[EntityKey, Any]:
    v, w, k = f"v{n}", f"w{n}", f"k{n}"
    kind = feature.kind
    if kind in ("last", "mode"):
        if kind == "last":
            order = "event_time DESC, event_id DESC"
            source = f"SELECT {key_list}, {v} AS value, event_time, event_id FROM events WHERE {k}"
        else:
            order = "n DESC, value ASC"
            source = (
                f"SELECT {key_list}, {v} AS value, count(*) AS n FROM events WHERE {k} GROUP BY ALL"
            )
        query = (
            f"SELECT {key_list}, value FROM ({source}) "
            f"QUALIFY row_number() OVER (PARTITION BY {key_list} ORDER BY {order}) = 1"
        )
        return {tuple(row[:-1]): row[-1] for row in con.execute(query).fetchall()}
    expression = {
        "count": f"count(*) FILTER (WHERE {k})",
        "sum": f"coalesce(sum({v}) FILTER (WHERE {k}), 0)",
        "min": f"min({v}) FILTER (WHERE {k})",
        "max": f"max({v}) FILTER (WHERE {k})",
        "mean": (
            f"CASE WHEN sum({w}) FILTER (WHERE {k}) > 0 THEN "
            f"sum({w} * {v}) FILTER (WHERE {k}) / sum({w}) FILTER (WHERE {k}) END"
        ),
        "decayed sum": (
            f"coalesce(sum({v} * pow(2.0, -({as_of_us} - event_time) / "
            f"{feature.half_life_us!r})) FILTER (WHERE {k}), 0)"
        ),
    }[kind]
    query = f"SELECT {key_list}, {expression} FROM events GROUP BY ALL"
    return {tuple(row[:-1]): row[-1] for row in con.execute(query).fetchall()}


def _vector_mean(
    table: pa.Table, keys: list[str], value: Any, weight: Any, keep: Any
) -> dict[EntityKey, Any]:
    """Weighted mean of vectors per entity (numpy: SQL has no good vector sum)."""
    entity_keys = list(zip(*(table.column(k).to_pylist() for k in keys), strict=True))
    uniques = sorted(set(entity_keys), key=repr)
    index = {key: i for i, key in enumerate(uniques)}
    rows = np.fromiter((index[key] for key in entity_keys), np.int64, len(entity_keys))
    weights = np.ones(len(rows)) if weight is None else np.asarray(weight, float)
    weights = np.where(keep, weights, 0.0)
    sums = np.zeros((len(uniques), value.shape[1]))
    np.add.at(sums, rows, value * weights[:, None])
    totals = np.bincount(rows, weights, minlength=len(uniques))
    return {key: (sums[i] / totals[i] if totals[i] else None) for key, i in index.items()}


def empty_value(feature: FeatureProgram) -> Any:
    """A feature's value when no event counts: 0 for counts and sums, else its default."""
    return 0 if feature.kind in ("count", "sum", "decayed sum") else feature.feature.default


def _finish(feature: FeatureProgram, value: Any) -> Any:
    return empty_value(feature) if value is None else value


def _with_order(log: pa.Table) -> pa.Table:
    if "_partition" not in log.column_names:
        log = log.append_column("_partition", pa.array(np.zeros(log.num_rows, np.int64)))
    if "_pos_major" not in log.column_names:
        log = log.append_column("_pos_major", pa.array(np.arange(log.num_rows, dtype=np.int64)))
    if "_pos_minor" not in log.column_names:
        log = log.append_column("_pos_minor", pa.array(np.zeros(log.num_rows, np.int64)))
    return log


def numpy_column(column: pa.ChunkedArray) -> Any:
    """A column as numpy: strings as an object array, numbers as they are."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.asarray(column.to_pylist(), dtype=object)
    return column.to_numpy()


def _list(column: Any) -> Any:
    array = np.asarray(column)
    return array.tolist() if array.dtype == object else array


@contextmanager
def _duckdb(threads: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    # Imported on first use: only the batch engine's users load DuckDB (whose bindings also
    # print "leaked" notices when an interpreter that loaded them exits).
    import duckdb

    con = duckdb.connect(config={"threads": threads} if threads else {})
    try:
        yield con
    finally:
        con.close()
