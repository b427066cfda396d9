"""The columnar cache: cached rows held decoded, in numpy blocks, so a ranking call's 400 cached
items are one gather, not 400 Python steps.

`HotKeyCache` (store/cache.py) keeps deciding *which* rows are cached and for how long: admission
by frequency, the TTL, bounds and eviction, invalidations (writes through this server, Redis
tracking), the race check, the raw rows that stand in when Redis fails. This module keeps a
decoded copy of every entry it holds, per group of views read together:

- a **table** per group: an index `hash tag -> slot`, and per slot the time it stops being fresh
  (`fresh_until`, the same instant the raw entry's TTL ends);
- per view of the group, a **block**: the view's fixed-width fields (event time first) as one
  structured numpy array with a row per slot, whether the entity had a row, and, for a view
  with string or list features, the stored bytes (the raw entry's own objects: no copy), parsed
  only for reads that want those features (per-row Python, as for rows from Redis).

A lookup is `np.fromiter(map(index.get, tags))` (one C-level pass), one fancy index of
`fresh_until` (absent tags hit a sentinel slot that is never fresh) and one `take` per block:
the rows are copied out at once, so a slot reused while the read waits for Redis cannot change
what it serves. The engine decodes only the rows Redis sent and places the gathered ones beside
them (`merge`), so statuses, ages and max age are computed from the same event times as before.
Fetched rows the cache admits enter the blocks from the read's own decode of them
(`offer_decoded`, store/assembly.py), once the answer is on its way (`FILL_AFTER_S`): one numpy
scatter per field, no second decode.

Every entry leaves this copy when it leaves the `HotKeyCache` (the `Listener` hooks), so the
copy is never fresher than the raw entry; when invalidations may have been lost, nothing here
is fresh any more. Blocks grow by doubling (the allocation is at most twice the table's largest
number of entries) and a table goes when its last entry does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.definitions import FeatureView
from featurewell.store.blocks import Table
from featurewell.store.cache import CachePolicy, CacheStats, Group, HotKeyCache, Row
from featurewell.store.codec import DecodedRows, RowCodec
from featurewell.store.gathered import Gathered, merge

__all__ = ["ColumnarCache", "Gathered", "merge"]

log = logging.getLogger("featurewell.store")

# Fetched rows the cache takes enter it this long after the read's answer, which gRPC is then
# sending (Python work on the loop before that delays it: serving/service.py's AFTER_ANSWER_S).
# Reads, admission counts and fallbacks settle what is due first; the fill keeps the read's own
# `since` and start, so a write announced meanwhile keeps its row out as before. (`len` and
# `stats` do not settle: they are read from other threads.)
FILL_AFTER_S = 0.002

_MAX_LATE = 100_000  # rows noted for a refresh at once: past it, rows expire as without one


class ColumnarCache:
    """The serving cache: a `HotKeyCache` (`rows`) deciding what is cached, and its entries
    decoded into blocks for reads (see the module docstring)."""

    def __init__(self, policy: CachePolicy) -> None:
        # Each entry is held twice (raw, for fallbacks; decoded, for reads): counted twice.
        self._rows = HotKeyCache(replace(policy, copies=2))
        self._rows.listener = self
        self._tables: dict[Group, Table] = {}
        self._codecs: dict[FeatureView, RowCodec] = {}
        # (the read's start, its `offer_decoded` arguments), in read order
        self._due: deque[tuple[float, tuple[Any, ...]]] = deque()
        self._armed = False
        # Rows read late in their TTL, for refresh-ahead (store/refresh.py): their tags, per
        # group and the TTL they were read with (a reload may change a view's TTL).
        self._late: dict[tuple[Group, float], list[bytes]] = {}
        self._late_count = 0
        self._refresh_ahead = policy.refresh_ahead

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

    @property
    def rows(self) -> HotKeyCache:
        """The raw entries, with every fill still due settled (serving/single_cache.py checks
        a kept answer's entries there, on the loop)."""
        if self._due:
            self.settle()
        return self._rows

    # The policy's figures and hooks, as the store, the tracker and telemetry read them.
    @property
    def policy(self) -> CachePolicy:
        return self._rows.policy

    @property
    def stats(self) -> CacheStats:
        return self._rows.stats

    @property
    def sequence(self) -> int:
        return self._rows.sequence

    def __len__(self) -> int:
        return len(self._rows)

    def invalidate(self, keys: Sequence[bytes]) -> None:
        self._rows.invalidate(keys)

    def expire_all(self) -> None:
        self._rows.expire_all()

    def expire(self, chosen: Callable[[list[bytes]], Iterable[bool]]) -> None:
        """`HotKeyCache.expire`: the entries whose tags `chosen` picks are fresh no more."""
        self._rows.expire(chosen)

    def lookup(
        self, group: Group, tags: Sequence[bytes], now: float, ttl: float = 0.0
    ) -> tuple[list[Gathered] | None, npt.NDArray[np.intp]]:
        """Each view's fresh cached rows, copied out (None: no row is cached), and the
        positions of the rows that missed. `ttl`, the read's: with refresh-ahead on, the rows
        it finds in the last part of their TTL are noted for a refresh (`take_late`)."""
        if self._due:  # fills still due first: their rows may answer this read
            self.settle()
        table = self._tables.get(group)
        count = len(tags)
        if table is None:
            self.stats.misses += count
            return None, np.arange(count)
        if count == 1:  # one entity (a single call, a ranking call's user): no numpy pass
            slot = table.index.get(tags[0])
            if slot is None or not table.fresh_until[slot] > now:
                self.stats.misses += 1
                return None, np.zeros(1, np.intp)
            self.stats.hits += 1
            only, none = np.zeros(1, np.intp), np.zeros(0, np.intp)
            taken = np.full(1, slot, np.intp)
            if ttl > 0 and self._refresh_ahead > 0:
                self._note(group, table, tags, only, taken, table.fresh_until[taken], now, ttl)
            return [block.gather(only, none, taken) for block in table.blocks], none
        slots = table.find(tags)
        fresh_until = table.fresh_until[slots]
        hit = fresh_until > now
        hits = np.flatnonzero(hit)
        self.stats.hits += len(hits)
        self.stats.misses += count - len(hits)
        if not len(hits):
            return None, np.arange(count)
        taken, missed = slots[hits], np.flatnonzero(~hit)
        if ttl > 0 and self._refresh_ahead > 0:
            self._note(group, table, tags, hits, taken, fresh_until[hits], now, ttl)
        return [block.gather(hits, missed, taken) for block in table.blocks], missed

    def _note(
        self,
        group: Group,
        table: Table,
        tags: Sequence[bytes],
        hits: npt.NDArray[np.intp],
        taken: npt.NDArray[np.intp],
        until: npt.NDArray[np.float64],
        now: float,
        ttl: float,
    ) -> None:
        """Note the hits (at `hits` of `tags`, in slots `taken`, fresh until `until`) read in
        the last part of their TTL that were not noted in this TTL yet."""
        late = (until <= now + ttl * self._refresh_ahead) & (table.noted[taken] != until)
        if not late.any() or self._late_count >= _MAX_LATE:
            return
        table.noted[taken[late]] = until[late]
        noted = [tags[i] for i in hits[late].tolist()]
        held = self._late.get((group, ttl))
        if held is None:
            self._late[(group, ttl)] = noted
        else:
            held.extend(noted)
        self._late_count += len(noted)

    def take_late(self) -> list[tuple[Group, float, Sequence[RowCodec], list[bytes]]]:
        """The rows noted for a refresh since the last call, per group: its TTL, its codecs
        and the rows' tags (a group whose rows have all gone since is left out)."""
        late, self._late, self._late_count = self._late, {}, 0
        out = []
        for (group, ttl), tags in late.items():
            table = self._tables.get(group)
            if table is not None:  # (a tag read twice by one call is noted twice)
                out.append((group, ttl, table.codecs, list(dict.fromkeys(tags))))
        return out

    @property
    def late(self) -> bool:
        """Whether rows are noted for a refresh."""
        return self._late_count > 0

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
        *,
        refresh: bool = False,
    ) -> None:
        """`HotKeyCache.offer`, then the rows it took decoded into their slots. A row that
        does not decode (its bytes do not fit the schema) stays out of the blocks: it is read
        from Redis each time, and served as it always is."""
        taken = self.rows.offer(group, tags, replies, ttl, now, since, refresh=refresh)
        if not taken:
            return
        views = len(codecs)
        raw = [[replies[p] if views == 1 else replies[p][v] for p in taken] for v in range(views)]
        decoded = [  # the fixed-width features: one frombuffer per view
            codec.decode(rows, codec.fixed_names) for codec, rows in zip(codecs, raw, strict=True)
        ]
        rows = list(range(len(taken)))
        self._fill(group, codecs, [tags[p] for p in taken], raw, decoded, rows, now + ttl)

    def offer_decoded(
        self,
        group: Group,
        codecs: Sequence[RowCodec],
        tags: Sequence[bytes],
        replies: Sequence[Row],
        raw: Sequence[Sequence[Any]],
        decoded: Sequence[DecodedRows],
        chosen: Sequence[int],
        ttl: float,
        now: float,
        since: int,
        *,
        later: bool = False,
    ) -> None:
        """`offer` of the fetched rows at `chosen`, already decoded: `tags` and `replies` are
        every fetched row's, `raw` and `decoded` each view's rows of them (the fixed-width
        features, `RowCodec.fixed_names`, as `offer` decodes them). The same rows enter the
        same slots as through `offer`, without decoding them a second time. `later`: once the
        read's answer is on its way (FILL_AFTER_S); the answer shares `raw` and `decoded`,
        which nothing writes to."""
        if later:
            self._defer(now, (group, codecs, tags, replies, raw, decoded, chosen, ttl, now, since))
            return
        taken = self._rows.offer(
            group, [tags[j] for j in chosen], [replies[j] for j in chosen], ttl, now, since
        )
        if not taken:
            return
        rows = [chosen[i] for i in taken]
        self._fill(group, codecs, [tags[j] for j in rows], raw, decoded, rows, now + ttl)

    def _defer(self, started: float, args: tuple[Any, ...]) -> None:
        """`offer_decoded(*args)`, FILL_AFTER_S from now (at once outside an event loop)."""
        self._due.append((started, args))
        if self._armed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.settle()
            return
        self._armed = True
        loop.call_later(FILL_AFTER_S, self.settle)

    def settle(self) -> None:
        """Take every fetched row still due (`offer_decoded(later=True)`), in the order they
        were read. A fill from a read started more than the race window ago is dropped: the
        invalidations its `since` is checked against may be forgotten by now (a refetch)."""
        self._armed = False
        due = self._due
        oldest = time.monotonic() - self._rows.policy.race_window_s
        while due:
            started, args = due.popleft()
            if started <= oldest:
                continue
            try:
                self.offer_decoded(*args)
            except Exception:  # a bug, not the next read's: its rows stay uncached
                log.exception("the hot-key cache could not take a read's rows")

    def _fill(
        self,
        group: Group,
        codecs: Sequence[RowCodec],
        tags: list[bytes],
        raw: Sequence[Sequence[Any]],
        decoded: Sequence[DecodedRows],
        rows: list[int],
        until: float,
    ) -> None:
        """Rows `rows` of `decoded` (and of `raw`, each view's stored bytes), entities `tags`,
        into their slots, fresh until `until`; a row some view could not decode is dropped."""
        table = self._tables.get(group)
        if table is None:
            table = self._tables[group] = Table(codecs)
        at = np.asarray(rows, np.intp)
        bad: npt.NDArray[np.bool_] | None = None
        for view_rows in decoded:
            if view_rows.corrupt is not None:
                corrupt = view_rows.corrupt[at]
                bad = corrupt if bad is None else bad | corrupt
        if bad is not None and bad.any():
            for i in np.flatnonzero(bad).tolist():  # an older decoded copy must not outlive it
                self.dropped(group, tags[i])
            keep = np.flatnonzero(~bad)
            at = at[keep]
            tags = [tags[i] for i in keep.tolist()]
            if not tags:
                if not table.index:
                    self._tables.pop(group, None)
                return
            self._tables[group] = table  # (back, if dropping emptied it)
        slots = table.slots(tags)
        for block, view_rows, stored in zip(table.blocks, decoded, raw, strict=True):
            block.put(slots, view_rows, at, stored)
        table.fresh_until[slots] = until

    # -- Listener: entries leaving the HotKeyCache leave here too ----------------------------

    def dropped(self, group: Group, tag: bytes) -> None:
        table = self._tables.get(group)
        if table is None:
            return
        slot = table.release(tag)
        if slot is not None:
            table.fresh_until[slot] = 0.0
            for block in table.blocks:
                if block.stored is not None:
                    block.stored[slot] = None  # the bytes go with the raw entry
        if not table.index:
            del self._tables[group]

    def expired(self, group: Group, tags: list[bytes]) -> None:
        table = self._tables.get(group)
        if table is not None:
            slots = [slot for slot in map(table.index.get, tags) if slot is not None]
            table.fresh_until[slots] = 0.0

    def expired_all(self) -> None:
        for table in self._tables.values():
            table.fresh_until[:] = 0.0

    @property
    def bytes(self) -> int:  # last: the name would shadow the type in the class body
        return self._rows.bytes
