"""End-to-end latency: bare gRPC, raw Redis and GetFeatures, measured side by side in one run.

Starts a local 3+3 Redis Cluster, loads the example repo's sample data, runs `featurewell serve` in
its own process, then times from one sequential client:

    grpc floor        grpc.health.v1 Check on the same server: the cost of any unary call
    raw redis         the very commands GetFeatures sends (same keys, per-node pipelines, no
                      decoding), from this process: the store's floor
    GetFeatures       through featurewell.client, the reply decoded to numpy

for (a) one user with all its stored features and (b) 1 user + 500 items with ~10 features and
the genre-affinity on-demand transform. Scenarios are interleaved call by call, so machine noise
hits all of them alike and the ratios stay meaningful on a shared box.

    python bench/e2e.py [--iterations 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featurewell.client import FeatureClient
from featurewell.definitions import load_repo
from featurewell.devcluster import LocalCluster, free_ports, start_local_cluster
from featurewell.store.cluster import ClusterClient
from featurewell.store.keys import entity_tags, key_prefix, slots_of
from featurewell.store.online import EntityRead

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loadtest"))
# The calls the load tests make, too (re-exported: zipf.py and telemetry.py use them).
from scenarios import RANKING as RANKING  # noqa: E402
from scenarios import SINGLE as SINGLE  # noqa: E402

EXAMPLE = ROOT / "examples" / "streaming_media"
USERS, ITEMS = 5000, 2000

PAIRS = ["user_item_watch_progress:progress", "user_item_watch_progress:watched_minutes"]


_REGISTRY = load_repo(str(EXAMPLE))
USER_VIEWS = [key_prefix(_REGISTRY.view(n)) for n in ("user_activity", "user_genre_preferences")]
ITEM_VIEWS = [key_prefix(_REGISTRY.view(n)) for n in ("item_stats", "item_genre")]
PAIR_VIEWS = [key_prefix(_REGISTRY.view("user_item_watch_progress"))]


def raw_reads(user: str, items: list[str] | None, pairs: bool = False) -> list[EntityRead]:
    """The EntityReads GetFeatures builds for the same request."""
    user_tags = entity_tags([[user]], 1)
    reads = [EntityRead(USER_VIEWS, user_tags, slots_of(user_tags))]
    if items:
        item_tags = entity_tags([items], len(items))
        reads.append(EntityRead(ITEM_VIEWS, item_tags, slots_of(item_tags)))
    if items and pairs:
        pair_tags = entity_tags([[user], items], len(items))
        reads.append(EntityRead(PAIR_VIEWS, pair_tags, slots_of(pair_tags)))
    return reads


def example_repo(folder: Path, items: int = ITEMS) -> Path:
    """The example repo with freshly generated sample data in `folder` (a copy of repo.py
    beside a data/ folder), for `featurewell materialize` and `serve`."""
    subprocess.run(
        [sys.executable, str(EXAMPLE / "generate.py"), "--users", str(USERS),
         "--items", str(items), "--out", str(folder / "data")],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    (folder / "repo.py").write_bytes((EXAMPLE / "repo.py").read_bytes())
    return folder


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99)} | {"n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    print("starting a 3+3 Redis Cluster and generating sample data...", flush=True)
    data = example_repo(Path(os.environ.get("FEATUREWELL_BENCH_DATA", "/tmp/featurewell-bench")))
    with start_local_cluster(3, 1) as cluster:
        results = run(cluster, data, args.iterations, args.warmup)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def run(cluster: LocalCluster, repo: Path, iterations: int, warmup: int) -> dict[str, Any]:
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    cli = [sys.executable, "-m", "featurewell.cli"]
    subprocess.run([*cli, "materialize", "--repo", str(repo), "--redis", seeds], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    (port,) = free_ports(1)
    server = subprocess.Popen(
        # Cache off: this bench compares the full read path with the raw Redis floor (the
        # cache's gain is bench/zipf.py's subject).
        [*cli, "serve", "--repo", str(repo), "--redis", seeds, "--port", str(port),
         "--log-level", "WARNING", "--cache-entries", "0", "--metrics-port", "-1"],
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    loop = asyncio.new_event_loop()
    store = ClusterClient(cluster.seeds, connections_per_node=1)
    try:
        grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=30)
        loop.run_until_complete(store.start())
        client = FeatureClient(address, timeout=5)
        channel = grpc.insecure_channel(address)
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="featurewell.v1.FeatureService")
        rng = random.Random(1)

        def raw(user: str, items: list[str] | None, pairs: bool = False) -> None:
            reads = raw_reads(user, items, pairs)
            commands = [c for r in reads for c in r.commands()]
            slots = [s for r in reads for s in r.slots]
            loop.run_until_complete(store.execute(commands, slots, 1.0))

        def ranking(user: str, items: list[str], references: list[str] = RANKING) -> None:
            result = client.get_features(references, entities={"user_id": [user], "item_id": items})
            matrix, _ = result.to_numpy()
            assert matrix.shape[0] == 500

        scenarios: dict[str, Callable[[str, list[str]], Any]] = {
            "grpc_floor": lambda u, i: health.Check(check, timeout=5),
            "raw_redis_single": lambda u, i: raw(u, None),
            "get_features_single": lambda u, i: client.get_features(
                SINGLE, entities={"user_id": [u]}
            ),
            "raw_redis_ranking": raw,
            "get_features_ranking": ranking,
            "raw_redis_ranking_pairs": lambda u, i: raw(u, i, pairs=True),
            "get_features_ranking_pairs": lambda u, i: ranking(u, i, RANKING + PAIRS),
        }
        samples: dict[str, list[float]] = {name: [] for name in scenarios}
        gc.collect()
        gc.freeze()
        for n in range(warmup + iterations):
            user = f"u{rng.randrange(USERS):06d}"
            items = [f"i{i:06d}" for i in rng.sample(range(ITEMS), 500)]
            for name, call in scenarios.items():
                started = time.perf_counter()
                call(user, items)
                if n >= warmup:
                    samples[name].append(time.perf_counter() - started)
        client.close()
        channel.close()
    finally:
        loop.run_until_complete(store.close())
        loop.close()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return {name: percentiles(values) for name, values in samples.items()} | {
        "machine": {"cores": os.cpu_count(), "iterations": iterations}
    }


def report(results: dict[str, Any]) -> None:
    floor, single = results["grpc_floor"], results["get_features_single"]
    raw_rank, rank = results["raw_redis_ranking"], results["get_features_ranking"]
    pairs = results["get_features_ranking_pairs"]
    print("\n| scenario | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|")
    for name, figures in results.items():
        if name != "machine":
            print(
                f"| {name} | {figures['p50']:.3f} | {figures['p90']:.3f} | {figures['p99']:.3f} |"
            )
    print(
        f"\nsingle entity: p50 {single['p50'] / floor['p50']:.2f}x the bare gRPC round trip "
        f"(target <= 1.2x), p99 {single['p99']:.2f} ms (target <= 2 ms)"
    )
    print(
        f"ranking 1+500: p99 {rank['p99']:.2f} ms (target <= 5 ms); "
        f"p50 {rank['p50'] / (raw_rank['p50'] + floor['p50']):.2f}x raw Redis + bare gRPC; "
        f"with 500 user-item pairs too: p99 {pairs['p99']:.2f} ms"
    )


if __name__ == "__main__":
    main()
