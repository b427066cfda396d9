"""The table's latency rows: the two floors, single entity, and ranking with the cache off and on,
from one open-loop client against servers on one cluster, each call timed from its scheduled send.

The client runs a fixed schedule: every call has a slot and is sent at it whether or not earlier
calls have answered (asyncio: calls overlap when one runs long), and its latency is counted from
the slot, not from when it actually left, so a stall of the client or the server is charged to
every call it delays (no coordinated omission). Slots are spaced wider than a call usually takes
(3 ms after a short call, 10 ms after a ranking call), so calls rarely overlap and each figure is
mostly that call alone. Each iteration sends every scenario once in rotating order, so machine
noise and "who went just before" hit every scenario alike. The event loop waits with select(),
whose timeout has microsecond resolution (epoll's is a millisecond: up to 1 ms late per call).
"""

from __future__ import annotations

import asyncio
import gc
import random
import selectors
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from e2e import ITEMS, RANKING, SINGLE, USERS, raw_reads
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zipf import cache_counts

from featurewell.client import AsyncFeatureClient
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import Address

SHORT_SLOT_S, RAW_RANKING_SLOT_S, RANKING_SLOT_S = 0.003, 0.006, 0.010
LATE_S = 0.0005  # a send this far past its slot counts as late (reported, and charged)
Call = Callable[[str, list[str]], Awaitable[object]]


@dataclass(frozen=True)
class Scenario:
    name: str
    call: Call
    slot_s: float  # room before the next scheduled send


def spaced(order: list[Scenario], iterations: int) -> list[tuple[float, Scenario, int]]:
    """(offset from start, scenario, iteration) for every call: iteration n starts the scenario
    list at position n mod len, each call's slot as wide as its scenario's `slot_s`."""
    out: list[tuple[float, Scenario, int]] = []
    offset = 0.0
    for n in range(iterations):
        first = n % len(order)
        for scenario in order[first:] + order[:first]:
            out.append((offset, scenario, n))
            offset += scenario.slot_s
    return out


async def paced(
    scenarios: list[Scenario],
    iterations: int,
    warmup: int,
    measuring: Callable[[], None] = lambda: None,
    seed: int = 1,
) -> dict[str, dict[str, Any]]:
    """Runs the schedule; per scenario: p50/p90/p99 ms from the scheduled send of the calls that
    answered, their number, the share sent late, failed calls by kind, and the offered rate
    (calls/s of that scenario). `measuring` is called
    once, when the warm-up calls have all answered."""
    rng = random.Random(seed)
    requests = [
        (f"u{rng.randrange(USERS):06d}", [f"i{i:06d}" for i in rng.sample(range(ITEMS), 500)])
        for _ in range(warmup + iterations)
    ]
    samples: dict[str, list[float]] = {s.name: [] for s in scenarios}
    late: dict[str, int] = dict.fromkeys(samples, 0)
    failed: dict[str, dict[str, int]] = {name: {} for name in samples}
    running: set[asyncio.Task[None]] = set()

    async def one(scenario: Scenario, slot: float, n: int) -> None:
        sent = time.perf_counter()
        try:
            await scenario.call(*requests[n])
        except Exception as exc:  # a failed call is counted by kind, never timed
            if n >= warmup:
                kind = failure(exc)
                failed[scenario.name][kind] = failed[scenario.name].get(kind, 0) + 1
            return
        if n >= warmup:
            samples[scenario.name].append(time.perf_counter() - slot)
            late[scenario.name] += sent - slot > LATE_S

    plan = spaced(scenarios, warmup + iterations)
    gc.collect()
    gc.freeze()  # the client's own collections would otherwise land on random calls
    start = time.perf_counter() + 0.05
    for index, (offset, scenario, n) in enumerate(plan):
        if index == warmup * len(scenarios):
            paused = time.perf_counter()
            await asyncio.gather(*running)
            measuring()
            start += time.perf_counter() - paused  # the schedule resumes: no call is charged
        slot = start + offset
        delay = slot - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scenario, slot, n))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)
    gc.unfreeze()
    period = sum(s.slot_s for s in scenarios)
    return {
        name: summary(values, late[name], 1 / period) | {"failed": failed[name]}
        for name, values in samples.items()
    }


def failure(exc: Exception) -> str:
    """A failed call's kind: its gRPC status code's name when it has one."""
    code = getattr(exc, "code", None)
    status = code() if callable(code) else code
    return str(getattr(status, "name", type(exc).__name__))


def summary(seconds: list[float], late: int, rate: float) -> dict[str, Any]:
    ms = np.asarray(seconds) * 1000 if seconds else np.asarray([np.nan])
    figures = {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99)}
    return figures | {
        "n": len(seconds),
        "late_share": late / max(len(seconds), 1),
        "rate_per_s": rate,
    }


def slot_of(name: str) -> float:
    if name.startswith("ranking"):
        return RANKING_SLOT_S
    return RAW_RANKING_SLOT_S if name == "raw_redis_ranking" else SHORT_SLOT_S


def calls(store: ClusterClient, off: AsyncFeatureClient, on: AsyncFeatureClient) -> dict[str, Call]:
    """The scenarios' calls: raw Redis sends the very commands GetFeatures sends for the same
    request, replies not decoded; ranking decodes its reply to a 500-row matrix."""

    async def raw(user: str, items: list[str] | None) -> None:
        reads = raw_reads(user, items)
        commands = [c for r in reads for c in r.commands()]
        await store.execute(commands, [s for r in reads for s in r.row_slots()], 1.0)

    def ranking(client: AsyncFeatureClient) -> Call:
        async def call(user: str, items: list[str]) -> None:
            entities = {"user_id": [user], "item_id": items}
            matrix, _ = (await client.get_features(RANKING, entities)).to_numpy()
            assert matrix.shape[0] == 500

        return call

    async def single(user: str, items: list[str]) -> None:
        await off.get_features(SINGLE, {"user_id": [user]})

    async def raw_single(user: str, items: list[str]) -> None:
        await raw(user, None)

    return {
        "raw_redis_single": raw_single,
        "single": single,
        "raw_redis_ranking": raw,
        "ranking_cache_off": ranking(off),
        "ranking_cache_on": ranking(on),
    }


def measure(
    seeds: list[Address], off: str, on: str, metrics_port: int, iterations: int, warmup: int
) -> dict[str, Any]:
    """Times the scenarios against `off` (hot-key cache off) and `on` (cache on, its /metrics on
    `metrics_port`) servers; adds the cache's row hit ratio over the measured calls."""
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        return loop.run_until_complete(_measure(seeds, off, on, metrics_port, iterations, warmup))
    finally:
        loop.close()


async def _measure(
    seeds: list[Address], off: str, on: str, metrics_port: int, iterations: int, warmup: int
) -> dict[str, Any]:
    store = ClusterClient(seeds, connections_per_node=1)
    await store.start()
    channel = grpc.aio.insecure_channel(off)
    health = health_pb2_grpc.HealthStub(channel)
    check = health_pb2.HealthCheckRequest(service="featurewell.v1.FeatureService")
    cold, warm = AsyncFeatureClient(off, timeout=5), AsyncFeatureClient(on, timeout=5)

    async def floor(user: str, items: list[str]) -> None:
        await health.Check(check, timeout=5)

    try:
        by_name = {"grpc_floor": floor, **calls(store, cold, warm)}
        scenarios = [Scenario(name, call, slot_of(name)) for name, call in by_name.items()]
        before: list[tuple[float, float]] = []
        figures: dict[str, Any] = await paced(
            scenarios, iterations, warmup, lambda: before.append(cache_counts(metrics_port))
        )
        (hits, misses), (hits_before, misses_before) = cache_counts(metrics_port), before[0]
        looked_up = hits - hits_before + misses - misses_before
        figures["ranking_cache_on"]["hit_ratio"] = (hits - hits_before) / max(looked_up, 1)
        return figures
    finally:
        await cold.close()
        await warm.close()
        await channel.close()
        await store.close()


def setup(iterations: int, warmup: int) -> dict[str, Any]:
    per_iteration = SHORT_SLOT_S * 3 + RAW_RANKING_SLOT_S + RANKING_SLOT_S * 2
    return {
        "iterations": iterations,
        "warmup": warmup,
        "users": USERS,
        "items": ITEMS,
        "iteration_ms": round(per_iteration * 1000, 1),
    }
