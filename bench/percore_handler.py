"""The servicer's own CPU per single-entity call, without gRPC: what this tree's code costs.

bench/percore.py measures calls per core through gRPC, where gRPC's and asyncio's machinery is
most of a call's CPU and the box's noise (other processes on both cores) moves each round by
tens of µs. This measures only what the project's code adds: `FeatureService.GetFeatures`
called in process (a real engine, store, hot-key cache and kept answers, on a local cluster;
a stand-in for gRPC's call context), and the telemetry it leaves to run after each answer, as
process CPU time (`time.process_time`) per call over `--calls` calls, in runs of `--burst`
calls with the loop let run (so after-answer work and metric flushes run as they would).

Trees alternate per round (`--compare-tree DIR`: another checkout, its own code): before and
after from one run, medians of `--rounds`.

    python bench/percore_handler.py [--rounds 5] [--calls 20000] [--compare-tree /work/main]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from featurewell.devcluster import start_local_cluster
from featurewell.v1 import feature_service_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import SINGLE, checkout, example_repo

USER = "u000042"


class Context:
    """What GetFeatures asks of gRPC's servicer context, as gRPC answers for a call with a
    deadline 5 s away and two metadata entries."""

    def __init__(self) -> None:
        self._metadata = (("user-agent", "grpc-python/bench"), ("x-featurewell-model", "bench"))

    def time_remaining(self) -> float:
        return 5.0

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._metadata)  # gRPC copies it per call too

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False


def child(args: argparse.Namespace) -> None:
    """In the tree under test: serve `--calls` single calls, print CPU µs per call as JSON."""
    from featurewell.app import hot_key_cache, open_store
    from featurewell.definitions import load_repo
    from featurewell.engine.engine import FeatureEngine
    from featurewell.serving.authz import Authoriser
    from featurewell.serving.service import FeatureService
    from featurewell.settings import Settings
    from featurewell.telemetry.hub import Telemetry

    async def run() -> dict[str, float]:
        settings = Settings.load(environ={}).with_changes(
            redis=tuple((h, int(p)) for h, p in (s.split(":") for s in args.redis.split(",")))
        )
        registry = load_repo(args.repo)
        cache = hot_key_cache(settings.cache, settings.serving.store_timeout_ms)
        store = await open_store(settings.redis, cache)
        telemetry = Telemetry(settings.telemetry, store, registry)
        engine = FeatureEngine(registry, store, settings.serving, settings.cache)
        service = FeatureService(engine, settings.serving, telemetry, Authoriser(enforce=False))
        request = pb.GetFeaturesRequest(
            features=SINGLE, entities={"user_id": pb.Values(strings=pb.StringList(values=[USER]))}
        ).SerializeToString()
        context: Any = Context()

        async def calls(n: int) -> None:
            for start in range(0, n, args.burst):
                for _ in range(min(args.burst, n - start)):
                    await service.GetFeatures(request, context)
                await asyncio.sleep(0)  # the loop runs the timers that are due

        await calls(2000)  # the cache admits the row, the answer is kept, code is warm
        await asyncio.sleep(0.1)
        cpu = time.process_time()
        await calls(args.calls)
        await asyncio.sleep(0.1)  # the last after-answer work and flush run
        used = time.process_time() - cpu
        # gRPC's side of the answer, for scale: serialising the response (a kept one here).
        response = await service.GetFeatures(request, context)
        serialize = pb.GetFeaturesResponse.SerializeToString
        cpu = time.process_time()
        for _ in range(args.calls):
            serialize(response)
        serialize_us = (time.process_time() - cpu) / args.calls * 1e6
        await store.close()
        return {
            "cpu_us": used / args.calls * 1e6,
            "kept": float(service.single.served),
            "serialize_us": serialize_us,
        }

    print(json.dumps(asyncio.run(run())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--burst", type=int, default=16, help="calls between loop turns")
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--compare-tree", type=Path, metavar="DIR")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="OUT",
        help="py-spy samples this tree's calls in one extra round: OUT, collapsed stacks",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repo", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp, start_local_cluster(masters=3) as cluster:
        repo = example_repo(Path(tmp), items=200)
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        cli = [sys.executable, "-m", "featurewell.cli"]
        subprocess.run(
            [*cli, "materialize", "--repo", str(repo), "--redis", seeds],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        trees = {"current": dict(os.environ)}
        if args.compare_tree is not None:
            trees["compare"] = checkout(args.compare_tree).env
        results: dict[str, list[float]] = {label: [] for label in trees}
        command = ["taskset", "-c", str(args.core), sys.executable, __file__, "--child"]
        command += ["--repo", str(repo), "--redis", seeds, "--calls", str(args.calls)]
        command += ["--burst", str(args.burst)]
        for n in range(args.rounds):
            for label, env in trees.items():
                out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
                got = json.loads(out.stdout.strip().splitlines()[-1])
                if got["kept"] < args.calls:
                    sys.exit(f"{label}: only {got['kept']:.0f} calls answered from kept answers")
                results[label].append(got["cpu_us"])
                print(
                    f"round {n + 1} {label:>8}: {got['cpu_us']:6.1f} µs CPU/call (gRPC's "
                    f"serialising of the answer: {got['serialize_us']:.1f} µs more)",
                    flush=True,
                )
        if args.profile is not None:
            spy = str(Path(sys.executable).parent / "py-spy")
            profiled = [spy, "record", "-r", "500", "-f", "raw", "-o", str(args.profile), "--"]
            subprocess.run([*profiled, *command[3:]], check=True, capture_output=True)
            print(f"profile of the current tree: {args.profile}")
        print("\nservicer CPU per single call (in process, no gRPC), median of", args.rounds)
        for label, values in results.items():
            spread = f"{min(values):.1f}-{max(values):.1f}"
            print(f"  {label:>8}: {np.median(values):6.1f} µs ({spread})")


if __name__ == "__main__":
    main()
