"""The table's latency rows: the two floors, single entity, and ranking with the cache off and on,
from one paced client against servers on one cluster, each call timed from its scheduled send.

The client runs a fixed schedule: every call has a slot, and its latency is counted from that
slot, not from when it actually left. Slots are spaced wider than a call usually takes (3 ms after
a short call, 10 ms after a ranking call), so the client mostly sends on time; when a call runs
past the next slot, that next call leaves late and the wait is charged to it (no coordinated
omission: a stall is never dropped from the figures). Each iteration sends every scenario once in
rotating order, so machine noise and "who went just before" hit every scenario alike.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from e2e import ITEMS, USERS, get_features, raw_redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zipf import cache_counts

from featurewell.client import FeatureClient
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import Address

SHORT_SLOT_S, RAW_RANKING_SLOT_S, RANKING_SLOT_S = 0.003, 0.006, 0.010
SPIN_S = 0.0003  # sleep's wake-up is late by up to ~100 µs: spin the last stretch before a slot
LATE_S = 0.0005  # a send this far past its slot counts as late (reported, and charged)


@dataclass(frozen=True)
class Scenario:
    name: str
    call: Callable[[str, list[str]], object]
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


def wait_until(moment: float) -> None:
    pause = moment - time.perf_counter() - SPIN_S
    if pause > 0:
        time.sleep(pause)
    while time.perf_counter() < moment:
        pass


def paced(
    scenarios: list[Scenario],
    iterations: int,
    warmup: int,
    measuring: Callable[[], None] = lambda: None,
    seed: int = 1,
) -> dict[str, dict[str, float]]:
    """Runs the schedule; per scenario: p50/p90/p99 ms from the scheduled send, calls, the share
    of calls sent late, and the offered rate (calls/s of that scenario). `measuring` is called
    once, when the warm-up calls are done."""
    rng = random.Random(seed)
    requests = [
        (f"u{rng.randrange(USERS):06d}", [f"i{i:06d}" for i in rng.sample(range(ITEMS), 500)])
        for _ in range(warmup + iterations)
    ]
    samples: dict[str, list[float]] = {s.name: [] for s in scenarios}
    late: dict[str, int] = dict.fromkeys(samples, 0)
    plan = spaced(scenarios, warmup + iterations)
    gc.collect()
    gc.freeze()  # the client's own collections would otherwise land on random calls
    start = time.perf_counter() + 0.05
    for index, (offset, scenario, n) in enumerate(plan):
        if index == warmup * len(scenarios):
            paused = time.perf_counter()
            measuring()
            start += time.perf_counter() - paused  # the schedule resumes: no call is charged
        slot = start + offset
        wait_until(slot)
        sent = time.perf_counter()
        user, items = requests[n]
        scenario.call(user, items)
        if n >= warmup:
            samples[scenario.name].append(time.perf_counter() - slot)
            late[scenario.name] += sent - slot > LATE_S
    gc.unfreeze()
    period = sum(s.slot_s for s in scenarios)
    return {name: summary(values, late[name], 1 / period) for name, values in samples.items()}


def summary(seconds: list[float], late: int, rate: float) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    figures = {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99)}
    return figures | {"n": len(ms), "late_share": late / len(ms), "rate_per_s": rate}


def measure(
    seeds: list[Address], off: str, on: str, metrics_port: int, iterations: int, warmup: int
) -> dict[str, Any]:
    """Times the scenarios against `off` (hot-key cache off) and `on` (cache on, its /metrics on
    `metrics_port`) servers; adds the cache's row hit ratio over the measured calls."""
    loop = asyncio.new_event_loop()
    store = ClusterClient(seeds, connections_per_node=1)
    loop.run_until_complete(store.start())
    channel = grpc.insecure_channel(off)
    health = health_pb2_grpc.HealthStub(channel)
    check = health_pb2.HealthCheckRequest(service="featurewell.v1.FeatureService")
    cold, warm = FeatureClient(off, timeout=5), FeatureClient(on, timeout=5)
    raw = raw_redis(store, loop)
    try:
        calls = {**get_features(cold), "ranking_cache_on": get_features(warm)["ranking"]}
        scenarios = [
            Scenario("grpc_floor", lambda u, i: health.Check(check, timeout=5), SHORT_SLOT_S),
            Scenario("raw_redis_single", lambda u, i: raw(u, None), SHORT_SLOT_S),
            Scenario("single", calls["single"], SHORT_SLOT_S),
            Scenario("raw_redis_ranking", raw, RAW_RANKING_SLOT_S),
            Scenario("ranking_cache_off", calls["ranking"], RANKING_SLOT_S),
            Scenario("ranking_cache_on", calls["ranking_cache_on"], RANKING_SLOT_S),
        ]
        before: list[tuple[float, float]] = []
        figures: dict[str, Any] = paced(
            scenarios, iterations, warmup, lambda: before.append(cache_counts(metrics_port))
        )
        (hits, misses), (hits_before, misses_before) = cache_counts(metrics_port), before[0]
        looked_up = hits - hits_before + misses - misses_before
        figures["ranking_cache_on"]["hit_ratio"] = (hits - hits_before) / max(looked_up, 1)
        return figures
    finally:
        cold.close()
        warm.close()
        channel.close()
        loop.run_until_complete(store.close())
        loop.close()


def setup(iterations: int, warmup: int) -> dict[str, Any]:
    per_iteration = SHORT_SLOT_S * 3 + RAW_RANKING_SLOT_S + RANKING_SLOT_S * 2
    return {
        "iterations": iterations,
        "warmup": warmup,
        "users": USERS,
        "items": ITEMS,
        "iteration_ms": round(per_iteration * 1000, 1),
    }
