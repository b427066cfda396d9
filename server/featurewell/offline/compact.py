"""`featurewell compact`: merge a view's small history files per date partition, and write the
as-of snapshot that lets training sets skip the partitions before a date (offline/partitions.py).

Safe with concurrent readers and writers, because nothing a reader lists is ever wrong:
1. A partition's files are merged in write order (file name order, then row order) into one
   file named after its last input with `~c` appended, written under a temporary name and
   renamed. From that rename on, readers skip the inputs (the merged file supersedes every file
   of its partition that sorts before it), so they see the merged rows or the inputs, never
   both and never neither; the merged file sorts exactly where its inputs did, before every
   file written after them, so the write-order tie-break is unchanged.
2. Only then are the inputs removed. A reader that listed them before the rename and opens one
   after its removal lists again (offline/training.py).
3. Writers only add files, except that a stream consumer may rewrite its newest history batch
   after a crash (`OfflineStore.write_batch`), so each consumer's newest batch is not merged.
   Files younger than `settle_s` (by the write time in their name) and
   files after a temporary file still being written are left for the next run, and if a file
   that sorts among the inputs appears while merging (a writer slower than `settle_s`), the
   merged file is removed again and the partition left as it was.

The snapshot `_asof/<before>~<written>.parquet` is rebuilt after merging, from the live files
of every partition before `before`; a partition written to later is read in full until the
next run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from featurewell.definitions import FeatureView
from featurewell.errors import ConfigError
from featurewell.offline import partitions
from featurewell.offline.store import OfflineStore, delta_files, write_stamp

log = logging.getLogger("featurewell.compact")


@dataclass
class Compacted:
    partitions: int = 0  # partitions merged
    files_in: int = 0
    files_out: int = 0
    skipped: list[str] = field(default_factory=list)  # partitions left as they were, and why
    snapshot: Path | None = None
    snapshot_rows: int = 0


def compact(
    store: OfflineStore, view: FeatureView, before: str, *, settle_s: float = 60.0
) -> Compacted:
    """Merge the files of each partition dated before `before` (YYYY-MM-DD), then write the
    as-of snapshot for `before`."""
    try:
        partitions.midnight_us(before)  # a bad date is refused before anything is touched
    except ValueError:
        raise ConfigError(f"compact before {before!r}: give a date as YYYY-MM-DD") from None
    folder = store.folder(view)
    if not folder.is_dir():
        raise ConfigError(f"{view.ref} has no history under {folder}: nothing to compact")
    done = Compacted()
    if store.table_format == "delta":  # the snapshot only
        done.skipped.append(
            "a Delta table's files are not merged here: Delta's OPTIMIZE does it, and loses the "
            "write order of rows equal in event time and created (docs/training.md)"
        )
        done.snapshot, done.snapshot_rows = write_snapshot(store, view, before)
        return done
    settled = int((time.time() - settle_s) * 1_000_000)
    held = _open_batches(folder)
    for partition in sorted(p for p in folder.glob("date=*") if p.is_dir()):
        if partition.name.removeprefix("date=") >= before:
            continue
        merged = _merge(partition, settled, held, done)
        if merged:
            done.partitions += 1
            done.files_in += merged
            done.files_out += 1
    done.snapshot, done.snapshot_rows = write_snapshot(store, view, before)
    return done


def _stamp(path: Path) -> int:
    head = path.name[:16]
    return int(head) if head.isdigit() else 0


_BATCH = re.compile(r"^\d{16}-(stream_.+)_(\d{10})\.parquet$")


def _open_batches(folder: Path) -> set[str]:
    """The files of each stream consumer's newest history batch (compute/history.py): a
    consumer restarted after a crash may write that batch again, replacing its files
    (`OfflineStore.write_batch`), so they must still exist under their own names. A batch with
    a later one after it was recorded, and is final."""
    newest: dict[str, int] = {}
    found: list[tuple[str, str, int]] = []
    for path in folder.glob("date=*/*.parquet"):
        match = _BATCH.match(path.name)
        if match:
            tag, number = match.group(1), int(match.group(2))
            newest[tag] = max(newest.get(tag, number), number)
            found.append((path.name, tag, number))
    return {name for name, tag, number in found if number == newest[tag]}


def _merge(partition: Path, settled: int, held: set[str], done: Compacted) -> int:
    """Merge the partition's settled prefix of live files; the number of inputs (0: none)."""
    live = partitions.live_files(partition)
    writing = [_stamp(p) for p in partition.glob("*.tmp")]
    horizon = min([settled, *(s - 1 for s in writing)])
    inputs: list[Path] = []
    for path in live:
        if _stamp(path) > horizon or path.name in held:
            break
        inputs.append(path)
    if len(inputs) < 2:
        return 0
    target = partition / f"{inputs[-1].stem}{partitions.MERGED}.parquet"
    temporary = partition / f"{inputs[-1].stem}{partitions.MERGED}.tmp"
    table = pa.concat_tables(pq.read_table(p) for p in inputs)  # write order, row order kept
    pq.write_table(table, temporary)
    os.replace(temporary, target)
    names = {p.name for p in inputs}
    strays = [p for p in partitions.live_files(partition) if p.name < target.name]
    strays = [p for p in strays if p.name not in names]
    if strays:  # a writer slower than settle_s: undo, so its rows are not hidden
        target.unlink()
        done.skipped.append(f"{partition.name}: {strays[0].name} appeared while merging")
        log.warning("%s: left unmerged, %s appeared while merging", partition, strays[0].name)
        return 0
    for path in inputs:
        path.unlink(missing_ok=True)
    return len(inputs)


def write_snapshot(store: OfflineStore, view: FeatureView, before: str) -> tuple[Path | None, int]:
    """`_asof/<before>.parquet`: from the partitions before `before`, each entity's winner at
    its midnight plus every row known only after it, in write order."""
    import duckdb

    folder = store.folder(view)
    midnight = partitions.midnight_us(before)
    covers: dict[str, list[str]] = {}
    files: list[Path] = []
    if store.table_format == "delta":  # its live files, in commit order
        for name in delta_files(folder):
            date = partitions.delta_date(name)
            if date is not None and date < before:
                covers.setdefault(f"date={date}", []).append(partitions.relative(name, folder))
                files.append(Path(name))
    for partition in sorted(p for p in folder.glob("date=*") if p.is_dir()):
        if store.table_format == "parquet" and partition.name.removeprefix("date=") < before:
            live = partitions.live_files(partition)
            covers[partition.name] = [p.name for p in live]
            files.extend(live)
    if not files:
        return None, 0
    keys = ", ".join(f'"{k}"' for k in view.entity.key_names)
    con = duckdb.connect()
    try:
        paths = [str(p) for p in files]
        con.register(
            "__files",
            pa.table({"__path": paths, "__file": pa.array(range(len(paths)), pa.int64())}),
        )
        kept = con.sql(
            f"""
            WITH history AS (
                SELECT {keys}, event_time, created, greatest(created, event_time) AS __known,
                       f.__file, h.file_row_number AS __line
                FROM read_parquet(?, filename = true, file_row_number = true,
                                  hive_partitioning = false) h
                JOIN __files f ON f.__path = h.filename),
            ranked AS (
                SELECT *, row_number() OVER (
                    PARTITION BY {keys} ORDER BY event_time, created, __file, __line) AS __rank
                FROM history)
            SELECT __file, __line FROM ranked
            QUALIFY __known > {midnight} OR __rank = max(
                CASE WHEN __known <= {midnight} THEN __rank END) OVER (PARTITION BY {keys})
            ORDER BY __file, __line
            """,
            params=[paths],
        ).to_arrow_table()
    finally:
        con.close()
    lines: dict[int, list[int]] = defaultdict(list)
    for file, line in zip(
        kept.column("__file").to_pylist(), kept.column("__line").to_pylist(), strict=True
    ):
        lines[file].append(line)
    parts = [pq.read_table(files[f]).take(pa.array(rows, pa.int64())) for f, rows in lines.items()]
    table = pa.concat_tables(parts)
    metadata = {**(table.schema.metadata or {}), partitions.COVERS: json.dumps(covers).encode()}
    table = table.replace_schema_metadata(metadata)
    # A new name for every snapshot, never a path replaced in place: a reader that opened the
    # previous one must not read the rest of it from a different file.
    target = folder / partitions.ASOF / f"{before}~{write_stamp():016d}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, target)
    for older in (folder / partitions.ASOF).glob(f"{before}~*.parquet"):
        if older.name < target.name:
            older.unlink(missing_ok=True)  # superseded: readers pick the newest of a date
    return target, table.num_rows
