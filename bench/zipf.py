"""Ranking with Zipf-popular items: the cache off and on, measured side by side in one run.

Starts a local 3+3 Redis Cluster, materializes the example repo with 100,000 items, and runs
`featurewell serve` on the same data with the cache off (`--cache-entries 0`) and with the
default cache (the columnar cache, store/columnar.py); `--compare-tree DIR` adds DIR's server
with its own cache (e.g. the commit before the columnar cache: the raw-row hot-key cache).

Each round sends, in a shuffled order: a ranking call (1 user + 500 distinct items drawn by Zipf
popularity, s = 1.1) to every server, the same reads to raw Redis (the store's floor), and a
single-entity call (1 user, the load tests' SINGLE features) to every server. Open loop: every
call has a scheduled send time and is timed from it, so a stall delays the calls behind it
instead of hiding them (the service time, from the actual send, is reported beside). Users are
uniform over 5,000 (the user row mostly misses the cache). A second phase draws the 500 items
from the 2,000 most popular only (a trending shelf). Each cached server's row hit ratio over a
phase's measured calls comes from its /metrics. A third phase (`steady`) sends only ranking
calls, Zipf-popular items again (other draws), at a steady rate (`--steady-rate`, calls/s over
all servers, alternating): a ranker's server busy enough to stay warm. The first two phases'
few calls a second per server leave each server idle ~160 ms between calls, long enough for the
other processes on these two cores to push its cache's tables out of the CPU's caches, so
every cached lookup pays memory latency (docs/caching.md: the cache's gain shows only in the
steady phase here). The cached servers run with a 120 s TTL: at this
bench's few calls a second, the default 5 s would expire most rows between two calls needing
them, where a ranker serving hundreds of calls a second would find them cached; at 60 s the Zipf
phase caches 76-78% of rows, and issue 20 judges the cache at 80% or more (120 s: 82%).

    python bench/zipf.py [--iterations 600] [--cache-ttl-s 120] [--items 100000] [--s 1.1]
                         [--steady-rate 100] [--steady-rounds 2000] [--phases zipf,trending,steady]
                         [--json out.json] [--compare-tree DIR] [--variant NAME=FLAGS]

`--json` writes `rows`: one per (phase, configuration, kind) with p50/p90/p99 ms, the ratio to
the cache-off server's figure of the same kind in the same run, and the hit ratio.
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
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from e2e import RANKING, SINGLE, Tree, checkout, example_repo, percentiles, raw_reads
from prometheus_client.parser import text_string_to_metric_families

from featurewell.client import FeatureClient
from featurewell.devcluster import free_ports, start_local_cluster
from featurewell.store.cluster import ClusterClient

USERS = 5000
TRENDING = 2000  # a trending shelf: candidates drawn from the most popular items only
SLOT_S = {"ranking": 0.04, "single": 0.008, "raw": 0.02}  # scheduled gap after each call
PHASES = ("zipf", "trending", "steady")
Call = Callable[[str, list[str]], bool]  # (user, items) -> whether the answer had fallbacks


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


def load() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--cache-ttl-s",
        type=float,
        default=120.0,
        help="the cached servers' TTL: at this bench's few calls a second, the default 5 s "
        "would let most rows expire between two calls that need them",
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--s", type=float, default=1.1, help="Zipf exponent")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--compare-tree",
        type=Path,
        metavar="DIR",
        help="also serve from this featurewell checkout, its cache on, and time it alongside",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="also serve with the cache on and these extra serve flags, timed alongside "
        "(e.g. 'admit4=--cache-admit-after 4'); repeatable",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"which phases to run, comma-separated (default all: {','.join(PHASES)})",
    )
    parser.add_argument(
        "--steady-rate",
        type=float,
        default=100.0,
        help="the steady phase's ranking calls per second, over all servers",
    )
    parser.add_argument(
        "--steady-rounds",
        type=int,
        default=2000,
        help="the steady phase's measured rounds (a ranking call to each server per round)",
    )
    args = parser.parse_args()
    if args.steady_rate <= 0 or args.steady_rounds <= 0:
        parser.error("--steady-rate and --steady-rounds must be positive")
    compare = checkout(args.compare_tree) if args.compare_tree else None

    print(f"generating {USERS} users x {args.items} items and a 3+3 cluster...", flush=True)
    folder = Path(os.environ.get("FEATUREWELL_BENCH_DATA", "/tmp/featurewell-zipf"))
    data = example_repo(folder, args.items)
    calls = args.warmup + args.iterations
    wanted = args.phases.split(",")
    phases: dict[str, list[list[str]]] = {}
    if "zipf" in wanted:
        phases["zipf"] = zipf_candidates(calls, args.items, args.s, 500)
    if "trending" in wanted:
        phases["trending"] = zipf_candidates(calls, TRENDING, args.s, 500, seed=3)
    if "steady" in wanted:
        rounds = args.warmup + args.steady_rounds
        phases["steady"] = zipf_candidates(rounds, args.items, args.s, 500, seed=5)
    load_before = load()
    with start_local_cluster(3, 1) as cluster:
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        cli = [sys.executable, "-m", "featurewell.cli"]
        subprocess.run(
            [*cli, "materialize", "--repo", str(data), "--redis", seeds],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        common = [*cli, "serve", "--repo", str(data), "--redis", seeds, "--log-level", "WARNING"]
        ttl = ["--cache-ttl-s", str(args.cache_ttl_s)]
        configs: dict[str, tuple[list[str], Tree | None]] = {
            "cache_off": (["--cache-entries", "0"], None),
            "cache_on": (ttl, None),
        }
        if compare is not None:
            configs[f"cache_on [{compare.label}]"] = (ttl, compare)
        for variant in args.variant:
            name, _, flags = variant.partition("=")
            configs[f"cache_on [{name}]"] = ([*ttl, *flags.split()], None)
        ports = free_ports(2 * len(configs))
        servers, grpc_ports, metrics_ports = [], {}, {}
        for n, (name, (flags, tree)) in enumerate(configs.items()):
            grpc_ports[name], metrics = ports[2 * n], ports[2 * n + 1]
            cached = name != "cache_off"
            if cached:
                metrics_ports[name] = metrics
            command = [*common, *flags, "--port", str(grpc_ports[name])]
            command += ["--metrics-port", str(metrics if cached else -1)]
            env = tree.env if tree is not None else None
            servers.append(subprocess.Popen(command, env=env))
        try:
            results = measure(
                cluster.seeds, grpc_ports, metrics_ports, phases, args.warmup, args.steady_rate
            )
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
    results["setup"] = {
        "items": args.items,
        "s": args.s,
        "iterations": args.iterations,
        "cache_ttl_s": args.cache_ttl_s,
        "steady_rate": args.steady_rate,
        "steady_rounds": args.steady_rounds,
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": load(),
    }
    results["rows"] = rows(results)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def measure(
    seeds: Any,
    grpc_ports: dict[str, int],
    metrics_ports: dict[str, int],
    phases: dict[str, list[list[str]]],
    warmup: int,
    steady_rate: float,
) -> dict[str, Any]:
    for port in grpc_ports.values():
        grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=60)
    loop = asyncio.new_event_loop()
    store = ClusterClient(seeds, connections_per_node=1)
    loop.run_until_complete(store.start())
    clients = {
        name: FeatureClient(f"127.0.0.1:{port}", timeout=5) for name, port in grpc_ports.items()
    }

    def raw(user: str, items: list[str]) -> bool:
        reads = raw_reads(user, items)
        commands = [c for r in reads for c in r.commands()]
        slots = [s for r in reads for s in r.row_slots()]
        loop.run_until_complete(store.execute(commands, slots, 1.0))
        return False

    def ranking(client: FeatureClient) -> Call:
        def call(user: str, items: list[str]) -> bool:
            result = client.get_features(RANKING, entities={"user_id": [user], "item_id": items})
            matrix, _ = result.to_numpy()
            assert matrix.shape[0] == 500
            return bool(result.fallbacks)

        return call

    def single(client: FeatureClient) -> Call:
        def call(user: str, items: list[str]) -> bool:
            return bool(client.get_features(SINGLE, entities={"user_id": [user]}).fallbacks)

        return call

    scenarios: dict[tuple[str, str], Call] = {("raw_redis", "raw"): raw}
    for name, client in clients.items():
        scenarios[(name, "ranking")] = ranking(client)
        scenarios[(name, "single")] = single(client)
    results: dict[str, Any] = {}
    users, order = random.Random(2), random.Random(3)
    gc.collect()
    gc.freeze()
    try:
        for phase, candidates in phases.items():
            samples: dict[tuple[str, str], list[float]] = {key: [] for key in scenarios}
            service: dict[tuple[str, str], list[float]] = {key: [] for key in scenarios}
            degraded = dict.fromkeys(scenarios, 0)
            late = 0
            before: dict[str, tuple[float, float]] = {}
            calls = list(scenarios)
            slot_s = SLOT_S
            if phase == "steady":  # ranking calls only, evenly spaced
                calls = [key for key in scenarios if key[1] == "ranking"]
                slot_s = {"ranking": 1 / steady_rate}
            scheduled = time.perf_counter()
            for n, items in enumerate(candidates):
                if n == warmup:
                    before = {name: cache_counts(port) for name, port in metrics_ports.items()}
                    scheduled = time.perf_counter()  # measured rounds start on time
                user = f"u{users.randrange(USERS):06d}"
                order.shuffle(calls)  # nobody always goes first, or right after a server
                for key in calls:
                    while (wait := scheduled - time.perf_counter()) > 0:
                        time.sleep(wait if wait > 0.0005 else 0)
                    sent = time.perf_counter()
                    fell_back = scenarios[key](user, items)
                    if n >= warmup:
                        done = time.perf_counter()
                        samples[key].append(done - scheduled)
                        service[key].append(done - sent)
                        degraded[key] += fell_back
                        late += sent - scheduled > 0.001
                    scheduled += slot_s[key[1]]
            out: dict[str, Any] = {}
            for (name, kind), values in samples.items():
                if not values:  # a kind this phase does not send
                    continue
                out[f"{name} {kind}"] = percentiles(values) | {
                    "with_fallbacks": degraded[(name, kind)],
                    "service": percentiles(service[(name, kind)]),
                }
            for name, port in metrics_ports.items():
                hits, misses = cache_counts(port)
                hit, miss = hits - before[name][0], misses - before[name][1]
                out[f"{name} hit_ratio"] = hit / (hit + miss) if hit + miss else 0.0
            out["late_sends"] = late / sum(len(v) for v in samples.values())
            results[phase] = out
    finally:
        for client in clients.values():
            client.close()
        loop.run_until_complete(store.close())
        loop.close()
    return results


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (phase, configuration, kind), with ratios to the cache-off server's figures
    of the same kind in the same run."""
    out = []
    for phase in (p for p in PHASES if p in results):
        figures = results[phase]
        for key, f in figures.items():
            if not isinstance(f, dict):
                continue
            config, kind = key.rsplit(" ", 1)
            off = figures.get(f"cache_off {kind}", figures["cache_off ranking"])
            out.append(
                {
                    "bench": "zipf",
                    "phase": phase,
                    "config": config,
                    "kind": kind,
                    "p50_ms": f["p50"],
                    "p90_ms": f["p90"],
                    "p99_ms": f["p99"],
                    "p50_vs_off": f["p50"] / off["p50"],
                    "p99_vs_off": f["p99"] / off["p99"],
                    "service_p50_ms": f["service"]["p50"],
                    "service_p99_ms": f["service"]["p99"],
                    "hit_ratio": figures.get(f"{config} hit_ratio"),
                    "with_fallbacks": f["with_fallbacks"],
                    "calls": f["n"],
                }
            )
    return out


def report(results: dict[str, Any]) -> None:
    setup = results["setup"]
    print(
        f"\n1 user (uniform over {USERS}) + 500 items per ranking call, {setup['iterations']} "
        f"rounds, open loop, interleaved; items: Zipf s={setup['s']} over {setup['items']} "
        f"(zipf), or the {TRENDING} most popular of them (trending); load "
        f"{setup['load_before']} -> {setup['load_after']}"
    )
    if "steady" in results:
        print(
            f"steady: ranking calls only, {setup['steady_rate']:.0f}/s over all servers "
            f"(alternating), {setup['steady_rounds']} measured rounds"
        )
    print(
        "\n| items | configuration | kind | p50 ms | p99 ms | p50 / off | p99 / off | hit ratio "
        "| service p50 / p99 ms | calls with fallbacks |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for row in results["rows"]:
        hit = f"{row['hit_ratio']:.1%}" if row["hit_ratio"] is not None else ""
        print(
            f"| {row['phase']} | {row['config']} | {row['kind']} | {row['p50_ms']:.3f} "
            f"| {row['p99_ms']:.3f} | {row['p50_vs_off']:.2f} | {row['p99_vs_off']:.2f} | {hit} "
            f"| {row['service_p50_ms']:.3f} / {row['service_p99_ms']:.3f} "
            f"| {row['with_fallbacks']} |"
        )
    for phase in (p for p in ("zipf", "trending") if p in results):
        figures = results[phase]
        on, single = figures["cache_on ranking"], figures["cache_off single"]
        print(
            f"{phase}: cache on ranking p99 / cache off single-entity p99 = "
            f"{on['p99'] / single['p99']:.2f}; late sends {figures['late_sends']:.1%}"
        )


if __name__ == "__main__":
    main()
