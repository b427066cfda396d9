"""The near cache: answers to single-entity calls kept in the caller's own process, so a hot
entity costs a dict lookup instead of a network round trip (docs/near-cache.md).

- **What is kept**: the whole answer of a call whose every key column has one value and whose
  every column comes from a view the server marks cacheable, read with no fallback and no
  corrupt row. Keyed by the feature list, the entity keys, the options and the call's bearer
  token: an answer goes back only to the same question asked with the same credentials.
- **How long**: until `send time + TTL` (the server's per-view TTL, at most `max_ttl_s`), never
  longer, whatever happens to the invalidation stream: that is the hard staleness bound.
  Within it a write anywhere drops the answer as soon as the subscription (_subscription.py)
  hears of it. Only answers read while a subscription is live are kept, and a read that raced
  an invalidation of its rows is not.
- **Statuses as the server would give them**: a PRESENT value whose age passes its view's max age
  reads STALE on later hits (_near_entry.py: what one kept answer holds and how a hit reads it).
- **Bounded** by entries and bytes (oldest insertions leave first).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featurewell.client._near_entry import Entry, RowId, stamps_of
from featurewell.client._near_options import NearCache, NearCacheStats
from featurewell.client._result import FeatureResult, Status
from featurewell.v1 import feature_service_pb2 as pb

if TYPE_CHECKING:
    from featurewell.client._channel import ClientOptions

_CACHEABLE_STATUSES = frozenset((Status.PRESENT, Status.NOT_FOUND, Status.STALE))
_MAX_RECENT = 100_000  # invalidations remembered for races; past it, every read in flight races

Key = tuple[Any, ...]  # (features, entity keys, with event times, bearer)


@dataclass(frozen=True)
class _View:
    join_keys: tuple[str, ...]
    ttl_s: float
    max_age_us: int


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a miss remembers from before its call: to tell whether its answer may be kept."""

    generation: int
    sequence: int
    sent: float


class NearCacheStore:
    def __init__(self, options: NearCache) -> None:
        self.options = options
        self.stats = NearCacheStats()
        self.bytes = 0
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._holding: dict[RowId, set[Key]] = {}
        self._views: dict[tuple[str, int], _View] = {}  # of the live subscription
        self.live = False
        self.generation = 0  # a new subscription, or a broken one: older reads are not kept
        self._sequence = 0  # invalidations heard
        self._recent: dict[RowId, int] = {}  # row -> sequence it was invalidated at
        self._recent_before: dict[RowId, int] = {}
        self._forgot_at = 0  # reads sent before this invalidation count raced "something"
        self._rotated = time.monotonic()
        self.wanted: set[str] = set()  # "view@vN" the subscription should follow
        self.wanted_changed = threading.Event()

    def __len__(self) -> int:
        return len(self._entries)

    # -- the call path ----------------------------------------------------------------------

    @staticmethod
    def key(
        features: Sequence[str],
        entities: Mapping[str, Sequence[Any]],
        with_stamps: bool,
        bearer: str | None,
    ) -> Key | None:
        """The cache key of a single-entity call, or None when the call is not one."""
        keys = []
        for name, column in entities.items():
            if len(column) != 1:
                return None
            value = column[0]
            if not isinstance(value, str | int | np.integer | np.str_) or isinstance(value, bool):
                return None
            keys.append((name, value))
        return (tuple(features), tuple(keys), with_stamps, bearer)

    def lookup(self, key: Key) -> FeatureResult | None:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() >= entry.until:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return entry.answer()

    def consult(
        self,
        options: ClientOptions,
        features: Sequence[str],
        entities: Mapping[str, Sequence[Any]],
        context: Mapping[str, Sequence[Any]] | None,
        strict: bool,
        with_stamps: bool,
    ) -> tuple[FeatureResult | None, Key | None, Ticket | None]:
        """A call's answer from the cache; else, for a call it may keep the answer of, the key
        and ticket to `admit` it with (key None: the call is the server's alone). Calls with
        request context (on-demand inputs) or `strict` (its errors are the server's to raise)
        never use it."""
        if context or strict:
            return None, None, None
        key = self.key(features, entities, with_stamps, options.bearer())
        if key is None:
            return None, None, None
        hit = self.lookup(key)
        return hit, key, None if hit is not None else self.ticket()

    def ticket(self) -> Ticket | None:
        """Taken before a missed call is sent; None: its answer cannot be kept."""
        if not self.live:
            return None
        return Ticket(self.generation, self._sequence, time.monotonic())

    def admit(
        self,
        key: Key,
        ticket: Ticket | None,
        result: FeatureResult,
        entities: Mapping[str, Sequence[Any]],
    ) -> FeatureResult:
        """Keep `result` (read with event times) if it may be, and return it as the caller
        asked for it (without event times unless asked)."""
        stamps = stamps_of(result)
        if not key[2]:  # event times were asked for the cache's sake only
            result.columns = {
                n: dataclasses.replace(c, event_time_us=None) for n, c in result.columns.items()
            }
        if result.rows != 1 or result.fallbacks:
            return result
        rows_of: list[RowId] = []
        ttl = self.options.max_ttl_s
        max_age: dict[str, int] = {}
        with self._lock:
            unfollowed = [
                f"{_view_name(name)}@v{column.version}"
                for name, column in result.columns.items()
                if (_view_name(name), column.version) not in self._views
            ]
            if unfollowed:
                for view_ref in unfollowed:
                    if not view_ref.endswith("@v0"):  # on-demand outputs are never kept
                        self._want(view_ref)
                return result
            if ticket is None:
                return result  # no live subscription when it was sent
            for name, column in result.columns.items():
                view = self._views[(_view_name(name), column.version)]
                if view.ttl_s <= 0 or int(column.statuses[0]) not in _CACHEABLE_STATUSES:
                    return result
                ttl = min(ttl, view.ttl_s)
                max_age[name] = view.max_age_us
                row = (_view_name(name), column.version, _parts(entities, view.join_keys))
                if row not in rows_of:
                    rows_of.append(row)
            if ticket.generation != self.generation or not self.live:
                return result  # the subscription broke or restarted while the call was out
            if self._sequence != ticket.sequence and self._raced(rows_of, ticket.sequence):
                return result
            self._insert(key, Entry.of(result, ticket.sent + ttl, max_age, stamps, rows_of))
        return result

    # -- the subscription's side ------------------------------------------------------------

    def went_live(self, views: Iterable[pb.CacheableView]) -> None:
        """A new stream's first message: drop everything (anything could have been missed
        before it) and keep answers of these views from now on."""
        with self._lock:
            self._flush()
            self._views = {
                (v.name, v.version): _View(
                    tuple(v.join_keys), v.ttl_seconds, int(v.max_age_seconds * 1_000_000)
                )
                for v in views
            }
            self.live = True
            self.stats.subscriptions += 1

    def broke(self) -> None:
        """The stream ended: keep no new answers; those held live out their TTL."""
        with self._lock:
            self.live = False
            self.generation += 1
            self.stats.resets += 1

    def invalidate(self, views: Sequence[pb.CacheableView], rows: Iterable[Any]) -> None:
        """Rows the server announced written (RowInvalidation messages)."""
        with self._lock:
            self._rotate()
            for written in rows:
                if written.view >= len(views):
                    continue
                view = views[written.view]
                for key in written.keys:
                    self._sequence += 1
                    row = (view.name, view.version, tuple(key.parts))
                    self._recent[row] = self._sequence
                    for held in self._holding.pop(row, ()):
                        if self._drop(held):
                            self.stats.invalidated += 1

    def clear(self) -> None:
        with self._lock:
            self._flush()

    # -- inside the lock --------------------------------------------------------------------

    def _want(self, view: str) -> None:
        if view not in self.wanted and len(self.wanted) < 256:
            self.wanted.add(view)
            self.wanted_changed.set()

    def _raced(self, rows: Iterable[RowId], since: int) -> bool:
        if since < self._forgot_at:
            return True
        for row in rows:
            at = self._recent.get(row) or self._recent_before.get(row)
            if at is not None and at > since:
                return True
        return False

    def _rotate(self) -> None:
        """Invalidations are remembered for at least one TTL (longer than any call that
        could have raced them and still be kept)."""
        now = time.monotonic()
        if now - self._rotated > self.options.max_ttl_s:
            self._recent_before, self._recent = self._recent, {}
            self._rotated = now
        elif len(self._recent) > _MAX_RECENT:  # a flood of writes: bounded, conservatively
            self._recent_before, self._recent = {}, {}
            self._forgot_at = self._sequence + 1

    def _insert(self, key: Key, entry: Entry) -> None:
        if entry.size > self.options.max_bytes // 2:
            return
        self._drop(key)
        self._entries[key] = entry
        for row in entry.rows_of:
            self._holding.setdefault(row, set()).add(key)
        self.bytes += entry.size
        self.stats.admitted += 1
        self._evict()

    def _evict(self) -> None:
        options, entries, now = self.options, self._entries, time.monotonic()
        while entries:
            oldest_key, oldest = next(iter(entries.items()))
            full = len(entries) > options.max_entries or self.bytes > options.max_bytes
            if not full and oldest.until > now:
                return
            self._drop(oldest_key)
            if full:
                self.stats.evicted += 1

    def _drop(self, key: Key) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.bytes -= entry.size
        for row in entry.rows_of:
            holders = self._holding.get(row)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._holding[row]
        return True

    def _flush(self) -> None:
        self._entries.clear()
        self._holding.clear()
        self.bytes = 0
        self.generation += 1


def _view_name(column: str) -> str:
    return column.partition(":")[0].partition("@")[0]


def _parts(entities: Mapping[str, Sequence[Any]], join_keys: Sequence[str]) -> tuple[str, ...]:
    """An entity's key as the server names it in invalidations (integers in decimal)."""
    return tuple(str(entities[k][0]) if k in entities else "" for k in join_keys)
