"""One batched `ClusterClient.execute` call, round by round: the commands grouped by the node
owning their slot, one pipelined payload per node (every node in flight at once), the replies put
back in command order; MOVED (with a slot map update), ASK (resent with ASKING), retryable errors
(TRYAGAIN, CLUSTERDOWN, LOADING, MASTERDOWN) and connections lost in flight go round again, with
a brief backoff, until the budget ends. `ClusterClient` (store/cluster.py) owns the topology, the
connections and the breakers this path asks for.

A 500-row ranking spends most of its store time here and in `Connection` (parsing), so the
per-command work is kept to C-level steps: payloads joined from `map`, error replies looked for
with one `set(map(type, ...))`, each node's replies parsed as one array (store/connection.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import hiredis
import numpy as np
import numpy.typing as npt

from featurewell.errors import StoreUnavailable
from featurewell.store.batch import Failure, FailureReason, NodeTiming, Replies
from featurewell.store.breaker import Breaker
from featurewell.store.connection import Address, Connection, encode_command
from featurewell.store.slotmap import SlotMap

_ASKING = encode_command("ASKING")
_CACHING_YES = encode_command("CLIENT", "CACHING", "YES")
_MAX_ROUNDS = 5
_RETRYABLE = ("TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN")


class Nodes(Protocol):
    """What a batch needs of the cluster client: where slots live, each node's breaker and
    connection, and a way to report a failing node or a stale slot map."""

    slot_map: SlotMap
    breakers: dict[Address, Breaker]

    def ready(self, address: Address) -> Connection | None: ...

    async def connection(self, address: Address) -> Connection: ...

    def node_failed(self, address: Address) -> None: ...

    def start_recovery(self) -> None: ...


async def execute(
    nodes: Nodes,
    commands: Sequence[bytes],
    slots: Sequence[int],
    timeout: float,
    count_timeouts: bool,
    tracked: Collection[int],
) -> Replies:
    """`ClusterClient.execute`: see there."""
    deadline = asyncio.get_running_loop().time() + timeout
    call = _Call(commands, np.asarray(slots, dtype=np.int64), deadline, count_timeouts, tracked)
    todo: Sequence[int] = range(len(commands))
    for round_number in range(_MAX_ROUNDS):
        todo = await _round(nodes, call, todo)
        if not todo:
            return call.replies
        delay = 0.002 * (2**round_number) if round_number else 0.0
        if asyncio.get_running_loop().time() + delay >= deadline:
            break
        await asyncio.sleep(delay)
    late = asyncio.get_running_loop().time() >= deadline
    reason = FailureReason.TIMEOUT if late else FailureReason.UNAVAILABLE
    call.fail(list(todo), None, reason, call.last_problem)
    return call.replies


async def _round(nodes: Nodes, call: _Call, todo: Sequence[int]) -> list[int]:
    """Send one batch per node, wait until all answer or the deadline passes; return the
    indexes to try again (redirected, retryable errors, connections lost in flight)."""
    groups, unowned = nodes.slot_map.group(call.slots, todo, call.asking)
    retry: list[int] = []
    if unowned:
        call.fail(unowned, None, FailureReason.UNAVAILABLE, "slots with no owner")
        nodes.start_recovery()
    in_flight: list[tuple[Address, list[int], asyncio.Future[list[Any]], int]] = []
    now = time.monotonic()
    for address, indexes in groups.items():
        breaker = nodes.breakers.get(address)
        if breaker is not None and not breaker.allow(now):
            call.fail(indexes, address, FailureReason.CIRCUIT_OPEN, "circuit open")
            continue
        try:
            connection = nodes.ready(address)
            if connection is None:
                async with asyncio.timeout_at(call.deadline):
                    connection = await nodes.connection(address)
            future = connection.send(*_payload(call, indexes))
        except (StoreUnavailable, TimeoutError) as exc:
            reason = FailureReason.TIMEOUT if isinstance(exc, TimeoutError) else None
            call.fail(indexes, address, reason or FailureReason.UNAVAILABLE, str(exc))
            nodes.node_failed(address)
            continue
        in_flight.append((address, indexes, future, time.perf_counter_ns()))
        future.add_done_callback(call.answered)
    if in_flight:
        await _settle([future for _, _, future, _ in in_flight], call.deadline)
    for address, indexes, future, sent_ns in in_flight:
        call.replies.timings.append(
            NodeTiming(address, sent_ns, call.answered_ns(future), len(indexes))
        )
        if not future.done() or future.cancelled():
            future.cancel()
            call.fail(indexes, address, FailureReason.TIMEOUT, "no reply within the budget")
            if call.count_timeouts:
                nodes.node_failed(address)
            continue
        if future.exception() is not None:
            retry.extend(indexes)  # connection lost: the next round reconnects
            call.last_problem = str(future.exception())
            continue
        breaker = nodes.breakers.get(address)
        if breaker is not None:
            breaker.success()
        _collect(nodes, call, address, indexes, future.result(), retry)
    return retry


def _collect(
    nodes: Nodes,
    call: _Call,
    address: Address,
    indexes: list[int],
    replies: list[Any],
    retry: list[int],
) -> None:
    results = call.replies.values
    if call.asking or call.tracked:
        replies = _strip_prefixes(call, replies, indexes)
    if hiredis.ReplyError not in set(map(type, replies)):  # the usual case, checked in C
        for i, reply in zip(indexes, replies, strict=True):
            results[i] = reply
        return
    for i, reply in zip(indexes, replies, strict=True):
        if type(reply) is not hiredis.ReplyError:
            results[i] = reply
            continue
        message = str(reply)
        if message.startswith("MOVED "):
            _, slot, target = message.split(" ")
            nodes.slot_map.move(int(slot), _parse_address(target, address))
            nodes.start_recovery()
        elif message.startswith("ASK "):
            call.asking[i] = _parse_address(message.split(" ")[2], address)
        elif not message.startswith(_RETRYABLE):
            results[i] = reply
            call.replies.errors.append(i)
            continue
        call.last_problem = message
        retry.append(i)


def _payload(call: _Call, indexes: list[int]) -> tuple[bytes, int]:
    """The pipelined bytes for these commands: each preceded by ASKING after an ASK
    redirect, and by CLIENT CACHING YES when its keys must be tracked (OPTIN tracking)."""
    commands, asking, tracked = call.commands, call.asking, call.tracked
    if not asking and not tracked:
        return b"".join(map(commands.__getitem__, indexes)), len(indexes)
    parts: list[bytes] = []
    for i in indexes:
        # CACHING YES only holds for the very next command, so it goes after ASKING; a
        # command sent with ASKING is then read untracked (its cache entry lives its TTL).
        if i in asking:
            parts.append(_ASKING)
        elif i in tracked:
            parts.append(_CACHING_YES)
        parts.append(commands[i])
    return b"".join(parts), len(parts)


def _strip_prefixes(call: _Call, replies: list[Any], indexes: list[int]) -> list[Any]:
    """The commands' own replies, without those of the ASKING/CACHING prefixes."""
    asking, tracked = call.asking, call.tracked
    out: list[Any] = []
    position = 0
    for i in indexes:
        if i in asking:
            position += 1
            del asking[i]
        elif i in tracked:
            position += 1
        out.append(replies[position])
        position += 1
    return out


def _parse_address(text: str, asked: Address) -> Address:
    host, _, port = text.rpartition(":")
    return (host or asked[0], int(port))


@dataclass(slots=True)
class _Call:
    """One `execute` call's state across its rounds."""

    commands: Sequence[bytes]
    slots: npt.NDArray[np.int64]
    deadline: float  # event-loop time
    count_timeouts: bool
    tracked: Collection[int] = ()
    asking: dict[int, Address] = field(default_factory=dict)
    last_problem: str = "no attempt made"
    answered_at: dict[int, int] = field(default_factory=dict)  # id(future) -> perf_counter_ns
    replies: Replies = field(init=False)

    def __post_init__(self) -> None:
        self.replies = Replies([None] * len(self.commands), [], [], [])

    def answered(self, future: asyncio.Future[list[Any]]) -> None:
        if not future.cancelled():
            self.answered_at[id(future)] = time.perf_counter_ns()

    def answered_ns(self, future: asyncio.Future[list[Any]]) -> int:
        """When `future` got its reply; 0 if it never did. A reply that landed in the same loop
        turn as the one awaited may not have run its callback yet: then it arrived just now."""
        if future.cancelled() or not future.done():
            return 0
        return self.answered_at.pop(id(future), 0) or time.perf_counter_ns()

    def fail(
        self, indexes: list[int], node: Address | None, reason: FailureReason, detail: str
    ) -> None:
        if indexes:
            self.replies.failures.append(Failure(indexes, node, reason, detail))


async def _settle(futures: list[asyncio.Future[list[Any]]], deadline: float) -> None:
    """Wait until every future is done or the deadline passes; outcomes stay in the futures."""
    try:
        async with asyncio.timeout_at(deadline):
            for future in futures:
                if not future.done():
                    with contextlib.suppress(StoreUnavailable):
                        await future  # on timeout this cancels it: `_round` reads that as late
    except TimeoutError:
        pass
