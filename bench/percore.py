"""Calls per server core: single-entity GetFeatures against the same server's health check.

Starts a local 3-master Redis Cluster (no replicas), loads the example repo's sample data and
runs `featurewell serve` pinned to core 0 (`--server-core`): every thread of it, so core 0 runs
nothing else of this benchmark. Redis runs on the other core, beside the load generator: the
figure is the server's own CPU per call, not Redis's. The load generator is `h2load` (a C HTTP/2
client, Debian's nghttp2-client), pinned to the other core, closed loop (`--clients` connections
x `--streams` calls open on each), sending one framed gRPC message from a file:

    health   grpc.health.v1.Health/Check (service ""): the cost of any unary call on this server
    single   featurewell.v1.FeatureService/GetFeatures, one user, the load tests' SINGLE list

The two alternate `--rounds` times for `--seconds` each, so the box's noise (other processes
share both cores) hits both alike. Per round: calls/s (h2load), the server's CPU per call
(utime + stime of its processes over the round, /proc) and the ratio single/health. GetFeatures
answers are checked from the server's own counters (h2load sees HTTP 200 whatever the gRPC
status): a round whose calls were not all OK fails the run.

`--compare-tree DIR` serves a second server from another checkout (its own code, same repo,
cluster and flags, also on core 0) and runs its rounds interleaved with this tree's: before and
after from one run. `--compare-flag=--workers=2` (repeatable) does the same for this tree
served with other flags. Then an open-loop check: Python clients (bench/overload.py's generator) on
the other core send single-entity calls for random users at `--open-rate` calls/s, each timed
from its scheduled send; p50/p99 of each server, twice, alternating.

    python bench/percore.py [--rounds 3] [--seconds 4] [--open-rate 2000] [--compare-tree DIR]
        [--serve-flag=--workers=2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from featurewell.devcluster import free_ports, start_local_cluster
from featurewell.v1 import feature_service_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import SINGLE, checkout, example_repo
from overload_generator import Job, generate
from percore_open import cache_counts, hot_open_loop, sampled, tree_cpu_s

HEALTH_PATH = "/grpc.health.v1.Health/Check"
SINGLE_PATH = "/featurewell.v1.FeatureService/GetFeatures"
USER = "u000042"


def framed(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed (0), big-endian length, the bytes."""
    return struct.pack(">BI", 0, len(message)) + message


def requests(folder: Path) -> dict[str, tuple[str, Path]]:
    """What h2load sends per scenario: the path and the file holding the framed request."""
    single = pb.GetFeaturesRequest(
        features=SINGLE, entities={"user_id": pb.Values(strings=pb.StringList(values=[USER]))}
    )
    bodies = {
        "health": (HEALTH_PATH, health_pb2.HealthCheckRequest(service="").SerializeToString()),
        "single": (SINGLE_PATH, single.SerializeToString()),
    }
    out: dict[str, tuple[str, Path]] = {}
    for name, (path, body) in bodies.items():
        (folder / f"{name}.bin").write_bytes(framed(body))
        out[name] = (path, folder / f"{name}.bin")
    return out


def pin(pid: int, cores: set[int]) -> None:
    """Pin every thread of `pid` (sched_setaffinity on a pid moves its main thread only)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), cores)


@dataclass
class Served:
    """One running server: its process, gRPC port and /metrics port."""

    label: str
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as reply:
            return str(reply.read().decode())


def serve(
    label: str, cli: list[str], env: dict[str, str] | None, flags: list[str], core: int
) -> Served:
    port, metrics_port = free_ports(2)
    command = ["taskset", "-c", str(core), *cli, "serve", *flags]
    command += ["--port", str(port), "--metrics-port", str(metrics_port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    return Served(label, process, port, metrics_port)


def wait_serving(server: Served, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.process.poll() is not None:
            sys.exit(f"{server.label}: featurewell serve exited ({server.process.returncode})")
        try:
            server.metrics()  # with --workers, the parent's: then wait for the workers too
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=end - time.monotonic())
            time.sleep(2.0)  # every worker listening, not only the first
            return
        except (OSError, grpc.FutureTimeoutError):
            time.sleep(0.2)
    sys.exit(f"{server.label}: not serving after {timeout:.0f} s")


def h2load(port: int, path: str, body: Path, seconds: int, args: argparse.Namespace) -> Load:
    """A closed-loop h2load run: calls/s, and how many calls came back with an answer."""
    command = ["taskset", "-c", str(args.load_core), "h2load", "-t", "1"]
    command += ["-c", str(args.clients), "-m", str(args.streams), "-D", str(seconds)]
    command += ["-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body)]
    command.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rate = re.search(r"finished in ([0-9.]+)s, ([0-9.]+) req/s", out)
    data = re.search(r"traffic: .* \((\d+)\) data", out)
    if done is None or rate is None or data is None or done.group(1) != done.group(2):
        sys.exit(f"h2load failed:\n{out}")
    return Load(int(done.group(1)), float(rate.group(1)), int(data.group(1)))


@dataclass(frozen=True)
class Load:
    """What h2load reports: calls done (HTTP 200, whatever the gRPC status), its measured
    seconds, and the response bytes received (DATA frames: only an OK answer has one)."""

    calls: int
    seconds: float
    data_bytes: int

    def answered(self, answer_bytes: int) -> int:
        """Calls answered with a message (refused ones, RESOURCE_EXHAUSTED etc., have none)."""
        return min(self.calls, self.data_bytes // answer_bytes)


def answer_bytes(port: int, path: str, body: Path) -> int:
    """The framed size of the server's answer to `body` (checked OK by gRPC itself)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
        return 5 + len(call(body.read_bytes()[5:], timeout=10))


def measure(server: Served, scenario: str, args: argparse.Namespace) -> dict[str, float]:
    """One h2load round on `server`: answered calls/s, server CPU µs per answered call."""
    path, body = args.requests[scenario]
    size = answer_bytes(server.port, path, body)
    metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
    hits, misses = cache_counts(metrics)
    cpu_before = tree_cpu_s(server.process.pid)
    load = h2load(server.port, path, body, args.seconds, args)
    cpu = tree_cpu_s(server.process.pid) - cpu_before
    after_hits, after_misses = cache_counts(metrics)
    looked_up = after_hits - hits + after_misses - misses
    answered = load.answered(size)
    if answered < load.calls * 0.99:
        print(f"  {server.label} {scenario}: {load.calls - answered} of {load.calls} refused")
    # h2load's whole run (connections, the last calls) against the calls of its measured span.
    row = {"per_s": answered / load.seconds, "cpu_us": cpu / answered * 1e6}
    if looked_up:  # the cache's row lookups over the round (the /metrics counters)
        row["hit_ratio"] = (after_hits - hits) / looked_up
    return row


def rounds(servers: list[Served], args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {}
    for n in range(args.rounds):
        order = servers if n % 2 == 0 else servers[::-1]
        for server in order:
            for scenario in ("health", "single") if n % 2 == 0 else ("single", "health"):
                row = measure(server, scenario, args)
                results.setdefault(f"{scenario} [{server.label}]", []).append(row)
                print(
                    f"round {n + 1} {server.label:>13} {scenario:>6}: {row['per_s']:8.0f} "
                    f"calls/s {row['cpu_us']:6.1f} µs CPU/call"
                    + (f", cache hits {row['hit_ratio']:.4f}" if "hit_ratio" in row else ""),
                    flush=True,
                )
    return results


def profile(server: Served, args: argparse.Namespace) -> None:
    """Where the server's CPU goes in a single-entity round (bench/percore_open.py)."""
    out = args.profile.with_name(f"{args.profile.name}.{server.label.replace(' ', '_')}.txt")
    path, body = args.requests["single"]
    sampled(server.process.pid, out, args.seconds, args.load_core)(
        lambda: h2load(server.port, path, body, args.seconds, args)
    )
    print(f"profile of {server.label}: {out}")


def open_loop(server: Served, args: argparse.Namespace) -> dict[str, Any]:
    """Client latency of single calls at `--open-rate`, timed from each scheduled send."""
    if args.open_users:
        return hot_open_loop(
            f"127.0.0.1:{server.port}",
            f"http://127.0.0.1:{server.metrics_port}/metrics",
            args.open_rate,
            args.seconds,
            args.load_core,
            args.open_users,
            SINGLE,
            args.generators,
        )
    share = args.open_rate / args.generators
    jobs = [
        Job(
            False,
            f"127.0.0.1:{server.port}",
            share,
            args.seconds,
            1.0,
            args.load_core,
            "poisson",
            n,
        )
        for n in range(args.generators)
    ]
    with multiprocessing.get_context("spawn").Pool(args.generators) as pool:
        outcomes = [o for part in pool.map(generate, jobs) for o in part.outcomes]
    ok = np.array([o[1] for o in outcomes if o[0] == "OK"]) * 1000
    return {
        "rate_per_s": args.open_rate,
        "calls": len(outcomes),
        "failed": len(outcomes) - len(ok),
        "codes": dict(Counter(o[0] for o in outcomes)),
        "p50_ms": round(float(np.percentile(ok, 50)), 2),
        "p99_ms": round(float(np.percentile(ok, 99)), 2),
    }


def summary(results: dict[str, list[dict[str, float]]], labels: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label in labels:
        health, single = results[f"health [{label}]"], results[f"single [{label}]"]
        ratios = [s["per_s"] / h["per_s"] for h, s in zip(health, single, strict=True)]
        out[label] = {
            "health_per_s": float(np.median([h["per_s"] for h in health])),
            "single_per_s": float(np.median([s["per_s"] for s in single])),
            "ratio": float(np.median(ratios)),
            "ratio_range": [min(ratios), max(ratios)],
            "health_cpu_us": float(np.median([h["cpu_us"] for h in health])),
            "single_cpu_us": float(np.median([s["cpu_us"] for s in single])),
            "single_per_cpu_s": float(1e6 / np.median([s["cpu_us"] for s in single])),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=2, help="h2load connections")
    parser.add_argument("--streams", type=int, default=8, help="h2load calls open per connection")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1, help="h2load, Redis, Python clients")
    parser.add_argument("--open-rate", type=float, default=2000.0, help="0: no open-loop check")
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument(
        "--open-users",
        type=int,
        default=0,
        help="open loop over this many hot users (bench/percore_open.py; 0: all users)",
    )
    parser.add_argument("--cache", action="store_true", help="hot-key cache on (default off)")
    parser.add_argument("--serve-flag", action="append", default=[], help="extra serve flags")
    parser.add_argument("--compare-tree", type=Path, metavar="DIR")
    parser.add_argument(
        "--compare-flag",
        action="append",
        default=[],
        help="also serve this tree with these extra flags (e.g. --compare-flag=--workers=2)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="OUT",
        help="py-spy (on the load core) samples each server through one extra single round: "
        "OUT.<label>.txt, collapsed stacks (flamegraph.pl / speedscope read them)",
    )
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load is missing: apt-get install -y nghttp2-client (Debian/Ubuntu)")
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    cli = [sys.executable, "-m", "featurewell.cli"]
    servers: list[Served] = []
    with tempfile.TemporaryDirectory() as tmp, start_local_cluster(masters=3) as cluster:
        for process in cluster.processes.values():
            pin(process.pid, {args.load_core})
        repo = example_repo(Path(tmp), items=200)
        args.requests = requests(Path(tmp))
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        subprocess.run(
            [*cli, "materialize", "--repo", str(repo), "--redis", seeds],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        flags = ["--repo", str(repo), "--redis", seeds, "--log-level", "ERROR"]
        flags += ([] if args.cache else ["--cache-entries", "0"]) + args.serve_flag
        try:
            servers.append(serve("current", cli, None, flags, args.server_core))
            if args.compare_tree is not None:
                tree = checkout(args.compare_tree)
                servers.append(serve(tree.label, cli, tree.env, flags, args.server_core))
            if args.compare_flag:  # this tree again, with other flags
                label = " ".join(args.compare_flag)
                servers.append(serve(label, cli, None, flags + args.compare_flag, args.server_core))
            for server in servers:
                wait_serving(server)
                path, body = args.requests["single"]
                h2load(server.port, path, body, 1, args)  # warm up
            results: dict[str, Any] = {"rounds": rounds(servers, args)}
            if args.profile is not None:
                for server in servers:
                    profile(server, args)
            results["summary"] = summary(results["rounds"], [s.label for s in servers])
            if args.open_rate > 0:  # every server in turn, twice, alternating
                for server in [*servers, *servers[::-1]]:
                    row = open_loop(server, args)
                    results.setdefault("open_loop", {}).setdefault(server.label, []).append(row)
        finally:
            for server in servers:
                server.process.send_signal(signal.SIGTERM)
            for server in servers:
                server.process.wait(timeout=30)
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nclosed loop, h2load -c {args.clients} -m {args.streams}, medians of {args.rounds}")
    print("server          health/s  single/s  ratio (range)    µs CPU/call health single")
    for label, row in results["summary"].items():
        low, high = row["ratio_range"]
        print(
            f"{label:>13} {row['health_per_s']:9.0f} {row['single_per_s']:9.0f}  "
            f"{row['ratio']:.2f} ({low:.2f}-{high:.2f})  "
            f"{row['health_cpu_us']:17.1f} {row['single_cpu_us']:6.1f}"
        )
    for label, rows in results.get("open_loop", {}).items():
        for row in rows:
            print(
                f"open loop {row['rate_per_s']:.0f}/s {label}: p50 {row['p50_ms']} ms, "
                f"p99 {row['p99_ms']} ms, {row['failed']} of {row['calls']} failed {row['codes']}"
                + (
                    f", {row['hot_users']} hot users, hits {row['cache_hit_ratio']}"
                    if "hot_users" in row
                    else ""
                )
            )
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
