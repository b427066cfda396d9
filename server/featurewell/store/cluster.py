"""A thin Redis Cluster client for batched, per-node-parallel commands.

`execute` takes pre-encoded commands with their slots, groups them by the node that owns each
slot, writes one pipelined batch per node (all nodes in flight at once) and returns the replies in
order. It follows MOVED (and refreshes the slot map), ASK (with ASKING), TRYAGAIN/CLUSTERDOWN/
LOADING (brief backoff), and reconnects after a lost connection. redis-py's cluster pipeline takes
~15 ms for 501 GETs on these machines; this path takes ~1 ms because it builds no per-command
objects: see docs/architecture.md.

This module holds what outlives a call: the slot map, connections, breakers and the recovery
task that follows failovers. One call's rounds (grouping, payloads, replies, redirects) are in
store/rounds.py.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

import hiredis

from featurewell.errors import StoreUnavailable, StoreUnreachable
from featurewell.store import rounds
from featurewell.store.batch import Replies
from featurewell.store.breaker import Breaker, BreakerPolicy, BreakerState
from featurewell.store.connection import Address, Connection, NodeAccess
from featurewell.store.slotmap import SlotMap

log = logging.getLogger("featurewell.store")
LOG_EVERY_S = 30.0  # a failing retry loop logs at most this often


OnConnect = Callable[[Connection], Awaitable[None]]


class ClusterClient:
    """Slot map + one small set of multiplexed connections per master node, with a circuit
    breaker per node and a background task that follows failovers while a breaker is open."""

    def __init__(
        self,
        seeds: Sequence[Address],
        *,
        connect_timeout: float = 1.0,
        connections_per_node: int = 1,
        breaker: BreakerPolicy | None = None,
        on_connect: OnConnect | None = None,
        recovery_interval: float = 0.1,
        access: NodeAccess | None = None,
    ) -> None:
        if not seeds:
            raise ValueError("at least one Redis Cluster seed address is required")
        self._seeds = list(seeds)
        self._connect_timeout = connect_timeout
        self._per_node = max(1, connections_per_node)
        self._policy = breaker or BreakerPolicy()
        self._on_connect = on_connect
        self._access = access
        self._recovery_interval = recovery_interval
        self.slot_map = SlotMap()
        self._pools: dict[Address, list[Connection]] = {}
        self._opening: dict[Address, asyncio.Lock] = {}
        self.breakers: dict[Address, Breaker] = {}
        self._round_robin = 0
        self._refresh_lock = asyncio.Lock()
        self._refreshed_at = 0.0
        self._recovery: asyncio.Task[None] | None = None

    @property
    def masters(self) -> list[Address]:
        return self.slot_map.masters

    @property
    def access(self) -> NodeAccess | None:
        """Credentials and TLS of this cluster's connections (for connections of other kinds)."""
        return self._access

    @property
    def connect_timeout(self) -> float:
        return self._connect_timeout

    def node_of(self, slot: int) -> Address | None:
        return self.slot_map.node_of(slot)

    async def start(self) -> None:
        await self.refresh_topology(force=True)
        for address in self.masters:
            await self.connection(address)

    async def close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
        for address in list(self._pools):
            self._close_node(address)

    async def call(self, address: Address, *args: bytes | str | int) -> Any:
        """One command on one node, for rare administrative paths (script loading)."""
        connection = await self.connection(address)
        return await connection.call(*args)

    async def refresh_topology(self, *, force: bool = False) -> None:
        """Reload the slot map from the first node that answers CLUSTER SLOTS, asking nodes
        with an open breaker last."""
        async with self._refresh_lock:
            if not force and time.monotonic() - self._refreshed_at < 0.05:
                return  # a concurrent caller just refreshed it
            problems: list[str] = []
            unreachable: list[str] = []  # refused or silent: down, not misconfigured
            candidates = dict.fromkeys([*self.slot_map.nodes, *self._seeds])
            healthy = [a for a in candidates if a not in self.breakers or self._closed(a)]
            for address in [*healthy, *(a for a in candidates if a not in healthy)]:
                name = f"{address[0]}:{address[1]}"
                try:
                    async with asyncio.timeout(self._connect_timeout):
                        connection = await self.connection(address)
                        reply = await connection.call("CLUSTER", "SLOTS")
                except (StoreUnavailable, TimeoutError) as exc:
                    problems.append(f"{name}: {exc or 'timed out'}")
                    if _unreachable(exc):
                        unreachable.append(name)
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    problems.append(f"{name} is not a cluster node ({reply})")
                    continue
                self.slot_map.apply(reply, address)
                self._refreshed_at = time.monotonic()
                return
            if len(unreachable) == len(problems):
                raise StoreUnreachable(
                    f"Redis Cluster unreachable: none of its {len(problems)} known nodes answered ("
                    + "; ".join(problems)
                    + ")",
                    unreachable,
                )
            raise StoreUnavailable(
                "no Redis Cluster node answered CLUSTER SLOTS; check the --redis addresses: "
                + "; ".join(problems)
            )

    def _closed(self, address: Address) -> bool:
        return self.breakers[address].state is BreakerState.CLOSED

    def ready(self, address: Address) -> Connection | None:
        pool = self._pools.get(address)
        if not pool:
            return None
        self._round_robin += 1
        connection = pool[self._round_robin % len(pool)]
        return None if connection.closed else connection

    async def connection(self, address: Address) -> Connection:
        ready = self.ready(address)
        if ready is not None:
            return ready
        lock = self._opening.setdefault(address, asyncio.Lock())
        async with lock:
            pool = [c for c in self._pools.get(address, []) if not c.closed]
            while len(pool) < self._per_node:
                connection = await Connection.open(address, self._connect_timeout, self._access)
                if self._on_connect is not None:
                    try:
                        await self._on_connect(connection)
                    except BaseException:
                        connection.close()
                        raise
                pool.append(connection)
            self._pools[address] = pool
            return pool[0]

    def _close_node(self, address: Address) -> None:
        """Close a node's connections; batches still waiting on them fail at once."""
        for connection in self._pools.pop(address, []):
            connection.close()

    # -- failures ------------------------------------------------------------------------------

    def _breaker(self, address: Address) -> Breaker:
        breaker = self.breakers.get(address)
        if breaker is None:
            breaker = self.breakers[address] = Breaker(self._policy)
        return breaker

    def node_failed(self, address: Address) -> None:
        if self._breaker(address).failure():
            log.warning(
                "Redis node %s:%d failing: circuit open for %.1f s",
                address[0],
                address[1],
                self._policy.open_s,
            )
            self._close_node(address)
            self.start_recovery()

    def start_recovery(self) -> None:
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """While a node is failing, re-read the slot map often so a promoted replica takes over
        its slots as soon as the cluster elects it, and open connections to new masters before
        calls need them."""
        failing_since: float | None = None
        logged_at = 0.0
        while True:
            await asyncio.sleep(self._recovery_interval)
            try:
                await self.refresh_topology(force=True)
            except StoreUnavailable as exc:
                # Retried every `recovery_interval` (a failover is over in seconds), but logged
                # on the first failure and then every LOG_EVERY_S only.
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                if now - logged_at >= LOG_EVERY_S:
                    logged_at = now
                    log.warning(
                        "cannot refresh the Redis Cluster topology for %.0f s (retrying every "
                        "%.1f s, logged every %.0f s): %s",
                        now - failing_since,
                        self._recovery_interval,
                        LOG_EVERY_S,
                        exc,
                    )
                continue
            if failing_since is not None:
                log.warning(
                    "Redis Cluster topology readable again after %.1f s",
                    time.monotonic() - failing_since,
                )
                failing_since = None
            masters = set(self.masters)
            for address in masters:
                if address not in self._pools and self._closed_or_new(address):
                    try:
                        await self.connection(address)
                    except StoreUnavailable:
                        continue
            failing = [a for a in masters if a in self.breakers and not self._closed(a)]
            if not failing:
                for address in [a for a in self.breakers if a not in masters]:
                    del self.breakers[address]  # replaced by its replica: forget it
                return

    def _closed_or_new(self, address: Address) -> bool:
        return address not in self.breakers or self._closed(address)

    # -- the batched path (store/rounds.py) ---------------------------------------------------

    async def execute(
        self,
        commands: Sequence[bytes],
        slots: Sequence[int],
        timeout: float,
        *,
        count_timeouts: bool = True,
        tracked: Collection[int] = (),
    ) -> Replies:
        """Run `commands[i]` on the master owning `slots[i]` within `timeout` seconds; replies
        in the same order. Never raises for a node's failure: commands that got no reply are in
        `Replies.failures`. `count_timeouts=False` keeps timeouts out of the breakers (for calls
        whose budget a short client deadline set, not the node's slowness). Reads of the
        commands in `tracked` are remembered by Redis for invalidation (connections run
        OPTIN tracking when the server caches)."""
        return await rounds.execute(self, commands, slots, timeout, count_timeouts, tracked)


def _unreachable(exc: BaseException) -> bool:
    """Whether a failed connection means the node is down or cut off (refused, reset, silent)
    rather than misconfigured (TLS, password): only the first is worth waiting for."""
    cause = exc if isinstance(exc, TimeoutError) else exc.__cause__
    return isinstance(cause, OSError | TimeoutError) and not isinstance(cause, ssl.SSLError)
