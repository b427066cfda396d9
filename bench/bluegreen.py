"""Serving latency while a new version is backfilled beside the one serving (blue/green), against
the same server without a backfill, measured in alternating windows of one run.

The example repo gets a `user_activity` v2 (v1's features and a 14-day count). During the "backfill"
windows, `featurewell backfill --max-rows-per-second R` fills v2 (and rewrites v1 with the same
values) from the 30-day watch log, in a loop. Throughout, a probe calls GetFeatures for one user
(the model-server call) at a fixed rate, reading v1 (pinned, as a model trained on it would).

    python bench/bluegreen.py [--users 20000] [--rate 200] [--seconds 15] [--rounds 3]
        [--max-rows-per-second 20000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from featurewell.client import ClientOptions, FeatureClient
from featurewell.devcluster import free_ports, start_local_cluster

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "streaming_media"
V2 = """

user_activity_v2 = FeatureView(
    "user_activity", entity=user, version=2, max_age=timedelta(days=2), events=watches,
    tile=timedelta(hours=1),
    features=[*user_activity.features,  # the transforms read the default version's features
              Feature("watch_count_14d", Int64, computed=Count(window=timedelta(days=14)))],
)
"""


def probe(address: str, rate: float, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    """(monotonic time, latency ms) of one-user calls at `rate` per second."""
    rng = np.random.default_rng(0)
    with FeatureClient(address, options=ClientOptions(read_attempts=1)) as client:
        started = time.monotonic()
        sent = 0
        while not stop.is_set():
            user = f"u{int(rng.integers(20_000)):06d}"
            began = time.perf_counter()
            client.get_features(
                ["user_activity@v1:*", "user_genre_preferences:*"], entities={"user_id": [user]}
            )
            out.append((time.monotonic(), (time.perf_counter() - began) * 1000))
            sent += 1
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-rows-per-second", type=float, default=20_000)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "featurewell.cli"]
    with tempfile.TemporaryDirectory() as folder, start_local_cluster(3) as cluster:
        repo = Path(folder)
        shutil.copy(EXAMPLE / "generate.py", repo / "generate.py")
        (repo / "repo.py").write_text((EXAMPLE / "repo.py").read_text() + V2)
        subprocess.run(
            [
                sys.executable,
                str(repo / "generate.py"),
                "--users",
                str(args.users),
                "--items",
                "2000",
                "--out",
                str(repo / "data"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        common = ["--repo", str(repo / "repo.py"), "--redis", seeds]
        print("loading the example (catalog, computed views) ...", flush=True)
        subprocess.run(
            [*cli, "materialize", *common],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        (port,) = free_ports(1)
        server = subprocess.Popen(
            [
                *cli,
                "serve",
                *common,
                "--port",
                str(port),
                "--metrics-port",
                "-1",
                "--log-level",
                "WARNING",
            ]
        )
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        try:
            time.sleep(3)
            thread = threading.Thread(
                target=probe, args=(f"127.0.0.1:{port}", args.rate, stop, samples)
            )
            thread.start()
            time.sleep(2)  # warm-up
            windows: list[tuple[str, float, float]] = []
            backfills = 0
            for _ in range(args.rounds):
                for kind in ("idle", "backfill"):
                    began = time.monotonic()
                    while time.monotonic() - began < args.seconds:
                        if kind == "idle":
                            time.sleep(0.1)
                            continue
                        subprocess.run(
                            [
                                *cli,
                                "backfill",
                                *common,
                                "--source",
                                "watches",
                                "--max-rows-per-second",
                                str(args.max_rows_per_second),
                                "--group",
                                "",
                            ],
                            check=True,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        backfills += 1
                    windows.append((kind, began, time.monotonic()))
            stop.set()
            thread.join()
        finally:
            server.terminate()
            server.wait(timeout=30)
        figures: dict[str, list[tuple[float, float]]] = {"idle": [], "backfill": []}
        print(f"{backfills} backfills ran; probe at {args.rate:.0f} calls/s")
        for n, (kind, began, ended) in enumerate(windows):
            latencies = [ms for at, ms in samples if began <= at < ended]
            p50, p99 = np.percentile(latencies, [50, 99])
            figures[kind].append((float(p50), float(p99)))
            print(
                f"window {n + 1} ({kind}): {len(latencies):,} calls, p50 {p50:.2f} ms, "
                f"p99 {p99:.2f} ms"
            )
        idle99 = statistics.median(p for _, p in figures["idle"])
        busy99 = statistics.median(p for _, p in figures["backfill"])
        idle50 = statistics.median(p for p, _ in figures["idle"])
        busy50 = statistics.median(p for p, _ in figures["backfill"])
        print(
            f"median over windows: without a backfill p50 {idle50:.2f} / p99 {idle99:.2f} ms; "
            f"during one p50 {busy50:.2f} / p99 {busy99:.2f} ms "
            f"({busy99 / idle99:.2f}x p99)"
        )


if __name__ == "__main__":
    main()
