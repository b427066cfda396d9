"""Every write to chosen key prefixes, announced by Redis: the feed of near-cache subscriptions
(serving/invalidations.py).

One connection per master node runs `CLIENT TRACKING ON REDIRECT <itself> BCAST PREFIX ...`
and then subscribes to `__redis__:invalidate`: Redis then sends it the name of every key with
one of those prefixes that any client changes (or that expires or is evicted), whoever reads
it. Unlike the hot-key cache's OPTIN tracking (store/tracking.py), nothing depends on which keys
this server happened to read, and Redis keeps no per-key table for it (a prefix tree only);
the cost is one message per write to a prefixed key.

What can be missed is reported, never hidden: a lost connection, a FLUSHALL (a message with no
keys) or masters that differ from the ones listened to all call `on_reset`; the subscription
layer then tells every subscriber to drop what it holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import hiredis

from featurewell.errors import StoreUnavailable
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import Address, Connection, encode_command

_CHANNEL = b"__redis__:invalidate"
RESETS = ("connection_lost", "flushed")  # why a broadcast may have missed writes


class RowBroadcast:
    """Listens on every master for writes to `prefixes`; `on_keys` gets each batch of changed
    keys, `on_reset` is called once when any may have been missed (then the broadcast stops:
    `start` it again), with why (for people) and a reason of `RESETS` (for metrics)."""

    def __init__(
        self,
        cluster: ClusterClient,
        prefixes: Sequence[bytes],
        on_keys: Callable[[list[bytes]], None],
        on_reset: Callable[[str, str], None],
    ) -> None:
        self.cluster = cluster
        self.prefixes = list(prefixes)
        self._on_keys = on_keys
        self._on_reset = on_reset
        self._connections: dict[Address, Connection] = {}
        self.stopped = False

    @property
    def nodes(self) -> frozenset[Address]:
        return frozenset(self._connections)

    async def start(self) -> None:
        """Listen on every master the cluster knows. Raises StoreUnavailable (and listens on
        none) when any cannot be reached."""
        try:
            for address in self.cluster.masters:
                self._connections[address] = await self._listen(address)
        except BaseException:
            self.close()
            raise

    def current(self) -> bool:
        """Whether the masters listened to are still the cluster's (a failover or a resharding
        moves writes to nodes this does not hear)."""
        return not self.stopped and self.nodes == frozenset(self.cluster.masters)

    async def _listen(self, address: Address) -> Connection:
        connection = await Connection.open(
            address, self.cluster.connect_timeout, self.cluster.access
        )
        try:
            client_id = await connection.call("CLIENT", "ID")
            prefixes = [part for prefix in self.prefixes for part in (b"PREFIX", prefix)]
            tracking = await connection.call(
                "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", *prefixes
            )
            (subscribed,) = await connection.send(encode_command("SUBSCRIBE", _CHANNEL), 1)
        except BaseException:
            connection.close()
            raise
        refused = [r for r in (tracking, subscribed) if isinstance(r, hiredis.ReplyError)]
        if refused or tracking != b"OK":
            connection.close()
            raise StoreUnavailable(
                f"Redis node {address[0]}:{address[1]} refused broadcast tracking "
                f"({refused[0] if refused else tracking!r}); near caches need Redis 6 or later"
            )
        connection.on_message = self._message
        connection.on_lost = lambda: self._reset(
            f"lost the connection to {address[0]}:{address[1]}", "connection_lost"
        )
        return connection

    def _message(self, message: object) -> None:
        if not isinstance(message, list) or len(message) != 3 or message[0] != b"message":
            return
        keys = message[2]
        if keys is None:  # FLUSHALL / FLUSHDB: every row may have changed
            self._reset("the Redis database was flushed", "flushed")
        elif isinstance(keys, list):
            self._on_keys(keys)

    def _reset(self, why: str, reason: str) -> None:
        if self.stopped:
            return
        self.close()
        self._on_reset(why, reason)

    def close(self) -> None:
        self.stopped = True
        for connection in self._connections.values():
            connection.on_lost = None
            connection.on_message = None
            connection.close()
        self._connections.clear()


async def started(
    cluster: ClusterClient,
    prefixes: Sequence[bytes],
    on_keys: Callable[[list[bytes]], None],
    on_reset: Callable[[str, str], None],
    timeout: float,
) -> RowBroadcast:
    """A broadcast listening on every master within `timeout` seconds (StoreUnavailable when
    it cannot)."""
    broadcast = RowBroadcast(cluster, prefixes, on_keys, on_reset)
    try:
        async with asyncio.timeout(timeout):
            await broadcast.start()
    except TimeoutError:
        broadcast.close()
        raise StoreUnavailable("Redis did not accept broadcast tracking in time") from None
    return broadcast
