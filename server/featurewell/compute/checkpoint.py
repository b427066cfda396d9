"""A stream worker's checkpoints: what the next one must save (the entities whose state changed,
by view; the entries to acknowledge, by partition), and the saving of one, in the order a crash
needs: the history of every event the states hold, then the states, then the watermarks, then the
acknowledgements (compute/history.py says why that order). The states come back from the same
keys when an entity is first seen again (`load_entities`).

Kept apart from compute/runner.py, which decides when a checkpoint is taken and runs it in the
background: what a checkpoint holds and what it keeps after a failure is this module's alone.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Sequence

from featurewell.compute.state import decode_entity, encode_entity
from featurewell.compute.stats import StreamStats
from featurewell.compute.stream import EntityKey, EventBatch, StreamEngine, ViewState
from featurewell.definitions import EventSource
from featurewell.store.cluster import ClusterClient
from featurewell.store.keys import entity_tags
from featurewell.store.state import load_states, save_states, save_watermarks

_SLICE = 500  # entity states encoded between two turns of the event loop
# Dirty entities by view, entries to acknowledge by partition, watermarks by partition.
Taken = tuple[dict[str, set[EntityKey]], dict[int, list[str]], dict[int, int]]


class Checkpoints:
    """What changed since the last checkpoint, and the writing of the next one."""

    def __init__(
        self,
        engine: StreamEngine,
        cluster: ClusterClient,
        source: EventSource,
        group: str,
        ack: Callable[[int, Sequence[str]], Awaitable[None]],
        stats: StreamStats,
        *,
        freeze_gc: bool,
    ) -> None:
        """`ack` acknowledges a partition's entries (the event reader's); `freeze_gc`: see
        `StreamRunner`."""
        self.engine = engine
        self.cluster = cluster
        self.source = source
        self.group = group
        self.ack = ack
        self.stats = stats
        self.freeze_gc = freeze_gc
        self.dirty: dict[str, set[EntityKey]] = {ref: set() for ref in engine.views}
        self.unacked: dict[int, list[str]] = {}

    def take(self) -> Taken:
        """The dirty entities and the entries to acknowledge, taken at once: every entry taken
        was applied to a state written by this checkpoint (or an earlier one) and its row was
        written, so acknowledging it is safe; what changes meanwhile waits for the next one."""
        dirty, self.dirty = self.dirty, {ref: set() for ref in self.engine.views}
        unacked, self.unacked = self.unacked, {}
        return dirty, unacked, dict(self.engine.watermarks)

    async def write(
        self, taken: Taken, history: Callable[[], Awaitable[None]], ack: bool = True
    ) -> None:
        """States encoded in slices of `_SLICE` (the event loop serves steps in between), then
        `history` (the rows of every event they hold), then the states written, then the
        watermarks, then the acknowledgements (`ack=False`: a test's crash between the two)."""
        dirty, unacked, marks = taken
        try:
            encoded: list[tuple[ViewState, list[EntityKey], list[bytes]]] = []
            for ref, keys in dirty.items():
                state = self.engine.views[ref]
                present = [key for key in keys if key in state.entities]
                for start in range(0, len(present), _SLICE):
                    chunk = present[start : start + _SLICE]
                    encoded.append(
                        (state, chunk, [encode_entity(state, state.entities[k]) for k in chunk])
                    )
                    await asyncio.sleep(0)
            # Encoded first, history next: the history holds the rows of every event the
            # states hold (and maybe a few more), never fewer.
            await history()
            for state, chunk, states in encoded:
                await save_states(self.cluster, state.program.view, tags(chunk), states, 10.0)
            await save_watermarks(self.cluster, self.source, self.group, marks, 10.0)
            if ack:
                for partition, ids in unacked.items():
                    await self.ack(partition, ids)
                unacked = {}
        except BaseException:
            # Not written (or not acknowledged): keep it all for the next attempt.
            for ref, keys in dirty.items():
                self.dirty[ref] |= keys
            for partition, ids in unacked.items():
                self.unacked.setdefault(partition, [])[:0] = ids
            raise
        for partition, ids in unacked.items():  # ack=False: still to acknowledge
            self.unacked.setdefault(partition, [])[:0] = ids
        for _ in self.engine.evict_in_slices():
            await asyncio.sleep(0)  # events flow between slices
        if self.freeze_gc:
            gc.freeze()
        self.stats.checkpoints += 1

    async def load_entities(self, batch: EventBatch) -> None:
        """Bring in the checkpointed state of entities this run has not seen yet."""
        for state in self.engine.views.values():
            names = list(state.program.view.entity.key_names)
            keys = set(zip(*(batch.columns[n].tolist() for n in names), strict=True))
            missing = [key for key in keys if key not in state.entities]
            if not missing:
                continue
            stored = await load_states(self.cluster, state.program.view, tags(missing), 10.0)
            for key, raw in zip(missing, stored, strict=True):
                if raw:
                    state.entities[key] = decode_entity(state, raw)


def tags(keys: list[EntityKey]) -> list[bytes]:
    """Hash tags of entity keys (tuples of key values), all at once."""
    return entity_tags([list(column) for column in zip(*keys, strict=True)], len(keys))
