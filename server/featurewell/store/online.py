"""The online store: feature-view rows in a Redis Cluster, read in bulk, written in event order."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import hiredis

from featurewell.errors import StoreError, StoreTimeout, StoreUnavailable
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import Address, encode_command

# Compare-and-set on event time, atomic per key: an event older than the stored one never
# overwrites it (equal times: the later write wins, so a corrected row can be re-sent).
# KEYS[1] row key. ARGV[1] row (its first 8 bytes are the event time, int64 LE µs).
# ARGV[2] absolute expiry in Unix ms, or "0" to keep the key until overwritten.
_WRITE_IF_NEWER = b"""
local current = redis.call('GET', KEYS[1])
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


@dataclass(frozen=True, slots=True)
class EntityRead:
    """One entity's rows in one or more views: the key of row r in view v is
    `prefixes[v] + tags[r] + b"}"`. A row's keys share its hash tag, hence `slots[r]`, so each
    row is one GET (one view) or one MGET (several)."""

    prefixes: list[bytes]
    tags: list[bytes]
    slots: list[int]

    def commands(self) -> list[bytes]:
        """One GET/MGET per row. A row's command is `tag.join(template)`, the template
        depending only on the tag's length: one C call per row, no per-key objects."""
        templates: dict[int, list[bytes]] = {}
        out: list[bytes] = []
        for tag in self.tags:
            template = templates.get(len(tag))
            if template is None:
                template = templates[len(tag)] = _row_template(self.prefixes, len(tag))
            out.append(tag.join(template))
        return out


def _row_template(prefixes: list[bytes], tag_length: int) -> list[bytes]:
    """Pieces that, joined by a tag of `tag_length` bytes, form the row's GET or MGET."""
    verb = (
        b"*2\r\n$3\r\nGET\r\n"
        if len(prefixes) == 1
        else b"*%d\r\n$4\r\nMGET\r\n" % (len(prefixes) + 1)
    )
    pieces = [verb]
    for prefix in prefixes:
        pieces[-1] += b"$%d\r\n%s" % (len(prefix) + tag_length + 1, prefix)
        pieces.append(b"}\r\n")
    return pieces


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    written: int
    skipped_older: int


class OnlineStore:
    """Rows addressed by (key, slot), the slot computed once per entity by the caller."""

    def __init__(self, cluster: ClusterClient) -> None:
        self.cluster = cluster

    @classmethod
    async def connect(
        cls, seeds: Sequence[Address], *, connect_timeout: float, connections_per_node: int
    ) -> OnlineStore:
        cluster = ClusterClient(
            seeds, connect_timeout=connect_timeout, connections_per_node=connections_per_node
        )
        await cluster.start()
        return cls(cluster)

    async def close(self) -> None:
        await self.cluster.close()

    async def read(
        self, reads: Sequence[EntityRead], timeout: float
    ) -> list[list[list[bytes | None]]]:
        """Stored rows (None where there is none) as `[read][view][row]`, within `timeout`
        seconds, in one round trip per node."""
        commands: list[bytes] = []
        slots: list[int] = []
        for read in reads:
            commands += read.commands()
            slots += read.slots
        try:
            async with asyncio.timeout(timeout):
                replies = await self.cluster.execute(commands, slots)
        except TimeoutError:
            raise StoreTimeout(
                f"Redis Cluster did not answer {len(commands)} reads within {timeout * 1000:.1f} ms"
            ) from None
        if replies.errors:
            raise StoreError(f"Redis Cluster refused a read: {replies.values[replies.errors[0]]}")
        out: list[list[list[bytes | None]]] = []
        start = 0
        for read in reads:
            part = replies.values[start : start + len(read.slots)]
            start += len(read.slots)
            if len(read.prefixes) == 1:
                out.append([part])
            else:
                out.append([[row[view] for row in part] for view in range(len(read.prefixes))])
        return out

    async def write(
        self,
        keys: Sequence[bytes],
        slots: Sequence[int],
        rows: Sequence[bytes],
        expire_at_ms: Sequence[int] | None = None,
        timeout: float = 10.0,
    ) -> WriteOutcome:
        """Store each row unless its key holds a newer event, within `timeout` seconds. Safe to
        retry: re-applying the same row is a no-op in effect."""
        try:
            async with asyncio.timeout(timeout):
                return await self._write(keys, slots, rows, expire_at_ms)
        except TimeoutError:
            raise StoreTimeout(
                f"Redis Cluster did not confirm {len(rows)} writes within {timeout:.1f} s; "
                "they may be partly applied: retrying is safe"
            ) from None

    async def _write(
        self,
        keys: Sequence[bytes],
        slots: Sequence[int],
        rows: Sequence[bytes],
        expire_at_ms: Sequence[int] | None,
    ) -> WriteOutcome:
        expiries = [b"%d" % ms for ms in expire_at_ms] if expire_at_ms is not None else None
        commands = [
            _evalsha(key, row, expiries[i] if expiries is not None else b"0")
            for i, (key, row) in enumerate(zip(keys, rows, strict=True))
        ]
        replies, errors = await self.cluster.execute(commands, slots)
        missing = [i for i in errors if str(replies[i]).startswith("NOSCRIPT")]
        if missing:  # first write to a node since it started (or failed over): load and redo
            await self._load_script({self.cluster.node_of(slots[i]) for i in missing})
            redo, redo_errors = await self.cluster.execute(
                [commands[i] for i in missing], [slots[i] for i in missing]
            )
            for i, reply in zip(missing, redo, strict=True):
                replies[i] = reply
            retried = set(missing)
            errors = [i for i in errors if i not in retried] + [missing[j] for j in redo_errors]
        if errors:
            raise StoreUnavailable(
                f"Redis Cluster refused {len(errors)} writes: {replies[errors[0]]}"
            )
        written = sum(replies)
        return WriteOutcome(written=written, skipped_older=len(replies) - written)

    async def _load_script(self, nodes: set[Address | None]) -> None:
        for address in nodes:
            if address is None:
                continue
            reply = await self.cluster.call(address, "SCRIPT", "LOAD", _WRITE_IF_NEWER)
            if type(reply) is hiredis.ReplyError:
                raise StoreUnavailable(f"cannot load the write script on {address}: {reply}")


def _evalsha(key: bytes, row: bytes, expire_at: bytes) -> bytes:
    return encode_command(b"EVALSHA", _WRITE_SHA, b"1", key, row, expire_at)
