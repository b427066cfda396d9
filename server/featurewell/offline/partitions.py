"""Which history files a label range needs: date pruning, merged files and as-of snapshots.

A Parquet view version is `date=YYYY-MM-DD/<written>-<id>.parquet` files (offline/store.py),
partitioned by the UTC date of `event_time`. Two kinds of file come from `featurewell compact`
(offline/compact.py):

- **Merged files** `<stem of its last input>~c.parquet`: one partition's files, concatenated in
  write order. `~` sorts after every character of a plain name, so a merged file sorts right
  after its last input and before every file written after it. It supersedes every file of its
  partition that sorts before it (its inputs, and an older merged file): readers skip those, so
  from the moment it is renamed into place a reader sees it and not its inputs, and removing
  the inputs afterwards changes nothing a new reader sees.
- **As-of snapshots** `_asof/YYYY-MM-DD~<written>.parquet` (the newest of a date is used):
  what the partitions before that date hold that a label at or after its midnight can still
  get: per entity the row that wins at midnight (stale or not, it is still served), plus every
  row known only after midnight (a late row about an older time). Its schema metadata lists
  the files it was built from.

What a label range [first, last] needs, and why the result is the same as reading everything:
- a row about a time after `last` is known after every label (known = max(created, event
  time)): partitions after last's date are skipped;
- from the partitions before a snapshot's date D (D at or before first's date), a row known at
  or before D's midnight that is not its entity's winner then is beaten, at every label time,
  by that winner (the order is total and the winner stays known): only the snapshot is read;
- a file of those partitions that the snapshot was not built from (written or merged since) is
  read too. Reading more rows than needed never changes a winner, and the snapshot, read
  first, only ties rows of its own partitions, whose live files, read after it, hold the
  same rows in their true order.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

US_PER_DAY = 86_400_000_000
MERGED = "~c"  # a merged file's stem ends with it
ASOF = "_asof"  # the snapshots' folder (underscore: not a partition, skipped by hive readers)
COVERS = b"featurewell.covers"  # snapshot metadata: {partition: [file names]}


def date_of(us: int) -> str:
    return datetime.fromtimestamp(us // US_PER_DAY * 86_400, tz=UTC).strftime("%Y-%m-%d")


def midnight_us(date: str) -> int:
    day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC)
    return int(day.timestamp()) * 1_000_000


def live_files(partition: Path) -> list[Path]:
    """A partition's files in write order, without those a merged file supersedes."""
    names = sorted(p.name for p in partition.glob("*.parquet"))
    merged = [n for n in names if n.endswith(MERGED + ".parquet")]
    if merged:
        names = [n for n in names if n >= merged[-1]]
    return [partition / n for n in names]


def snapshot_for(folder: Path, first_us: int) -> tuple[Path, str] | None:
    """The newest snapshot whose date is at or before the first label's date."""
    first = date_of(first_us)
    found = sorted(p for p in (folder / ASOF).glob("*.parquet") if p.name[:10] <= first)
    return (found[-1], found[-1].name[:10]) if found else None


def covered(snapshot: Path) -> dict[str, set[str]]:
    metadata = pq.read_schema(snapshot).metadata or {}
    return {k: set(v) for k, v in json.loads(metadata.get(COVERS, b"{}")).items()}


def needed(folder: Path, span: tuple[int, int] | None) -> list[Path]:
    """The files a label range needs (all of them with no range), in write order per partition;
    a snapshot comes first."""
    partitions = sorted(p for p in folder.glob("date=*") if p.is_dir())
    if span is None:
        return [f for p in partitions for f in live_files(p)]
    first, last = span
    last_date = date_of(last)
    found = snapshot_for(folder, first)
    skip: dict[str, set[str]] = covered(found[0]) if found else {}
    out = [found[0]] if found else []
    for partition in partitions:
        date = partition.name.removeprefix("date=")
        if date > last_date:
            continue
        files = live_files(partition)
        if found is not None and date < found[1]:
            files = [f for f in files if f.name not in skip.get(partition.name, set())]
        out.extend(files)
    return out


def relative(path: str, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def needed_delta(folder: Path, files: list[str], span: tuple[int, int]) -> list[str]:
    """`needed` for a Delta table's live files (in commit order): the same rule, with the
    table's `date=` partition values and a snapshot in its `_asof` folder (hidden from Delta)."""
    first, last = span
    last_date = date_of(last)
    files = [f for f in files if (delta_date(f) or "") <= last_date]
    found = snapshot_for(folder, first)
    if found is None:
        return files
    skip = covered(found[0])

    def superseded(name: str) -> bool:
        date = delta_date(name)
        if date is None or date >= found[1]:
            return False
        return relative(name, folder) in skip.get(f"date={date}", set())

    return [str(found[0]), *(f for f in files if not superseded(f))]


def delta_date(path: str) -> str | None:
    """The `date=` partition value in a Delta data file's path."""
    for part in reversed(Path(path).parts):
        if part.startswith("date="):
            return part.removeprefix("date=")
    return None
