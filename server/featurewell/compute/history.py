"""The streaming engine's offline history: every row `featurewell stream` writes online, kept in
the offline store (offline/store.py) so training sets see what was served, and kept so that a
crash (SIGKILL included) loses no history row and writes none twice.

A checkpoint (compute/checkpoint.py) writes, in this order: (1) the rows of every event its states
hold, as one history batch `<written>-stream_<consumer>_<hash>_<n>` (a file per view and day, so
writing batch n again replaces it); (2) in one HSET, "batch n written, it covers partition p up
to position P_p" (store/state.py `save_progress`); (3) the states; (4) the watermarks; (5) the
acknowledgements.
After a crash the unacknowledged entries come again, and:
- an entity whose state (3) was saved skips the events it holds (the replay rule): its rows are
  in batch n already, since (1) came first;
- an entity whose state was not saved applies them again and writes its row online again; its
  history is written again only for events past P_p. Those at or before P_p are "quiet": their
  rows are in batch n, recorded by (2);
- a crash between (1) and (2) leaves batch n unrecorded: the restarted consumer writes its next
  batch under the same number, n, and replaces those files (no state of that checkpoint was
  saved, so every one of their events comes again, not quiet). A replacement under another
  consumer name writes other names: that window (between a file's rename and one HSET) is the
  one place a row can be written twice, and then as a second row of the same values.
Re-deriving from the log instead (no write before the acknowledgement) was rejected: the log
says which events were applied, not which rows the stream wrote when, and rows are written as
of wall-clock time, so the rows a restart re-derives are not the ones it lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from collections.abc import Mapping

import pyarrow as pa

from featurewell.compute.program import ViewProgram, history_table
from featurewell.compute.stream import EventBatch, Position
from featurewell.definitions import EventSource
from featurewell.engine.calls import WriteRequest
from featurewell.offline.store import OfflineStore
from featurewell.store.cluster import ClusterClient
from featurewell.store.state import load_progress, save_progress


class StreamHistory:
    """One consumer's history rows waiting for the next checkpoint, and its progress."""

    def __init__(
        self,
        store: OfflineStore,
        cluster: ClusterClient,
        source: EventSource,
        group: str,
        consumer: str,
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.source = source
        self.group = group
        self.consumer = consumer
        self.pending: list[tuple[ViewProgram, pa.Table]] = []
        self.batch = 0  # this consumer's last history batch written and recorded
        # Per partition, the position of the last event whose rows the history holds.
        self.covered: dict[int, Position] = {}

    async def load(self) -> None:
        self.covered, self.batch = await load_progress(
            self.cluster, self.source, self.group, self.consumer, 10.0
        )

    def add(self, program: ViewProgram, request: WriteRequest, created_us: int) -> None:
        self.pending.append((program, history_table(program.view, request, created_us)))

    def take(self) -> list[tuple[ViewProgram, pa.Table]]:
        pending, self.pending = self.pending, []
        return pending

    def split(self, batch: EventBatch) -> list[tuple[EventBatch, bool]]:
        """The batch as (part, quiet) pairs: events at or before the position the history
        covers (replayed after a crash; their rows are kept already) are quiet."""
        covered = self.covered.get(batch.partition)
        if covered is None or not len(batch) or batch.positions[0] > covered:
            return [(batch, False)]
        quiet = sum(1 for position in batch.positions if position <= covered)
        if quiet == len(batch):
            return [(batch, True)]
        rest = dataclasses.replace(batch.take(range(quiet, len(batch))), rejected=batch.rejected)
        return [(batch.take(range(quiet)), True), (rest, False)]

    async def write(
        self,
        pending: list[tuple[ViewProgram, pa.Table]],
        covered: Mapping[int, Position],
        programs: Mapping[str, ViewProgram],
    ) -> None:
        """Write `pending` as the next batch (a file per view and day), then record, in one
        HSET, that the batch is written and covers each partition up to `covered`."""
        if not pending and covered == self.covered:
            return
        number = self.batch + 1 if pending else self.batch
        try:
            by_view: dict[str, list[pa.Table]] = {}
            for program, table in pending:
                by_view.setdefault(program.view.ref, []).append(table)
            name = f"stream_{_file_tag(self.group, self.consumer)}_{number:010d}"
            for ref, tables in by_view.items():
                # Off the event loop: Parquet encoding releases the GIL.
                await asyncio.to_thread(
                    self.store.write_batch, programs[ref].view, pa.concat_tables(tables), name
                )
            await save_progress(
                self.cluster, self.source, self.group, self.consumer, number, covered, 10.0
            )
        except BaseException:
            self.pending[:0] = pending  # the next attempt writes them (under the same number)
            raise
        self.batch = number
        self.covered = dict(covered)


def _file_tag(group: str, consumer: str) -> str:
    """The consumer in a file name: readable (its letters and digits), and unique (a hash of
    group and consumer); no '-' (offline/store.py's separator)."""
    digest = hashlib.sha1(f"{group}\0{consumer}".encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9]', '', consumer)[:40]}_{digest}"
