"""The table's capacity rows: the highest open-loop rate one server core sustains within the budget.

The server and the Redis nodes are pinned to one core, the generator (a process of its own) to
another. A probe sends calls on a fixed schedule at one rate for a few seconds, each timed from
its scheduled send (a late send counts against the server, so the generator's own lag does too);
it passes when the client p99 is within the budget and every call answered OK. The search
doubles the rate until a probe fails, then bisects between the last pass and the first fail.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from e2e import SINGLE, USERS
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc

SETTLE_S = 0.25  # calls scheduled in a probe's first moments (channel and server warm-up) skipped


@dataclass(frozen=True)
class Probe:
    rate: float
    calls: int
    failed: int
    p50_ms: float | None  # None: no call answered
    p99_ms: float | None
    passed: bool


def pin(pid: int, cores: set[int]) -> None:
    """Pins every thread of a running process (sched_setaffinity on a pid moves one thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cores)


def pin_self(core: int) -> None:
    """A pool initializer: the generator process runs on `core` only."""
    os.sched_setaffinity(0, {core})


def _requests(kind: str) -> list[Any]:
    if kind == "health":
        return [health_pb2.HealthCheckRequest(service="featurewell.v1.FeatureService")]
    rng = random.Random(3)
    return [
        pb.GetFeaturesRequest(
            features=SINGLE,
            entities={
                "user_id": pb.Values(strings=pb.StringList(values=[f"u{rng.randrange(USERS):06d}"]))
            },
        )
        for _ in range(1000)
    ]


async def _drive(kind: str, address: str, rate: float, seconds: float) -> list[float]:
    """Seconds from scheduled send to answer per call; -1 for a call that failed."""
    requests = _requests(kind)
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        send: Callable[..., Any] = (
            health_pb2_grpc.HealthStub(channel).Check
            if kind == "health"
            else pb_grpc.FeatureServiceStub(channel).GetFeatures
        )
        loop = asyncio.get_running_loop()
        results: list[float] = []

        async def one(scheduled: float, request: Any) -> None:
            try:
                await send(request, timeout=1.0)
                results.append(loop.time() - scheduled)
            except grpc.aio.AioRpcError:
                results.append(-1.0)

        total = int(rate * seconds)
        start = loop.time() + 0.02
        tasks, sent = [], 0
        while sent < total:
            # Everything due is sent at each wake-up, so a late wake-up delays (and is charged
            # to) those calls but never thins the schedule.
            while sent < total and start + sent / rate <= loop.time():
                request = requests[sent % len(requests)]
                tasks.append(loop.create_task(one(start + sent / rate, request)))
                sent += 1
            await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
        await asyncio.gather(*tasks)
        skipped = int(SETTLE_S * rate)
        return results[skipped:] if len(results) > 2 * skipped else results


def generate(job: tuple[str, str, float, float]) -> list[float]:
    return asyncio.run(_drive(*job))


def judge(rate: float, latencies: list[float], budget_ms: float) -> Probe:
    ok = np.asarray([s for s in latencies if s >= 0]) * 1000
    failed = len(latencies) - len(ok)
    if not len(ok):
        return Probe(rate, len(latencies), failed, None, None, False)
    p50, p99 = float(np.percentile(ok, 50)), float(np.percentile(ok, 99))
    return Probe(rate, len(latencies), failed, p50, p99, failed == 0 and p99 <= budget_ms)


def search(
    probe: Callable[[float], Probe], start: float, steps: int, ceiling: float = 40_000
) -> tuple[Probe | None, list[Probe]]:
    """The best passing probe and every probe made: doubling from `start` until a probe fails
    (or `ceiling`), then `steps` bisections between the last pass and the first fail."""
    tried: list[Probe] = []
    best: Probe | None = None
    low, high = 0.0, start
    while high <= ceiling:
        tried.append(probe(high))
        if not tried[-1].passed:
            break
        best, low, high = tried[-1], high, high * 2
    else:
        return best, tried
    for _ in range(steps):
        middle = round((low + high) / 2)
        if middle in (round(low), round(high)):
            break
        tried.append(probe(middle))
        if tried[-1].passed:
            best, low = tried[-1], middle
        else:
            high = middle
    return best, tried


def capacity(
    pool: Any,
    address: str,
    kind: str,
    budget_ms: float,
    seconds: float,
    start: float,
    steps: int,
) -> dict[str, Any]:
    """One search for `kind` ("single" or "health") calls through the generator `pool`."""

    def probe(rate: float) -> Probe:
        latencies = pool.apply(generate, ((kind, address, rate, seconds),))
        time.sleep(0.5)  # let the server drain before the next rate
        return judge(rate, latencies, budget_ms)

    best, tried = search(probe, start, steps)
    return {
        "rate_per_s": best.rate if best else 0.0,
        "p50_ms": best.p50_ms if best else None,
        "p99_ms": best.p99_ms if best else None,
        "probes": [asdict(p) for p in tried],
    }
