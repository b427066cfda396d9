"""The served-feature log's cost on serving: the same GetFeatures calls with logging off, at 1%
and at 100%, measured side by side in one run.

Starts a local 3+3 Redis Cluster, loads the example repo's sample data (bench/e2e.py's), and runs
one `featurewell serve` process per mode on it (hot-key cache off, as in bench/e2e.py), each
with its own offline store:

    off     served_log_rate 0 (the default)
    1%      served_log_rate 0.01
    100%    served_log_rate 1: every answer logged (a ranking call: 500 item rows and the user's)

One client per mode times single-entity and ranking (1 user + 500 items) calls OPEN LOOP, as
bench/auth.py does: calls are scheduled on a fixed clock and timed from their scheduled send (no
coordinated omission), modes and kinds interleaved in a shuffled order each round. Reported:
p50/p99 per mode, the ratios to `off`, each call's service time from its actual send, and the
rows each mode's log holds once its server stopped (written by its writer thread: `dropped` is
the calls' rows that did not reach it).

    python bench/served_log.py [--rounds 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
from auth import measure, ready
from e2e import example_repo

from featurewell.client import ClientOptions, FeatureClient
from featurewell.devcluster import free_ports, start_local_cluster

MODES = {"off": "0", "1%": "0.01", "100%": "1"}
KINDS = ("single", "ranking")


def run(rounds: int, warmup: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="featurewell-served-log-bench-"))
    data = example_repo(Path(os.environ.get("FEATUREWELL_BENCH_DATA", "/tmp/featurewell-bench")))
    cli = [sys.executable, "-m", "featurewell.cli"]
    with start_local_cluster(3, 1) as cluster:
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        subprocess.run(
            [*cli, "materialize", "--repo", str(data), "--redis", seeds],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        ports = dict(zip(MODES, free_ports(len(MODES)), strict=True))
        common = ["--repo", str(data), "--redis", seeds, "--log-level", "WARNING"]
        common += ["--cache-entries", "0", "--metrics-port", "-1"]
        stores = {mode: folder / f"offline-{n}" for n, mode in enumerate(MODES)}
        servers = [
            subprocess.Popen(
                [
                    *cli,
                    "serve",
                    *common,
                    "--port",
                    str(ports[mode]),
                    "--served-log-rate",
                    rate,
                    "--offline-dir",
                    str(stores[mode]),
                ]
            )
            for mode, rate in MODES.items()
        ]
        try:
            by_mode = {
                mode: FeatureClient(f"127.0.0.1:{ports[mode]}", options=ClientOptions(timeout=5))
                for mode in MODES
            }
            for client in by_mode.values():
                ready(client)
            results = measure(by_mode, rounds, warmup)
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
            for server in servers:
                server.wait(timeout=60)
    for mode, store in stores.items():
        results[f"{mode} logged_rows"] = logged_rows(store)
    return results


def logged_rows(store: Path) -> int:
    served = store / "_served"
    if not served.exists():
        return 0
    return int(ds.dataset(served, format="parquet", partitioning="hive").count_rows())


def report(results: dict[str, Any]) -> None:
    print(
        "\n| logging | kind | p50 ms | p99 ms | p50 / off | p99 / off | service p50 ms |\n"
        "|---|---|---|---|---|---|---|"
    )
    for kind in KINDS:
        off = results[f"off {kind}"]
        for mode in MODES:
            row = results[f"{mode} {kind}"]
            print(
                f"| {mode} | {kind} | {row['p50']:.3f} | {row['p99']:.3f} "
                f"| {row['p50'] / off['p50']:.3f} | {row['p99'] / off['p99']:.3f} "
                f"| {row['service_p50']:.3f} |"
            )
    machine = results["machine"]
    calls = machine["rounds"] + machine["warmup"]
    print(f"\n{machine['late_sends']:.1%} of sends left over 1 ms after their slot")
    for mode in MODES:
        print(f"{mode}: {results[f'{mode} logged_rows']} rows logged over {calls} rounds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="measured rounds (6 calls each)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print("starting a 3+3 Redis Cluster, sample data and three servers...", flush=True)
    results = run(args.rounds, args.warmup)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
