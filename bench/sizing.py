"""Redis memory per million entities, measured: the example repo's views loaded into a local
3-master cluster, `used_memory` summed over the masters before and after each view.

    python bench/sizing.py [--users 200000] [--items 50000]

Per view it reports bytes per row (key + positional row + Redis overhead) and GiB per million
entities, the figure docs/deploy.md sizes clusters with. Replicas double it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from featurewell.devcluster import call, start_local_cluster

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "streaming_media"
VIEWS = [
    "user_activity",
    "user_genre_preferences",
    "item_stats",
    "item_genre",
    "user_item_watch_progress",
]


def used_memory(ports: list[int]) -> int:
    total = 0
    for port in ports:
        info = call(port, "INFO", "memory").decode()
        total += int(
            next(
                line.split(":")[1] for line in info.splitlines() if line.startswith("used_memory:")
            )
        )
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/featurewell-sizing"))
    args = parser.parse_args()
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "generate.py"),
            "--users",
            str(args.users),
            "--items",
            str(args.items),
            "--out",
            str(args.data / "data"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (args.data / "repo.py").write_bytes((EXAMPLE / "repo.py").read_bytes())
    print("| view | rows | bytes per row | GiB per million entities |\n|---|---|---|---|")
    with start_local_cluster(3, 0) as cluster:
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        for view in VIEWS:
            rows = pq.read_metadata(args.data / "data" / f"{view}.parquet").num_rows
            before = used_memory(cluster.masters)
            load = [
                sys.executable,
                "-m",
                "featurewell.cli",
                "materialize",
                "--repo",
                str(args.data),
                "--redis",
                seeds,
                "--views",
                view,
            ]
            subprocess.run(load, check=True, capture_output=True)
            per_row = (used_memory(cluster.masters) - before) / rows
            print(f"| {view} | {rows:,} | {per_row:.0f} | {per_row * 1e6 / 2**30:.3f} |")


if __name__ == "__main__":
    main()
