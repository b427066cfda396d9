"""bench/percore.py's helpers: py-spy profiles, and an open loop over a hot set: single-entity
calls for users drawn uniformly from the first `users` of the example data (a model server's hot
entities), Poisson arrivals, each call timed from its scheduled send (no coordinated omission),
in generator processes pinned to the load core. Raw gRPC with the requests serialized up front,
so the generator's own CPU per call stays small beside the server's."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import uvloop

from featurewell.v1 import feature_service_pb2 as pb

SINGLE_PATH = "/featurewell.v1.FeatureService/GetFeatures"
CLOCK_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class OpenJob:
    address: str
    rate: float  # calls/s of this generator
    seconds: float
    deadline: float
    core: int
    users: int
    features: tuple[str, ...]
    seed: int


def _bodies(job: OpenJob) -> list[bytes]:
    return [
        pb.GetFeaturesRequest(
            features=job.features,
            entities={"user_id": pb.Values(strings=pb.StringList(values=[f"u{n:06d}"]))},
        ).SerializeToString()
        for n in range(job.users)
    ]


async def _open(job: OpenJob) -> list[tuple[str, float]]:
    bodies, rng = _bodies(job), random.Random(job.seed)
    outcomes: list[tuple[str, float]] = []
    async with grpc.aio.insecure_channel(job.address) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(SINGLE_PATH)
        await channel.channel_ready()
        loop = asyncio.get_running_loop()

        async def one(at: float, body: bytes) -> None:
            try:
                await call(body, timeout=job.deadline)
                outcomes.append(("OK", loop.time() - at))
            except grpc.aio.AioRpcError as exc:
                outcomes.append((exc.code().name, loop.time() - at))

        tasks: list[asyncio.Task[None]] = []
        due = loop.time() + 0.2
        end = due + job.seconds
        while due < end:
            due += rng.expovariate(job.rate)
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(due, rng.choice(bodies))))
        await asyncio.gather(*tasks)
    return outcomes


def _generate(job: OpenJob) -> list[tuple[str, float]]:
    os.sched_setaffinity(0, {job.core})
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_open(job))


def cache_counts(metrics_url: str) -> tuple[float, float]:
    """The server's cache hits and misses so far (its /metrics counters, rows looked up)."""
    with urllib.request.urlopen(metrics_url) as reply:
        text = reply.read().decode()

    def counter(name: str) -> float:
        found = re.search(rf"^featurewell_cache_{name}_total (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    return counter("hits"), counter("misses")


def hot_open_loop(
    address: str,
    metrics_url: str,
    rate: float,
    seconds: float,
    core: int,
    users: int,
    features: list[str],
    generators: int = 2,
) -> dict[str, Any]:
    """p50/p99 of single calls at `rate`/s over `users` hot users, and the server's cache hit
    ratio over the run (its /metrics counters, before and after)."""
    jobs = [
        OpenJob(address, rate / generators, seconds, 1.0, core, users, tuple(features), n)
        for n in range(generators)
    ]
    hits, misses = cache_counts(metrics_url)
    with multiprocessing.get_context("spawn").Pool(generators) as pool:
        outcomes = [o for part in pool.map(_generate, jobs) for o in part]
    after_hits, after_misses = cache_counts(metrics_url)
    looked_up = (after_hits - hits) + (after_misses - misses)
    ok = np.array([s for code, s in outcomes if code == "OK"]) * 1000
    return {
        "rate_per_s": rate,
        "hot_users": users,
        "calls": len(outcomes),
        "failed": len(outcomes) - len(ok),
        "codes": dict(Counter(code for code, _ in outcomes)),
        "p50_ms": round(float(np.percentile(ok, 50)), 2) if len(ok) else None,
        "p99_ms": round(float(np.percentile(ok, 99)), 2) if len(ok) else None,
        "cache_hit_ratio": round((after_hits - hits) / looked_up, 3) if looked_up else None,
    }


def sampled(
    pid: int, out: Path, seconds: float, core: int
) -> Callable[[Callable[[], object]], None]:
    """Run a load with py-spy (pinned to `core`) sampling every thread of `pid`, native frames
    too, for `seconds`: collapsed stacks in `out` (flamegraph.pl and speedscope read them)."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    spy_bin = shutil.which("py-spy", path=path)
    if spy_bin is None:
        sys.exit("py-spy is missing: pip install py-spy")
    command = ["taskset", "-c", str(core), spy_bin, "record", "--native", "-r", "200"]
    command += ["-f", "raw", "-o", str(out), "-d", str(int(seconds)), "-p", str(pid)]

    def run(load: Callable[[], object]) -> None:
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        time.sleep(0.5)  # attached before the load starts
        load()
        spy.wait(timeout=60)

    return run


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) * CLOCK_TICK_S  # utime, stime
    return total
