"""What a /metrics scrape costs the calls beside it, with CPython's 5 ms GIL turns and with the
server's default (`gil_switch_interval_ms`, 0.5).

prometheus_client renders /metrics in a thread of the server's process: ~10-15 ms of Python
holding the GIL (70 KB of text at the example's series). Meanwhile the event loop, which answers
every call, waits for the GIL, for up to the switch interval at a time. This bench serves the
example repo from two `featurewell serve` processes on one core (a local 3-master cluster), one
per setting, and sends each single-entity calls on an open-loop schedule from another core,
timed from each call's scheduled send (so time queued behind a stall counts), while a separate
process scrapes that server's /metrics every `--scrape-every` seconds. Servers take turns in
rounds, so machine noise hits both alike. Calls are split by whether they overlapped a scrape.

    python bench/scrape.py [--rounds 6] [--seconds 5] [--rate 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from e2e import SINGLE, USERS, example_repo

from featurewell.client import FeatureClient
from featurewell.devcluster import free_ports, start_local_cluster

CONFIGS = {"CPython's 5 ms": "5", "0.5 ms (default)": "0.5"}

SCRAPER = """
import sys, time, urllib.request
url, every, start, until = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
time.sleep(max(0.0, start - time.monotonic()))
while time.monotonic() < until:
    start = time.monotonic()
    urllib.request.urlopen(url, timeout=10).read()
    print(start, time.monotonic(), flush=True)
    time.sleep(every)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0, help="per server and round")
    parser.add_argument("--rate", type=float, default=200.0, help="single calls per second")
    parser.add_argument("--scrape-every", type=float, default=0.25)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print("starting a 3-master Redis Cluster and generating sample data...", flush=True)
    data = example_repo(Path(os.environ.get("FEATUREWELL_BENCH_DATA", "/tmp/featurewell-bench")))
    with start_local_cluster(3, 0) as cluster:
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        results = run(seeds, data, args)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def run(seeds: str, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    cli = [sys.executable, "-m", "featurewell.cli"]
    subprocess.run(
        [*cli, "materialize", "--repo", str(repo), "--redis", seeds],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    servers: dict[str, tuple[subprocess.Popen[bytes], str, str]] = {}
    calls: dict[str, list[tuple[float, float]]] = {name: [] for name in CONFIGS}
    scrapes: dict[str, list[tuple[float, float]]] = {name: [] for name in CONFIGS}
    try:
        for name, interval in CONFIGS.items():
            port, metrics_port = free_ports(2)
            command = [
                *cli,
                *("serve", "--repo", str(repo), "--redis", seeds, "--log-level", "WARNING"),
                *("--port", str(port), "--metrics-port", str(metrics_port)),
                *("--gil-switch-interval-ms", interval),
            ]
            # Both started before this process has any gRPC thread: preexec_fn runs in the
            # forked child, which must not inherit a thread that holds a lock.
            process = subprocess.Popen(command, preexec_fn=lambda: _pin(0))
            address = f"127.0.0.1:{port}"
            servers[name] = (process, address, f"http://127.0.0.1:{metrics_port}/metrics")
        for _, address, _ in servers.values():
            grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=60)
        _pin(1)
        rng = random.Random(7)
        for _ in range(args.rounds):
            for name, (_, address, url) in servers.items():
                with FeatureClient(address, timeout=5) as client:
                    users = [f"u{rng.randrange(USERS):06d}" for _ in range(2000)]
                    for user in users[:200]:  # warm: channel, kept answers
                        client.get_features(SINGLE, entities={"user_id": [user]})
                    timed, scraped = _window(client, url, users, args)
                calls[name] += timed
                scrapes[name] += scraped
    finally:
        for process, _, _ in servers.values():
            process.send_signal(signal.SIGTERM)
        for process, _, _ in servers.values():
            process.wait(timeout=30)
    return {name: _figures(calls[name], scrapes[name]) for name in CONFIGS}


def _window(
    client: FeatureClient, url: str, users: list[str], args: argparse.Namespace
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """One server's turn: open-loop calls for `args.seconds` while another process scrapes.
    Returns (due, latency) per call and (start, end) per scrape, on the monotonic clock."""
    # The scraper's interpreter starts well before the window: on the client's core, its
    # start-up would delay the first calls.
    start = time.monotonic() + 1.0
    until = start + args.seconds
    scraper = subprocess.Popen(
        [sys.executable, "-c", SCRAPER, url, str(args.scrape_every), str(start), str(until)],
        stdout=subprocess.PIPE,
        text=True,
    )
    timed = []
    for i in range(int(args.seconds * args.rate)):
        due = start + i / args.rate
        while (now := time.monotonic()) < due:
            time.sleep(min(due - now, 0.0002))
        client.get_features(SINGLE, entities={"user_id": [users[i % len(users)]]})
        timed.append((due, time.monotonic() - due))
    out, _ = scraper.communicate(timeout=30)
    scraped = [(float(a), float(b)) for a, b in (line.split() for line in out.splitlines())]
    return timed, scraped


def _figures(
    timed: list[tuple[float, float]], scraped: list[tuple[float, float]]
) -> dict[str, Any]:
    due = np.array([d for d, _ in timed])
    latency = np.array([t for _, t in timed]) * 1000
    ends = due + latency / 1000
    overlapped = np.zeros(len(due), dtype=bool)
    for a, b in scraped:
        overlapped |= (due < b) & (ends > a)
    figures: dict[str, Any] = {
        "scrapes": len(scraped),
        "scrape_ms_p50": float(np.median([(b - a) * 1000 for a, b in scraped])),
    }
    for label, mask in (("beside a scrape", overlapped), ("no scrape", ~overlapped)):
        values = latency[mask]
        figures[label] = {
            "calls": int(mask.sum()),
            **{f"p{q}": float(np.percentile(values, q)) for q in (50, 99)},
            "max": float(values.max()),
        }
    return figures


def report(results: dict[str, Any]) -> None:
    print(
        "\n| GIL turns | scrapes (p50 ms) | calls | beside a scrape p50 / p99 / max ms |"
        " no scrape p50 / p99 ms |"
    )
    print("|---|---|---|---|---|")
    for name, f in results.items():
        near, far = f["beside a scrape"], f["no scrape"]
        print(
            f"| {name} | {f['scrapes']} ({f['scrape_ms_p50']:.1f}) | {near['calls']} / "
            f"{near['calls'] + far['calls']} | {near['p50']:.2f} / {near['p99']:.2f} / "
            f"{near['max']:.2f} | {far['p50']:.2f} / {far['p99']:.2f} |"
        )


if __name__ == "__main__":
    main()
