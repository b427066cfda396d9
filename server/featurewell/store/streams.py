"""Redis Streams commands on event streams (keys: store/keys.py `stream_keys`): appending
entries, and consuming them with a consumer group. What an entry holds and how consumption
proceeds (cursors, acknowledgement after checkpoints) is compute/redis_streams.py's.

Each function raises StoreUnavailable when Redis does not answer, or refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis

from featurewell.errors import StoreUnavailable
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import encode_command
from featurewell.store.keys import key_slot

Field = bytes | str | int
Entry = tuple[bytes, list[bytes]]  # entry id, [field, value, field, value...]


async def add(
    cluster: ClusterClient, entries: Sequence[tuple[str, Sequence[Field]]], timeout: float
) -> list[str]:
    """XADD each (stream key, fields) with an id Redis assigns; returns the entry ids."""
    commands = [encode_command("XADD", key, "*", *fields) for key, fields in entries]
    slots = [key_slot(key) for key, _ in entries]
    replies = (await cluster.execute(commands, slots, timeout)).checked(
        "cannot append events to Redis"
    )
    return [reply.decode() for reply in replies]


async def create_group(cluster: ClusterClient, key: str, group: str, timeout: float) -> None:
    """Create `group` on the stream (and the stream), reading from its start; a group that
    exists already is left as it is."""
    reply = await _one(cluster, key, timeout, "XGROUP", "CREATE", key, group, "0", "MKSTREAM")
    if isinstance(reply, hiredis.ReplyError) and "BUSYGROUP" not in str(reply):
        raise StoreUnavailable(f"cannot create consumer group on {key}: {reply}")


async def claim_idle(
    cluster: ClusterClient, key: str, group: str, consumer: str, idle_ms: int, timeout: float
) -> int:
    """Make `consumer` the owner of every entry pending for longer than `idle_ms` (a dead
    consumer's); returns how many it took."""
    cursor, claimed = "0-0", 0
    while True:
        reply = await _one(
            cluster,
            key,
            timeout,
            "XAUTOCLAIM",
            key,
            group,
            consumer,
            idle_ms,
            cursor,
            "COUNT",
            1000,
            "JUSTID",
        )
        if isinstance(reply, hiredis.ReplyError):
            raise StoreUnavailable(f"cannot claim pending entries on {key}: {reply}")
        cursor = reply[0].decode()
        claimed += len(reply[1])
        if cursor == "0-0":
            return claimed


async def read_group(
    cluster: ClusterClient,
    group: str,
    consumer: str,
    reads: Sequence[tuple[str, str]],
    count: int,
    timeout: float,
) -> list[list[Entry]]:
    """Up to `count` entries of each (stream key, cursor) as `consumer` of `group`: cursor "0"
    re-reads the consumer's own pending entries, ">" reads new ones. One list per read."""
    commands = [
        encode_command(
            "XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", key, cursor
        )
        for key, cursor in reads
    ]
    slots = [key_slot(key) for key, _ in reads]
    replies = (await cluster.execute(commands, slots, timeout)).checked(
        "cannot read events from Redis"
    )
    return [reply[0][1] if reply else [] for reply in replies]


async def ack(
    cluster: ClusterClient, key: str, group: str, ids: Sequence[str], timeout: float
) -> None:
    """Acknowledge entries of `group`: they leave its pending list."""
    if ids:
        await _one(cluster, key, timeout, "XACK", key, group, *ids)


async def lag(cluster: ClusterClient, key: str, group: str, timeout: float) -> int:
    """Entries of the stream not yet delivered to any consumer of `group` (0: no such group)."""
    reply = await _one(cluster, key, timeout, "XINFO", "GROUPS", key)
    for info in reply if isinstance(reply, list) else []:
        fields = dict(zip(info[::2], info[1::2], strict=True))
        if fields.get(b"name") == group.encode():
            return int(fields.get(b"lag") or 0)
    return 0


async def pending(cluster: ClusterClient, key: str, group: str, timeout: float) -> int:
    """Entries delivered to consumers of `group` and not acknowledged yet."""
    reply = await _one(cluster, key, timeout, "XPENDING", key, group)
    if isinstance(reply, hiredis.ReplyError):
        raise StoreUnavailable(f"cannot count pending entries on {key}: {reply}")
    return int(reply[0])


async def entries(
    cluster: ClusterClient, key: str, start: str, count: int, timeout: float
) -> list[Entry]:
    """Up to `count` entries from id `start` on (XRANGE; "-" is the first, "(<id>" after it)."""
    reply = await _one(cluster, key, timeout, "XRANGE", key, start, "+", "COUNT", count)
    if isinstance(reply, hiredis.ReplyError):
        raise StoreUnavailable(f"cannot read {key}: {reply}")
    return [(entry_id, fields) for entry_id, fields in reply]


async def delete(cluster: ClusterClient, key: str, ids: Sequence[str], timeout: float) -> int:
    """Remove entries by id (XDEL); returns how many existed."""
    if not ids:
        return 0
    reply = await _one(cluster, key, timeout, "XDEL", key, *ids)
    if isinstance(reply, hiredis.ReplyError):
        raise StoreUnavailable(f"cannot delete from {key}: {reply}")
    return int(reply)


async def length(cluster: ClusterClient, key: str, timeout: float) -> int:
    reply = await _one(cluster, key, timeout, "XLEN", key)
    if isinstance(reply, hiredis.ReplyError):
        raise StoreUnavailable(f"cannot count {key}: {reply}")
    return int(reply)


# Take or keep a lease: free (never taken, expired, released) or ours already. Only GET and SET
# (what the writer role may run), on keys in one slot (`{_stream}`): one script for them all.
_LEASE = b"""
local out = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == false or holder == '' or holder == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
_RELEASE = b"""
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('SET', key, '', 'PX', 1) end
end
return 1
"""


async def lease(
    cluster: ClusterClient, keys: Sequence[bytes], holder: str, ttl_ms: int, timeout: float
) -> list[bool]:
    """Take or renew, for `ttl_ms`, each lease (keys in one slot) that is free or `holder`'s;
    True where `holder` has it now."""
    if not keys:
        return []
    reply = await _one(cluster, keys[0], timeout, "EVAL", _LEASE, len(keys), *keys, holder, ttl_ms)
    if isinstance(reply, hiredis.ReplyError):
        raise StoreUnavailable(f"cannot take partition leases: {reply}")
    return [bool(taken) for taken in reply]


async def release(
    cluster: ClusterClient, keys: Sequence[bytes], holder: str, timeout: float
) -> None:
    """Give up `holder`'s leases (keys in one slot); others' are left alone."""
    if keys:
        reply = await _one(cluster, keys[0], timeout, "EVAL", _RELEASE, len(keys), *keys, holder)
        if isinstance(reply, hiredis.ReplyError):
            raise StoreUnavailable(f"cannot release partition leases: {reply}")


async def holders(cluster: ClusterClient, keys: Sequence[bytes], timeout: float) -> list[str]:
    """Who holds each lease ('' when nobody does)."""
    replies = (
        await cluster.execute(
            [encode_command("GET", key) for key in keys], [key_slot(key) for key in keys], timeout
        )
    ).checked("cannot read partition leases")
    return [reply.decode() if reply else "" for reply in replies]


async def heartbeat(
    cluster: ClusterClient, key: bytes, member: str, now_ms: int, timeout: float
) -> dict[str, int]:
    """Note that `member` is alive at `now_ms`; returns every member's last heartbeat (ms)."""
    commands = [encode_command("HSET", key, member, now_ms), encode_command("HGETALL", key)]
    replies = (await cluster.execute(commands, [key_slot(key)] * 2, timeout)).checked(
        "cannot note this consumer's heartbeat"
    )
    seen = replies[1]
    return {name.decode(): int(ms) for name, ms in zip(seen[::2], seen[1::2], strict=True)}


async def _one(cluster: ClusterClient, key: str | bytes, timeout: float, *args: Field) -> Any:
    # Error replies come back as values: each caller reads its own (BUSYGROUP is fine).
    replies, _, failures, _ = await cluster.execute(
        [encode_command(*args)], [key_slot(key)], timeout
    )
    if failures:
        where = key.decode() if isinstance(key, bytes) else key
        raise StoreUnavailable(f"Redis did not answer {args[0]!s} on {where}: {failures[0].detail}")
    return replies[0]
