"""Bulk-load feature rows from Parquet into the online store.

Rows go through the same `FeatureEngine.write` as WriteFeatures calls (same validation, same
event-time ordering), in batches pipelined per node with a few batches in flight, optionally paced
to a rows-per-second ceiling so serving p99 holds while a backfill runs.

A file is loaded whole or not at all: a first pass converts and checks every row (nulls by each
feature's `nulls` rule, embedding widths, the engine's write validation) and a file with any bad
row is refused, naming the view, the file, the columns and the first bad rows, before a single
row is written. Only then does the second pass write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from featurewell.definitions import FeatureView, Registry
from featurewell.engine.calls import InputColumn, WriteRequest
from featurewell.engine.engine import FeatureEngine
from featurewell.engine.validation import SHOWN_PROBLEMS, Problem, refusal
from featurewell.errors import DefinitionError, InvalidRequest
from featurewell.ingest import columns


@dataclass(frozen=True, slots=True)
class ViewLoad:
    view: str
    rows: int
    written: int
    skipped_older: int
    seconds: float


async def materialize(
    engine: FeatureEngine,
    views: list[FeatureView] | None = None,
    *,
    batch_rows: int = 2000,
    in_flight: int = 4,
    max_rows_per_second: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[ViewLoad]:
    """Load every view that has a ParquetSource (or just `views`). Returns a summary per view;
    `progress(view, rows_sent, rows_to_send)` is called after every batch."""
    registry = engine.registry
    chosen = views if views is not None else [v for v in registry.views.values() if v.source]
    results: list[ViewLoad] = []
    size = min(batch_rows, engine.limits.max_rows)
    paths = {view.ref: _source_path(registry, view) for view in chosen}
    totals = {}
    for view in chosen:  # nothing is written unless every row of every file can be
        totals[view.ref] = check(engine, view, paths[view.ref], size)
    for view in chosen:
        started = time.perf_counter()
        path = paths[view.ref]
        written = skipped = rows = 0
        pending: set[asyncio.Task[Any]] = set()
        for request, _, _ in _batches(view, path, size):
            if not request.event_time_us.size:
                continue  # every row of the batch skipped (a skip_row feature's nulls)
            if max_rows_per_second:
                ahead = rows / max_rows_per_second - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            rows += len(request.event_time_us)
            pending.add(asyncio.create_task(engine.write(request)))
            if len(pending) >= in_flight:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    outcome = task.result()
                    written, skipped = written + outcome.written, skipped + outcome.skipped_older
            if progress is not None:
                progress(view.ref, rows, totals[view.ref])
        for task in pending:
            outcome = await task
            written, skipped = written + outcome.written, skipped + outcome.skipped_older
        results.append(ViewLoad(view.ref, rows, written, skipped, time.perf_counter() - started))
    return results


def check(engine: FeatureEngine, view: FeatureView, path: Path, batch_rows: int) -> int:
    """Convert and validate every row of `view`'s source file; InvalidRequest naming the view,
    the file and the first bad rows (file rows, from 0) if any row cannot be written. Returns
    the rows that will be written (`skip_row` nulls left out)."""
    assert view.source is not None
    timestamp = view.source.timestamp_field
    found: list[Problem] = []
    total = rows = 0
    seen_columns: set[tuple[str, str]] = set()  # a column-wide problem repeats in every batch
    for request, problems, file_rows in _batches(view, path, batch_rows):
        rows += len(request.event_time_us)
        if request.event_time_us.size:
            # The engine's own rules, on placeholders where conversion found a row (or a whole
            # column) bad already: name each once, by what conversion saw.
            _, engine_problems = engine.check_write(request)
            named = {(p.row, p.column) for p in problems}
            whole = {p.column for p in problems if p.row < 0}
            for p in engine_problems:
                if p.column == "event_time" and p.column not in view.feature_index:
                    p = Problem(p.row, timestamp, p.reason)  # the file's name for the column
                if (p.row, p.column) not in named and p.column not in whole:
                    problems.append(p)
        for problem in sorted(_at_file_rows(problems, file_rows), key=lambda p: p.row):
            if problem.row < 0:
                if (problem.column, problem.reason) in seen_columns:
                    continue
                seen_columns.add((problem.column, problem.reason))
            total += 1
            if len(found) < SHOWN_PROBLEMS:
                found.append(problem)
    if total:
        found.sort(key=lambda problem: problem.row)
        what = f"materialize of {view.ref!r} from {path} refused"
        raise InvalidRequest(refusal(what, found, total=total))
    return rows


def _source_path(registry: Registry, view: FeatureView) -> Path:
    if view.source is None:
        raise DefinitionError(f"feature view {view.ref!r} has no source to materialize from")
    path = Path(view.source.path)
    if not path.is_absolute() and registry.root is not None:
        path = registry.root / path
    if not path.exists():
        raise DefinitionError(f"source of {view.ref!r} does not exist: {path}")
    return path


def _batches(
    view: FeatureView, path: Path, batch_rows: int
) -> Iterator[tuple[WriteRequest, list[Problem], npt.NDArray[np.int64]]]:
    """Write requests of the file's rows, the problems conversion found (rows of the request)
    and the file row of each request row: rows a `skip_row` feature has null are left out."""
    assert view.source is not None
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InvalidRequest(
            f"source {path} of {view.ref!r} is not a Parquet file: {exc}"
        ) from None
    timestamp = view.source.timestamp_field
    wanted = [*view.entity.key_names, timestamp, *view.feature_index]
    missing = [c for c in wanted if c not in parquet.schema_arrow.names]
    if missing:
        raise DefinitionError(f"source {path} of {view.ref!r} lacks columns {missing}")
    skip = [f.name for f in view.features if f.nulls == "skip_row"]
    start = 0
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
        file_rows = np.arange(start, start + batch.num_rows)
        start += batch.num_rows
        if skip:
            keep = ~np.any([columns.null_rows(batch.column(name)) for name in skip], axis=0)
            if not keep.all():
                batch, file_rows = batch.filter(pa.array(keep)), file_rows[keep]
        found: dict[str, list[columns.RowProblem]] = {}
        entities = {}
        for key in view.entity.key_names:
            kind = view.entity.join_keys[key].kind
            values, found[key] = columns.key_values(kind, batch.column(key))
            entities[key] = InputColumn(kind, values)
        event_time_us, found[timestamp] = columns.timestamps(batch.column(timestamp))
        features = {}
        for feature in view.features:
            column = batch.column(feature.name)
            features[feature.name], found[feature.name] = columns.feature_values(feature, column)
        problems = [
            Problem(row, column, reason) for column, rows in found.items() for row, reason in rows
        ]
        request = WriteRequest(view.ref, entities, event_time_us, features)
        yield request, problems, file_rows


def _at_file_rows(problems: list[Problem], file_rows: npt.NDArray[np.int64]) -> list[Problem]:
    """`problems` of a batch's request rows, renumbered as rows of the file."""
    return [
        Problem(int(file_rows[p.row]) if p.row >= 0 else -1, p.column, p.reason) for p in problems
    ]
