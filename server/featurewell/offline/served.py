"""The served-feature log in the offline store: what GetFeatures answered, per view, so training
can use exactly the vectors a model saw and skew can be measured, not guessed.

    <root>/_served/<view>/v<n>/date=YYYY-MM-DD/<written>-<id>.parquet
    <root>/_served/_transforms/<transform>/date=YYYY-MM-DD/<written>-<id>.parquet

One row per entity row of a logged call and view (a ranking call of 1 user + 500 items logs one
row of the user's views and 500 of the items'), with the columns named in `COLUMNS`, then the
entity's key columns (as the entity declares them), then one column per feature of the view
(the types history uses: `offline/store.py`), or per output of the transform. `date` is the
UTC day of `logged_at_us`. View names cannot start with `_`, so `_served` never collides with a
view's history folder.

A record may be written more than once (the log is at least once); readers drop duplicates by
(`request_id`, `row`).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from featurewell.definitions import FeatureView

SERVED = "_served"
TRANSFORMS = "_transforms"

# The columns every record has, before the entity keys and the values.
COLUMNS = pa.schema(
    [
        ("request_id", pa.string()),  # 32 hex digits; returned in x-featurewell-request-id
        ("logged_at_us", pa.int64()),  # when the answer was made (µs since the epoch)
        ("caller", pa.string()),  # the model name (x-featurewell-model), "" when none
        ("principal", pa.string()),  # the authenticated principal, "" when auth is off
        ("row", pa.int32()),  # the entity row within the call
        ("event_time", pa.int64()),  # the served row's event time (µs); 0: none (NOT_FOUND)
        ("status", pa.uint8()),  # featurewell.values.Status of the row
        ("version", pa.int32()),  # the view version served (0 for a transform)
    ]
)
REQUEST_ID_HEADER = "x-featurewell-request-id"


def view_folder(root: str | Path, view: FeatureView) -> Path:
    """Where `view`'s served records live."""
    return Path(root) / SERVED / view.name / f"v{view.version}"


def transform_folder(root: str | Path, name: str) -> Path:
    """Where an on-demand transform's served outputs live."""
    return Path(root) / SERVED / TRANSFORMS / name


def read(folder: Path, since_us: int | None = None, until_us: int | None = None) -> pa.Table:
    """The records under `folder` logged in [since_us, until_us), duplicates dropped (the first
    written is kept). An empty table when nothing was logged."""
    if not folder.exists():
        return pa.table({field.name: pa.array([], field.type) for field in COLUMNS})
    # Finished files only: a writer's file in progress has another suffix until it is renamed.
    files = sorted(str(path) for path in folder.rglob("*.parquet"))
    if not files:
        return pa.table({field.name: pa.array([], field.type) for field in COLUMNS})
    dataset = ds.dataset(
        files, format="parquet", partitioning="hive", partition_base_dir=str(folder)
    )
    condition = None
    stamp = ds.field("logged_at_us")
    if since_us is not None:
        condition = stamp >= since_us
    if until_us is not None:
        before = stamp < until_us
        condition = before if condition is None else condition & before
    table = dataset.to_table(filter=condition)
    if "date" in table.column_names:
        table = table.drop_columns(["date"])
    if table.num_rows == 0:
        return table
    # At least once: a record re-sent after a failed acknowledgement is the same record.
    keyed = table.append_column("_order", pa.array(range(table.num_rows), pa.int64())).group_by(
        ["request_id", "row"], use_threads=False
    )
    first = keyed.aggregate([("_order", "min")]).column("_order_min")
    return table.take(first).sort_by([("logged_at_us", "ascending"), ("row", "ascending")])
