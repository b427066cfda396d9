"""The offline store: every view's feature history as Parquet, partitioned by date, the input of
point-in-time training sets.

    <root>/<view>/v<n>/date=YYYY-MM-DD/<written>-<id>.parquet

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

Write order, the last tie-break of the training rule (offline/training.py), is recorded, not
guessed: a Parquet file is named by the time it was written (µs, 16 digits, strictly increasing
within a process), so file name order is write order, then row order within a file. A Delta
table's files are ordered by the commit that added them (its transaction log), then row order.
Files written before names carried the write time were named by their newest `created`, which
preceded their write, so they still sort before every file written since.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurewell.definitions import FeatureView, Registry
from featurewell.errors import ConfigError, DefinitionError
from featurewell.offline import partitions

US_PER_DAY = 86_400_000_000


FORMATS = ("parquet", "delta")


@dataclass(frozen=True)
class HistorySource:
    """Where a view's history is read from, and how its columns map. `files` are Parquet files
    in write order (a Delta table's live data files, ordered by the commit that added them)."""

    files: tuple[str, ...]
    event_time: str  # column name
    created: str | None  # column name; None: known from the event time
    event_time_is_timestamp: bool


_stamp_lock = threading.Lock()
_last_stamp = 0


def _write_stamp() -> int:
    """The wall-clock µs of a write, strictly increasing within this process: two writes in one
    microsecond still name their files in the order they were written."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns() // 1000, _last_stamp + 1)
        return _last_stamp


def write_stamp() -> int:
    """A file's write time for its name, as history files are named (strictly increasing in
    this process), for other writers of the offline store (telemetry/served_log.py)."""
    return _write_stamp()


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
        stamp = _write_stamp()
        for day in np.unique(days).tolist():
            date = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d")
            target = self.folder(view) / f"date={date}"
            target.mkdir(parents=True, exist_ok=True)
            path = target / f"{stamp:016d}-{uuid.uuid4().hex[:12]}.parquet"
            temporary = path.with_suffix(".tmp")
            pq.write_table(table.filter(pa.array(days == day)), temporary)
            os.replace(temporary, path)  # readers never see a half-written file
            written.append(path)
        return Written(table.num_rows, written)

    def write_batch(self, view: FeatureView, table: pa.Table, name: str) -> Written:
        """Like `write` (files named `<written>-<name>.parquet`, one per day), but writing a
        batch again (a stream re-deriving it after a crash) replaces the earlier files of that
        name, in every day: one copy, never two, in the write order of the last write. `name`
        holds no '-'. Delta tables append (a transaction per batch)."""
        if self.table_format == "delta":
            return self.write(view, table)
        needed = [*view.entity.key_names, "event_time", "created", *view.feature_index]
        missing = [column for column in needed if column not in table.column_names]
        if missing:
            raise DefinitionError(f"history rows for {view.ref} lack columns {missing}")
        table = table.select(needed)
        days = np.asarray(table.column("event_time").to_numpy()) // US_PER_DAY
        written = []
        stamp = _write_stamp()
        for day in np.unique(days).tolist():
            date = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d")
            target = self.folder(view) / f"date={date}"
            target.mkdir(parents=True, exist_ok=True)
            path = target / f"{stamp:016d}-{name}.parquet"
            temporary = path.with_suffix(".tmp")
            pq.write_table(table.filter(pa.array(days == day)), temporary)
            os.replace(temporary, path)
            written.append(path)
        for stale in self.folder(view).glob(f"date=*/[0-9]*-{name}.parquet"):
            if stale not in written:  # an earlier write of the batch
                stale.unlink(missing_ok=True)
        return Written(table.num_rows, written)

    def check_exists(self) -> None:
        """Refuse a missing root: a mistyped --offline-dir would otherwise read as no history
        at all, every value NOT_FOUND."""
        if not self.root.is_dir():
            raise ConfigError(
                f"offline store {self.root} does not exist (or is not a directory): check "
                "--offline-dir (FEATUREWELL_OFFLINE_DIR)"
            )

    def source_of(
        self, view: FeatureView, registry: Registry, span: tuple[int, int] | None = None
    ) -> HistorySource | None:
        """The view's own history if any was written, else its ParquetSource, else None. A
        ParquetSource file that is not there is an error naming its path, not an empty history.

        `span` (the first and last label time, µs): only the files labels in it can need
        (offline/partitions.py); the training set is the same as from every file."""
        folder = self.folder(view)
        if (folder / "_delta_log").is_dir():
            files = delta_files(folder)
            if span is not None:
                files = tuple(partitions.needed_delta(folder, list(files), span))
            return HistorySource(files, "event_time", "created", False)
        if any(folder.glob("date=*/*.parquet")):
            found = partitions.needed(folder, span)
            return HistorySource(tuple(str(p) for p in found), "event_time", "created", False)
        if view.source is None:
            return None
        path = Path(view.source.path)
        if not path.is_absolute() and registry.root is not None:
            path = registry.root / path
        if not path.is_file():
            raise ConfigError(
                f"{view.ref} has no history under {self.folder(view)} and its ParquetSource "
                f"{path} does not exist: write its history or fix the source's path"
            )
        schema = pq.read_schema(path)
        field = view.source.timestamp_field
        timestamp = pa.types.is_timestamp(schema.field(field).type)
        created = "created" if "created" in schema.names else None
        return HistorySource((str(path),), field, created, timestamp)


def delta_files(folder: Path) -> tuple[str, ...]:
    """A Delta table's live data files in write order: by the commit that added each (read from
    the transaction log's JSON commits), then by path. Files whose commit JSON was cleaned up
    after a checkpoint are older than every remaining commit, so they come first."""
    table = _deltalake().DeltaTable(str(folder))
    features = set(table.protocol().reader_features or ())
    if features & {"deletionVectors", "columnMapping"}:
        raise ConfigError(
            f"the Delta table {folder} uses {sorted(features)}; training sets read its data "
            "files directly, so rewrite it without deletion vectors or column mapping"
        )
    added: dict[str, int] = {}
    for commit in sorted((folder / "_delta_log").glob("*.json")):
        version = int(commit.stem)
        for line in commit.read_text().splitlines():
            action = json.loads(line).get("add") if line.strip() else None
            if action is not None:
                added[unquote(action["path"])] = version
    live = []
    for uri in table.file_uris():
        local = uri.removeprefix("file://")
        relative = Path(local).resolve().relative_to(folder.resolve()).as_posix()
        live.append((added.get(relative, -1), local))
    return tuple(path for _, path in sorted(live))


def _deltalake() -> Any:
    try:
        import deltalake
    except ImportError:
        raise ConfigError(
            "the Delta Lake offline format needs the deltalake package: "
            "pip install 'featurewell[delta]'"
        ) from None
    return deltalake
