"""The hot-key cache: recently read rows of hot entities, kept in the server's memory.

Ranking calls ask for the same trending items again and again; serving those rows from memory
skips Redis for most of a call. The cache holds raw stored rows (the same bytes Redis returns,
decoded by the same codec), so a cached answer cannot differ from a fetched one.

- **Admission by frequency**: a row enters only on its `admit_after`-th fetch within the
  frequency window (exact counts, halved when the window fills: TinyLFU's aging without the
  sketch), so the long tail of one-off items never pushes hot rows out. The store asks
  `select` before fetching, so Redis tracks (for invalidation) only the rows that will be cached.
- **Bounded** by entries and by bytes (each entry counted by its real size: tag, reply and
  overhead); expired entries leave first, then those with the least freshness left. Rows of
  entities whose hash tag exceeds `max_tag_bytes`, or whose entry would take over half of
  `max_bytes`, are never cached (the tags not even counted for admission): a 60 MB entity id
  must not sit in memory. The admission counts are bounded in bytes too (`max_seen_bytes`):
  a client inventing ids ages them early, it cannot grow them.
- **Fresh for a per-view TTL** (the planner caps it at a fraction of the view's max age); past it
  an entry no longer answers reads but may still stand in for Redis as a *fallback* for
  `fallback_s` more seconds when Redis cannot answer.
- **Invalidated** by writes through this server at once, and by writes from anywhere through Redis
  client-side-caching invalidations (`featurewell.store.tracking`). A read that raced an
  invalidation never re-inserts the value it fetched before it.

Entries are whole entity rows as one read fetches them: the reply of the row's GET (one view)
or MGET (several views of the same entity), keyed by the row's hash tag within its *group* (the
views read together). Reads are answered by the decoded copy (store/columnar.py), which checks
freshness a batch at a time in numpy; here an entry's freshness is one timestamp, so the row a
read fetches again after its TTL re-dates the entry in place (one dict write) rather than
moving it between dicts: with a short TTL most admissions are such refreshes.
"""

from __future__ import annotations

import operator
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

_ENTRY_OVERHEAD = 150  # bytes of dict slots and objects per entry besides key and value
_SEEN_OVERHEAD = 100  # bytes of an admission count besides its tag


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
    max_tag_bytes: int = 1024  # rows of longer entity hash tags are never cached
    max_seen_bytes: int = 0  # admission counts, in bytes over all groups (0: max_bytes / 8)
    copies: int = 1  # copies of each entry held (2: the columnar cache keeps it decoded too)
    # Refresh-ahead (store/refresh.py): a row read in the last `refresh_ahead` of its TTL is
    # fetched again after the answer, so a hot row does not expire under its readers (0: off).
    refresh_ahead: float = 0.0
    refresh_timeout_s: float = 0.05  # how long such a background read may take


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    admissions: int = 0
    evictions: int = 0
    invalidations: int = 0
    fallbacks: int = 0  # expired entries served because the store failed
    refreshes: int = 0  # entries fetched again before their TTL ended (refresh-ahead)

    @property
    def hit_ratio(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


Group = tuple[bytes, ...]  # the key prefixes of the views read together, in read order
Row = Any  # a GET reply (bytes | None) or an MGET reply (list of bytes | None)
_Batch = list[Any]  # [until, _Rows, tags, index of the first tag not yet evicted]
# An entry: its row, when it stops being fresh, its size in bytes. One tuple in one dict: an
# admission or refresh probes one large table, not one per field (each probe a cache miss).
_Entry = tuple[Row, float, int]


class Listener(Protocol):
    """Told when entries leave the cache, so a copy kept elsewhere (store/columnar.py) leaves
    with them."""

    def dropped(self, group: Group, tag: bytes) -> None: ...

    def expired(self, group: Group, tags: list[bytes]) -> None: ...

    def expired_all(self) -> None: ...


class _Rows:
    """One group's entries, keyed by hash tag (dicts keyed by the request's own tag objects,
    whose hashes Python has already computed, so each step is one cheap dict operation)."""

    __slots__ = ("group", "held", "seen", "seen_bytes")

    def __init__(self, group: Group = ()) -> None:
        self.group = group
        self.held: dict[bytes, _Entry] = {}  # every entry, fresh or expired
        self.seen_bytes = 0
        self.seen: dict[bytes, int] = {}


class HotKeyCache:
    def __init__(self, policy: CachePolicy) -> None:
        self.policy = policy
        self.stats = CacheStats()
        self.bytes = 0
        self.sequence = 0  # counts invalidations; a read remembers it to detect races
        self._groups: dict[Group, _Rows] = {}
        self._groups_of: dict[bytes, list[_Rows]] = {}  # prefix -> groups holding that view
        # Eviction order, per TTL (so each queue is in `until` order): the tags each `offer`
        # took, as batches [until, group, tags, first not yet evicted]; a tag taken again since
        # (or gone) has another `until` than its batch's there, and is skipped.
        self._order: dict[float, deque[_Batch]] = {}
        self._order_tags = 0
        self._entries = 0
        self._seen_limit = max(1024, 4 * policy.max_entries)
        self._seen_bytes_limit = policy.max_seen_bytes or max(1 << 20, policy.max_bytes // 8)
        self._seen_bytes = 0
        self._invalidated: dict[tuple[bytes, bytes], int] = {}
        self._invalidated_before: dict[tuple[bytes, bytes], int] = {}
        self._rotated_at = time.monotonic()
        self._all_invalidated_at = -1  # the sequence of the last expire_all
        self.listener: Listener | None = None

    def __len__(self) -> int:
        return self._entries

    def lookup(
        self, group: Group, tags: Sequence[bytes], now: float
    ) -> tuple[list[Row], npt.NDArray[np.bool_]]:
        """Each row's fresh cached reply (None: known to have no row) or MISS, and which rows
        missed."""
        rows = self._groups.get(group)
        if rows is None:
            self.stats.misses += len(tags)
            return [MISS] * len(tags), np.ones(len(tags), dtype=np.bool_)
        entries = map(rows.held.get, tags)
        found = [MISS if e is None or e[1] <= now else e[0] for e in entries]
        missed = np.fromiter(map(operator.is_, found, repeat(MISS)), np.bool_, len(found))
        misses = int(np.count_nonzero(missed))
        self.stats.misses += misses
        self.stats.hits += len(tags) - misses
        return found, missed

    def peek(self, group: Group, tag: bytes, now: float) -> Row:
        """One row's fresh cached reply (None: known to have no row) or MISS, like `lookup`
        but uncounted: for a caller checking that an entry it already read is still the one
        held (serving/single_cache.py), whose reads the engine counts."""
        rows = self._groups.get(group)
        entry = rows.held.get(tag) if rows is not None else None
        return MISS if entry is None or entry[1] <= now else entry[0]

    def fresh_until(self, group: Group, tag: bytes) -> float:
        """When the row's entry stops being fresh (0.0: not held)."""
        rows = self._groups.get(group)
        entry = rows.held.get(tag) if rows is not None else None
        return 0.0 if entry is None else entry[1]

    def fallback(self, group: Group, tag: bytes, now: float) -> Row:
        """The row's cached reply if still within the fallback horizon, fresh or not; else
        MISS."""
        rows = self._groups.get(group)
        if rows is None:
            return MISS
        entry = rows.held.get(tag)
        if entry is None or entry[1] + self.policy.fallback_s <= now:
            return MISS
        self.stats.fallbacks += 1
        return entry[0]

    def select(self, group: Group, tags: Sequence[bytes]) -> list[int]:
        """Of rows the cache missed and a read is about to fetch, the positions of those to
        cache when they arrive (seen often enough, or cached before): their reads must be
        tracked. The others' sightings are counted."""
        state = self._state(group)
        held, seen, admit_after = state.held, state.seen, self.policy.admit_after
        max_tag = self.policy.max_tag_bytes
        chosen: list[int] = []
        added = 0
        for position, tag in enumerate(tags):
            if tag in held:  # cached before (expired, since the read missed it)
                chosen.append(position)
                continue
            if len(tag) > max_tag:
                continue  # never cached, never counted
            count = seen.get(tag, 0) + 1
            if count >= admit_after:
                chosen.append(position)
            else:
                if count == 1:
                    added += len(tag) + _SEEN_OVERHEAD
                seen[tag] = count
        state.seen_bytes += added
        self._seen_bytes += added
        if len(seen) > self._seen_limit or self._seen_bytes > self._seen_bytes_limit:
            self._age_counts()
        return chosen

    def _age_counts(self) -> None:
        """Halve every admission count (dropping ones): recent popularity wins. If that does
        not bring them under their byte bound (a flood of ids seen twice), forget them all."""
        for state in self._groups.values():
            state.seen = {tag: count >> 1 for tag, count in state.seen.items() if count > 1}
        total = 0
        for state in self._groups.values():
            state.seen_bytes = sum(len(tag) + _SEEN_OVERHEAD for tag in state.seen)
            total += state.seen_bytes
        if total > self._seen_bytes_limit // 2:
            for state in self._groups.values():
                state.seen, state.seen_bytes = {}, 0
            total = 0
        self._seen_bytes = total

    @property
    def seen_bytes(self) -> int:
        """Bytes the admission counts take (bounded by `max_seen_bytes`)."""
        return self._seen_bytes

    def offer(
        self,
        group: Group,
        tags: Sequence[bytes],
        rows: Sequence[Row],
        ttl: float,
        now: float,
        since: int,
        *,
        refresh: bool = False,
    ) -> list[int]:
        """Rows `select` chose, just fetched (tracked) from Redis by a read that started at
        invalidation count `since`: cache them for `ttl` seconds. Returns the positions of the
        rows it took (not those a concurrent read cached first, nor those a write raced).
        `refresh`: rows of entries still held, fetched again before their TTL ended; each
        replaces its entry unless the entry has gone (invalidated, evicted: the next read
        fetches it) or was taken since by a read at least as recent."""
        state = self._state(group)
        held, seen = state.held, state.seen
        raced = self.sequence != since
        until = now + ttl
        admitted: list[bytes] = []
        taken: list[int] = []
        max_tag = self.policy.max_tag_bytes
        max_entry = self.policy.max_bytes // 2
        copies = self.policy.copies
        admissions = added = seen_freed = 0  # counted here, stored once: a batch's rows
        for position, (tag, row) in enumerate(zip(tags, rows, strict=True)):
            was = held.get(tag)
            if refresh:
                if was is None or was[1] >= until:
                    continue
            elif (was is not None and was[1] > now) or len(tag) > max_tag:
                continue  # a concurrent read cached it already; a tag too long to keep
            if raced and self._invalidated_since(group, tag, since):
                continue  # fetched before a write that has since been announced: not cacheable
            if type(row) is list:  # _size, inlined: this loop runs for every admitted row
                size = len(tag) + sum(map(len, filter(None, row))) + _ENTRY_OVERHEAD
            else:
                size = len(tag) + (len(row) if row is not None else 0) + _ENTRY_OVERHEAD
            size *= copies
            if size > max_entry:  # would push out many hot rows for one
                continue
            if was is None:
                if seen.pop(tag, None) is not None:
                    seen_freed += len(tag) + _SEEN_OVERHEAD
                admissions += 1
                added += size
            else:  # an expired entry refreshed, in place: its new row may have another size
                added += size - was[2]
            held[tag] = (row, until, size)
            admitted.append(tag)
            taken.append(position)
        state.seen_bytes -= seen_freed
        self._seen_bytes -= seen_freed
        self.stats.admissions += admissions
        self._entries += admissions
        self.bytes += added
        if admitted:
            self._remember(ttl, [until, state, admitted, 0])
        if self._evict():  # it may have taken some of these already
            taken = [p for p in taken if tags[p] in held]
        if refresh:
            self.stats.refreshes += len(taken)
        return taken

    def _remember(self, ttl: float, batch: _Batch) -> None:
        """Add an `offer`'s batch to the eviction order."""
        queue = self._order.get(ttl)
        if queue is None:
            queue = self._order[ttl] = deque()
        queue.append(batch)
        self._order_tags += len(batch[2]) - batch[3]
        if self._order_tags > 2 * self._entries + 1024:
            self._compact_order()

    def _compact_order(self) -> None:
        """Drop the eviction order's stale references (tags taken again since, or gone): each
        entry is current in one place, so this leaves at most one reference per entry."""
        total = 0
        for ttl, queue in list(self._order.items()):
            kept: deque[_Batch] = deque()
            for until, state, tags, first in queue:
                current = [tag for tag in tags[first:] if _until(state.held.get(tag)) == until]
                if current:
                    kept.append([until, state, current, 0])
                    total += len(current)
            if kept:
                self._order[ttl] = kept
            else:
                del self._order[ttl]
        self._order_tags = total

    def _state(self, group: Group) -> _Rows:
        state = self._groups.get(group)
        if state is None:
            state = self._groups[group] = _Rows(group)
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
        self.expire()

    def expire(self, chosen: Callable[[list[bytes]], Iterable[bool]] | None = None) -> None:
        """`expire_all` of the entries whose tags `chosen` picks (all: None), for invalidations
        lost on one node. Either way no read in flight keeps what it fetched: it may have come
        through the connection whose invalidations were lost."""
        self.sequence += 1
        self._all_invalidated_at = self.sequence
        if chosen is None:
            self._invalidated_before, self._invalidated = {}, {}
        now = time.monotonic()
        for state in self._groups.values():
            held = state.held
            ended = [tag for tag, (_, until, _) in held.items() if until > now]
            if chosen is not None and ended:
                ended = list(compress(ended, chosen(ended)))
            for tag in ended:
                row, _, size = held[tag]
                held[tag] = (row, now, size)  # a fallback for `fallback_s` from now
            if ended:  # expired now: evicted before any entry fresh again later
                self._remember(-1.0, [now, state, ended, 0])
                if chosen is not None and self.listener is not None:
                    self.listener.expired(state.group, ended)
        if chosen is None and self.listener is not None:
            self.listener.expired_all()

    def _drop(self, state: _Rows, tag: bytes) -> None:
        entry = state.held.pop(tag, None)
        if entry is None:
            return
        self.bytes -= entry[2]
        self._entries -= 1
        self.stats.invalidations += 1
        if self.listener is not None:
            self.listener.dropped(state.group, tag)

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

    def _evict(self) -> int:
        """Evict down to the bounds: expired entries first, then those with the least freshness
        left (the front of each TTL's queue); returns how many entries left."""
        policy = self.policy
        evicted = 0
        while self._entries > policy.max_entries or self.bytes > policy.max_bytes:
            fronts = [queue for queue in self._order.values() if queue]
            if not fronts:
                return evicted
            queue = min(fronts, key=lambda q: q[0][0])
            batch = queue[0]
            until, state, tags, first = batch
            if first == len(tags):
                queue.popleft()
                continue
            batch[3] = first + 1
            self._order_tags -= 1
            tag = tags[first]
            entry = state.held.get(tag)
            if entry is None or entry[1] != until:
                continue  # taken again since (it is later in the order), or gone
            del state.held[tag]
            self.bytes -= entry[2]
            self._entries -= 1
            self.stats.evictions += 1
            evicted += 1
            if self.listener is not None:
                self.listener.dropped(state.group, tag)
        return evicted


def _until(entry: _Entry | None) -> float | None:
    return None if entry is None else entry[1]
