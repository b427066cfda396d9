"""`featurewell stream`: the streaming engine attached to Redis: events in from a consumer group,
feature rows out to the online store, state checkpointed beside each entity's rows, and (with an
offline store) every row written online kept as history.

Each step reads a batch per partition, loads the state of entities it has not seen since start
(one GET per entity, pipelined per node), applies the events, and writes the touched entities'
rows as of now (event time = the time of the values, so rows only move forward). Every
`checkpoint_s` it writes the changed entities' state and each partition's watermark, and only then
acknowledges the entries: a crash replays unacknowledged entries, and the state skips those it
already holds. Every `refresh_s` it writes again the entities whose values time alone changed
(a 7-day count falls as old events leave the window; a decayed popularity fades).

History survives a crash (SIGKILL included): compute/history.py says how.

This module reads, applies and decides when: what a flush writes is compute/rows.py's, what a
checkpoint saves (and keeps after a failure) compute/checkpoint.py's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from featurewell.compute import sharing
from featurewell.compute.checkpoint import Checkpoints
from featurewell.compute.deadletters import DeadLetterSink, batch_letters
from featurewell.compute.events import wall_clock_us
from featurewell.compute.history import StreamHistory
from featurewell.compute.kafka import KafkaSource
from featurewell.compute.program import compile_view
from featurewell.compute.redis_streams import RedisStreamSource
from featurewell.compute.rows import StreamRows
from featurewell.compute.stats import StreamStats
from featurewell.compute.stream import EventBatch, Position, StreamEngine
from featurewell.definitions import EventSource, Registry
from featurewell.engine.engine import FeatureEngine
from featurewell.engine.validation import WriteRules
from featurewell.offline.store import OfflineStore
from featurewell.store.state import load_watermarks

log = logging.getLogger("featurewell.stream")


class EventReader(Protocol):
    """Where events come from: Redis Streams or Kafka; and where it puts the ones it refuses."""

    @property
    def dead_letters(self) -> DeadLetterSink: ...

    async def start(self) -> None: ...

    async def read(self, count: int) -> list[EventBatch]: ...

    async def ack(self, partition: int, receipts: Sequence[str]) -> None: ...


class StreamRunner:
    def __init__(
        self,
        registry: Registry,
        source: EventSource,
        writer: FeatureEngine,
        *,
        group: str = "featurewell",
        consumer: str = "stream-0",
        partitions: Sequence[int] | None = None,
        allowed_lateness_s: float = 3600.0,
        batch_size: int = 1000,
        checkpoint_s: float = 5.0,
        refresh_s: float = 60.0,
        emit_s: float = 0.1,
        claim_idle_ms: int = 30_000,
        events: EventReader | None = None,
        clock_us: Callable[[], int] = wall_clock_us,
        freeze_gc: bool = False,
        history: OfflineStore | None = None,
        rules: WriteRules | None = None,
        dead_letter_kb: int = 64,
        lease_s: float = 0.0,
        shared: bool = False,
    ) -> None:
        """`events` reads the source (default: its Redis Streams, as consumer `consumer` of
        `group`); a `KafkaSource` reads its topic instead. `clock_us` is the time values are
        computed as of (tests move it).

        `freeze_gc` (what `featurewell stream` sets) moves everything alive to the garbage
        collector's permanent generation after each checkpoint. The state is hundreds of
        thousands of long-lived containers; a full collection walked them all, stalling events
        for up to 0.4 s (19 stalls, 2.8 s in a 20 s run at 5,000 events/s). The state has no
        reference cycles, so reference counting still frees what eviction drops.

        `history` receives every row written online (created when written), one batch per
        checkpoint (a file per view and day), before the checkpoint's states are saved and its
        entries acknowledged: the offline store training sets are built from. A crash loses no
        history row and writes none twice (the module's docstring says how).

        Every event is screened first (compute/events.py, by `rules`, default WriteRules()) and
        a refused one, or one a view's code refuses while applied, goes to the reader's dead
        letters (payloads cut at `dead_letter_kb` KiB); the stream goes on. (`rules` and
        `dead_letter_kb` configure the default Redis reader; a given reader brings its own.)

        `lease_s` > 0 shares the source's partitions with the group's other consumers (each
        partition leased to one at a time: compute/redis_streams.py); every view must then be
        keyed by the key the source is partitioned by, so an entity's events meet one consumer.
        A Kafka source's partitions are shared by its consumer group, which rebalances them
        (compute/kafka.py); `shared` says other workers are in the group, and holds its views
        to the same rule."""
        self.registry = registry
        self.source = source
        self.writer = writer
        self.cluster = writer.store.cluster
        programs = [
            compile_view(v)
            for v in registry.views.values()
            if v.events is not None and v.events.name == source.name
        ]
        if not programs:
            raise ValueError(f"no feature view is computed from event source {source.name!r}")
        self.programs = {p.view.ref: p for p in programs}
        if lease_s or shared:
            kafka = isinstance(events, KafkaSource)
            sharing.check_shareable(source, programs, by_lease=bool(lease_s), kafka=kafka)
        self.engine = StreamEngine(programs, int(allowed_lateness_s * 1e6))
        self.events: EventReader = events or RedisStreamSource(
            self.cluster,
            source,
            group,
            consumer,
            partitions,
            claim_idle_ms,
            rules=rules,
            clock_us=clock_us,
            dead_letter_kb=dead_letter_kb,
            lease_ms=int(lease_s * 1000),
        )
        self.lease_s = lease_s
        self._last_balance = 0.0
        self.group = group
        self.consumer = consumer
        self.batch_size = batch_size
        self.checkpoint_s = checkpoint_s
        self.refresh_s = refresh_s
        self.stats = StreamStats()
        self._last_checkpoint = time.monotonic()
        self._last_refresh = time.monotonic()
        self._checkpointing: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self.clock_us = clock_us
        self.history: StreamHistory | None = None
        if history is not None:
            self.history = StreamHistory(history, self.cluster, source, group, consumer)
        self.checkpoints = Checkpoints(
            self.engine,
            self.cluster,
            source,
            group,
            self.events.ack,
            self.stats,
            freeze_gc=freeze_gc,
        )
        self.rows = StreamRows(
            self.programs, self.engine, writer, self.checkpoints, self.stats, self.history, clock_us
        )
        # Per partition, the position of the last event applied, and of the last event whose
        # row is emitted (or being emitted).
        self._applied_to: dict[int, Position] = {}
        self._emitted_to: dict[int, Position] = {}
        self._flushing = asyncio.Lock()
        self.emit_s = emit_s
        self._last_emit = 0.0
        self._emitting: list[EventBatch] = []  # applied, their rows not yet written

    async def start(self) -> None:
        """Restore the watermarks, create or join the consumer group, claim dead consumers'
        pending entries. (Workers sharing partitions restore a partition's watermark when they
        take it: the others' would be stale, and saved again with this worker's.)"""
        kafka = self.events if isinstance(self.events, KafkaSource) else None
        if not self.lease_s and kafka is None:
            marks = await load_watermarks(self.cluster, self.source, self.group, 10.0)
            if marks:
                self.engine.watermarks = marks
        if self.history is not None:
            await self.history.load()
        if kafka is not None:  # Kafka assigns partitions from the first read on
            kafka.bind(sharing.KafkaHandoff(self), asyncio.get_running_loop())
        await self.events.start()
        if self.lease_s:
            await self.balance()

    async def step(self) -> int:
        """One read-apply-write round; returns how many events it read."""
        if self.lease_s and time.monotonic() - self._last_balance >= self.lease_s / 3:
            await self.balance()
        batches = await self.events.read(self.batch_size)
        read = sum(len(b) for b in batches)
        for batch in batches:
            await self.checkpoints.load_entities(batch)
            letters = []
            parts = [(batch, False)] if self.history is None else self.history.split(batch)
            for part, quiet in parts:
                refused: list[tuple[int, str]] = []
                self.rows.touched(self.engine.apply(part, refused), quiet)
                letters += batch_letters(self.source, part, refused)
            if len(batch):
                self._applied_to[batch.partition] = batch.positions[-1]
            if letters:
                # Written before any entry of the batch can be acknowledged: none is lost.
                await self.events.dead_letters.write(letters)
                for letter in letters:
                    self.stats.dead_letter(letter.reason_class)
            self._emitting.append(batch)
            unacked = self.checkpoints.unacked.setdefault(batch.partition, [])
            unacked.extend(batch.receipts)
            unacked.extend(letter.receipt for letter in batch.rejected)
            self.stats.batches += 1
            self.stats.events += len(batch) + len(batch.rejected)
        now = time.monotonic()
        if now - self._last_emit >= self.emit_s:
            # One write per touched entity per interval: a popular item read 50 times in the
            # interval is written once.
            await self.flush()
        background = self._checkpointing
        if now - self._last_checkpoint >= self.checkpoint_s and (
            background is None or background.done()
        ):
            if background is not None:
                background.result()  # a failed checkpoint stops the runner, loudly
            # Taken now (every applied event's row written first); written in the background,
            # so events keep flowing while states are encoded.
            await self.flush()
            self._last_checkpoint = now
            taken = self.checkpoints.take()
            self._checkpointing = asyncio.get_running_loop().create_task(
                self.checkpoints.write(taken, self.flush_history)
            )
        refreshing = self._refreshing
        if now - self._last_refresh >= self.refresh_s and (refreshing is None or refreshing.done()):
            if refreshing is not None:
                refreshing.result()
            self._last_refresh = now
            # In the background, in slices: events keep flowing while every entity is visited.
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh())
        return read

    def _record_visibility(self, batch: EventBatch) -> None:
        """Redis Stream ids start with the ms Redis appended the entry at: how long each event
        took from appended to servable (its entity's row is written by now)."""
        appended_ms = np.fromiter((p[0] for p in batch.positions), np.float64, len(batch))
        if len(appended_ms) and appended_ms[0] > 1e12:  # stream ids, not Kafka offsets
            self.stats.visible(np.maximum(time.time() * 1000 - appended_ms, 0.0))

    async def run(self, stop: asyncio.Event, idle_sleep_s: float = 0.02) -> None:
        await self.start()
        while not stop.is_set():
            if not await self.step():
                await asyncio.sleep(idle_sleep_s)
        await self.flush()
        for background in (self._checkpointing, self._refreshing):
            if background is not None:
                await background
        await self.checkpoint()
        if self.lease_s:
            assert isinstance(self.events, RedisStreamSource)
            await self.events.release(sorted(self.events.owned))  # others take them at once

    async def balance(self) -> None:
        """One round of partition sharing (compute/sharing.py)."""
        self._last_balance = time.monotonic()
        await sharing.balance(self)

    async def settle(self) -> None:
        """Checkpoint and acknowledge every event applied so far (the background checkpoint
        under way first)."""
        if self._checkpointing is not None:
            await self._checkpointing
        await self.checkpoint()

    def forget(self, partition: int) -> None:
        """Drop what this consumer holds of a partition it does not own: its entities' state
        (a view's entity hears from one partition only when sharing), its entries."""
        for ref, state in self.engine.views.items():
            gone = [k for k, e in state.entities.items() if partition in e.applied]
            for key in gone:
                del state.entities[key]
            self.rows.forget(ref, gone)
            self.checkpoints.dirty[ref].difference_update(gone)
        self.checkpoints.unacked.pop(partition, None)
        self.engine.watermarks.pop(partition, None)
        self._applied_to.pop(partition, None)
        self._emitted_to.pop(partition, None)

    async def seed(self, batches: Sequence[EventBatch]) -> None:
        """Start the state from history (a backfill's event log, in delivery order): apply it,
        and checkpoint every entity it touched, so the live stream continues its windows."""
        for batch in batches:
            for ref, keys in self.engine.apply(batch).items():
                self.checkpoints.dirty[ref] |= keys
        await self.checkpoints.write(self.checkpoints.take(), self.flush_history, ack=False)

    async def flush(self) -> None:
        """Write the rows of every event applied so far (one flush at a time: when one ends,
        the history rows of every event up to `_emitted_to` are pending)."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        self._last_emit = time.monotonic()
        self._emitted_to = dict(self._applied_to)
        if not self._emitting:
            return
        emitting, self._emitting = self._emitting, []
        await self.rows.flush()
        for done in emitting:
            self._record_visibility(done)

    async def flush_history(self) -> None:
        """Write every row of every event applied so far to the offline store as one history
        batch, and record what it covers: steps (1) and (2) of a checkpoint."""
        if self.history is None:
            return
        async with self._flushing:
            await self._flush()
            pending = self.history.take()
            covered = dict(self._emitted_to)
        await self.history.write(pending, covered, self.programs)

    async def checkpoint(self, *, ack: bool = True) -> None:
        """Write changed entities' state and the watermarks, then acknowledge the entries
        (`ack=False`: a test's crash between the two)."""
        await self.flush()
        await self.checkpoints.write(self.checkpoints.take(), self.flush_history, ack=ack)

    async def refresh(self, slice_size: int = 2000) -> None:
        """Write again the entities whose values time alone changed, in slices
        (`StreamRows.refresh`)."""
        self._last_refresh = time.monotonic()
        await self.rows.refresh(slice_size)
