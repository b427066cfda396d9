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

`--compare-tree DIR` (another featurewell checkout, e.g. the commit before a refactor) also runs
DIR's `featurewell serve` (its own code, the same repo folder, Redis Cluster and flags, its own
port) and adds its three GetFeatures scenarios, labelled `get_features_single [DIR name]` etc.;
each iteration then runs every scenario once in a shuffled order (same user and items), so neither
server always goes first, and the report adds DIR/current ratios at p50 and p99. Identical code on
both sides gives the noise floor such ratios must be read against.

    python bench/e2e.py [--iterations 2000] [--json out.json] [--compare-tree DIR]
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
from typing import Any, NamedTuple

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featurewell.client import FeatureClient
from featurewell.definitions import load_repo
from featurewell.devcluster import LocalCluster, free_ports, start_local_cluster
from featurewell.store.addressing import EntityRead
from featurewell.store.cluster import ClusterClient
from featurewell.store.keys import entity_tags, key_prefix, slots_of

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


# The raw-Redis floor: the only code here that knows the store's API (EntityRead, the key
# helpers, ClusterClient.execute); adapt these two functions when that API changes.


def raw_reads(user: str, items: list[str] | None, pairs: bool = False) -> list[EntityRead]:
    """The EntityReads GetFeatures builds for the same request (bench/zipf.py uses it too)."""
    user_tags = entity_tags([[user]], 1)
    reads = [EntityRead(USER_VIEWS, user_tags, slots_of(user_tags))]
    if items:
        item_tags = entity_tags([items], len(items))
        reads.append(EntityRead(ITEM_VIEWS, item_tags, slots_of(item_tags)))
    if items and pairs:
        pair_tags = entity_tags([[user], items], len(items))
        reads.append(EntityRead(PAIR_VIEWS, pair_tags, slots_of(pair_tags)))
    return reads


def raw_redis(store: ClusterClient, loop: asyncio.AbstractEventLoop) -> Callable[..., None]:
    """Sends the very commands GetFeatures sends for the same request, without decoding."""

    def raw(user: str, items: list[str] | None, pairs: bool = False) -> None:
        reads = raw_reads(user, items, pairs)
        commands = [c for r in reads for c in r.commands()]
        slots = [s for r in reads for s in r.row_slots()]
        loop.run_until_complete(store.execute(commands, slots, 1.0))

    return raw


class Tree(NamedTuple):
    """Another featurewell checkout to serve from; its folder name labels its scenarios."""

    path: Path
    env: dict[str, str]

    @property
    def label(self) -> str:
        return self.path.name


def checkout(folder: Path) -> Tree:
    """The environment that runs `featurewell` from `folder`, checked to really do so (a
    PYTHONPATH that misses would fall back silently to the virtualenv's editable install)."""
    folder = folder.resolve()
    path = os.pathsep.join([str(folder / "server"), str(folder / "client")])
    env = os.environ | {"PYTHONPATH": path}
    found = subprocess.run(
        [sys.executable, "-c", "import featurewell.cli as m; print(m.__file__)"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(folder):
        sys.exit(f"--compare-tree {folder}: featurewell.cli is {found}, from outside that tree")
    return Tree(folder, env)


def example_repo(folder: Path, items: int = ITEMS) -> Path:
    """The example repo with freshly generated sample data in `folder` (a copy of repo.py
    beside a data/ folder), for `featurewell materialize` and `serve`."""
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "generate.py"),
            "--users",
            str(USERS),
            "--items",
            str(items),
            "--out",
            str(folder / "data"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
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
    parser.add_argument(
        "--compare-tree",
        type=Path,
        metavar="DIR",
        help="also serve from this featurewell checkout and time its GetFeatures alongside",
    )
    args = parser.parse_args()
    compare = checkout(args.compare_tree) if args.compare_tree else None

    print("starting a 3+3 Redis Cluster and generating sample data...", flush=True)
    data = example_repo(Path(os.environ.get("FEATUREWELL_BENCH_DATA", "/tmp/featurewell-bench")))
    with start_local_cluster(3, 1) as cluster:
        results = run(cluster, data, args.iterations, args.warmup, compare)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


Call = Callable[[str, list[str]], Any]


def get_features(client: FeatureClient) -> dict[str, Call]:
    """The GetFeatures scenarios against one server, by name suffix."""

    def ranking(user: str, items: list[str], references: list[str] = RANKING) -> None:
        result = client.get_features(references, entities={"user_id": [user], "item_id": items})
        matrix, _ = result.to_numpy()
        assert matrix.shape[0] == 500

    return {
        "single": lambda u, i: client.get_features(SINGLE, entities={"user_id": [u]}),
        "ranking": ranking,
        "ranking_pairs": lambda u, i: ranking(u, i, RANKING + PAIRS),
    }


def run(
    cluster: LocalCluster, repo: Path, iterations: int, warmup: int, compare: Tree | None = None
) -> dict[str, Any]:
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    cli = [sys.executable, "-m", "featurewell.cli"]
    subprocess.run(
        [*cli, "materialize", "--repo", str(repo), "--redis", seeds],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    ports = free_ports(2 if compare else 1)
    # Cache off: this bench compares the full read path with the raw Redis floor (the cache's
    # gain is bench/zipf.py's subject). The compare server gets the same flags, its own port.
    serve = [
        *cli,
        "serve",
        "--repo",
        str(repo),
        "--redis",
        seeds,
        "--log-level",
        "WARNING",
        "--cache-entries",
        "0",
        "--metrics-port",
        "-1",
        "--port",
    ]
    servers = [subprocess.Popen([*serve, str(ports[0])])]
    if compare:
        servers.append(subprocess.Popen([*serve, str(ports[1])], env=compare.env))
    addresses = [f"127.0.0.1:{port}" for port in ports]
    loop = asyncio.new_event_loop()
    store = ClusterClient(cluster.seeds, connections_per_node=1)
    try:
        for address in addresses:
            grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=30)
        loop.run_until_complete(store.start())
        clients = [FeatureClient(address, timeout=5) for address in addresses]
        channel = grpc.insecure_channel(addresses[0])
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="featurewell.v1.FeatureService")
        rng, order = random.Random(1), random.Random(2)
        raw = raw_redis(store, loop)
        current = get_features(clients[0])
        scenarios: dict[str, Call] = {
            "grpc_floor": lambda u, i: health.Check(check, timeout=5),
            "raw_redis_single": lambda u, i: raw(u, None),
            "get_features_single": current["single"],
            "raw_redis_ranking": raw,
            "get_features_ranking": current["ranking"],
            "raw_redis_ranking_pairs": lambda u, i: raw(u, i, pairs=True),
            "get_features_ranking_pairs": current["ranking_pairs"],
        }
        if compare:
            for kind, call in get_features(clients[1]).items():
                scenarios[f"get_features_{kind} [{compare.label}]"] = call
        calls = list(scenarios.items())
        samples: dict[str, list[float]] = {name: [] for name in scenarios}
        gc.collect()
        gc.freeze()
        for n in range(warmup + iterations):
            user = f"u{rng.randrange(USERS):06d}"
            items = [f"i{i:06d}" for i in rng.sample(range(ITEMS), 500)]
            if compare:
                order.shuffle(calls)  # neither server always goes first (or always second)
            for name, call in calls:
                started = time.perf_counter()
                call(user, items)
                if n >= warmup:
                    samples[name].append(time.perf_counter() - started)
        for client in clients:
            client.close()
        channel.close()
    finally:
        loop.run_until_complete(store.close())
        loop.close()
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            server.wait(timeout=30)
    results: dict[str, Any] = {name: percentiles(values) for name, values in samples.items()}
    results["machine"] = {"cores": os.cpu_count(), "iterations": iterations}
    if compare:
        results["compare"] = ratios(results, compare)
    return results


def ratios(results: dict[str, Any], compare: Tree) -> dict[str, Any]:
    """Per GetFeatures scenario, the compare tree's p50 and p99 over the current tree's."""
    ratio: dict[str, dict[str, float]] = {}
    for name in (f"get_features_{kind}" for kind in ("single", "ranking", "ranking_pairs")):
        current, other = results[name], results[f"{name} [{compare.label}]"]
        ratio[name] = {q: other[q] / current[q] for q in ("p50", "p99")}
    return {"tree": str(compare.path), "label": compare.label, "ratios": ratio}


def report(results: dict[str, Any]) -> None:
    floor, single = results["grpc_floor"], results["get_features_single"]
    raw_rank, rank = results["raw_redis_ranking"], results["get_features_ranking"]
    pairs = results["get_features_ranking_pairs"]
    print("\n| scenario | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|")
    for name, figures in results.items():
        if name not in ("machine", "compare"):
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
    if "compare" in results:
        name = results["compare"]["label"]
        print(f"\n[{name}] / this tree, same run, interleaved call by call:")
        print(
            f"| scenario | p50 ms | p50 ms [{name}] | p50 ratio | p99 ms | p99 ms [{name}] "
            "| p99 ratio |\n|---|---|---|---|---|---|---|"
        )
        for scenario, ratio in results["compare"]["ratios"].items():
            current, other = results[scenario], results[f"{scenario} [{name}]"]
            print(
                f"| {scenario} | {current['p50']:.3f} | {other['p50']:.3f} | {ratio['p50']:.3f} "
                f"| {current['p99']:.3f} | {other['p99']:.3f} | {ratio['p99']:.3f} |"
            )


if __name__ == "__main__":
    main()
