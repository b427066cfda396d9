"""The offline store: every view's feature history as Parquet, partitioned by date, the input of
point-in-time training sets.

    <root>/<view>/v<n>/date=YYYY-MM-DD/<created>-<id>.parquet

A history row is what an online row was, plus when it became known:
- the entity's key columns and the view's features;
- `event_time` (int64 µs): the time the values are as of, as the online row's event time;
- `created` (int64 µs): when the row was written, so reached serving.

With `offline_format="delta"` each view version is a Delta Lake table instead (through the
`deltalake` package, `pip install 'featurewell[delta]'`), partitioned by the same `date`, with
the same columns: appends are transactions, and Spark or Databricks read it natively.

Writers: `featurewell backfill --history-out` (a snapshot per step, created at its as-of time) and
`featurewell stream --history-out` (every row it writes online, created when written). A view
with a `ParquetSource` and no history of its own is read from its source, each row known from
its event time. Files are only ever added, so readers (DuckDB, Spark, pandas) never see one
half-written: each is written under a temporary name and renamed.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurewell.definitions import FeatureView, Registry
from featurewell.errors import ConfigError, DefinitionError

US_PER_DAY = 86_400_000_000


FORMATS = ("parquet", "delta")


@dataclass(frozen=True)
class HistorySource:
    """Where a view's history is read from (Parquet files, or a Delta table's Arrow dataset),
    and how its columns map."""

    files: tuple[str, ...]
    event_time: str  # column name
    created: str | None  # column name; None: known from the event time
    event_time_is_timestamp: bool
    dataset: Any = None  # a Delta table's pyarrow dataset, instead of files


@dataclass(frozen=True)
class Written:
    rows: int
    files: list[Path]


class OfflineStore:
    def __init__(self, root: str | Path, table_format: str = "parquet") -> None:
        if table_format not in FORMATS:
            raise ConfigError(f"offline format must be one of {FORMATS}, got {table_format!r}")
        self.root = Path(root)
        self.table_format = table_format

    def folder(self, view: FeatureView) -> Path:
        return self.root / view.name / f"v{view.version}"

    def write(self, view: FeatureView, table: pa.Table) -> Written:
        """Append history rows (keys, `event_time`, `created`, features); one file per day."""
        needed = [*view.entity.key_names, "event_time", "created", *view.feature_index]
        missing = [name for name in needed if name not in table.column_names]
        if missing:
            raise DefinitionError(f"history rows for {view.ref} lack columns {missing}")
        table = table.select(needed)
        if table.num_rows == 0:
            return Written(0, [])
        days = np.asarray(table.column("event_time").to_numpy()) // US_PER_DAY
        if self.table_format == "delta":
            dates = [datetime.fromtimestamp(d * 86_400, tz=UTC).strftime("%Y-%m-%d") for d in days]
            write_deltalake = _deltalake().write_deltalake
            folder = self.folder(view)
            folder.mkdir(parents=True, exist_ok=True)
            write_deltalake(
                str(folder),
                table.append_column("date", pa.array(dates)),
                mode="append",
                partition_by=["date"],
            )
            return Written(table.num_rows, [folder])
        written = []
        stamp = int(pc.max(table.column("created")).as_py())
        for day in np.unique(days).tolist():
            date = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d")
            target = self.folder(view) / f"date={date}"
            target.mkdir(parents=True, exist_ok=True)
            path = target / f"{stamp}-{uuid.uuid4().hex[:12]}.parquet"
            temporary = path.with_suffix(".tmp")
            pq.write_table(table.filter(pa.array(days == day)), temporary)
            os.replace(temporary, path)  # readers never see a half-written file
            written.append(path)
        return Written(table.num_rows, written)

    def write_batch(self, view: FeatureView, table: pa.Table, name: str) -> Written:
        """Like `write`, but the files are named `<name>.parquet` (one per day) and replace any
        file of that name, in every day: writing a batch again (a stream re-deriving it after a
        crash) leaves one copy, never two. Delta tables append (a transaction per batch)."""
        if self.table_format == "delta":
            return self.write(view, table)
        needed = [*view.entity.key_names, "event_time", "created", *view.feature_index]
        missing = [column for column in needed if column not in table.column_names]
        if missing:
            raise DefinitionError(f"history rows for {view.ref} lack columns {missing}")
        table = table.select(needed)
        days = np.asarray(table.column("event_time").to_numpy()) // US_PER_DAY
        written = []
        for day in np.unique(days).tolist():
            date = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d")
            target = self.folder(view) / f"date={date}"
            target.mkdir(parents=True, exist_ok=True)
            path = target / f"{name}.parquet"
            temporary = path.with_suffix(".tmp")
            pq.write_table(table.filter(pa.array(days == day)), temporary)
            os.replace(temporary, path)
            written.append(path)
        for stale in self.folder(view).glob(f"date=*/{name}.parquet"):
            if stale not in written:  # an earlier write of the batch, on another day
                stale.unlink(missing_ok=True)
        return Written(table.num_rows, written)

    def source_of(self, view: FeatureView, registry: Registry) -> HistorySource | None:
        """The view's own history if any was written, else its ParquetSource, else None."""
        if (self.folder(view) / "_delta_log").is_dir():
            dataset = _deltalake().DeltaTable(str(self.folder(view))).to_pyarrow_dataset()
            return HistorySource((), "event_time", "created", False, dataset)
        files = sorted(str(p) for p in self.folder(view).glob("date=*/*.parquet"))
        if files:
            return HistorySource(tuple(files), "event_time", "created", False)
        if view.source is None:
            return None
        path = Path(view.source.path)
        if not path.is_absolute() and registry.root is not None:
            path = registry.root / path
        if not path.exists():
            return None
        schema = pq.read_schema(path)
        field = view.source.timestamp_field
        timestamp = pa.types.is_timestamp(schema.field(field).type)
        created = "created" if "created" in schema.names else None
        return HistorySource((str(path),), field, created, timestamp)


def _deltalake() -> Any:
    try:
        import deltalake
    except ImportError:
        raise ConfigError(
            "the Delta Lake offline format needs the deltalake package: "
            "pip install 'featurewell[delta]'"
        ) from None
    return deltalake
