"""`featurewell skew` over 1,000,000 logged rows: the real command (a subprocess), timed.

History: 100,000 users x 12 snapshots of a 10-feature view (int64, float32, float64, string and
an 8-dim embedding), 30 days. The served-feature log: 1,000,000 records (calls of 100 users)
logged at random times in those 30 days, holding what the point-in-time join returns there
(that is, what a server serving that history answered), except one feature skewed in 5% of
the rows, so the run has something to find. Records are written in the served-log layout
(offline/served.py), 10 files per day.

    python bench/skew.py [--rows 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurewell.definitions import Registry, load_repo
from featurewell.offline import OfflineStore, get_historical_features, served

DAY_US = 86_400_000_000
START = 1_790_000_000_000_000
USERS = 100_000
REPO = """
from featurewell.definitions import Embedding, Entity, Feature, FeatureView, Float32, Float64
from featurewell.definitions import Int64, String

user = Entity("user", join_keys={"user_id": String})
ranker_stats = FeatureView(
    "ranker_stats",
    entity=user,
    features=[
        Feature("clicks_7d", Int64), Feature("views_7d", Int64), Feature("orders_30d", Int64),
        Feature("ctr_7d", Float32), Feature("ctr_30d", Float32), Feature("spend_30d", Float64),
        Feature("recency_h", Float64), Feature("segment", String, default="-"),
        Feature("country", String, default="-"), Feature("taste", Embedding(8)),
    ],
)
"""


def history(rng: np.random.Generator, snapshots: int) -> pa.Table:
    rows = USERS * snapshots
    times = START + rng.integers(0, 30 * DAY_US, rows)
    users = pa.array([f"u{n:07d}" for n in range(USERS)])
    return pa.table(
        {
            "user_id": pa.concat_arrays([users] * snapshots),
            "event_time": pa.array(times, pa.int64()),
            "created": pa.array(times + rng.integers(0, 60_000_000, rows), pa.int64()),
            "clicks_7d": rng.integers(0, 100, rows),
            "views_7d": rng.integers(0, 1000, rows),
            "orders_30d": rng.integers(0, 10, rows),
            "ctr_7d": rng.random(rows).astype(np.float32),
            "ctr_30d": rng.random(rows).astype(np.float32),
            "spend_30d": rng.random(rows) * 500,
            "recency_h": rng.random(rows) * 720,
            "segment": pa.array(
                np.array(["new", "casual", "loyal", "vip"])[rng.integers(0, 4, rows)]
            ),
            "country": pa.array(np.array(["de", "fr", "us", "in", "br"])[rng.integers(0, 5, rows)]),
            "taste": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.random(rows * 8).astype(np.float32)), 8
            ),
        }
    )


def served_log(rng: np.random.Generator, root: Path, registry: Registry, rows: int) -> None:
    """What servers answered: the point-in-time values at each logging time, 5% of ctr_7d
    skewed (+10%), written in the served-log layout."""
    store = OfflineStore(root)
    logged_at = np.sort(START + DAY_US + rng.integers(0, 29 * DAY_US, rows))
    labels = pa.table(
        {
            "user_id": pa.array([f"u{n:07d}" for n in rng.integers(0, USERS, rows)]),
            "ts": pa.array(logged_at, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }
    )
    answer = get_historical_features(
        registry, labels, ["ranker_stats:*"], store, timestamp_column="ts"
    )
    skewed = rng.random(rows) < 0.05
    ctr = np.asarray(answer.column("ranker_stats:ctr_7d").to_numpy(), np.float32).copy()
    ctr[skewed] *= 1.1
    status = answer.column("ranker_stats:__status")
    found = np.asarray(pc.equal(status, 1).to_numpy(zero_copy_only=False), bool)
    values = {
        n.split(":")[1]: answer.column(n)
        for n in answer.column_names
        if n.startswith("ranker_stats:") and not n.endswith("__status")
    }
    table = pa.table(
        {
            "request_id": pa.array([f"{n // 100:032x}" for n in range(rows)]),
            "logged_at_us": pa.array(logged_at, pa.int64()),
            "caller": pa.array(["ranker"] * rows),
            "principal": pa.array([""] * rows),
            "row": pa.array(np.arange(rows) % 100, pa.int32()),
            "event_time": pa.array(np.where(found, logged_at - 1, 0), pa.int64()),
            "status": status,
            "version": pa.array(np.ones(rows, np.int32)),
            "user_id": labels.column("user_id"),
            **values,
            "ctr_7d": pa.array(ctr),
        }
    )
    days = logged_at // DAY_US
    view = registry.views[("ranker_stats", 1)]
    for day in np.unique(days).tolist():
        date = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d")
        folder = served.view_folder(root, view) / f"date={date}"
        folder.mkdir(parents=True)
        part = table.filter(pa.array(days == day))
        for n, chunk in enumerate(np.array_split(np.arange(part.num_rows), 10)):
            pq.write_table(part.take(pa.array(chunk)), folder / f"{n:016d}-bench.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "offline"
        repo = Path(folder) / "repo.py"
        repo.write_text(textwrap.dedent(REPO))
        registry = load_repo(str(repo))
        OfflineStore(root).write(registry.views[("ranker_stats", 1)], history(rng, 12))
        served_log(rng, root, registry, args.rows)
        command = [
            sys.executable,
            "-m",
            "featurewell.cli",
            "skew",
            "--repo",
            str(repo),
            "--offline-dir",
            str(root),
            "--since",
            str(START),
            "--until",
            str(START + 31 * DAY_US),
        ]
        print("$ featurewell " + " ".join(command[3:]))
        times = []
        for run in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - started)
            if run == 0:
                print(done.stdout)
            print(f"run {run + 1}: {times[-1]:.1f} s")
        print(
            f"median of {args.runs}: {statistics.median(times):.1f} s over {args.rows:,} logged "
            f"rows x 10 features (min {min(times):.1f} s, max {max(times):.1f} s)"
        )


if __name__ == "__main__":
    main()
