"""Training-set throughput: `get_historical_features` for 1,000,000 label rows x 20 features
from the offline store, against a plain DuckDB ASOF join of the same history (the floor: no
compare-and-set rule, no availability time, no defaults or statuses).

History: 100,000 users x 12 snapshots (10 features) and 20,000 items x 30 snapshots
(10 features), 30 days; labels are random (user, item, time) rows in the same 30 days.

    python bench/training.py [--labels 1000000] [--runs 3] [--engine duckdb|spark|spark-frame]

spark: `get_historical_features(engine="spark")`, labels from and the result to the driver;
spark-frame: `training_frame`, labels read and the result written by Spark.

`--case prune`: an offline store that stays fast. 90 days of history written as a stream
writes it (one small file per view per hour: 2,160 files each), labels over the last 7 days;
training sets read everything (`prune=False`) or only what the labels need, before and after
`compact` (merged partitions plus the as-of snapshot at the labels' first day).

    python bench/training.py --case prune [--labels 200000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurewell.definitions import Entity, Feature, FeatureView, Float32, Int64, Registry, String
from featurewell.offline import OfflineStore, get_historical_features, partitions
from featurewell.offline.compact import compact

DAY_US = 86_400_000_000
START = 1_790_000_000_000_000
user = Entity("user", join_keys={"user_id": String})
item = Entity("item", join_keys={"item_id": Int64})
users_view = FeatureView(
    "user_stats",
    entity=user,
    max_age=None,
    features=[Feature(f"u{n}", Float32 if n % 2 else Int64) for n in range(10)],
)
items_view = FeatureView(
    "item_stats",
    entity=item,
    features=[Feature(f"i{n}", Float32 if n % 2 else Int64) for n in range(10)],
)
REGISTRY = Registry.build([user, item, users_view, items_view])
FEATURES = ["user_stats:*", "item_stats:*"]


def history(
    rng: np.random.Generator, view: FeatureView, keys: pa.Array, snapshots: int
) -> pa.Table:
    rows = len(keys) * snapshots
    times = START + rng.integers(0, 30 * DAY_US, rows)
    columns: dict[str, pa.Array] = {
        view.entity.key_names[0]: pa.concat_arrays([keys] * snapshots),
        "event_time": pa.array(times, pa.int64()),
        "created": pa.array(times + rng.integers(0, 60_000_000, rows), pa.int64()),
    }
    for feature in view.features:
        values = rng.random(rows) * 100
        columns[feature.name] = pa.array(
            values.astype(np.float32)
            if feature.dtype.element_dtype == np.float32
            else values.astype(np.int64)
        )
    return pa.table(columns)


def floor(store: OfflineStore, labels: pa.Table) -> float:
    """The same joins as a bare ASOF join on event time per view."""
    started = time.perf_counter()
    con = duckdb.connect()
    con.register("labels", labels)
    for view, key in ((users_view, "user_id"), (items_view, "item_id")):
        files = [str(p) for p in store.folder(view).glob("date=*/*.parquet")]
        con.sql(
            f"""SELECT h.* FROM labels l ASOF LEFT JOIN read_parquet(?) h
                ON l.{key} = h.{key} AND epoch_us(l.event_timestamp) >= h.event_time""",
            params=[files],
        ).to_arrow_table()
    con.close()
    return time.perf_counter() - started


def hourly(
    rng: np.random.Generator, view: FeatureView, keys: pa.Array, days: int
) -> list[pa.Table]:
    """`days` of history as a stream writes it: one small table per hour, each key updated
    about once a day at a random time."""
    out = []
    for hour in range(days * 24):
        chosen = keys.take(pa.array(rng.integers(0, len(keys), len(keys) // 24)))
        table = history(rng, view, chosen, 1)
        times = DAY_START + hour * 3_600_000_000 + rng.integers(0, 3_600_000_000, len(chosen))
        table = table.set_column(1, "event_time", pa.array(times, pa.int64()))
        created = times + rng.integers(0, 60_000_000, len(chosen))
        out.append(table.set_column(2, "created", pa.array(created, pa.int64())))
    return out


DAY_START = START // DAY_US * DAY_US


def prune_case(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    days = 90
    user_ids = pa.array([f"u{n:07d}" for n in range(20_000)])
    item_ids = pa.array(np.arange(5_000, dtype=np.int64))
    with tempfile.TemporaryDirectory() as folder:
        store = OfflineStore(folder)
        started = time.perf_counter()
        for view, keys in ((users_view, user_ids), (items_view, item_ids)):
            for table in hourly(rng, view, keys, days):
                store.write(view, table)
        files = sum(1 for _ in store.root.glob("*/v1/date=*/*.parquet"))
        print(
            f"history: {days} days, {files:,} files, "
            f"written in {time.perf_counter() - started:.0f} s"
        )
        first = DAY_START + (days - 7) * DAY_US
        labels = pa.table(
            {
                "user_id": user_ids.take(pa.array(rng.integers(0, len(user_ids), args.labels))),
                "item_id": item_ids.take(pa.array(rng.integers(0, len(item_ids), args.labels))),
                "event_timestamp": pa.array(
                    first + rng.integers(0, 7 * DAY_US, args.labels), pa.int64()
                ),
            }
        )

        def measure(name: str, prune: bool, reference: pa.Table | None) -> pa.Table:
            seconds = []
            for _ in range(args.runs):
                started = time.perf_counter()
                table = get_historical_features(REGISTRY, labels, FEATURES, store, prune=prune)
                seconds.append(time.perf_counter() - started)
            same = "" if reference is None else f", same as unpruned: {table.equals(reference)}"
            shown = ", ".join(f"{s:.2f}" for s in seconds)
            print(f"{name}: {shown} s, median {statistics.median(seconds):.2f} s{same}")
            return table

        reference = measure("before compaction, every file", False, None)
        measure("before compaction, pruned", True, reference)
        started = time.perf_counter()
        for view in (users_view, items_view):
            done = compact(store, view, partitions.date_of(first), settle_s=0)
            print(
                f"compact {view.name}: {done.files_in:,} files -> {done.files_out:,}, snapshot "
                f"{done.snapshot_rows:,} rows"
            )
        print(f"compaction took {time.perf_counter() - started:.1f} s")
        measure("after compaction, every file", False, reference)
        measure("after compaction, pruned", True, reference)


def frames(args: argparse.Namespace, store: OfflineStore, labels: pa.Table, folder: str) -> None:
    """`training_frame`: labels as a DataFrame (from Parquet, as a cluster job reads them), the
    result written by Spark as Parquet; nothing goes through the driver."""
    from featurewell.offline.spark import session
    from featurewell.offline.spark_frame import training_frame

    spark = session(args.spark_master)
    labels_path = f"{folder}/labels.parquet"
    pq.write_table(labels, labels_path)
    seconds = []
    for run in range(args.runs + 1):  # the first run warms the session up, not counted
        started = time.perf_counter()
        frame, _ = training_frame(REGISTRY, spark.read.parquet(labels_path), FEATURES, store)
        frame.write.mode("overwrite").parquet(f"{folder}/out")
        if run:
            seconds.append(time.perf_counter() - started)
            print(f"run {run}: {args.labels:,} rows x 20 features in {seconds[-1]:.2f} s")
    median, cores = statistics.median(seconds), os.cpu_count() or 1
    print(
        f"spark-frame: median of {args.runs}: {median:.2f} s ({args.labels / median:,.0f} rows/s, "
        f"{args.labels / median / cores:,.0f} rows/s per core on {cores})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--case", choices=["join", "prune"], default="join")
    parser.add_argument("--engine", choices=["duckdb", "spark", "spark-frame"], default="duckdb")
    parser.add_argument("--spark-master", help="with --engine spark (default: local[*])")
    args = parser.parse_args()
    if args.case == "prune":
        prune_case(args)
        return
    rng = np.random.default_rng(0)
    user_ids = pa.array([f"u{n:07d}" for n in range(100_000)])
    item_ids = pa.array(np.arange(20_000, dtype=np.int64))
    with tempfile.TemporaryDirectory() as folder:
        store = OfflineStore(folder)
        store.write(users_view, history(rng, users_view, user_ids, 12))
        store.write(items_view, history(rng, items_view, item_ids, 30))
        labels = pa.table(
            {
                "user_id": user_ids.take(pa.array(rng.integers(0, 100_000, args.labels))),
                "item_id": item_ids.take(pa.array(rng.integers(0, 20_000, args.labels))),
                "event_timestamp": pa.array(
                    START + rng.integers(0, 30 * DAY_US, args.labels), pa.int64()
                ).cast(pa.timestamp("us", tz="UTC")),
            }
        )
        if args.engine == "spark-frame":
            frames(args, store, labels, folder)
            return
        engine = {"engine": args.engine, "spark_master": args.spark_master}
        if args.engine == "spark":  # start the session first: seconds, once per process
            started = time.perf_counter()
            get_historical_features(REGISTRY, labels.slice(0, 10), FEATURES, store, **engine)
            print(f"spark session started and warmed up in {time.perf_counter() - started:.1f} s")
        ours, floors = [], []
        for run in range(args.runs):
            floors.append(floor(store, labels))
            started = time.perf_counter()
            table = get_historical_features(REGISTRY, labels, FEATURES, store, **engine)
            ours.append(time.perf_counter() - started)
            present = [
                pc.sum(pc.equal(table.column(f"{v}:__status"), 1)).as_py() / table.num_rows
                for v in ("user_stats", "item_stats")
            ]
            print(
                f"run {run + 1}: {table.num_rows:,} rows x 20 features in {ours[-1]:.2f} s "
                f"({table.num_rows / ours[-1]:,.0f} rows/s; present: users {present[0]:.0%}, "
                f"items {present[1]:.0%}); bare ASOF joins {floors[-1]:.2f} s"
            )
        median, base = statistics.median(ours), statistics.median(floors)
        cores = os.cpu_count() or 1
        print(
            f"{args.engine}: median of {args.runs}: {median:.2f} s ({args.labels / median:,.0f} "
            f"rows/s, {args.labels / median / cores:,.0f} rows/s per core on {cores}), "
            f"{median / base:.2f}x the bare joins ({base:.2f} s); aim: under 30 s"
        )


if __name__ == "__main__":
    main()
