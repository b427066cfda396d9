"""The hot-key cache: recently read rows of hot entities, kept in the server's memory.

Ranking calls ask for the same trending items again and again; serving those rows from memory
skips the Redis round trip for most of a call. The cache holds raw stored rows (the same bytes
Redis returns, decoded by the same codec), so a cached answer cannot differ from a fetched one.

- **Admission by frequency**: a key enters only after it was fetched `admit_after` times within
  the frequency window (exact counts, halved when the window fills: TinyLFU's aging without the
  sketch), so the long tail of one-off items never pushes hot keys out.
- **Bounded** by entries and by bytes; least recently used entries leave first.
- **Fresh for a per-view TTL** (the store caps it at a fraction of the view's max age); past it an
  entry no longer answers reads but may still serve as a *fallback* for `fallback_s` more seconds
  when Redis cannot answer.
- **Invalidated** by writes through this server at once, and by writes from anywhere through Redis
  client-side-caching invalidations (`featurewell.store.tracking`). A read that raced an
  invalidation never re-inserts the value it fetched before it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_ENTRY_OVERHEAD = 120  # bytes of Python objects per entry besides key and value


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


class Entry:
    __slots__ = ("fresh_until", "size", "usable_until", "value")

    def __init__(self, value: bytes | None, fresh_until: float, usable_until: float, size: int):
        self.value = value  # None: Redis had no row (cached too, so absent hot keys stay cheap)
        self.fresh_until = fresh_until
        self.usable_until = usable_until
        self.size = size


class HotKeyCache:
    def __init__(self, policy: CachePolicy) -> None:
        self.policy = policy
        self.stats = CacheStats()
        self.bytes = 0
        self.sequence = 0  # counts invalidations; a read remembers it to detect races
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._seen: dict[bytes, int] = {}
        self._seen_limit = max(1024, 4 * policy.max_entries)
        self._invalidated: dict[bytes, int] = {}
        self._invalidated_before: dict[bytes, int] = {}
        self._rotated_at = time.monotonic()
        self._all_invalidated_at = -1  # the sequence of the last expire_all

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, keys: Sequence[bytes], now: float) -> list[Entry | None]:
        """The fresh entry of each key, or None (a miss)."""
        entries = self._entries
        found: list[Entry | None] = []
        hits = 0
        for key in keys:
            entry = entries.get(key)
            if entry is not None and entry.fresh_until > now:
                entries.move_to_end(key)
                hits += 1
                found.append(entry)
            else:
                found.append(None)
        self.stats.hits += hits
        self.stats.misses += len(keys) - hits
        return found

    def fallback(self, key: bytes, now: float) -> Entry | None:
        """The entry of `key` if still within its fallback horizon, fresh or not."""
        entry = self._entries.get(key)
        if entry is None or entry.usable_until <= now:
            return None
        self.stats.fallbacks += 1
        return entry

    def offer(
        self,
        keys: Sequence[bytes],
        values: Sequence[bytes | None],
        ttl: float,
        now: float,
        since: int,
    ) -> None:
        """Rows just fetched from Redis by a read that started at invalidation count `since`:
        refresh the cached ones, admit the ones that have become hot."""
        entries, seen, admit_after = self._entries, self._seen, self.policy.admit_after
        raced = self.sequence != since
        fresh_until, usable_until = now + ttl, now + ttl + self.policy.fallback_s
        for key, value in zip(keys, values, strict=True):
            if raced and self._invalidated_since(key, since):
                continue  # fetched before a write that has since been announced: not cacheable
            entry = entries.get(key)
            if entry is None:
                count = seen.get(key, 0) + 1
                if count < admit_after:
                    seen[key] = count
                    continue
                seen.pop(key, None)
                self.stats.admissions += 1
            else:
                self.bytes -= entry.size
            size = len(key) + (len(value) if value is not None else 0) + _ENTRY_OVERHEAD
            entries[key] = Entry(value, fresh_until, usable_until, size)
            entries.move_to_end(key)
            self.bytes += size
        if len(seen) > self._seen_limit:
            self._age_frequencies()
        self._evict()

    def invalidate(self, keys: Iterable[bytes]) -> None:
        """Drop these keys (written just now) and stop in-flight reads from re-adding them."""
        self._rotate()
        self.sequence += 1
        for key in keys:
            self._invalidated[key] = self.sequence
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.bytes -= entry.size
                self.stats.invalidations += 1

    def expire_all(self) -> None:
        """Invalidations may have been lost (the tracking connection dropped): nothing is fresh
        any more, but entries stay as fallbacks."""
        self.sequence += 1
        self._invalidated_before, self._invalidated = {}, {}
        for entry in self._entries.values():
            entry.fresh_until = 0.0
        self._all_invalidated_at = self.sequence

    def _invalidated_since(self, key: bytes, since: int) -> bool:
        if self._all_invalidated_at > since:
            return True
        at = self._invalidated.get(key) or self._invalidated_before.get(key)
        return at is not None and at > since

    def _rotate(self) -> None:
        now = time.monotonic()
        if now - self._rotated_at > self.policy.race_window_s:
            self._invalidated_before, self._invalidated = self._invalidated, {}
            self._rotated_at = now

    def _age_frequencies(self) -> None:
        self._seen = {key: count >> 1 for key, count in self._seen.items() if count > 1}

    def _evict(self) -> None:
        entries, policy = self._entries, self.policy
        while entries and (len(entries) > policy.max_entries or self.bytes > policy.max_bytes):
            _, entry = entries.popitem(last=False)
            self.bytes -= entry.size
            self.stats.evictions += 1
