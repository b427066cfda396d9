"""The streaming engine's state machine: events in (in the order a partition delivers them),
per-entity tiles updated incrementally, feature values out as of any time. No I/O here: the
runner (`compute/runner.py`) feeds it from Redis Streams or Kafka, writes the rows it emits
(`compute/rows.py`) and checkpoints the state (`compute/checkpoint.py`).

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

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.compute.program import FeatureProgram, ViewProgram, is_last
from featurewell.compute.tiles import ADD, VALUE, Adder, Finisher, empty

_NEVER = -(2**62)  # the watermark of a partition nothing was read from (no event is late)
Position = tuple[int, int]  # a partition's position: Redis Stream id (ms, seq); Kafka (offset, 0)
_BEFORE_ANY: Position = (-1, -1)
_REASON_CHARS = 500
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
    # Each event as read (a dead letter keeps it if a view refuses the event), and the entries
    # of this read the screen refused (compute/events.py): acknowledged with the batch.
    payloads: Sequence[Any] = ()
    rejected: Sequence[Any] = ()

    def __len__(self) -> int:
        return len(self.event_time_us)

    def without(self, rows: Sequence[int]) -> EventBatch:
        """The batch less `rows` (indexes), with no rejected entries (they stay with self)."""
        dropped = set(rows)
        keep = [i for i in range(len(self)) if i not in dropped]
        return self.take(keep)

    def take(self, rows: Sequence[int]) -> EventBatch:
        index = np.asarray(rows, dtype=np.int64)
        return EventBatch(
            self.partition,
            {name: column[index] for name, column in self.columns.items()},
            self.event_time_us[index],
            [self.event_ids[i] for i in rows],
            [self.positions[i] for i in rows],
            [self.receipts[i] for i in rows] if self.receipts else (),
            [self.payloads[i] for i in rows] if self.payloads else (),
        )


@dataclass(slots=True)
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
    adders: tuple[Adder, ...] = ()
    windows: tuple[int, ...] = ()  # distinct window lengths, in tiles
    # Per feature: (program, slot in its kind, index in windows or -1, finisher or None)
    plan: tuple[tuple[FeatureProgram, int, int, Finisher | None], ...] = ()

    def __post_init__(self) -> None:
        self.windowed = tuple(f for f in self.program.features if not is_last(f))
        self.lasts = tuple(f for f in self.program.features if is_last(f))
        # Per windowed feature, its arithmetic, looked up once (not per event).
        self.adders = tuple(ADD[f.kind] for f in self.windowed)
        # Values: the tiles in each distinct window are found once per entity, not per feature.
        self.windows = tuple(sorted({f.tiles for f in self.windowed}))
        plan: list[tuple[FeatureProgram, int, int, Finisher | None]] = []
        for feature in self.program.features:
            if is_last(feature):
                plan.append((feature, self.lasts.index(feature), -1, None))
            else:
                plan.append(
                    (
                        feature,
                        self.windowed.index(feature),
                        self.windows.index(feature.tiles),
                        VALUE[feature.kind],
                    )
                )
        self.plan = tuple(plan)


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

    def apply(
        self, batch: EventBatch, refused: list[tuple[int, str]] | None = None
    ) -> dict[str, set[EntityKey]]:
        """Apply a partition's events; returns the entities each view must emit again.

        With `refused`, an event a view's own code refuses (an expression that fails on it, an
        aggregation's check, a non-finite value an expression made) is left out and listed there
        as (index in `batch`, reason), and the rest is applied; without it, that raises."""
        touched: dict[str, set[EntityKey]] = {ref: set() for ref in self.views}
        if not len(batch):
            return touched
        known = 0 if refused is None else len(refused)
        inputs = self._inputs(batch, refused)
        if refused is not None and len(refused) > known:
            first: dict[int, str] = {}  # one reason per event (several features may refuse it)
            for i, reason in refused[known:]:
                first.setdefault(i, reason)
            refused[known:] = sorted(first.items())
            batch = batch.without(list(first))
            if not len(batch):
                return touched
            inputs = self._inputs(batch, None)
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
            ref = state.program.view.ref
            touched[ref] = self._apply_view(state, batch, on_time, inputs[ref])
        return touched

    def _inputs(
        self, batch: EventBatch, refused: list[tuple[int, str]] | None
    ) -> dict[str, list[tuple[Any, Any, npt.NDArray[np.bool_]]]]:
        """Every view's per-feature inputs of the batch. When the batch cannot be evaluated
        whole, each event is evaluated alone (only then: one failing event costs a pass) to
        find those to refuse; non-finite values an expression made are refused too."""
        try:
            out = {ref: _inputs_of(state, batch) for ref, state in self.views.items()}
        except Exception as exc:
            if refused is None:
                raise
            failing = []
            for i in range(len(batch)):
                try:
                    for state in self.views.values():
                        _inputs_of(state, batch.take([i]))
                except Exception as alone:
                    # The view's own message, bounded: it may quote the event's values.
                    failing.append((i, f"{type(alone).__name__}: {alone}"[:_REASON_CHARS]))
            if not failing:  # fails whole but on no event alone: not the data's fault
                raise exc
            refused.extend(failing)
            return {}
        if refused is not None:
            for state in self.views.values():
                for feature, (value, weight, keep) in zip(
                    state.program.features, out[state.program.view.ref], strict=True
                ):
                    for name, column in (("value", value), ("weight", weight)):
                        for i in _not_finite(column, keep):
                            refused.append(
                                (
                                    i,
                                    f"view {state.program.view.ref!r} feature "
                                    f"{feature.feature.name!r}: its {name} is not finite",
                                )
                            )
        return out

    def _apply_view(
        self,
        state: ViewState,
        batch: EventBatch,
        on_time: npt.NDArray[np.bool_],
        inputs: list[tuple[Any, Any, npt.NDArray[np.bool_]]],
    ) -> set[EntityKey]:
        program = state.program
        key_names = list(program.view.entity.key_names)
        keys = list(zip(*(batch.columns[k].tolist() for k in key_names), strict=True))
        tiles = program.tile_of(batch.event_time_us).tolist()
        times = batch.event_time_us.tolist()
        touched: set[EntityKey] = set()
        # Plain Python lists, not numpy element access, inside the per-event loop.
        windowed = [
            (slot, adder, feature, *_listed(inputs[program.features.index(feature)]))
            for slot, (adder, feature) in enumerate(zip(state.adders, state.windowed, strict=True))
        ]
        lasts = [
            (slot, *_listed(inputs[program.features.index(feature)]))
            for slot, feature in enumerate(state.lasts)
        ]
        tile_us = program.tile_us
        partition = batch.partition
        positions = batch.positions
        event_ids = batch.event_ids
        for i in np.flatnonzero(on_time).tolist():
            key = keys[i]
            entity = state.entities.get(key)
            if entity is None:
                entity = state.entities[key] = _new_entity(state)
            event_id = event_ids[i]
            if positions[i] <= entity.applied.get(partition, _BEFORE_ANY):
                self.counters.replayed += 1
                continue
            entity.applied[partition] = positions[i]
            if event_id in entity.seen:
                self.counters.duplicates += 1
                continue
            time_us = times[i]
            tile = tiles[i]
            entity.seen[event_id] = time_us
            if time_us > entity.newest_us:
                entity.newest_us = time_us
            partials = entity.tiles.get(tile)
            if partials is None:
                partials = entity.tiles[tile] = [empty(f) for f in state.windowed]
            for slot, adder, feature, value, weight, keep in windowed:
                if keep[i]:
                    partials[slot] = adder(
                        feature,
                        partials[slot],
                        value[i],
                        None if weight is None else weight[i],
                        time_us,
                        tile,
                        tile_us,
                    )
            for slot, value, _, keep in lasts:
                if keep[i]:
                    current = entity.last[slot]
                    if current is None or (time_us, event_id) > current[:2]:
                        entity.last[slot] = (time_us, event_id, value[i])
            touched.add(key)
            self.counters.applied += 1
        return touched

    def values(self, ref: str, key: EntityKey, as_of_us: int) -> list[Any]:
        """The entity's feature values as of `as_of_us` (defaults where nothing counts)."""
        state = self.views[ref]
        entity = state.entities.get(key)
        if entity is None:
            entity = _new_entity(state)
        tile_us = state.program.tile_us
        current = as_of_us // tile_us
        tiles = entity.tiles.items()
        in_window = [
            [(tile, parts) for tile, parts in tiles if current - n < tile <= current]
            for n in state.windows
        ]
        out: list[Any] = []
        for feature, slot, window, finish in state.plan:
            if finish is None:
                got = entity.last[slot]
                out.append(feature.feature.default if got is None else got[2])
            else:
                out.append(finish(feature, in_window[window], slot, as_of_us, tile_us))
        return out

    def evict(self) -> int:
        """Forget tiles no window can reach and event ids past the lateness horizon; entities
        left with nothing are dropped. Returns how many entities were dropped."""
        return sum(self.evict_in_slices())

    def evict_in_slices(self, size: int = 2000) -> Iterator[int]:
        """`evict`, `size` entities at a time: yields the entities dropped by each slice, so
        the runner can serve events between slices (a pass over 100,000 entities would hold
        the event loop for a quarter of a second)."""
        if not self.watermarks:
            return
        oldest_watermark = min(self.watermarks.values())
        horizon = oldest_watermark - self.lateness_us
        for state in self.views.values():
            floor_tile = horizon // state.program.tile_us - state.program.horizon_tiles
            keys = list(state.entities)
            for start in range(0, len(keys), size):
                dropped = 0
                for key in keys[start : start + size]:
                    entity = state.entities.get(key)
                    if entity is None:
                        continue
                    for tile in [t for t in entity.tiles if t <= floor_tile]:
                        del entity.tiles[tile]
                    if entity.seen:
                        entity.seen = {i: t for i, t in entity.seen.items() if t >= horizon}
                    if not entity.tiles and not entity.seen and not any(entity.last):
                        del state.entities[key]
                        dropped += 1
                yield dropped


def _inputs_of(state: ViewState, batch: EventBatch) -> list[tuple[Any, Any, Any]]:
    # What expressions see, as in the batch engine: the source's columns and event_time.
    visible = {**batch.columns, "event_time": batch.event_time_us}
    return [f.inputs(visible, len(batch)) for f in state.program.features]


def _not_finite(column: Any, keep: npt.NDArray[np.bool_]) -> list[int]:
    """Rows (kept by the feature's filter) whose float value is NaN or infinite."""
    if not isinstance(column, np.ndarray) or column.dtype.kind != "f":
        return []
    bad: npt.NDArray[np.bool_] = ~np.isfinite(column)
    if bad.ndim > 1:
        bad = np.asarray(bad.any(axis=tuple(range(1, bad.ndim))))
    rows: list[int] = np.flatnonzero(bad & keep).tolist()
    return rows


def _new_entity(state: ViewState) -> EntityState:
    return EntityState(last=[None] * len(state.lasts))


def _listed(inputs: tuple[Any, Any, Any]) -> tuple[Any, Any, list[bool]]:
    """A feature's per-event inputs as Python lists (vectors stay numpy rows)."""
    value, weight, keep = inputs
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if isinstance(weight, np.ndarray):
        weight = weight.tolist()
    return value, weight, keep.tolist()
