"""The hot-key cache: recently read rows of hot entities, kept in the server's memory.

Ranking calls ask for the same trending items again and again; serving those rows from memory
skips Redis for most of a call. The cache holds raw stored rows (the same bytes Redis returns,
decoded by the same codec), so a cached answer cannot differ from a fetched one.

- **Admission by frequency**: a row enters only on its `admit_after`-th fetch within the
  frequency window (exact counts, halved when the window fills: TinyLFU's aging without the
  sketch), so the long tail of one-off items never pushes hot rows out. The store asks
  `select` before fetching, so Redis tracks (for invalidation) only the rows that will be cached.
- **Bounded** by entries and by bytes (estimated from each view group's first row: rows of one
  group share their fixed-width block); expired entries leave first, then the oldest fresh ones.
- **Fresh for a per-view TTL** (the planner caps it at a fraction of the view's max age); past it
  an entry no longer answers reads but may still stand in for Redis as a *fallback* for
  `fallback_s` more seconds when Redis cannot answer.
- **Invalidated** by writes through this server at once, and by writes from anywhere through Redis
  client-side-caching invalidations (`featurewell.store.tracking`). A read that raced an
  invalidation never re-inserts the value it fetched before it.

Entries are whole entity rows as one read fetches them: the reply of the row's GET (one view)
or MGET (several views of the same entity), keyed by the row's hash tag within its *group* (the
views read together). A hit is then one C-level dict lookup per entity row, not per key: fresh
entries live in their own dicts and expire in bulk (queues of insertion batches), so the read
path never checks a timestamp per row.
"""

from __future__ import annotations

import operator
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

_ENTRY_OVERHEAD = 150  # bytes of dict slots and objects per entry besides key and value


class Miss:
    def __repr__(self) -> str:
        return "MISS"


MISS = Miss()  # what `lookup` returns for a key it cannot answer


@dataclass(frozen=True, slots=True)
class CachePolicy:
    max_entries: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    admit_after: int = 2
    fallback_s: float = 300.0
    race_window_s: float = 1.0  # longer than any read: how long invalidations are remembered


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    admissions: int = 0
    evictions: int = 0
    invalidations: int = 0
    fallbacks: int = 0  # expired entries served because the store failed

    @property
    def hit_ratio(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


Group = tuple[bytes, ...]  # the key prefixes of the views read together, in read order
Row = Any  # a GET reply (bytes | None) or an MGET reply (list of bytes | None)


class _Rows:
    """One group's entries, keyed by hash tag (dicts keyed by the request's own tag objects,
    whose hashes Python has already computed, so each step is one cheap dict operation)."""

    __slots__ = ("expired", "fresh", "fresh_until", "row_bytes", "seen")

    def __init__(self) -> None:
        self.row_bytes = 0  # a typical entry's size, measured on the group's first row
        self.fresh: OrderedDict[bytes, Row] = OrderedDict()  # oldest first, for eviction
        self.fresh_until: dict[bytes, float] = {}
        self.expired: OrderedDict[bytes, tuple[Row, float]] = OrderedDict()  # (row, usable until)
        self.seen: dict[bytes, int] = {}


class HotKeyCache:
    def __init__(self, policy: CachePolicy) -> None:
        self.policy = policy
        self.stats = CacheStats()
        self.bytes = 0
        self.sequence = 0  # counts invalidations; a read remembers it to detect races
        self._groups: dict[Group, _Rows] = {}
        self._groups_of: dict[bytes, list[_Rows]] = {}  # prefix -> groups holding that view
        self._batches: deque[tuple[float, _Rows, list[bytes]]] = deque()  # by expiry
        self._entries = 0
        self._seen_limit = max(1024, 4 * policy.max_entries)
        self._invalidated: dict[tuple[bytes, bytes], int] = {}
        self._invalidated_before: dict[tuple[bytes, bytes], int] = {}
        self._rotated_at = time.monotonic()
        self._all_invalidated_at = -1  # the sequence of the last expire_all

    def __len__(self) -> int:
        return self._entries

    def lookup(
        self, group: Group, tags: Sequence[bytes], now: float
    ) -> tuple[list[Row], npt.NDArray[np.bool_]]:
        """Each row's fresh cached reply (None: known to have no row) or MISS, and which rows
        missed."""
        if self._batches and now >= self._batches[0][0]:
            self._expire(now)
        rows = self._groups.get(group)
        if rows is None:
            self.stats.misses += len(tags)
            return [MISS] * len(tags), np.ones(len(tags), dtype=np.bool_)
        found = list(map(rows.fresh.get, tags, repeat(MISS)))
        missed = np.fromiter(map(operator.is_, found, repeat(MISS)), np.bool_, len(found))
        misses = int(np.count_nonzero(missed))
        self.stats.misses += misses
        self.stats.hits += len(tags) - misses
        return found, missed

    def fallback(self, group: Group, tag: bytes, now: float) -> Row:
        """The row's cached reply if still within the fallback horizon, fresh or not; else
        MISS."""
        rows = self._groups.get(group)
        if rows is None:
            return MISS
        row = rows.fresh.get(tag, MISS)
        if row is MISS:
            expired = rows.expired.get(tag)
            if expired is None or expired[1] <= now:
                return MISS
            row = expired[0]
        self.stats.fallbacks += 1
        return row

    def select(self, group: Group, tags: Sequence[bytes]) -> list[int]:
        """Of rows the cache missed and a read is about to fetch, the positions of those to
        cache when they arrive (seen often enough, or cached before): their reads must be
        tracked. The others' sightings are counted."""
        state = self._state(group)
        expired, seen, admit_after = state.expired, state.seen, self.policy.admit_after
        chosen: list[int] = []
        for position, tag in enumerate(tags):
            if tag in expired:
                chosen.append(position)
                continue
            count = seen.get(tag, 0) + 1
            if count >= admit_after:
                chosen.append(position)
            else:
                seen[tag] = count
        if len(seen) > self._seen_limit:  # age the counts: recent popularity wins
            state.seen = {tag: count >> 1 for tag, count in seen.items() if count > 1}
        return chosen

    def offer(
        self,
        group: Group,
        tags: Sequence[bytes],
        rows: Sequence[Row],
        ttl: float,
        now: float,
        since: int,
    ) -> None:
        """Rows `select` chose, just fetched (tracked) from Redis by a read that started at
        invalidation count `since`: cache them for `ttl` seconds."""
        state = self._state(group)
        fresh, fresh_until, expired, seen = (
            state.fresh,
            state.fresh_until,
            state.expired,
            state.seen,
        )
        raced = self.sequence != since
        until = now + ttl
        admitted: list[bytes] = []
        for tag, row in zip(tags, rows, strict=True):
            if tag in fresh:
                continue  # a concurrent read cached it already
            if raced and self._invalidated_since(group, tag, since):
                continue  # fetched before a write that has since been announced: not cacheable
            if expired.pop(tag, None) is None:
                seen.pop(tag, None)
                self.stats.admissions += 1
                self._entries += 1
                if not state.row_bytes:
                    state.row_bytes = _size(tag, row)
                self.bytes += state.row_bytes
            fresh[tag] = row
            fresh_until[tag] = until
            admitted.append(tag)
        if admitted:
            self._batches.append((until, state, admitted))
            if len(self._batches) > 1 and self._batches[-2][0] > until:  # a shorter TTL
                self._batches = deque(sorted(self._batches, key=lambda batch: batch[0]))
        self._evict()

    def _state(self, group: Group) -> _Rows:
        state = self._groups.get(group)
        if state is None:
            state = self._groups[group] = _Rows()
            for prefix in group:
                self._groups_of.setdefault(prefix, []).append(state)
        return state

    def invalidate(self, keys: Iterable[bytes]) -> None:
        """Drop the rows holding these Redis keys (just written) and stop in-flight reads from
        re-adding them."""
        self._rotate()
        self.sequence += 1
        for key in keys:
            split = key.find(b"{") + 1
            prefix, tag = key[:split], key[split:-1]
            self._invalidated[(prefix, tag)] = self.sequence
            for state in self._groups_of.get(prefix, ()):
                self._drop(state, tag)

    def expire_all(self) -> None:
        """Invalidations may have been lost (the tracking connection dropped): nothing is fresh
        any more, but entries stay as fallbacks."""
        self.sequence += 1
        self._all_invalidated_at = self.sequence
        self._invalidated_before, self._invalidated = {}, {}
        usable_until = time.monotonic() + self.policy.fallback_s
        for state in self._groups.values():
            for tag, row in state.fresh.items():
                state.expired[tag] = (row, usable_until)
            state.fresh.clear()
            state.fresh_until.clear()
        self._batches.clear()

    def _drop(self, state: _Rows, tag: bytes) -> None:
        if tag in state.fresh:
            del state.fresh[tag], state.fresh_until[tag]
        elif tag in state.expired:
            del state.expired[tag]
        else:
            return
        self.bytes -= state.row_bytes
        self._entries -= 1
        self.stats.invalidations += 1

    def _expire(self, now: float) -> None:
        """Move every entry past its TTL to the fallbacks, a batch of insertions at a time."""
        usable_until = now + self.policy.fallback_s
        batches = self._batches
        while batches and batches[0][0] <= now:
            expiry, state, tags = batches.popleft()
            for tag in tags:
                if state.fresh_until.get(tag) == expiry:  # not refreshed or dropped since
                    del state.fresh_until[tag]
                    state.expired[tag] = (state.fresh.pop(tag), usable_until)

    def _invalidated_since(self, group: Group, tag: bytes, since: int) -> bool:
        if self._all_invalidated_at > since:
            return True
        for prefix in group:
            at = self._invalidated.get((prefix, tag)) or self._invalidated_before.get((prefix, tag))
            if at is not None and at > since:
                return True
        return False

    def _rotate(self) -> None:
        now = time.monotonic()
        if now - self._rotated_at > self.policy.race_window_s:
            self._invalidated_before, self._invalidated = self._invalidated, {}
            self._rotated_at = now

    def _evict(self) -> None:
        policy = self.policy
        while self._entries > policy.max_entries or self.bytes > policy.max_bytes:
            states = list(self._groups.values())
            with_expired = [s for s in states if s.expired]
            if with_expired:  # expired entries go first, from the group holding the most
                state = max(with_expired, key=lambda s: len(s.expired))
                state.expired.popitem(last=False)
            else:  # then the oldest fresh entry of the largest group
                state = max(states, key=lambda s: len(s.fresh))
                if not state.fresh:
                    return
                tag, _ = state.fresh.popitem(last=False)
                del state.fresh_until[tag]
            self.bytes -= state.row_bytes
            self._entries -= 1
            self.stats.evictions += 1


def _size(tag: bytes, row: Row) -> int:
    if type(row) is list:
        payload = sum(len(part) for part in row if part is not None)
    else:
        payload = len(row) if row is not None else 0
    return len(tag) + payload + _ENTRY_OVERHEAD
