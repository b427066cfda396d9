"""The rows a stream worker writes online: the entities its events touched since the last flush
(each written once per flush however many events touched it), the values last written (a refresh
writes again only those time alone changed), and every written row queued as history for the next
checkpoint (compute/history.py), but for the "quiet" ones whose history a crash already kept.

compute/runner.py decides when rows are flushed and refreshed; what a flush writes is this
module's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from featurewell.compute.checkpoint import Checkpoints
from featurewell.compute.events import wall_clock_us
from featurewell.compute.history import StreamHistory
from featurewell.compute.program import ViewProgram, write_request
from featurewell.compute.stats import StreamStats
from featurewell.compute.stream import EntityKey, StreamEngine
from featurewell.engine.engine import FeatureEngine

log = logging.getLogger("featurewell.stream")


class StreamRows:
    """The entities whose rows are due, and the writing of their rows."""

    def __init__(
        self,
        programs: dict[str, ViewProgram],
        engine: StreamEngine,
        writer: FeatureEngine,
        checkpoints: Checkpoints,
        stats: StreamStats,
        history: StreamHistory | None,
        clock_us: Callable[[], int],
    ) -> None:
        self.programs = programs
        self.engine = engine
        self.writer = writer
        self.checkpoints = checkpoints  # a written row's entity is saved by the next one
        self.stats = stats
        self.history = history
        self.clock_us = clock_us
        self.to_emit: dict[str, set[EntityKey]] = {ref: set() for ref in programs}
        # Entities touched only by quiet events: written online, their history already kept.
        self.quiet: dict[str, set[EntityKey]] = {ref: set() for ref in programs}
        self.emitted: dict[tuple[str, EntityKey], list[Any]] = {}
        # Per view, the tile its windows were last written at (rows emitted since start are
        # as of now: a refresh has nothing to add until the tile moves).
        start_us = clock_us()
        self.refreshed_tile = {ref: start_us // p.tile_us for ref, p in programs.items()}

    def touched(self, applied: dict[str, set[EntityKey]], quiet: bool) -> None:
        """Entities whose rows the next flush writes (`quiet`: their events' history is kept)."""
        due = self.quiet if quiet else self.to_emit
        for ref, keys in applied.items():
            due[ref] |= keys

    async def flush(self) -> None:
        """Write the rows of every entity touched since the last flush."""
        to_emit, self.to_emit = self.to_emit, {ref: set() for ref in self.programs}
        quiet, self.quiet = self.quiet, {ref: set() for ref in self.programs}
        for ref, keys in quiet.items():
            keys -= to_emit[ref]  # touched by a new event too: its row is new history
            to_emit[ref] |= keys
        await self.write(to_emit, quiet=quiet)

    def forget(self, ref: str, keys: list[EntityKey]) -> None:
        """Entities of view `ref` this worker no longer holds: nothing of theirs is due."""
        for key in keys:
            self.emitted.pop((ref, key), None)
        self.to_emit[ref].difference_update(keys)
        self.quiet[ref].difference_update(keys)

    async def refresh(self, slice_size: int = 2000) -> None:
        """Write again every entity whose values changed with time alone, `slice_size` at a
        time (a pass over every entity at once would stall the events behind it).

        Only views time can change are visited: last values never change with time, and a
        window only moves when its tile does; decayed sums change continuously."""
        now_us = self.clock_us()
        for ref, state in self.engine.views.items():
            tile = now_us // state.program.tile_us
            decays = any(f.kind == "decayed sum" for f in state.windowed)
            if not state.windowed or (not decays and self.refreshed_tile.get(ref) == tile):
                continue
            self.refreshed_tile[ref] = tile
            keys = list(state.entities)
            for start in range(0, len(keys), slice_size):
                chunk = {ref: set(keys[start : start + slice_size])}
                self.stats.refreshed += await self.write(chunk, only_changed=True)
                await asyncio.sleep(0)

    async def write(
        self,
        touched: dict[str, set[EntityKey]],
        only_changed: bool = False,
        quiet: dict[str, set[EntityKey]] | None = None,
    ) -> int:
        """Write the entities' rows online, and queue them as history (but for the `quiet`
        ones: replayed after a crash, their rows are in the history already)."""
        as_of = self.clock_us()
        as_of = max(as_of, *self.engine.watermarks.values()) if self.engine.watermarks else as_of
        written = 0
        for ref, keys in touched.items():
            if not keys:
                continue
            program = self.programs[ref]
            rows: list[tuple[EntityKey, list[Any]]] = []
            for key in keys:
                values = self.engine.values(ref, key, as_of)
                if only_changed and _same(self.emitted.get((ref, key)), values):
                    continue
                self.emitted[(ref, key)] = values
                rows.append((key, values))
                self.checkpoints.dirty[ref].add(key)
            if rows:
                request = write_request(program, rows, as_of)
                _, problems = self.writer.check_write(request)
                if problems:
                    # A row the events made but the write rules refuse (a float32 sum past
                    # its range, say) must not stop the stream or poison the row: the entity
                    # keeps its last good value, and the refusal is logged and counted.
                    bad = {p.row for p in problems}
                    log.warning(
                        "stream: %d computed rows of %s refused, not written: %s",
                        len(bad),
                        ref,
                        "; ".join(str(p) for p in problems[:3]),
                    )
                    self.stats.rows_refused += len(bad)
                    rows = [row for i, row in enumerate(rows) if i not in bad]
                    if not rows:
                        continue
                    request = write_request(program, rows, as_of)
                await self.writer.write(request)
                written += len(rows)
                if self.history is not None:
                    hushed = quiet.get(ref, set()) if quiet else set()
                    kept = [row for row in rows if row[0] not in hushed] if hushed else rows
                    if kept:
                        history = request if kept is rows else write_request(program, kept, as_of)
                        self.history.add(program, history, wall_clock_us())
        self.stats.rows_written += written
        return written


def _same(previous: list[Any] | None, values: list[Any]) -> bool:
    if previous is None:
        return False
    return all(
        bool(np.array_equal(a, b))
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray)
        else a == b
        for a, b in zip(previous, values, strict=True)
    )
