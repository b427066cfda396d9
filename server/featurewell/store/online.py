"""The online store: feature-view rows in a Redis Cluster, read in bulk, written in event order."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import hiredis
import numpy as np
import numpy.typing as npt

from featurewell.definitions import FeatureView
from featurewell.errors import StoreTimeout, StoreUnavailable
from featurewell.store import rowcheck
from featurewell.store.addressing import Addresses, EntityRead, EntityRows
from featurewell.store.assembly import Pending, StoreRead, ViewRows, assemble, failed_commands
from featurewell.store.batch import Failure, FailureReason, Replies, describe
from featurewell.store.breaker import BreakerPolicy
from featurewell.store.cluster import ClusterClient
from featurewell.store.codec import RowCodec
from featurewell.store.columnar import ColumnarCache
from featurewell.store.connection import Address, NodeAccess, encode_command, refusal
from featurewell.store.keys import META_SLOT, KeyColumn, freshness_key
from featurewell.store.refresh import Refresher
from featurewell.store.tracking import InvalidationTracker

__all__ = ["OnlineStore", "StoreRead", "ViewRows", "WriteMarker", "WriteOutcome"]

log = logging.getLogger("featurewell.store")

# Compare-and-set on event time, atomic per key: an event older than the stored one never
# overwrites it (equal times: the later write wins, so a corrected row can be re-sent).
# KEYS[1] row key. ARGV[1] row (its first 8 bytes are the event time, int64 LE µs).
# ARGV[2] absolute expiry in Unix ms, or "0" to keep the key until overwritten.
# A key of another type (GET: WRONGTYPE; served as DATA_LOSS) is replaced: writing the row
# repairs it.
_WRITE_IF_NEWER = b"""
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'table' then current = false end
if current and #current >= 8 then
  if struct.unpack('<i8', current) > struct.unpack('<i8', ARGV[1]) then return 0 end
end
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""
_WRITE_SHA = hashlib.sha1(_WRITE_IF_NEWER).hexdigest().encode()

# A view's write marker, once per write batch: the newest event time ever written (a max, so
# a late batch cannot move it back) and the wall time of the last write, both µs.
# KEYS[1] marker key. ARGV[1] the batch's newest event time.
_MARK_WRITE = b"""
local newest = tonumber(redis.call('HGET', KEYS[1], 'newest_event_us') or '0')
if tonumber(ARGV[1]) > newest then redis.call('HSET', KEYS[1], 'newest_event_us', ARGV[1]) end
local now = redis.call('TIME')
redis.call('HSET', KEYS[1], 'written_us', now[1] * 1000000 + now[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class WriteMarker:
    """What the store knows of a view's writes from anywhere: the newest event time written
    and when the last write happened (Unix µs; 0: never)."""

    newest_event_us: int
    written_us: int


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    written: int
    skipped_older: int


class OnlineStore:
    """Feature-view rows of entities: `read` and `write` take views and entity key columns and
    work out keys, hash tags and slots themselves (`read_keys` and `write_keys` take them
    already addressed). Hot rows are answered from an optional `ColumnarCache`."""

    def __init__(
        self,
        cluster: ClusterClient,
        cache: ColumnarCache | None = None,
        tracker: InvalidationTracker | None = None,
    ) -> None:
        self.cluster = cluster
        self.cache = cache
        self.tracker = tracker
        self.refresher = (
            Refresher(cluster, cache)
            if cache is not None and cache.policy.refresh_ahead > 0
            else None
        )
        self._addresses = Addresses()
        # MGET answers nil for a key of another type, as for a missing key. Looking again costs
        # a round trip whenever a row misses a view (ordinary for sparse items), so it is the
        # server's choice (`row_type_checks`), off by default.
        self.check_wrong_types = False

    @classmethod
    async def connect(
        cls,
        seeds: Sequence[Address],
        *,
        connect_timeout: float,
        connections_per_node: int,
        breaker: BreakerPolicy | None = None,
        cache: ColumnarCache | None = None,
        access: NodeAccess | None = None,
        connect_now: bool = True,
    ) -> OnlineStore:
        """Connect to the cluster; with a cache, every connection is tracked for invalidations.
        Raises StoreUnavailable when no seed answers. `connect_now=False` returns a store that
        has not connected yet: `cluster.start()` connects it (a server starting before Redis)."""
        tracker = InvalidationTracker(cache, connect_timeout, access) if cache is not None else None
        cluster = ClusterClient(
            seeds,
            connect_timeout=connect_timeout,
            connections_per_node=connections_per_node,
            breaker=breaker,
            on_connect=tracker.prepare if tracker is not None else None,
            access=access,
        )
        if tracker is not None:
            tracker.slot_map = cluster.slot_map
        try:
            if connect_now:
                await cluster.start()
        except BaseException:
            await cluster.close()
            if tracker is not None:
                await tracker.close()
            raise
        return cls(cluster, cache, tracker)

    async def close(self) -> None:
        if self.refresher is not None:
            await self.refresher.close()
        if self.tracker is not None:  # first: the data connections' closing is not a loss
            await self.tracker.close()
        await self.cluster.close()

    async def read(
        self, entities: Sequence[EntityRows], timeout: float, *, count_timeouts: bool = True
    ) -> StoreRead:
        """Stored rows as `[entity][view]` within `timeout` seconds, in one round trip per node
        for the rows the cache cannot answer. Never raises for a failed node: its rows come
        back flagged with a fallback (see `ViewRows`). `count_timeouts=False` keeps timeouts
        out of the circuit breakers (a short client deadline says nothing of a node)."""
        address, cache = self._addresses.read, self.cache
        codecs = (
            [cache.codecs(rows.views) if rows.cache_ttl > 0 else () for rows in entities]
            if cache is not None
            else None
        )
        return await self.read_keys(
            [address(rows) for rows in entities],
            timeout,
            count_timeouts=count_timeouts,
            codecs=codecs,
        )

    async def read_keys(
        self,
        reads: Sequence[EntityRead],
        timeout: float,
        *,
        count_timeouts: bool = True,
        codecs: Sequence[Sequence[RowCodec]] | None = None,
    ) -> StoreRead:
        """`read` of rows already addressed. The cache answers only reads given their views'
        `codecs` (it holds rows decoded)."""
        cache = self.cache
        now = time.monotonic()
        deadline = now + timeout
        since = cache.sequence if cache is not None else 0
        commands: list[bytes] = []
        slots: list[int] = []
        tracked: list[int] = []
        pending: list[Pending] = []
        for n, read in enumerate(reads):
            read_codecs = codecs[n] if codecs is not None else ()
            if cache is None or read.cache_ttl <= 0 or not read_codecs:
                pending.append(Pending(read, len(commands), None))
                commands += read.commands()
                slots += read.row_slots()
                continue
            group = tuple(read.prefixes)
            cached, missed = cache.lookup(group, read.tags, now, read.cache_ttl)
            if cached is None:  # nothing cached: every row fetched
                missing, missing_tags = None, read.tags
            else:
                missing = missed.tolist()
                missing_tags = [read.tags[r] for r in missing]
            to_cache = cache.select(group, missing_tags)
            if to_cache:
                base = len(commands)
                tracked += [base + j for j in to_cache]
            pending.append(
                Pending(read, len(commands), missing, group, read_codecs, cached, to_cache)
            )
            if missing_tags:
                commands += read.commands(missing_tags) if missing is not None else read.commands()
                slots += read.row_slots(missing_tags if missing is not None else None)
        if cache is not None and cache.late and self.refresher is not None:
            self.refresher.schedule()
        replies = (
            await self.cluster.execute(
                commands, slots, timeout, count_timeouts=count_timeouts, tracked=set(tracked)
            )
            if commands
            else Replies([], [], [], [])
        )
        if replies.errors:
            rowcheck.keep_wrong_types(replies)
        if self.check_wrong_types and commands:
            await rowcheck.mark_wrong_types(
                self.cluster,
                [(p.read, p.start, p.rows) for p in pending],
                replies.values,
                deadline - time.monotonic(),
            )
        failed = failed_commands(replies.failures, len(commands))
        errors = bool(replies.errors) or self.check_wrong_types
        out = [assemble(cache, p, replies.values, failed, now, since, errors) for p in pending]
        return StoreRead(out, replies.failures, replies.timings)

    async def write(
        self,
        view: FeatureView,
        keys: Sequence[KeyColumn],
        rows: Sequence[bytes],
        event_time_us: npt.NDArray[np.int64],
        timeout: float = 10.0,
    ) -> WriteOutcome:
        """Store encoded rows of `view` (entity key columns of one value per row, each row's
        event time) unless a key holds a newer event, expiring with the view's retention, and
        update the view's write marker. Safe to retry (see `write_keys`)."""
        addressed = self._addresses.write(view, keys, event_time_us)
        return await self.write_keys(
            addressed.keys,
            addressed.slots,
            rows,
            addressed.expire_at_ms,
            timeout=timeout,
            freshness=(freshness_key(view), int(event_time_us.max())),
        )

    async def write_keys(
        self,
        keys: Sequence[bytes],
        slots: Sequence[int],
        rows: Sequence[bytes],
        expire_at_ms: Sequence[int] | None = None,
        timeout: float = 10.0,
        freshness: tuple[bytes, int] | None = None,
    ) -> WriteOutcome:
        """Store each row unless its key holds a newer event, within `timeout` seconds. Safe to
        retry: re-applying the same row is a no-op in effect. The written keys leave this
        server's cache once Redis has them (other servers hear of it from Redis).
        `freshness` (marker key, newest event µs) updates the view's write marker with the
        batch, so freshness monitoring sees writes from every writer."""
        try:
            async with asyncio.timeout(timeout):
                return await self._write(keys, slots, rows, expire_at_ms, timeout, freshness)
        except TimeoutError:
            raise StoreTimeout(
                f"Redis Cluster did not confirm {len(rows)} writes within {timeout:.1f} s; "
                "they may be partly applied: retrying is safe"
            ) from None
        finally:
            if self.cache is not None:
                self.cache.invalidate(keys)

    async def _write(
        self,
        keys: Sequence[bytes],
        slots: Sequence[int],
        rows: Sequence[bytes],
        expire_at_ms: Sequence[int] | None,
        timeout: float,
        freshness: tuple[bytes, int] | None,
    ) -> WriteOutcome:
        expiries = [b"%d" % ms for ms in expire_at_ms] if expire_at_ms is not None else None
        commands = [
            _evalsha(key, row, expiries[i] if expiries is not None else b"0")
            for i, (key, row) in enumerate(zip(keys, rows, strict=True))
        ]
        slots = list(slots)
        if freshness is not None:  # last, and left out of the counts below
            marker, newest_us = freshness
            commands.append(encode_command(b"EVAL", _MARK_WRITE, b"1", marker, b"%d" % newest_us))
            slots.append(META_SLOT)
        replies, errors, failures, _ = await self.cluster.execute(commands, slots, timeout)
        _raise_for(failures, len(rows))
        missing = [i for i in errors if str(replies[i]).startswith("NOSCRIPT")]
        if missing:  # first write to a node since it started (or failed over): load and redo
            await self._load_script({self.cluster.node_of(slots[i]) for i in missing})
            redo, redo_errors, redo_failures, _ = await self.cluster.execute(
                [commands[i] for i in missing], [slots[i] for i in missing], timeout
            )
            _raise_for(redo_failures, len(rows))
            for i, reply in zip(missing, redo, strict=True):
                replies[i] = reply
            retried = set(missing)
            errors = [i for i in errors if i not in retried] + [missing[j] for j in redo_errors]
        if errors:
            raise refusal(f"Redis Cluster refused {len(errors)} writes", replies[errors[0]])
        replies = replies[: len(rows)]
        written = sum(replies)
        return WriteOutcome(written=written, skipped_older=len(replies) - written)

    async def write_markers(self, markers: Sequence[bytes], timeout: float) -> list[WriteMarker]:
        """Each view's write marker (zeros for a view never written through featurewell)."""
        commands = [
            encode_command(b"HMGET", marker, b"newest_event_us", b"written_us")
            for marker in markers
        ]
        replies, errors, failures, _ = await self.cluster.execute(
            commands, [META_SLOT] * len(markers), timeout
        )
        _raise_for(failures, len(markers))
        if errors:
            raise refusal("cannot read write markers", replies[errors[0]])
        return [WriteMarker(int(n or 0), int(w or 0)) for n, w in replies]

    async def _load_script(self, nodes: set[Address | None]) -> None:
        for address in nodes:
            if address is None:
                continue
            reply = await self.cluster.call(address, "SCRIPT", "LOAD", _WRITE_IF_NEWER)
            if type(reply) is hiredis.ReplyError:
                log.warning("cannot load the write script on %s:%d: %s", *address, reply)
                raise StoreUnavailable(f"cannot load the write script on a Redis node: {reply}")


# EVALSHA <sha> 1, the constant head of every row write, encoded once (rows are written by the
# hundred thousand a minute by the streaming engine).
_EVALSHA_HEAD = encode_command(b"EVALSHA", _WRITE_SHA, b"1")[4:]


def _evalsha(key: bytes, row: bytes, expire_at: bytes) -> bytes:
    return b"*6\r\n%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        _EVALSHA_HEAD,
        len(key),
        key,
        len(row),
        row,
        len(expire_at),
        expire_at,
    )


def _raise_for(failures: list[Failure], rows: int) -> None:
    if not failures:
        return
    failed, detail = describe(failures)
    log.warning("%d of %d writes got no confirmation (%s)", failed, rows, detail)
    _, what = describe(failures, nodes=False)  # node addresses: in the log only
    message = (
        f"{failed} of {rows} writes got no confirmation ({what}; the server log names the "
        "node); they may be partly applied: retrying is safe"
    )
    if failures[0].reason is FailureReason.TIMEOUT:
        raise StoreTimeout(message)
    raise StoreUnavailable(message)
