"""The client's near cache off and on, measured side by side from the client, in one run.

Starts a local 3+3 Redis Cluster, materializes the example repo, runs `featurewell serve` (default
settings: near-cache TTL 1 s), and times single-entity calls (`SINGLE`: one user's 2 views) from
two clients of this process, one plain (`off`) and one with `ClientOptions(near_cache=True)`
(`on`), plus the bare gRPC floor (a health Check on the same server), interleaved in a shuffled
order each round:

    hot     one user, back to back: the near cache's own cost (every call after the first
            per TTL a hit)
    zipf    a user drawn by Zipf popularity (s = 1.1 over 5,000 users) each round, OPEN LOOP:
            calls scheduled on a fixed clock (`--slot-ms`, 6 ms, apart) and each timed from its
            scheduled send, so a slow call's delay to the next counts

Reported per phase and mode: p50/p90/p99 (ms; µs for the hits), each call's own service p50
(from its actual send), the near cache's hit rate over the measured calls, and ratios of `on`
to `off` and to the gRPC floor.

    python bench/near_cache.py [--rounds 3000] [--slot-ms 6] [--s 1.1] [--json out.json]
"""

from __future__ import annotations

import argparse
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
from e2e import SINGLE, USERS, example_repo, percentiles
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featurewell.client import ClientOptions, FeatureClient
from featurewell.devcluster import free_ports, start_local_cluster

MODES = ("floor", "off", "on")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--slot-ms", type=float, default=6.0, help="zipf: scheduled gap per call")
    parser.add_argument("--s", type=float, default=1.1, help="Zipf exponent over the users")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    print("starting a 3+3 Redis Cluster and generating sample data...", flush=True)
    data = example_repo(Path(os.environ.get("FEATUREWELL_BENCH_DATA", "/tmp/featurewell-near")))
    with start_local_cluster(3, 1) as cluster:
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        cli = [sys.executable, "-m", "featurewell.cli"]
        subprocess.run(
            [*cli, "materialize", "--repo", str(data), "--redis", seeds],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (port,) = free_ports(1)
        server = subprocess.Popen(
            [
                *cli,
                "serve",
                "--repo",
                str(data),
                "--redis",
                seeds,
                "--port",
                str(port),
                "--metrics-port",
                "-1",
                "--log-level",
                "WARNING",
            ]
        )
        try:
            results = measure(f"127.0.0.1:{port}", args)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    results["setup"] = {
        "rounds": args.rounds,
        "slot_ms": args.slot_ms,
        "s": args.s,
        "users": USERS,
        "cores": os.cpu_count(),
        "load": os.getloadavg()[0],
    }
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def zipf_users(rounds: int, s: float, seed: int = 5) -> list[str]:
    """A user id per round, drawn with weights rank^-s (user 0 the most popular)."""
    weights = np.arange(1, USERS + 1, dtype=np.float64) ** -s
    drawn = np.random.default_rng(seed).choice(USERS, size=rounds, p=weights / weights.sum())
    return [f"u{int(n):06d}" for n in drawn]


def measure(address: str, args: argparse.Namespace) -> dict[str, Any]:
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=60)
    health = health_pb2_grpc.HealthStub(channel)
    off = FeatureClient(address, timeout=5)
    on = FeatureClient(address, options=ClientOptions(timeout=5, near_cache=True))
    assert on.near_cache is not None
    stats = on.near_cache.stats

    def reader(client: FeatureClient) -> Callable[[str], Any]:
        return lambda user: client.get_features(SINGLE, entities={"user_id": [user]})

    calls: dict[str, Callable[[str], Any]] = {
        "floor": lambda user: health.Check(health_pb2.HealthCheckRequest(), timeout=5),
        "off": reader(off),
        "on": reader(on),
    }
    # The subscription goes live after the first cacheable answer: wait for it, not in the run.
    while not on.near_cache.live:
        calls["on"]("u000000")
        time.sleep(0.01)
    results: dict[str, Any] = {}
    gc.collect()
    gc.freeze()
    try:
        for phase, users, open_loop in (
            ("hot", ["u000001"] * (args.warmup + args.rounds), False),
            ("zipf", zipf_users(args.warmup + args.rounds, args.s), True),
        ):
            results[phase] = run(calls, users, args.warmup, open_loop, args.slot_ms / 1000, stats)
    finally:
        off.close()
        on.close()
        channel.close()
    return results


def run(
    calls: dict[str, Callable[[str], Any]],
    users: list[str],
    warmup: int,
    open_loop: bool,
    slot_s: float,
    stats: Any,
) -> dict[str, Any]:
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    service: dict[str, list[float]] = {mode: [] for mode in MODES}
    answered: dict[str, list[float]] = {"hit": [], "miss": []}  # `on`'s service times by source
    order = list(MODES)
    shuffle = random.Random(7).shuffle
    late = 0
    scheduled = time.perf_counter()
    for n, user in enumerate(users):
        if n == warmup:
            hits, misses = stats.hits, stats.misses
            scheduled = time.perf_counter()  # measured rounds start on time
        shuffle(order)
        for mode in order:
            if open_loop:
                while (wait := scheduled - time.perf_counter()) > 0:
                    time.sleep(wait if wait > 0.0005 else 0)
            held = stats.hits
            sent = time.perf_counter()
            calls[mode](user)
            done = time.perf_counter()
            if n >= warmup:
                samples[mode].append(done - (scheduled if open_loop else sent))
                service[mode].append(done - sent)
                if mode == "on":
                    answered["hit" if stats.hits > held else "miss"].append(done - sent)
                late += open_loop and sent - scheduled > 0.001
            scheduled += slot_s
    looked_up = (stats.hits - hits) + (stats.misses - misses)
    out: dict[str, Any] = {
        mode: percentiles(samples[mode]) | {"service_p50": percentiles(service[mode])["p50"]}
        for mode in MODES
    }
    out["hit_rate"] = (stats.hits - hits) / looked_up if looked_up else 0.0
    for source, values in answered.items():
        if values:
            out[f"on_{source}_service"] = percentiles(values)
    out["late_sends"] = late / max(1, sum(len(v) for v in samples.values()))
    return out


def report(results: dict[str, Any]) -> None:
    setup = results["setup"]
    print(
        f"\nsingle entity ({', '.join(SINGLE)}), {setup['rounds']} rounds per phase, floor/off/on "
        f"interleaved; zipf: s={setup['s']} over {setup['users']} users, open loop, "
        f"{setup['slot_ms']} ms slots; load average {setup['load']:.2f} on {setup['cores']} cores"
    )
    print(
        "\n| phase | mode | p50 ms | p90 ms | p99 ms | service p50 ms |\n|---|---|---|---|---|---|"
    )
    for phase in ("hot", "zipf"):
        for mode in MODES:
            f = results[phase][mode]
            print(
                f"| {phase} | {mode} | {f['p50']:.3f} | {f['p90']:.3f} | {f['p99']:.3f} | "
                f"{f['service_p50']:.3f} |"
            )
    for phase in ("hot", "zipf"):
        r = results[phase]
        off, on, floor = r["off"], r["on"], r["floor"]
        print(
            f"{phase}: hit rate {r['hit_rate']:.1%}; on p50 {on['p50'] * 1000:.1f} µs "
            f"({on['p50'] / off['p50']:.3f}x off, {on['p50'] / floor['p50']:.3f}x the gRPC floor), "
            f"p99 {on['p99']:.3f} vs {off['p99']:.3f} ms ({on['p99'] / off['p99']:.2f}x); "
            f"late sends {r['late_sends']:.1%}"
        )
        if "on_hit_service" in r:
            hit = r["on_hit_service"]
            print(
                f"  {phase}: near-cache hits' own time p50 {hit['p50'] * 1000:.1f} µs, "
                f"p99 {hit['p99'] * 1000:.1f} µs ({hit['n']} hits)"
            )


if __name__ == "__main__":
    main()
