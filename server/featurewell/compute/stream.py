"""The streaming engine's state machine: events in (in the order a partition delivers them),
per-entity tiles updated incrementally, feature values out as of any time. No I/O here: the
runner (`compute/runner.py`) feeds it from Redis Streams or Kafka, writes the rows it emits and
checkpoints the state.

Rules (the batch engine applies the same ones, so both agree):
- **Watermark**: per partition, the greatest event time read so far.
- **Allowed lateness**: an event older than the partition's watermark (before it) minus
  `allowed_lateness` is dropped and counted; anything newer is applied to its own tile, however
  out of order it arrives.
- **Duplicates**: an event id already applied to the entity is skipped (ids are remembered for
  the lateness horizon; an older duplicate is dropped as late anyway).
- **Replays**: after a restart, events at or before the entity's last applied position are
  skipped, so redelivery never double-counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.compute.program import FeatureProgram, ViewProgram, is_last

_NEVER = -(2**62)  # the watermark of a partition nothing was read from (no event is late)
Position = tuple[int, int]  # a partition's position: Redis Stream id (ms, seq); Kafka (offset, 0)
_BEFORE_ANY: Position = (-1, -1)
EntityKey = tuple[Any, ...]


@dataclass(frozen=True)
class EventBatch:
    """Events of one partition in delivery order."""

    partition: int
    columns: Mapping[str, npt.NDArray[Any]]  # key and field columns
    event_time_us: npt.NDArray[np.int64]
    event_ids: Sequence[str]
    positions: Sequence[Position]
    receipts: Sequence[str] = ()  # what the source needs to acknowledge them (stream entry ids)

    def __len__(self) -> int:
        return len(self.event_time_us)


@dataclass
class EntityState:
    # tile index -> one partial aggregate per windowed feature
    tiles: dict[int, list[Any]] = field(default_factory=dict)
    last: list[tuple[int, str, Any] | None] = field(default_factory=list)  # per Last feature
    seen: dict[str, int] = field(default_factory=dict)  # event id -> event time
    # partition -> position of the last event applied (an entity may hear from several
    # partitions: items, when events are partitioned by user)
    applied: dict[int, Position] = field(default_factory=dict)
    newest_us: int = 0


@dataclass
class ViewState:
    program: ViewProgram
    entities: dict[EntityKey, EntityState] = field(default_factory=dict)
    windowed: tuple[FeatureProgram, ...] = ()
    lasts: tuple[FeatureProgram, ...] = ()

    def __post_init__(self) -> None:
        self.windowed = tuple(f for f in self.program.features if not is_last(f))
        self.lasts = tuple(f for f in self.program.features if is_last(f))


@dataclass
class Counters:
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    replayed: int = 0


class StreamEngine:
    """State for the computed views of one event source."""

    def __init__(self, programs: Iterable[ViewProgram], allowed_lateness_us: int) -> None:
        self.views = {p.view.ref: ViewState(p) for p in programs}
        self.lateness_us = allowed_lateness_us
        self.watermarks: dict[int, int] = {}
        self.counters = Counters()

    def apply(self, batch: EventBatch) -> dict[str, set[EntityKey]]:
        """Apply a partition's events; returns the entities each view must emit again."""
        touched: dict[str, set[EntityKey]] = {ref: set() for ref in self.views}
        if not len(batch):
            return touched
        times = batch.event_time_us
        start = self.watermarks.get(batch.partition, _NEVER)
        # The watermark each event meets: the greatest event time read before it.
        before = np.empty(len(times), dtype=np.int64)
        before[0] = start
        if len(times) > 1:
            before[1:] = np.maximum(np.maximum.accumulate(times[:-1]), start)
        on_time = times >= before - self.lateness_us
        self.watermarks[batch.partition] = max(start, int(times.max()))
        self.counters.late += int(len(times) - np.count_nonzero(on_time))
        for state in self.views.values():
            touched[state.program.view.ref] = self._apply_view(state, batch, on_time)
        return touched

    def _apply_view(
        self, state: ViewState, batch: EventBatch, on_time: npt.NDArray[np.bool_]
    ) -> set[EntityKey]:
        program = state.program
        rows = len(batch)
        # What expressions see, as in the batch engine: the source's columns and event_time.
        visible = {**batch.columns, "event_time": batch.event_time_us}
        inputs = [f.inputs(visible, rows) for f in program.features]
        key_names = list(program.view.entity.key_names)
        keys = list(zip(*(batch.columns[k].tolist() for k in key_names), strict=True))
        tiles = program.tile_of(batch.event_time_us).tolist()
        times = batch.event_time_us.tolist()
        touched: set[EntityKey] = set()
        windowed = [program.features.index(f) for f in state.windowed]
        lasts = [program.features.index(f) for f in state.lasts]
        for i in np.flatnonzero(on_time).tolist():
            entity = state.entities.get(keys[i])
            if entity is None:
                entity = state.entities[keys[i]] = _new_entity(state)
            event_id = batch.event_ids[i]
            if batch.positions[i] <= entity.applied.get(batch.partition, _BEFORE_ANY):
                self.counters.replayed += 1
                continue
            entity.applied[batch.partition] = batch.positions[i]
            if event_id in entity.seen:
                self.counters.duplicates += 1
                continue
            entity.seen[event_id] = times[i]
            entity.newest_us = max(entity.newest_us, times[i])
            partials = entity.tiles.get(tiles[i])
            if partials is None:
                partials = entity.tiles[tiles[i]] = [_empty(f) for f in state.windowed]
            for slot, index in enumerate(windowed):
                value, weight, keep = inputs[index]
                if keep[i]:
                    partials[slot] = _add(
                        state.windowed[slot], partials[slot], value[i],
                        None if weight is None else weight[i], times[i], tiles[i], program.tile_us,
                    )  # fmt: skip
            for slot, index in enumerate(lasts):
                value, _, keep = inputs[index]
                if keep[i]:
                    candidate = (times[i], event_id, _plain(value[i]))
                    current = entity.last[slot]
                    if current is None or candidate[:2] > current[:2]:
                        entity.last[slot] = candidate
            touched.add(keys[i])
            self.counters.applied += 1
        return touched

    def values(self, ref: str, key: EntityKey, as_of_us: int) -> list[Any]:
        """The entity's feature values as of `as_of_us` (defaults where nothing counts)."""
        state = self.views[ref]
        entity = state.entities.get(key) or _new_entity(state)
        current = as_of_us // state.program.tile_us
        out: list[Any] = []
        windowed = iter(range(len(state.windowed)))
        lasts = iter(range(len(state.lasts)))
        for feature in state.program.features:
            if is_last(feature):
                got = entity.last[next(lasts)]
                out.append(feature.feature.default if got is None else got[2])
                continue
            slot = next(windowed)
            partials = [
                (tile, parts[slot]) for tile, parts in entity.tiles.items()
                if current - feature.tiles < tile <= current
            ]  # fmt: skip
            out.append(_value(feature, partials, as_of_us, state.program.tile_us))
        return out

    def evict(self) -> int:
        """Forget tiles no window can reach and event ids past the lateness horizon; entities
        left with nothing are dropped. Returns how many entities were dropped."""
        if not self.watermarks:
            return 0
        oldest_watermark = min(self.watermarks.values())
        dropped = 0
        for state in self.views.values():
            horizon = oldest_watermark - self.lateness_us
            floor_tile = horizon // state.program.tile_us - state.program.horizon_tiles
            for key in list(state.entities):
                entity = state.entities[key]
                for tile in [t for t in entity.tiles if t <= floor_tile]:
                    del entity.tiles[tile]
                entity.seen = {i: t for i, t in entity.seen.items() if t >= horizon}
                if not entity.tiles and not entity.seen and all(x is None for x in entity.last):
                    del state.entities[key]
                    dropped += 1
        return dropped


def _new_entity(state: ViewState) -> EntityState:
    return EntityState(last=[None] * len(state.lasts))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _empty(feature: FeatureProgram) -> Any:
    kind = feature.kind
    if kind in ("count", "sum", "decayed sum"):
        return 0
    if kind == "mean":
        return [0.0, 0.0]
    if kind == "mode":
        return {}
    return None  # min, max


def _add(
    feature: FeatureProgram,
    partial: Any,
    value: Any,
    weight: Any,
    time_us: int,
    tile: int,
    tile_us: int,
) -> Any:
    kind = feature.kind
    if kind == "count":
        return partial + 1
    if kind == "sum":
        return partial + _plain(value)
    if kind == "min":
        value = _plain(value)
        return value if partial is None or value < partial else partial
    if kind == "max":
        value = _plain(value)
        return value if partial is None or value > partial else partial
    if kind == "mean":
        w = 1.0 if weight is None else float(weight)
        partial[0] = partial[0] + w * (value if isinstance(value, np.ndarray) else float(value))
        partial[1] += w
        return partial
    if kind == "decayed sum":
        # Decayed to the tile's end, so every term's factor is at most 1.
        end = (tile + 1) * tile_us
        return partial + float(value) * 2.0 ** (-(end - time_us) / feature.half_life_us)
    if kind == "mode":
        category = int(value)
        partial[category] = partial.get(category, 0) + 1
        return partial
    raise AssertionError(f"unknown aggregation {kind}")


def _value(
    feature: FeatureProgram, partials: list[tuple[int, Any]], as_of_us: int, tile_us: int
) -> Any:
    kind = feature.kind
    default = feature.feature.default
    if kind == "count":
        return int(sum(p for _, p in partials))
    if kind == "sum":
        return sum((p for _, p in partials), 0)
    if kind in ("min", "max"):
        present = [p for _, p in partials if p is not None]
        if not present:
            return default
        return min(present) if kind == "min" else max(present)
    if kind == "mean":
        total_w = sum(p[1] for _, p in partials)
        if total_w == 0:
            return default
        total = sum((p[0] for _, p in partials), 0.0)
        return total / total_w
    if kind == "decayed sum":
        return math.fsum(
            p * 2.0 ** (-(as_of_us - (tile + 1) * tile_us) / feature.half_life_us)
            for tile, p in partials
        )
    if kind == "mode":
        counts: dict[int, int] = {}
        for _, partial in partials:
            for category, n in partial.items():
                counts[category] = counts.get(category, 0) + n
        if not counts:
            return default
        return min(counts, key=lambda c: (-counts[c], c))
    raise AssertionError(f"unknown aggregation {kind}")
