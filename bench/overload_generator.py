"""The overload curve's load generator: one process sending single-entity GetFeatures.

A `Job` runs in a process of its own (a multiprocessing pool's worker, optionally pinned to a
core): either closed loop (`rate` calls always open for `seconds`) or open loop (`rate` calls/s at
Poisson or evenly spaced arrival times, each call timed from its scheduled send, so a late send
counts against the server: no coordinated omission). Requests go out as pre-serialized bytes and
answers stay bytes, so the generator's CPU goes to gRPC alone. What it returns is each call's
outcome and the CPU the process used; bench/overload.py (and bench/percore.py's open-loop check)
turn them into figures.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import grpc
import uvloop
from e2e import SINGLE, USERS

from featurewell.v1 import feature_service_pb2 as pb

METHOD = "/featurewell.v1.FeatureService/GetFeatures"
Outcome = tuple[str, float, float, float]  # code name, s from scheduled send, send time, its lag


@dataclass(frozen=True)
class Job:
    closed: bool
    address: str
    rate: float  # calls/s (open loop) or calls kept open (closed loop)
    seconds: float
    deadline: float
    core: int
    arrivals: str
    seed: int


@dataclass
class Generated:
    outcomes: list[Outcome]
    cpu_s: float  # the generator process's CPU time


def generate(job: Job) -> Generated:
    """Runs one job in this process (a pool's worker: the function must be importable)."""
    if job.core >= 0:
        os.sched_setaffinity(0, {job.core})
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_closed_loop(job) if job.closed else _open_loop(job))


def _requests(seed: int, count: int = 2048) -> list[bytes]:
    """Serialized single-entity requests for random users: the generator sends bytes and keeps
    the answers as bytes, so its own CPU per call (one core for up to ~6,000 calls/s at 3x) goes
    to gRPC, not to protobuf."""
    rng = random.Random(seed)
    return [
        pb.GetFeaturesRequest(
            features=SINGLE,
            entities={
                "user_id": pb.Values(strings=pb.StringList(values=[f"u{rng.randrange(USERS):06d}"]))
            },
        ).SerializeToString()
        for _ in range(count)
    ]


async def _call(stub: Any, request: bytes, deadline: float) -> str:
    try:
        await stub(request, timeout=deadline)
        return "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        if code == "DEADLINE_EXCEEDED" and "server needs to answer" in (exc.details() or ""):
            return "DROPPED"  # the server's drop before any work, not a deadline missed
        return code


def _schedule(rate: float, seconds: float, arrivals: str, rng: random.Random) -> list[float]:
    """Send times from 0: evenly spaced, or a Poisson process (exponential gaps: the bursts an
    open-loop population of independent callers makes)."""
    if arrivals == "uniform":
        return [n / rate for n in range(int(rate * seconds))]
    times, at = [], rng.expovariate(rate)
    while at < seconds:
        times.append(at)
        at += rng.expovariate(rate)
    return times


async def _open_loop(job: Job) -> Generated:
    rng = random.Random(job.seed)
    requests = _requests(job.seed)
    outcomes: list[Outcome] = []
    async with grpc.aio.insecure_channel(job.address) as channel:
        stub: Any = channel.unary_unary(METHOD)  # bytes both ways
        await channel.channel_ready()
        loop = asyncio.get_running_loop()
        # Timed with perf_counter: uvloop's loop.time() is libuv's millisecond clock, which
        # turned sub-millisecond refusals into 0s and 1s (and their medians into interpolations).
        clock = time.perf_counter
        start = clock() + 0.05
        tasks: list[asyncio.Task[None]] = []

        async def one(scheduled: float) -> None:
            sent = clock()
            code = await _call(stub, requests[rng.randrange(len(requests))], job.deadline)
            # From the scheduled send, or the actual one when earlier: uvloop's timers fire on
            # its millisecond clock, a send up to ~1 ms early, which must not shorten a call.
            began = min(sent, scheduled)
            outcomes.append((code, clock() - began, scheduled - start, sent - began))

        cpu = time.process_time()
        for offset in _schedule(job.rate, job.seconds, job.arrivals, rng):
            scheduled = start + offset
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        cpu = time.process_time() - cpu
    return Generated(outcomes, cpu)


async def _closed_loop(job: Job) -> Generated:
    rng = random.Random(job.seed)
    requests = _requests(job.seed)
    outcomes: list[Outcome] = []
    async with grpc.aio.insecure_channel(job.address) as channel:
        stub: Any = channel.unary_unary(METHOD)
        await channel.channel_ready()
        end = time.monotonic() + job.seconds

        async def caller() -> None:
            while time.monotonic() < end:
                code = await _call(stub, requests[rng.randrange(len(requests))], 1.0)
                outcomes.append((code, 0.0, 0.0, 0.0))

        cpu = time.process_time()
        await asyncio.gather(*(caller() for _ in range(int(job.rate))))
        cpu = time.process_time() - cpu
    return Generated(outcomes, cpu)
