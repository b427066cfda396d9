"""The overload curve: what a server answers at 0.5x, 1x, 1.5x and 3x its capacity.

Starts a local 3-master Redis Cluster, loads the example repo's sample data, runs `featurewell
serve` in its own process (cache off), then from generator processes of its own
(bench/overload_generator.py):

1. capacity: closed loop, `--concurrency` calls always open for `--seconds`: OK calls/s;
2. for each multiple of it (`--levels`), an open-loop generator (split over `--generators`
   processes) sends single-entity GetFeatures with a `--deadline-ms` deadline at Poisson
   arrival times (`--arrivals uniform`: evenly spaced), each call timed from its scheduled send
   (no coordinated omission: a late send counts against the server). Requests go out as
   pre-serialized bytes and answers stay bytes, so the generator's CPU goes to gRPC alone.

Per level: offered and answered calls/s, goodput (OK within the deadline, per second, and as a
share of capacity), p50/p99 of answered calls, shed calls (CANCELLED from gRPC core's pending
bound, RESOURCE_EXHAUSTED, or the server's DEADLINE_EXCEEDED drop) with their latency, and calls
that missed their deadline in the client. To read them on a shared machine, also: the CPU the
server's event loop, its other threads (gRPC core) and Redis got (in cores), goodput per server
core against capacity's, the generators' own send lag and CPU, and how many refusals fell in
100 ms windows where the generator itself sent late (its stall, released at once, is a burst
no server made).

With `--variant NAME=FLAGS` more servers run side by side (other serve flags), each level
timed on every one in turn at the same offered rate; `--rounds N` repeats the levels.

    python bench/overload.py [--pin 1] [--seconds 4] [--deadline-ms 50] [--json out.json]
        [--variant 'nice10=--grpc-threads-nice 10'] [--variant 'epoll=GRPC_POLL_STRATEGY=poll']
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shlex
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import example_repo
from overload_generator import Job, generate

LEVELS = (0.5, 1.0, 1.5, 3.0)
SHED = ("RESOURCE_EXHAUSTED", "DROPPED", "CANCELLED")
# A send this much behind its schedule marks its 100 ms window as the generator's own burst.
GENERATOR_LATE_S = 0.005
ENVIRONMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")  # a variant's word that sets the environment


def _cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of process `pid`: its main thread (the event loop) and its other threads
    (gRPC core's, the store's)."""
    main = other = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        if int(task.name) == pid:
            main += seconds
        else:
            other += seconds
    return main, other


class Usage:
    """CPU the server (event loop, other threads) and Redis used over a level, in cores."""

    def __init__(self, server: int, redis: list[int]) -> None:
        self.server, self.redis = server, redis
        self.started = time.monotonic()
        self.before = self._now()

    def _now(self) -> tuple[float, float, float]:
        main, other = _cpu_s(self.server)
        return main, other, sum(sum(_cpu_s(pid)) for pid in self.redis)

    def cores(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.started
        spent = [now - then for now, then in zip(self._now(), self.before, strict=True)]
        return {
            name: round(seconds / elapsed, 2)
            for name, seconds in zip(("loop", "server_threads", "redis"), spent, strict=True)
        }


def _server_cores(cores: dict[str, float]) -> float:
    return max(cores["loop"] + cores["server_threads"], 0.01)


def _ms(values: Any, q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if len(values) else None


def level(
    pool: Any, address: str, rate: float, args: argparse.Namespace, capacity: float, usage: Usage
) -> Any:
    share = rate / args.generators
    deadline = args.deadline_ms / 1000
    jobs = [
        Job(
            False,
            address,
            share,
            args.seconds,
            deadline,
            args.pin,
            args.arrivals,
            seed,
        )
        for seed in range(args.generators)
    ]
    parts = pool.map(generate, jobs)
    cores = usage.cores()
    outcomes = [o for part in parts for o in part.outcomes]
    ok = np.array([s for code, s, _, _ in outcomes if code == "OK"])
    in_time = int((ok <= deadline).sum())
    # Refused: by the handler (RESOURCE_EXHAUSTED, or DROPPED: its deadline could not be met) or
    # by gRPC's core past max_pending_calls (it resets the stream: CANCELLED).
    shed = np.array([s for code, s, _, _ in outcomes if code in SHED])
    # The same from the call's actual send: what the generator's own lag (its loop busy on a
    # saturated core at 3x) adds to a refusal, taken out. Its receiving side stays in.
    shed_sent = np.array([s - lag for code, s, _, lag in outcomes if code in SHED])
    missed = sum(1 for code, s, _, _ in outcomes if code == "DEADLINE_EXCEEDED" or s > deadline)
    lags = np.array([lag for _, _, _, lag in outcomes])
    # When refusals happened: 100 ms windows of the schedule holding at least one; and those in
    # windows where the generator itself sent late (its own stall turns into a burst at once).
    late = {int(sent * 10) for _, _, sent, lag in outcomes if lag > GENERATOR_LATE_S}
    refused_windows = {int(sent * 10) for code, _, sent, _ in outcomes if code in SHED}
    refused_late = sum(1 for c, _, sent, _ in outcomes if c in SHED and int(sent * 10) in late)
    return {
        "offered_per_s": round(rate),
        "goodput_per_s": round(in_time / args.seconds),
        "goodput_of_capacity": round(in_time / args.seconds / capacity, 2),
        "ok_p50_ms": _ms(ok, 50),
        "ok_p99_ms": _ms(ok, 99),
        "shed": len(shed),
        "resource_exhausted": sum(1 for code, _, _, _ in outcomes if code == "RESOURCE_EXHAUSTED"),
        "shed_p50_ms": _ms(shed, 50),
        "shed_p99_ms": _ms(shed, 99),
        "shed_after_send_p50_ms": _ms(shed_sent, 50),
        "shed_after_send_p99_ms": _ms(shed_sent, 99),
        "missed_deadline": missed,
        "other_errors": sum(
            1 for code, _, _, _ in outcomes if code not in ("OK", "DEADLINE_EXCEEDED", *SHED)
        ),
        "calls": len(outcomes),
        "codes": dict(Counter(code for code, _, _, _ in outcomes)),
        "refused_windows_100ms": len(refused_windows),
        "refused_in_generator_bursts": refused_late,
        "send_lag_p50_ms": _ms(lags, 50),
        "send_lag_p99_ms": _ms(lags, 99),
        "generator_cores": round(sum(part.cpu_s for part in parts) / args.seconds, 2),
        "cores": cores,
        # OK calls within the deadline per core-second the server (loop and threads) got: on a
        # shared box, ratios of this to capacity's are what neighbours' load does not move.
        "goodput_per_server_core": round(in_time / args.seconds / _server_cores(cores)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--deadline-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument(
        "--arrivals",
        choices=("poisson", "uniform"),
        default="poisson",
        help="send times: a Poisson process (default) or evenly spaced",
    )
    parser.add_argument(
        "--capacity", type=float, default=0.0, help="calls/s the levels multiply (0: measured)"
    )
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="multiples to run")
    parser.add_argument("--serve-flag", action="append", default=[], help="extra serve flags")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="also serve with these extra serve flags (after --serve-flag) and run each level "
        "on it right after the default's, at the same offered rates; repeatable",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the levels (every variant's, interleaved) this many times",
    )
    parser.add_argument(
        "--pin",
        type=int,
        default=-1,
        help="pin the generators to this core, the server and Redis to the others",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configs = {"default": list(args.serve_flag)}
    environments: dict[str, dict[str, str]] = {"default": {}}
    for variant in args.variant:
        name, _, flags = variant.partition("=")
        words = shlex.split(flags)
        # Leading NAME=VALUE words set the server's environment (FEATUREWELL_*, GRPC_*).
        environment = dict(w.split("=", 1) for w in words if ENVIRONMENT.match(w))
        environments[name] = environment
        configs[name] = [*args.serve_flag, *(w for w in words if not ENVIRONMENT.match(w))]
    cli = [sys.executable, "-m", "featurewell.cli"]
    servers: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp, start_local_cluster(masters=3) as cluster:
        repo = example_repo(Path(tmp), items=200)
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        subprocess.run(
            [*cli, "materialize", "--repo", str(repo), "--redis", seeds],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        ports = dict(zip(configs, free_ports(len(configs)), strict=True))
        serve = [*cli, "serve", "--repo", str(repo), "--redis", seeds, "--log-level", "ERROR"]
        serve += ["--cache-entries", "0", "--metrics-port", "-1"]
        for name, flags in configs.items():
            servers[name] = subprocess.Popen(
                [*serve, "--port", str(ports[name]), *flags],
                env={**os.environ, **environments[name]},
            )
        redis = [p.pid for p in cluster.processes.values()]
        if args.pin >= 0:
            others = set(range(os.cpu_count() or 1)) - {args.pin}
            for pid in [*(s.pid for s in servers.values()), *redis]:
                os.sched_setaffinity(pid, others)
        addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        try:
            for address in addresses.values():
                grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=60)
            with multiprocessing.get_context("spawn").Pool(args.generators) as pool:
                results = _measure(pool, servers, addresses, redis, args)
        finally:
            for server in servers.values():
                server.send_signal(signal.SIGTERM)
            for server in servers.values():
                server.wait(timeout=30)
    results["deadline_ms"] = args.deadline_ms
    results["configs"] = configs
    results["environments"] = environments
    _report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _measure(
    pool: Any,
    servers: dict[str, subprocess.Popen[bytes]],
    addresses: dict[str, str],
    redis: list[int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Capacity (on the default server), then each round's levels, every variant's right after
    the default's at the same offered rate: a neighbour's load falls on all of them alike."""
    per = max(1, args.concurrency // args.generators)
    jobs = [
        Job(True, addresses["default"], per, args.seconds, 1.0, args.pin, "", seed)
        for seed in range(args.generators)
    ]
    usage = Usage(servers["default"].pid, redis)
    closed = pool.map(generate, jobs)
    ok = sum(1 for part in closed for code, *_ in part.outcomes if code == "OK")
    # --capacity: levels as multiples of a given rate (runs comparable at the same offered
    # loads, e.g. across max_pending_calls below the closed loop's calls)
    capacity = args.capacity or ok / args.seconds
    cores = usage.cores()
    results: dict[str, Any] = {
        "capacity_per_s": round(capacity),
        "capacity_cores": cores,
        "capacity_per_server_core": round(capacity / _server_cores(cores)),
        "arrivals": args.arrivals,
        "levels": {},
        "rounds": [],
    }
    for _ in range(args.rounds):
        round_: dict[str, dict[str, Any]] = {name: {} for name in servers}
        for multiple in (float(m) for m in args.levels.split(",")):
            for name, server in servers.items():
                usage = Usage(server.pid, redis)
                row = level(pool, addresses[name], capacity * multiple, args, capacity, usage)
                row["goodput_per_core_of_capacity"] = round(
                    row["goodput_per_server_core"] / results["capacity_per_server_core"], 2
                )
                round_[name][f"{multiple}x"] = row
                time.sleep(1.0)  # let the server drain between levels
        results["rounds"].append(round_)
    results["levels"] = results["rounds"][0]["default"]
    return results


def _report(results: dict[str, Any], args: argparse.Namespace) -> None:
    cores = results["capacity_cores"]
    print(
        f"capacity {results['capacity_per_s']} calls/s (closed loop, {args.concurrency} open; "
        f"cores: loop {cores['loop']} threads {cores['server_threads']} redis {cores['redis']})"
    )
    print(
        "variant round level offered goodput (x cap) ok_p50 ok_p99 shed shed_p50 shed_p99 "
        "(from_send p50) missed errors | per-core refused_windows in_gen_bursts send_lag_p99 "
        "gen_cores loop threads redis"
    )
    for number, round_ in enumerate(results["rounds"], 1):
        for name, levels in round_.items():
            for level_name, row in levels.items():
                cores = row["cores"]
                print(
                    f"{name} {number} {level_name:>5} {row['offered_per_s']:>7} "
                    f"{row['goodput_per_s']:>7} ({row['goodput_of_capacity']:.2f}) "
                    f"{row['ok_p50_ms']} {row['ok_p99_ms']} {row['shed']} {row['shed_p50_ms']} "
                    f"{row['shed_p99_ms']} ({row['shed_after_send_p50_ms']}) "
                    f"{row['missed_deadline']} {row['other_errors']} | "
                    f"{row['goodput_per_core_of_capacity']:.2f} {row['refused_windows_100ms']} "
                    f"{row['refused_in_generator_bursts']} "
                    f"{row['send_lag_p99_ms']} {row['generator_cores']} {cores['loop']} "
                    f"{cores['server_threads']} {cores['redis']}"
                )
    if len(results["rounds"]) > 1:
        print(
            "medians over rounds [range]: goodput (x cap) | shed p50 ms | shed p50 from its "
            "send ms | ok p99 ms"
        )
        for name in results["rounds"][0]:
            for level_name in results["rounds"][0][name]:
                rows = [round_[name][level_name] for round_ in results["rounds"]]
                cells = [
                    _spread([row[key] for row in rows])
                    for key in (
                        "goodput_of_capacity",
                        "shed_p50_ms",
                        "shed_after_send_p50_ms",
                        "ok_p99_ms",
                    )
                ]
                print(f"{name} {level_name:>5} " + " | ".join(cells))


def _spread(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "none"
    return f"{float(np.median(known)):.2f} [{min(known):.2f}-{max(known):.2f}]"


if __name__ == "__main__":
    main()
