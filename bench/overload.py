"""The overload curve: what a server answers at 0.5x, 1x, 1.5x and 3x its capacity.

Starts a local 3-master Redis Cluster, loads the example repo's sample data, runs `featurewell
serve` in its own process (cache off), then from generator processes of its own:

1. capacity: closed loop, `--concurrency` calls always open for `--seconds`: OK calls/s;
2. for each multiple of it, an open-loop generator (split over `--generators` processes) sends
   single-entity GetFeatures on a fixed schedule with a `--deadline-ms` deadline, each call timed
   from its scheduled send (no coordinated omission: a late send counts against the server).

Per level: offered and answered calls/s, goodput (OK within the deadline, per second, and as a
share of capacity), p50/p99 of answered calls, shed calls (RESOURCE_EXHAUSTED, or the server's
DEADLINE_EXCEEDED drop) with their latency, and calls that missed their deadline in the client.

    python bench/overload.py [--seconds 4] [--deadline-ms 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from featurewell.devcluster import free_ports, start_local_cluster
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import SINGLE, USERS, example_repo

LEVELS = (0.5, 1.0, 1.5, 3.0)
SHED = ("RESOURCE_EXHAUSTED", "DROPPED", "CANCELLED")
Outcome = tuple[str, float]  # status code name, seconds from the scheduled send


def _request(rng: random.Random) -> pb.GetFeaturesRequest:
    user = f"u{rng.randrange(USERS):06d}"
    return pb.GetFeaturesRequest(
        features=SINGLE, entities={"user_id": pb.Values(strings=pb.StringList(values=[user]))}
    )


async def _call(stub: Any, request: Any, deadline: float) -> str:
    try:
        await stub.GetFeatures(request, timeout=deadline)
        return "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        if code == "DEADLINE_EXCEEDED" and "server needs to answer" in (exc.details() or ""):
            return "DROPPED"  # the server's drop before any work, not a deadline missed
        return code


async def _open_loop(address: str, rate: float, seconds: float, deadline: float) -> list[Outcome]:
    rng = random.Random()
    outcomes: list[Outcome] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.FeatureServiceStub(channel)
        await channel.channel_ready()
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        tasks: list[asyncio.Task[None]] = []

        async def one(scheduled: float) -> None:
            code = await _call(stub, _request(rng), deadline)
            outcomes.append((code, loop.time() - scheduled))

        for n in range(int(rate * seconds)):
            scheduled = start + n / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
    return outcomes


async def _closed_loop(address: str, concurrency: int, seconds: float) -> int:
    rng = random.Random()
    done = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.FeatureServiceStub(channel)
        await channel.channel_ready()
        end = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal done
            while time.monotonic() < end:
                if await _call(stub, _request(rng), 1.0) == "OK":
                    done += 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done


def _generate(job: tuple[str, str, float, float, float, int]) -> Any:
    kind, address, rate, seconds, deadline, core = job
    if core >= 0:
        os.sched_setaffinity(0, {core})
    if kind == "closed":
        return asyncio.run(_closed_loop(address, int(rate), seconds))
    return asyncio.run(_open_loop(address, rate, seconds, deadline))


def level(pool: Any, address: str, rate: float, args: argparse.Namespace, capacity: float) -> Any:
    share = rate / args.generators
    jobs = [("open", address, share, args.seconds, args.deadline_ms / 1000, args.pin)]
    jobs *= args.generators
    outcomes = [o for part in pool.map(_generate, jobs) for o in part]
    deadline = args.deadline_ms / 1000
    ok = np.array([s for code, s in outcomes if code == "OK"]) * 1000
    in_time = int((ok <= args.deadline_ms).sum())
    # Refused: by the handler (RESOURCE_EXHAUSTED, or DROPPED: its deadline could not be met) or
    # by gRPC's core past max_pending_calls (it resets the stream: CANCELLED).
    shed = np.array([s for code, s in outcomes if code in SHED])
    missed = sum(1 for code, s in outcomes if code == "DEADLINE_EXCEEDED" or s > deadline)
    return {
        "offered_per_s": round(rate),
        "goodput_per_s": round(in_time / args.seconds),
        "goodput_of_capacity": round(in_time / args.seconds / capacity, 2),
        "ok_p50_ms": round(float(np.percentile(ok, 50)), 2) if len(ok) else None,
        "ok_p99_ms": round(float(np.percentile(ok, 99)), 2) if len(ok) else None,
        "shed": len(shed),
        "resource_exhausted": sum(1 for code, _ in outcomes if code == "RESOURCE_EXHAUSTED"),
        "shed_p50_ms": round(float(np.percentile(shed, 50)) * 1000, 2) if len(shed) else None,
        "shed_p99_ms": round(float(np.percentile(shed, 99)) * 1000, 2) if len(shed) else None,
        "missed_deadline": missed,
        "other_errors": sum(
            1 for code, _ in outcomes if code not in ("OK", "DEADLINE_EXCEEDED", *SHED)
        ),
        "calls": len(outcomes),
        "codes": dict(Counter(code for code, _ in outcomes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--deadline-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument("--serve-flag", action="append", default=[], help="extra serve flags")
    parser.add_argument(
        "--pin",
        type=int,
        default=-1,
        help="pin the generators to this core, the server and Redis to the others",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "featurewell.cli"]
    with tempfile.TemporaryDirectory() as tmp, start_local_cluster(masters=3) as cluster:
        repo = example_repo(Path(tmp), items=200)
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        subprocess.run(
            [*cli, "materialize", "--repo", str(repo), "--redis", seeds],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        port = free_ports(1)[0]
        serve = [*cli, "serve", "--repo", str(repo), "--redis", seeds, "--log-level", "ERROR"]
        serve += ["--cache-entries", "0", "--metrics-port", "-1", "--port", str(port)]
        server = subprocess.Popen([*serve, *args.serve_flag])
        if args.pin >= 0:
            others = set(range(os.cpu_count() or 1)) - {args.pin}
            for pid in [server.pid, *(p.pid for p in cluster.processes.values())]:
                os.sched_setaffinity(pid, others)
        address = f"127.0.0.1:{port}"
        try:
            grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=60)
            with multiprocessing.get_context("spawn").Pool(args.generators) as pool:
                per = max(1, args.concurrency // args.generators)
                jobs = [("closed", address, per, args.seconds, 1.0, args.pin)] * args.generators
                capacity = sum(pool.map(_generate, jobs)) / args.seconds
                results: dict[str, Any] = {"capacity_per_s": round(capacity), "levels": {}}
                for multiple in LEVELS:
                    row = level(pool, address, capacity * multiple, args, capacity)
                    results["levels"][f"{multiple}x"] = row
                    time.sleep(1.0)  # let the server drain between levels
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    results["deadline_ms"] = args.deadline_ms
    print(f"capacity {results['capacity_per_s']} calls/s (closed loop, {args.concurrency} open)")
    header = "level offered goodput (x cap) ok_p50 ok_p99 shed shed_p50 shed_p99 missed errors"
    print(header)
    for name, row in results["levels"].items():
        print(
            f"{name:>5} {row['offered_per_s']:>7} {row['goodput_per_s']:>7} "
            f"({row['goodput_of_capacity']:.2f}) {row['ok_p50_ms']} {row['ok_p99_ms']} "
            f"{row['shed']} {row['shed_p50_ms']} {row['shed_p99_ms']} "
            f"{row['missed_deadline']} {row['other_errors']}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
