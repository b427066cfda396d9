"""Ranking with Zipf-popular items: the hot-key cache off and on, measured side by side.

Starts a local 3+3 Redis Cluster, materializes the example repo with 100,000 items, and runs two
`featurewell serve` processes on the same data: one with the hot-key cache off, one with the
default cache. Each ranking call is 1 user + 500 distinct items drawn by Zipf popularity
(s = 1.1, as trending catalogues look), the same request sent to both servers and to raw Redis
(the store's floor) call by call, in rotating order, so noise hits all three alike. A second
phase draws the 500 items from the 2,000 most popular only (a trending shelf: every item hot).
The cache's hit ratio over each phase's measured calls comes from the cached server's /metrics.

    python bench/zipf.py [--iterations 1500] [--items 100000] [--s 1.1] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from e2e import RANKING, example_repo, percentiles, raw_reads
from prometheus_client.parser import text_string_to_metric_families

from featurewell.client import FeatureClient
from featurewell.devcluster import free_ports, start_local_cluster
from featurewell.store.cluster import ClusterClient

USERS = 5000
TRENDING = 2000  # a trending shelf: candidates drawn from the most popular items only


def zipf_candidates(
    calls: int, items: int, s: float, per_call: int, seed: int = 1
) -> list[list[str]]:
    """`calls` lists of `per_call` distinct item ids, drawn without replacement with weights
    rank^-s (the Gumbel top-k trick: one vector operation per list)."""
    rng = np.random.default_rng(seed)
    log_weights = -s * np.log(np.arange(1, items + 1))
    ids = np.array([f"i{i:06d}" for i in range(items)], dtype=object)
    out = []
    for _ in range(calls):
        keys = log_weights + rng.gumbel(size=items)
        out.append(ids[np.argpartition(keys, -per_call)[-per_call:]].tolist())
    return out


def cache_counts(port: int) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return values["featurewell_cache_hits_total"], values["featurewell_cache_misses_total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--s", type=float, default=1.1, help="Zipf exponent")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    print(f"generating {USERS} users x {args.items} items and a 3+3 cluster...", flush=True)
    folder = Path(os.environ.get("FEATUREWELL_BENCH_DATA", "/tmp/featurewell-zipf"))
    data = example_repo(folder, args.items)
    calls = args.warmup + args.iterations
    phases = {
        "zipf": zipf_candidates(calls, args.items, args.s, 500),
        "trending": zipf_candidates(calls, TRENDING, args.s, 500, seed=3),
    }
    with start_local_cluster(3, 1) as cluster:
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        cli = [sys.executable, "-m", "featurewell.cli"]
        subprocess.run(
            [*cli, "materialize", "--repo", str(data), "--redis", seeds],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        off_port, on_port, metrics_port = free_ports(3)
        common = [*cli, "serve", "--repo", str(data), "--redis", seeds, "--log-level", "WARNING"]
        servers = [
            subprocess.Popen(
                [*common, "--port", str(off_port), "--cache-entries", "0", "--metrics-port", "-1"]
            ),
            subprocess.Popen(
                [*common, "--port", str(on_port), "--metrics-port", str(metrics_port)]
            ),
        ]
        try:
            results = measure(cluster.seeds, off_port, on_port, metrics_port, phases, args.warmup)
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
    results["setup"] = {
        "items": args.items,
        "s": args.s,
        "iterations": args.iterations,
        "cores": os.cpu_count(),
    }
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def measure(
    seeds: Any,
    off_port: int,
    on_port: int,
    metrics_port: int,
    phases: dict[str, list[list[str]]],
    warmup: int,
) -> dict[str, Any]:
    for port in (off_port, on_port):
        grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=30)
    loop = asyncio.new_event_loop()
    store = ClusterClient(seeds, connections_per_node=1)
    loop.run_until_complete(store.start())
    off = FeatureClient(f"127.0.0.1:{off_port}", timeout=5)
    on = FeatureClient(f"127.0.0.1:{on_port}", timeout=5)
    rng = np.random.default_rng(2)

    def raw(user: str, items: list[str]) -> None:
        reads = raw_reads(user, items)
        commands = [c for r in reads for c in r.commands()]
        slots = [s for r in reads for s in r.slots]
        loop.run_until_complete(store.execute(commands, slots, 1.0))

    def ranking(client: FeatureClient) -> Any:
        def call(user: str, items: list[str]) -> None:
            result = client.get_features(RANKING, entities={"user_id": [user], "item_id": items})
            assert not result.fallbacks
            matrix, _ = result.to_numpy()
            assert matrix.shape[0] == 500

        return call

    scenarios = {"raw_redis": raw, "cache_off": ranking(off), "cache_on": ranking(on)}
    results: dict[str, Any] = {}
    gc.collect()
    gc.freeze()
    try:
        for phase, candidates in phases.items():
            samples: dict[str, list[float]] = {name: [] for name in scenarios}
            for n, items in enumerate(candidates):
                if n == warmup:
                    hits_before, misses_before = cache_counts(metrics_port)
                user = f"u{int(rng.integers(USERS)):06d}"
                # Rotate who goes first: a call right after another server's call shares the
                # CPU with that server's late gRPC work, a bias that must hit all alike.
                order = list(scenarios.items())
                order = order[n % len(order) :] + order[: n % len(order)]
                for name, call in order:
                    started = time.perf_counter()
                    call(user, items)
                    if n >= warmup:
                        samples[name].append(time.perf_counter() - started)
            hits, misses = cache_counts(metrics_port)
            looked_up = (hits - hits_before) + (misses - misses_before)
            results[phase] = {name: percentiles(values) for name, values in samples.items()}
            results[phase]["hit_ratio"] = (hits - hits_before) / looked_up
    finally:
        off.close()
        on.close()
        loop.run_until_complete(store.close())
        loop.close()
    return results


def report(results: dict[str, Any]) -> None:
    setup = results["setup"]
    print(
        f"\n1 user (uniform over {USERS}) + 500 items per call, {setup['iterations']} calls "
        f"per scenario, interleaved; items: Zipf s={setup['s']} over {setup['items']} "
        f"(zipf), or the {TRENDING} most popular of them (trending)"
    )
    print("\n| items | scenario | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|---|")
    for phase in ("zipf", "trending"):
        for name in ("raw_redis", "cache_off", "cache_on"):
            f = results[phase][name]
            print(f"| {phase} | {name} | {f['p50']:.3f} | {f['p90']:.3f} | {f['p99']:.3f} |")
    for phase in ("zipf", "trending"):
        off, on = results[phase]["cache_off"], results[phase]["cache_on"]
        print(
            f"{phase}: row hit ratio {results[phase]['hit_ratio']:.1%}; cache on vs off: "
            f"p50 {on['p50']:.2f} vs {off['p50']:.2f} ms ({on['p50'] / off['p50']:.2f}x), "
            f"p99 {on['p99']:.2f} vs {off['p99']:.2f} ms ({on['p99'] / off['p99']:.2f}x)"
        )


if __name__ == "__main__":
    main()
