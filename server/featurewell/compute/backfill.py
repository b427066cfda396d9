"""`featurewell backfill`: an event log's history through the batch engine.

- Current values (as of `as_of`) go to the online store, paced to `max_rows_per_second` so
  serving keeps its latency.
- With `history_dir`, the values as of every `history_step` go to the offline store there
  (`featurewell.offline`), the feature history training sets are built from.
- With `seed_group`, the streaming engine's state for that consumer group is started from the same
  log, so `featurewell stream` continues the windows instead of starting them empty.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurewell.compute import batch
from featurewell.compute.program import ViewProgram, compile_view, history_table, write_request
from featurewell.compute.runner import StreamRunner
from featurewell.compute.stream import EventBatch
from featurewell.definitions import EventSource, Registry
from featurewell.engine.engine import FeatureEngine
from featurewell.engine.validation import WriteRules, event_time_problem
from featurewell.errors import DefinitionError, InvalidRequest
from featurewell.offline.store import OfflineStore


@dataclass(frozen=True)
class Backfilled:
    view: str
    source: str
    entities: int
    seconds: float
    history_rows: int


async def backfill(
    registry: Registry,
    source: EventSource,
    writer: FeatureEngine,
    log: pa.Table,
    *,
    as_of_us: int,
    allowed_lateness_s: float = 3600.0,
    max_rows_per_second: float | None = None,
    history_dir: Path | None = None,
    history_step: timedelta = timedelta(days=1),
    history_format: str = "parquet",
    seed_group: str | None = None,
    batch_rows: int = 2000,
    views: set[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[Backfilled]:
    """`views` (names) limits the online and history writes; the seeded state covers them all.
    `progress(view, rows_written, rows_to_write)` is called after every batch.
    Rows are written at `as_of_us`, through the engine's write validation: an as-of time it
    would refuse (beyond now + max_future_skew_s) is refused here, before anything is computed."""
    reason = event_time_problem(
        as_of_us, WriteRules.from_settings(writer.limits), time.time_ns() // 1000
    )
    if reason is not None:
        raise InvalidRequest(f"backfill of {source.name!r} as of {as_of_us} refused: {reason}")
    _check_log(source, log)
    # A paced backfill is a background job beside serving: DuckDB gets one core, not every
    # core of a big machine. (On these 2 cores it made no measurable difference: the paced
    # writes and the Python aggregation dominate; bench/bluegreen.py.)
    threads = 1 if max_rows_per_second else None
    accepted = batch.accepted_events(log, int(allowed_lateness_s * 1e6), threads)
    programs = [
        compile_view(v)
        for v in registry.views.values()
        if v.events is not None
        and v.events.name == source.name
        and (views is None or v.name in views)
    ]
    done = []
    for program in programs:
        started = time.perf_counter()
        values = batch.compute(program, accepted, as_of_us, threads)
        rows = list(values.items())
        for start in range(0, len(rows), batch_rows):
            if max_rows_per_second:
                ahead = start / max_rows_per_second - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await writer.write(write_request(program, rows[start : start + batch_rows], as_of_us))
            if progress is not None:
                progress(program.view.ref, min(start + batch_rows, len(rows)), len(rows))
        history = 0
        if history_dir is not None:
            history = _history(
                program,
                accepted,
                OfflineStore(history_dir, history_format),
                history_step,
                as_of_us,
                threads,
            )
        done.append(
            Backfilled(
                program.view.ref, source.name, len(rows), time.perf_counter() - started, history
            )
        )
    if seed_group is not None:
        runner = StreamRunner(
            registry, source, writer, group=seed_group, allowed_lateness_s=allowed_lateness_s
        )
        await runner.seed(log_batches(source, log))
    return done


async def backfill_logs(
    registry: Registry,
    writer: FeatureEngine,
    *,
    as_of_us: int,
    seed_group: str | None = "featurewell",
    views: set[str] | None = None,
    max_rows_per_second: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[Backfilled]:
    """Every event source's Parquet log (`EventSource(parquet=...)`) through `backfill`: what
    `featurewell materialize` does for computed views."""
    sources = {
        v.events.name: v.events
        for v in registry.views.values()
        if v.events is not None and v.events.parquet and (views is None or v.name in views)
    }
    done: list[Backfilled] = []
    for source in sources.values():
        log = read_log(source, registry, None)
        done += await backfill(
            registry,
            source,
            writer,
            log,
            as_of_us=as_of_us,
            seed_group=seed_group,
            views=views,
            max_rows_per_second=max_rows_per_second,
            progress=progress,
        )
    return done


def log_batches(source: EventSource, log: pa.Table, size: int = 5000) -> list[EventBatch]:
    """The log as the streaming engine reads it: per partition, in delivery order."""
    ordered = batch.accepted_events(log, 2**62)  # every event, ordered (nothing is that late)
    partitions = np.asarray(ordered.column("_partition").to_numpy())
    out = []
    for partition in np.unique(partitions).tolist():
        part = ordered.filter(pa.array(partitions == partition))
        for start in range(0, part.num_rows, size):
            piece = part.slice(start, size)
            columns = {name: batch.numpy_column(piece.column(name)) for name in source.columns}
            out.append(
                EventBatch(
                    int(partition),
                    columns,
                    piece.column("event_time").to_numpy(),
                    [str(i) for i in piece.column("event_id").to_pylist()],
                    list(
                        zip(
                            piece.column("_pos_major").to_pylist(),
                            piece.column("_pos_minor").to_pylist(),
                            strict=True,
                        )
                    ),
                )
            )
    return out


def read_log(source: EventSource, registry: Registry, path: str | None) -> pa.Table:
    """The source's Parquet log (a file or a folder of them; relative to the repo)."""
    target = Path(path or source.parquet)
    if not str(target):
        raise DefinitionError(f"event source {source.name!r} has no parquet=; pass --log")
    if not target.is_absolute() and registry.root is not None and not target.exists():
        target = registry.root / target
    if not target.exists():
        raise DefinitionError(f"event log {target} does not exist")
    return pq.read_table(target)


def _history(
    program: ViewProgram,
    accepted: pa.Table,
    store: OfflineStore,
    step: timedelta,
    as_of_us: int,
    threads: int | None,
) -> int:
    """The values as of every step, into the offline store: each snapshot's rows are as of its
    time and created at it (what a stream running then would have written)."""
    step_us = int(step / timedelta(microseconds=1))
    first = int(pc.min(accepted.column("event_time")).as_py() or as_of_us)
    written = 0
    for point in range((first // step_us + 1) * step_us, as_of_us + 1, step_us):
        values = batch.compute(program, accepted, point, threads)
        if values:
            request = write_request(program, list(values.items()), point)
            written += store.write(program.view, history_table(program.view, request, point)).rows
    return written


def _check_log(source: EventSource, log: pa.Table) -> None:
    needed = {"event_time", "event_id", *source.columns}
    missing = sorted(needed - set(log.column_names))
    if missing:
        raise DefinitionError(f"the event log of {source.name!r} lacks columns {missing}")
