"""Training sets from what was served ("log and wait"): labels joined to the feature values
GetFeatures actually answered (the served-feature log, offline/served.py), so a model trains on
exactly the vectors it saw, whatever the history or the definitions say now.

Two joins, per view or transform:
- by request id: labels carry `request_id` (returned to the caller in the
  `x-featurewell-request-id` trailing metadata) and either `row` (the entity row within the
  call) or the entity key columns. A view logged with one row for the call (a ranking call's
  user, beside 500 items) matches every row of it; a call that asked for one entity twice
  matches its first row when joined by keys;
- by entity and time: labels carry the entity keys and a timestamp; each gets the latest record
  logged at or before it (records logged at the same µs: the greatest request id, then row).

Each output table gets, beside `table:feature` (the values as logged, not defaults filled in
again), `table:__status` (the served `Status`; empty where no record matched),
`table:__version` and `table:__logged_at_us`. A label that matched nothing keeps empty values:
nothing was served for it, and a model should not pretend otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa

from featurewell.definitions import Registry
from featurewell.errors import ConfigError, InvalidRequest, UnknownFeature
from featurewell.offline import served
from featurewell.offline.labels import microseconds

JOINS = ("request_id", "time")
Join = Literal["request_id", "time"]
STATUS = ":__status"
VERSION = ":__version"
LOGGED_AT = ":__logged_at_us"


@dataclass
class LoggedTable:
    """A view (every version logged, or one pinned) or a transform, and the outputs wanted."""

    name: str  # as in the output columns: `view`, `view@v2` or the transform
    folders: list[Path]
    keys: list[str]
    outputs: list[str] = field(default_factory=list)


def logged_tables(
    registry: Registry, root: str | Path, features: Sequence[str]
) -> list[LoggedTable]:
    """The served-log folders `features` (`view:f`, `view:*`, `view@v2:f`, `transform:out`)
    read, in the order first named."""
    tables: dict[str, LoggedTable] = {}
    for reference in features:
        table, sep, output = reference.partition(":")
        if not sep or not table or not output:
            raise InvalidRequest(f"feature reference {reference!r} must be 'view:feature'")
        name, _, pinned = table.partition("@v")
        if name in registry.transforms:
            transform = registry.transforms[name]
            known = list(transform.output_index)
            entry = tables.setdefault(
                table, LoggedTable(table, [served.transform_folder(root, name)], [])
            )
        else:
            versions = sorted(v for (n, v) in registry.views if n == name)
            if not versions:
                raise UnknownFeature(f"no feature view or transform {name!r} in the repo")
            if pinned and (not pinned.isdigit() or int(pinned) not in versions):
                raise UnknownFeature(f"{table!r}: {name} has versions {versions}")
            chosen = [int(pinned)] if pinned else versions
            views = [registry.views[(name, v)] for v in chosen]
            known = sorted({f for view in views for f in view.feature_index})
            folders = [served.view_folder(root, view) for view in views]
            keys = list(views[-1].entity.key_names)
            entry = tables.setdefault(table, LoggedTable(table, folders, keys))
        wanted = known if output == "*" else [output]
        for name_ in wanted:
            if name_ not in known:
                raise UnknownFeature(f"{table!r} has no feature {name_!r} (it has {known})")
            if name_ not in entry.outputs:
                entry.outputs.append(name_)
    return list(tables.values())


def read_settled(
    folder: Path, since_us: int | None = None, until_us: int | None = None, attempts: int = 5
) -> pa.Table:
    """`served.read`, tried again while a file is being written: the logger writes each file
    under a temporary name and renames it whole, but a reader listing the folder meanwhile sees
    the temporary (not Parquet yet) or a name that is gone when opened."""
    for attempt in range(attempts):
        try:
            return served.read(folder, since_us, until_us)
        except (pa.ArrowInvalid, OSError) as exc:
            if attempt == attempts - 1:
                raise ConfigError(
                    f"cannot read the served-feature log under {folder}: {exc}; a file there "
                    "that is not Parquet (a crashed writer's temporary) must be removed"
                ) from None
            time.sleep(0.2)
    raise AssertionError("unreachable")


def read_logged(
    table: LoggedTable, since_us: int | None = None, until_us: int | None = None
) -> pa.Table:
    """Every record of `table` (all its logged versions), duplicates dropped."""
    parts = [read_settled(folder, since_us, until_us) for folder in table.folders]
    parts = [p for p in parts if p.num_rows] or parts[:1]
    logged = pa.concat_tables(parts, promote_options="permissive")
    if not table.keys:  # a transform: its key columns are whatever is not a record column
        names = set(served.COLUMNS.names)
        table.keys = [n for n in logged.column_names if n not in names and n not in table.outputs]
    return logged


def from_served_log(
    registry: Registry,
    labels: pa.Table,
    features: Sequence[str],
    root: str | Path,
    *,
    join: Join = "request_id",
    timestamp_column: str = "event_timestamp",
) -> pa.Table:
    """`labels` plus, per requested feature, the value that was served for that label (see the
    module's docstring), and per table its status, version and logging time."""
    if labels.num_rows == 0:
        raise InvalidRequest("the label table is empty: nothing to build a training set for")
    if join not in JOINS:
        raise InvalidRequest(f"join must be one of {JOINS}, got {join!r}")
    if not (Path(root) / served.SERVED).is_dir():
        raise InvalidRequest(
            f"no served-feature log under {Path(root) / served.SERVED}: check --offline-dir, and "
            "that servers log what they serve (the served-log sampling rate)"
        )
    import duckdb

    order = pa.array(range(labels.num_rows), pa.int64())
    if join == "request_id":
        if "request_id" not in labels.column_names:
            raise InvalidRequest(
                "joining by request id needs a 'request_id' column in the labels (the "
                "x-featurewell-request-id each answer returned); or join by entity and time"
            )
        label_ts = None
    else:
        if timestamp_column not in labels.column_names:
            raise InvalidRequest(
                f"the label table has no {timestamp_column!r} column; name its timestamp "
                f"column (it has {labels.column_names})"
            )
        label_ts = microseconds(labels.column(timestamp_column), timestamp_column)
    out = {name: labels.column(name) for name in labels.column_names}
    con = duckdb.connect()
    try:
        for table in logged_tables(registry, root, features):
            logged = read_logged(table)
            on = _join_columns(table, labels, join)
            left = {name: labels.column(name) for name in on}
            if label_ts is not None:
                left["__ts"] = pa.array(label_ts, pa.int64())
            con.register("l", pa.table({**left, "__order": order}))
            con.register("s", logged)
            picked = ", ".join(
                f's."{n}"' if n in logged.column_names else f'NULL AS "{n}"' for n in table.outputs
            )
            extra = "s.status, s.version, s.logged_at_us"
            condition = " AND ".join(f'l."{k}" = s."{k}"' for k in on)
            if join == "request_id":
                if on == ["request_id", "row"]:  # a view of one row serves every row
                    condition = (
                        'l.request_id = s.request_id AND (l."row" = s."row" OR s.__rows = 1)'
                    )
                query = f"""
                    WITH s AS (SELECT *, count(*) OVER (PARTITION BY request_id) AS __rows
                        FROM s QUALIFY row_number() OVER (
                            PARTITION BY {", ".join(f'"{k}"' for k in on)} ORDER BY "row") = 1)
                    SELECT l.__order, {picked}, {extra}
                    FROM l LEFT JOIN s ON {condition} ORDER BY l.__order"""
            else:
                partition = ", ".join(f'"{k}"' for k in [*on, "logged_at_us"])
                query = f"""
                    WITH s AS (SELECT * FROM s QUALIFY row_number() OVER (
                        PARTITION BY {partition} ORDER BY request_id DESC, "row" DESC) = 1)
                    SELECT l.__order, {picked}, {extra}
                    FROM l ASOF LEFT JOIN s ON {condition} AND l.__ts >= s.logged_at_us
                    ORDER BY l.__order"""
            joined = con.sql(query).to_arrow_table()
            con.unregister("l")
            con.unregister("s")
            for name in table.outputs:
                out[f"{table.name}:{name}"] = joined.column(name)
            out[table.name + STATUS] = joined.column("status").cast(pa.uint8())
            out[table.name + VERSION] = joined.column("version").cast(pa.int32())
            out[table.name + LOGGED_AT] = joined.column("logged_at_us").cast(pa.int64())
    finally:
        con.close()
    return pa.table(out)


def _join_columns(table: LoggedTable, labels: pa.Table, join: Join) -> list[str]:
    names = labels.column_names
    if join == "time":
        if not table.keys:
            raise InvalidRequest(
                f"{table.name} is an on-demand transform: its records carry no entity keys, so "
                "join it by request id (or train on its input views by time)"
            )
        missing = [k for k in table.keys if k not in names]
        if missing:
            raise InvalidRequest(
                f"joining {table.name} by entity and time needs its key columns {table.keys} "
                f"in the labels (missing {missing})"
            )
        return list(table.keys)
    if "row" in names:
        return ["request_id", "row"]
    if table.keys and all(k in names for k in table.keys):
        return ["request_id", *table.keys]
    raise InvalidRequest(
        f"joining {table.name} by request id needs, beside 'request_id', the 'row' of the "
        f"entity in the call or its key columns {table.keys}"
    )
