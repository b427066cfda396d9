"""Training-set throughput: `get_historical_features` for 1,000,000 label rows x 20 features
from the offline store, against a plain DuckDB ASOF join of the same history (the floor: no
compare-and-set rule, no availability time, no defaults or statuses).

History: 100,000 users x 12 snapshots (10 features) and 20,000 items x 30 snapshots
(10 features), 30 days; labels are random (user, item, time) rows in the same 30 days.

    python bench/training.py [--labels 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurewell.definitions import Entity, Feature, FeatureView, Float32, Int64, Registry, String
from featurewell.offline import OfflineStore, get_historical_features

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
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
        ours, floors = [], []
        for run in range(args.runs):
            floors.append(floor(store, labels))
            started = time.perf_counter()
            table = get_historical_features(REGISTRY, labels, FEATURES, store)
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
        print(
            f"median of {args.runs}: {median:.2f} s ({args.labels / median:,.0f} rows/s), "
            f"{median / base:.2f}x the bare joins ({base:.2f} s); aim: under 30 s"
        )


if __name__ == "__main__":
    main()
