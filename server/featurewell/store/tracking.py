"""Keeping the hot-key cache coherent with writes made anywhere, through Redis client-side
caching (tracking, RESP2 redirect mode).

Each Redis node gets one subscriber connection on `__redis__:invalidate`; every data connection
to that node runs `CLIENT TRACKING ON REDIRECT <subscriber id> OPTIN` before its first read.
OPTIN: Redis remembers only the keys of reads sent right after `CLIENT CACHING YES`, which the
store sends only for rows the cache is about to hold; tracking every key a ranking call reads
cost Redis 0.3-0.6 ms per 500-row read here. When any client changes a remembered key, Redis
sends its name to the subscriber once. Redis bounds its tracking table
(`tracking-table-max-keys`) by sending early invalidations, which only costs a refetch here.

If a subscriber connection drops, invalidations for its node may be lost: every cached entry
stops being fresh (entries stay usable as fallbacks) and the node's data connections are closed
so they reconnect tracked by a new subscriber. A data connection that closes (a node failing,
its breaker opening, a failover, a proxy or Redis's `timeout` cutting it) loses its keys'
invalidations as surely: Redis keeps a closed client's keys in its tracking table but sends
their invalidations nowhere (seen on Redis 7.0). That ends the freshness of the entries of that
node's slots (all entries, when the node no longer owns slots in the map: they may have moved),
once per loop turn however many of its connections closed; the other nodes' entries stay
fresh, still tracked by their own connections.
"""

from __future__ import annotations

import asyncio

import hiredis

from featurewell.errors import StoreUnavailable
from featurewell.store.columnar import ColumnarCache
from featurewell.store.connection import Address, Connection, NodeAccess, encode_command
from featurewell.store.keys import slots_of
from featurewell.store.slotmap import SlotMap

_CHANNEL = b"__redis__:invalidate"


class InvalidationTracker:
    def __init__(
        self, cache: ColumnarCache, connect_timeout: float, access: NodeAccess | None = None
    ) -> None:
        self._cache = cache
        self._connect_timeout = connect_timeout
        self._access = access
        self._subscribers: dict[Address, tuple[Connection, int]] = {}
        self._tracked: dict[Address, list[Connection]] = {}
        self._closed = False
        self._cut_nodes: set[Address] = set()  # nodes whose data connections closed this turn
        self.slot_map: SlotMap | None = None  # the cluster's (set once it exists)
        self.lost = 0  # subscriber connections lost: for tests and metrics
        self.cut = 0  # tracked data connections closed

    async def prepare(self, connection: Connection) -> None:
        """Turn tracking on for a new data connection (the cluster's on-connect hook)."""
        client_id = await self._subscriber(connection.address)
        reply = await connection.call("CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "OPTIN")
        if reply != b"OK":
            raise StoreUnavailable(
                f"Redis node {_name(connection.address)} refused CLIENT TRACKING ({reply}); "
                "the hot-key cache needs Redis 6 or later, or run with --cache-entries 0"
            )
        tracked = [c for c in self._tracked.get(connection.address, []) if not c.closed]
        self._tracked[connection.address] = [*tracked, connection]
        address = connection.address
        connection.on_lost = lambda: self._on_cut(address)

    async def close(self) -> None:
        self._closed = True
        for connection, _ in self._subscribers.values():
            connection.on_lost = None
            connection.close()
        self._subscribers.clear()

    async def _subscriber(self, address: Address) -> int:
        existing = self._subscribers.get(address)
        if existing is not None and not existing[0].closed:
            return existing[1]
        connection = await Connection.open(address, self._connect_timeout, self._access)
        try:
            client_id = await connection.call("CLIENT", "ID")
            (reply,) = await connection.send(encode_command("SUBSCRIBE", _CHANNEL), 1)
        except BaseException:
            connection.close()
            raise
        if isinstance(client_id, hiredis.ReplyError) or isinstance(reply, hiredis.ReplyError):
            connection.close()
            raise StoreUnavailable(
                f"cannot subscribe to invalidations on Redis node {_name(address)}: {reply}"
            )
        connection.on_message = self._on_message
        connection.on_lost = lambda: self._on_lost(address)
        self._subscribers[address] = (connection, int(client_id))
        return int(client_id)

    def _on_message(self, message: object) -> None:
        if not isinstance(message, list) or len(message) != 3 or message[0] != b"message":
            return
        keys = message[2]
        if keys is None:  # FLUSHALL / FLUSHDB: everything may have changed
            self._cache.expire_all()
        else:
            self._cache.invalidate(keys)

    def _on_lost(self, address: Address) -> None:
        self.lost += 1
        self._subscribers.pop(address, None)
        self._cache.expire_all()
        for connection in self._tracked.pop(address, []):
            connection.on_lost = None  # (counted here, once)
            connection.close()

    def _on_cut(self, address: Address) -> None:
        if self._closed:  # the store closing: nothing reads the cache any more
            return
        self.cut += 1
        if not self._cut_nodes:
            asyncio.get_running_loop().call_soon(self._expire_cut)
        self._cut_nodes.add(address)

    def _expire_cut(self) -> None:
        nodes, self._cut_nodes = self._cut_nodes, set()
        slot_map = self.slot_map
        if self._closed:
            return
        if slot_map is None or not nodes <= set(slot_map.masters):
            self._cache.expire_all()
            return
        self._cache.expire(lambda tags: slot_map.owned_by(slots_of(tags), nodes))


def _name(address: Address) -> str:
    return f"{address[0]}:{address[1]}"
