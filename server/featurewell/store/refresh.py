"""Refresh-ahead: hot cached rows fetched again before their TTL ends, off the reads' path.

Without it every cached row expires under its readers: the first read past the TTL waits for
Redis, and the rows one ranking call admitted expire together, so some later call fetches them all
again (docs/caching.md: at the 5 s default TTL that churn made the cache lose to no cache). With
it, a read that finds a row in the last `refresh_ahead` of its TTL notes it (the columnar cache
notes each row once per TTL), and `REFRESH_AFTER_S` later, once the answer is on its way, one
background read fetches every noted row of every group, one round trip per node, tracked like any
read the cache keeps, and the entries are re-dated. A row that no read sees late in its TTL is not
refreshed: it expires as before, so rows that went cold still leave.

Freshness is unchanged: a refreshed entry holds a row fetched from Redis, taken under the same
race check as a read's (a write announced while it was in flight keeps it out), and ended by
invalidations like any other. A refresh that fails costs only itself: its rows expire at their
TTL and the next read fetches them. Reads judge nodes: a refresh's timeouts do not count against
a node's breaker, and rows of a node whose breaker is not closed are not refreshed (a refresh
would take the half-open trial that a read should make).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from featurewell.errors import StoreError
from featurewell.store import rowcheck
from featurewell.store.addressing import EntityRead
from featurewell.store.assembly import failed_commands
from featurewell.store.breaker import BreakerState
from featurewell.store.cluster import ClusterClient
from featurewell.store.columnar import ColumnarCache
from featurewell.store.keys import slots_of

log = logging.getLogger("featurewell.store")

# After the read that noted rows: the answer first (the gRPC layer sends it in this time;
# columnar.FILL_AFTER_S is the same idea), and the rows of the next few reads join the batch.
REFRESH_AFTER_S = 0.005


class Refresher:
    """Runs the background reads of refresh-ahead for one store and its cache."""

    def __init__(self, cluster: ClusterClient, cache: ColumnarCache) -> None:
        self._cluster = cluster
        self._cache = cache
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.failed = 0  # refresh reads that failed in part or whole (their rows just expire)

    def schedule(self) -> None:
        """Refresh the rows the cache has noted, soon (a refresh under way takes them next)."""
        if self._closed or self._timer is not None:
            return
        if self._task is not None and not self._task.done():
            return
        self._timer = asyncio.get_running_loop().call_later(REFRESH_AFTER_S, self._start)

    def _start(self) -> None:
        self._timer = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._cache.late:
            try:
                await self._refresh()
            except StoreError as exc:  # the cluster cannot be read now: reads will say so
                log.debug("refresh-ahead read failed: %s", exc)
                self.failed += 1
            except Exception:  # a bug, not a read's: the rows expire as without refresh-ahead
                log.exception("refresh-ahead failed")
                self.failed += 1

    async def _refresh(self) -> None:
        cluster = self._cluster
        shunned = {a for a, b in cluster.breakers.items() if b.state is not BreakerState.CLOSED}
        late = []
        commands: list[bytes] = []
        slots: list[int] = []
        for group, ttl, codecs, tags in self._cache.take_late():
            read_slots = slots_of(tags)
            if shunned:
                theirs = cluster.slot_map.owned_by(read_slots, shunned)
                tags = [tag for tag, skip in zip(tags, theirs, strict=True) if not skip]
                read_slots = [s for s, skip in zip(read_slots, theirs, strict=True) if not skip]
            if not tags:
                continue
            late.append((group, ttl, codecs, tags))
            read = EntityRead(list(group), tags, read_slots, ttl)
            commands += read.commands()
            slots += read_slots
        if not commands:
            return
        cache = self._cache
        since, now = cache.sequence, time.monotonic()
        replies = await cluster.execute(
            commands,
            slots,
            cache.policy.refresh_timeout_s,
            count_timeouts=False,
            tracked=range(len(commands)),
        )
        failed = failed_commands(replies.failures, len(commands))
        if failed is not None:
            self.failed += 1
        start = 0
        for group, ttl, codecs, tags in late:
            rows = replies.values[start : start + len(tags)]
            kept = [
                j
                for j in range(len(tags))
                if (failed is None or not failed[start + j]) and rowcheck.cacheable(rows[j])
            ]
            start += len(tags)
            if kept:
                cache.offer(
                    group,
                    codecs,
                    [tags[j] for j in kept],
                    [rows[j] for j in kept],
                    ttl,
                    now,
                    since,
                    refresh=True,
                )

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
