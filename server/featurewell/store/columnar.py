"""The columnar cache: cached rows held decoded, in numpy blocks, so a ranking call's 400 cached
items are one gather, not 400 Python steps.

`HotKeyCache` (store/cache.py) keeps deciding *which* rows are cached and for how long: admission
by frequency, the TTL, bounds and eviction, invalidations (writes through this server, Redis
tracking), the race check, the raw rows that stand in when Redis fails. This module keeps a
decoded copy of every entry it holds, per group of views read together:

- a **table** per group: an index `hash tag -> slot`, and per slot the time it stops being fresh
  (`fresh_until`, the same instant the raw entry's TTL ends);
- per view of the group, a **block**: the view's fixed-width fields (event time first) as one
  structured numpy array with a row per slot, whether the entity had a row, and one object
  array per string or list feature.

A lookup is `np.fromiter(map(index.get, tags))` (one C-level pass), one fancy index of
`fresh_until` (absent tags hit a sentinel slot that is never fresh) and one `take` per block:
the rows are copied out at once, so a slot reused while the read waits for Redis cannot change
what it serves. The engine decodes only the rows Redis sent and lays the gathered ones over them
(`merge`), so statuses, ages and max age are computed from the same event times as before.

Every entry leaves this copy when it leaves the `HotKeyCache` (the `Listener` hooks), so the
copy is never fresher than the raw entry; when invalidations may have been lost, nothing here
is fresh any more. Blocks grow by doubling (the allocation is at most twice the table's largest
number of entries) and a table goes when its last entry does.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.definitions import FeatureView, Kind
from featurewell.store.cache import CachePolicy, CacheStats, Group, HotKeyCache, Row
from featurewell.store.codec import DecodedRows, RowCodec
from featurewell.values import ColumnValues, Ragged

_FIRST_CAPACITY = 8


@dataclass(frozen=True, slots=True)
class Gathered:
    """One view's cached rows for one read: their positions in the read, their fixed-width
    fields (structured, the codec's layout), presence and variable-width features; and the
    positions of the read's other rows (`fetched`: from Redis, or its fallbacks)."""

    positions: npt.NDArray[np.intp]
    fetched: npt.NDArray[np.intp]
    fixed: npt.NDArray[Any]
    present: npt.NDArray[np.bool_]
    variable: dict[str, npt.NDArray[Any]]


class _Block:
    """One view's decoded rows, a row per slot (the last row is the never-fresh sentinel's)."""

    __slots__ = ("codec", "fixed", "present", "time_field", "variable")

    def __init__(self, codec: RowCodec, capacity: int) -> None:
        self.codec = codec
        self.time_field = _time_field(codec)
        self.fixed = np.zeros(capacity + 1, codec.fixed_dtype)
        self.present = np.zeros(capacity + 1, np.bool_)
        self.variable = {
            f.name: np.empty(capacity + 1, object)
            for f in codec.view.features
            if not f.dtype.is_fixed_width
        }

    def grow(self, capacity: int) -> None:
        used = len(self.present) - 1
        self.fixed = _grown(self.fixed, used, capacity)
        self.present = _grown(self.present, used, capacity)
        self.variable = {n: _grown(a, used, capacity) for n, a in self.variable.items()}

    def gather(
        self,
        positions: npt.NDArray[np.intp],
        fetched: npt.NDArray[np.intp],
        slots: npt.NDArray[np.intp],
    ) -> Gathered:
        return Gathered(
            positions,
            fetched,
            self.fixed.take(slots),
            self.present.take(slots),
            {name: column.take(slots) for name, column in self.variable.items()},
        )

    def put(self, slots: list[int], decoded: DecodedRows, rows: list[int]) -> None:
        """Rows `rows` of `decoded` (all features) into `slots`."""
        self.present[slots] = decoded.present[rows]
        self.fixed[self.time_field][slots] = decoded.event_time_us[rows]
        for name, values in decoded.values.items():
            if isinstance(values, Ragged):  # one array per row (list features are rare)
                for slot, row in zip(slots, rows, strict=True):
                    self.variable[name][slot] = values.row(row).copy()
            elif name in self.variable:
                self.variable[name][slots] = values[rows]
            else:
                self.fixed[name][slots] = values[rows]


class _Table:
    """One group's slots: an index by hash tag and when each slot stops being fresh."""

    __slots__ = ("blocks", "free", "fresh_until", "index")

    def __init__(self, codecs: Sequence[RowCodec]) -> None:
        self.index: dict[bytes, int] = {}
        self.free = list(range(_FIRST_CAPACITY - 1, -1, -1))
        self.fresh_until = np.zeros(_FIRST_CAPACITY + 1)  # the last: the sentinel, never fresh
        self.blocks = [_Block(codec, _FIRST_CAPACITY) for codec in codecs]

    def slot(self, tag: bytes) -> int:
        slot = self.index.get(tag)
        if slot is None:
            if not self.free:
                self._grow()
            slot = self.index[tag] = self.free.pop()
        return slot

    def _grow(self) -> None:
        used = len(self.fresh_until) - 1
        capacity = 2 * used
        self.fresh_until = _grown(self.fresh_until, used, capacity)
        for block in self.blocks:
            block.grow(capacity)
        self.free = list(range(capacity - 1, used - 1, -1))


class ColumnarCache:
    """The serving cache: a `HotKeyCache` (`rows`) deciding what is cached, and its entries
    decoded into blocks for reads (see the module docstring)."""

    def __init__(self, policy: CachePolicy) -> None:
        # Each entry is held twice (raw, for fallbacks; decoded, for reads): counted twice.
        self.rows = HotKeyCache(replace(policy, copies=2))
        self.rows.listener = self
        self._tables: dict[Group, _Table] = {}
        self._codecs: dict[FeatureView, RowCodec] = {}

    def codecs(self, views: Sequence[FeatureView]) -> list[RowCodec]:
        """The codecs the blocks of these views decode rows with (built once per view)."""
        out = []
        for view in views:
            codec = self._codecs.get(view)
            if codec is None:
                if len(self._codecs) >= 4096:  # views of many reloads: keep memory bounded
                    self._codecs.clear()
                codec = self._codecs[view] = RowCodec(view)
            out.append(codec)
        return out

    # The policy's figures and hooks, as the store, the tracker and telemetry read them.
    @property
    def policy(self) -> CachePolicy:
        return self.rows.policy

    @property
    def stats(self) -> CacheStats:
        return self.rows.stats

    @property
    def sequence(self) -> int:
        return self.rows.sequence

    def __len__(self) -> int:
        return len(self.rows)

    def invalidate(self, keys: Sequence[bytes]) -> None:
        self.rows.invalidate(keys)

    def expire_all(self) -> None:
        self.rows.expire_all()

    def lookup(
        self, group: Group, tags: Sequence[bytes], now: float
    ) -> tuple[list[Gathered] | None, npt.NDArray[np.intp]]:
        """Each view's fresh cached rows, copied out (None: no row is cached), and the
        positions of the rows that missed."""
        self.rows.expire_due(now)
        table = self._tables.get(group)
        count = len(tags)
        if table is None:
            self.stats.misses += count
            return None, np.arange(count)
        slots = np.fromiter(map(table.index.get, tags, repeat(-1)), np.intp, count)
        hit = table.fresh_until[slots] > now
        hits = np.flatnonzero(hit)
        self.stats.hits += len(hits)
        self.stats.misses += count - len(hits)
        if not len(hits):
            return None, np.arange(count)
        taken, missed = slots[hits], np.flatnonzero(~hit)
        return [block.gather(hits, missed, taken) for block in table.blocks], missed

    def select(self, group: Group, tags: Sequence[bytes]) -> list[int]:
        return self.rows.select(group, tags)

    def fallback(self, group: Group, tag: bytes, now: float) -> Row:
        return self.rows.fallback(group, tag, now)

    def offer(
        self,
        group: Group,
        codecs: Sequence[RowCodec],
        tags: Sequence[bytes],
        replies: Sequence[Row],
        ttl: float,
        now: float,
        since: int,
    ) -> None:
        """`HotKeyCache.offer`, then the rows it took decoded into their slots. A row that
        does not decode (its bytes do not fit the schema) stays out of the blocks: it is read
        from Redis each time, and served as it always is."""
        taken = self.rows.offer(group, tags, replies, ttl, now, since)
        if not taken:
            return
        views = len(codecs)
        decoded = [
            codec.decode([replies[p] if views == 1 else replies[p][v] for p in taken])
            for v, codec in enumerate(codecs)
        ]
        bad: set[int] = set()
        for rows in decoded:
            if rows.corrupt is not None:
                bad.update(np.flatnonzero(rows.corrupt).tolist())
        good = [i for i in range(len(taken)) if i not in bad]
        for i in bad:  # an older decoded copy of the row must not outlive it
            self.dropped(group, tags[taken[i]])
        if not good:
            return
        table = self._tables.get(group)
        if table is None:
            table = self._tables[group] = _Table(codecs)
        slots = [table.slot(tags[taken[i]]) for i in good]
        for block, rows in zip(table.blocks, decoded, strict=True):
            block.put(slots, rows, good)
        table.fresh_until[slots] = now + ttl

    # -- Listener: entries leaving the HotKeyCache leave here too ----------------------------

    def dropped(self, group: Group, tag: bytes) -> None:
        table = self._tables.get(group)
        if table is None:
            return
        slot = table.index.pop(tag, None)
        if slot is None:
            return
        table.fresh_until[slot] = 0.0
        for block in table.blocks:
            for column in block.variable.values():
                column[slot] = None  # let the strings and arrays go
        table.free.append(slot)
        if not table.index:
            del self._tables[group]

    def expired_all(self) -> None:
        for table in self._tables.values():
            table.fresh_until[:] = 0.0

    @property
    def bytes(self) -> int:  # last: the name would shadow the type in the class body
        return self.rows.bytes


def merge(
    codec: RowCodec,
    rows: Sequence[Any],
    cached: Gathered | None,
    wanted: Collection[str] | None,
) -> DecodedRows:
    """The rows of one view for a read, decoded: the stored `rows` (those at `cached.fetched`,
    or all of them without `cached`) through the codec, and the `cached` ones beside them."""
    if cached is None:
        return codec.decode(rows, wanted)
    positions, fetched = cached.positions, cached.fetched
    time_field = _time_field(codec)
    if not len(fetched):  # every row from memory: nothing to decode
        return DecodedRows(
            cached.present,
            cached.fixed[time_field],
            {
                f.name: _column(f.name, f.dtype.kind, f.dtype.element_dtype, cached)
                for f in codec.view.features
                if wanted is None or f.name in wanted
            },
        )
    decoded = codec.decode(rows, wanted)
    count = len(positions) + len(fetched)
    present = np.empty(count, np.bool_)
    present[positions], present[fetched] = cached.present, decoded.present
    event_time = np.empty(count, np.int64)
    event_time[positions], event_time[fetched] = cached.fixed[time_field], decoded.event_time_us
    values: dict[str, ColumnValues] = {}
    for name, column in decoded.values.items():
        if isinstance(column, Ragged):
            lists: list[Any] = [None] * count
            for position, array in zip(positions.tolist(), cached.variable[name], strict=True):
                lists[position] = array
            for position, row in zip(fetched.tolist(), range(len(column)), strict=True):
                lists[position] = column.row(row)
            values[name] = Ragged.from_rows(lists, column.flat.dtype)
            continue
        out = np.empty((count, *column.shape[1:]), column.dtype)
        out[fetched] = column
        out[positions] = cached.variable[name] if name in cached.variable else cached.fixed[name]
        values[name] = out
    corrupt = None
    if decoded.corrupt is not None:
        corrupt = np.zeros(count, np.bool_)
        corrupt[fetched] = decoded.corrupt
    return DecodedRows(present, event_time, values, corrupt)


def _column(name: str, kind: Kind, dtype: np.dtype[Any], cached: Gathered) -> ColumnValues:
    if kind in (Kind.INT64_LIST, Kind.FLOAT64_LIST):
        return Ragged.from_rows(list(cached.variable[name]), dtype)
    if name in cached.variable:
        return cached.variable[name]
    return cached.fixed[name]


def _time_field(codec: RowCodec) -> str:
    """The event time's field in the codec's fixed block (always the first)."""
    names = codec.fixed_dtype.names
    assert names is not None
    return names[0]


def _grown(array: npt.NDArray[Any], used: int, capacity: int) -> npt.NDArray[Any]:
    """`array` of `used` slots + the sentinel, with room for `capacity` (sentinel last)."""
    out = (
        np.zeros(capacity + 1, array.dtype)
        if array.dtype != object
        else np.empty(capacity + 1, object)
    )
    out[:used] = array[:used]
    return out
