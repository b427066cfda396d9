"""The spark engine beyond the shared parity tests (tests/test_training*.py run on both engines):
a pruned and compacted store read by Spark equals DuckDB reading every file, and
`training-set --engine spark` through the command."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurewell.offline import OfflineStore, get_historical_features
from featurewell.offline import partitions as layout
from featurewell.offline.compact import compact
from tests.test_compact import REGISTRY, START, _labels, _random_history, view

pytestmark = pytest.mark.spark


def test_spark_on_a_pruned_compacted_store_equals_duckdb_on_every_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    store = OfflineStore(tmp_path / "odd +name %20 é")  # Spark sees paths as URIs
    _random_history(store, rng, 120, 0.0)
    labels = _labels(rng, 300)
    compact(store, view, layout.date_of(START), settle_s=0)
    _random_history(store, rng, 20, 500.0)  # files the snapshot does not cover
    full = get_historical_features(REGISTRY, labels, ["rides:score"], store, prune=False)
    spark = get_historical_features(REGISTRY, labels, ["rides:score"], store, engine="spark")
    assert spark.equals(full)
    assert set(full.column("rides:__status").to_pylist()) == {1, 2, 3}


REPO = """
from featurewell.definitions import Entity, Feature, FeatureView, Float64, String
rider = Entity("rider", join_keys={"rider_id": String})
rides = FeatureView("rides", entity=rider, features=[Feature("score", Float64, default=-1.0)])
"""


def test_the_command_with_engine_spark(tmp_path: Path) -> None:
    (tmp_path / "repo.py").write_text(REPO)
    store = OfflineStore(tmp_path / "offline")
    t = START
    history = {"rider_id": ["a", "a"], "event_time": pa.array([t, t + 10]),
               "created": pa.array([t, t + 20]), "score": [1.0, 2.0]}  # fmt: skip
    store.write(view, pa.table(history))
    labels = pa.table(
        {
            "rider_id": ["a", "a", "a", "b"],
            "at": pa.array([t - 1, t, t + 20, t]),
            "id": [0, 1, 2, 3],
        }
    )
    pq.write_table(labels, tmp_path / "labels.parquet")
    command = [sys.executable, "-m", "featurewell.cli", "training-set", "--repo",
               str(tmp_path / "repo.py"), "--offline-dir", str(tmp_path / "offline"),
               "--labels", str(tmp_path / "labels.parquet"), "--features", "rides:score",
               "--timestamp-column", "at", "--out", str(tmp_path / "train.parquet")]  # fmt: skip
    done = subprocess.run(
        [*command, "--engine", "spark", "--spark-master", "local[1]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "4 rows x 1 features" in done.stdout
    assert "rides v1 (highest in the repo, no promoted defaults given): present 2" in done.stdout
    # A folder of Parquet files written by Spark, in no particular order; versions beside.
    table = pq.read_table(tmp_path / "train.parquet").sort_by("id").to_pydict()
    recorded = json.loads((tmp_path / "train.parquet" / "_featurewell_versions.json").read_text())
    assert recorded["rides"]["version"] == 1
    assert table["rides:score"] == [-1.0, 1.0, 2.0, -1.0]
    assert table["rides:__status"] == [2, 1, 1, 2]
    (tmp_path / "elsewhere").mkdir()
    kept = subprocess.run(
        [*command[:-1], str(tmp_path / "elsewhere"), "--engine", "spark"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert kept.returncode == 2
    assert "is not an earlier Spark output" in kept.stderr
    misused = subprocess.run(
        [*command, "--spark-master", "local[1]"], capture_output=True, text=True, timeout=60
    )
    assert misused.returncode == 2
    assert "--spark-master is for --engine spark" in misused.stderr


def test_training_frame_dataframes_in_and_out_agree_with_duckdb(tmp_path: Path) -> None:
    """The adversarial case of tests/test_training.py, labels as a Spark DataFrame, the result a
    DataFrame finished on the executors: the same cells as DuckDB's table."""
    from featurewell.definitions import Registry
    from featurewell.offline.spark import session
    from featurewell.offline.spark_frame import training_frame
    from tests.test_training import DAY_US, _history, _views, rider

    view, boost = _views("rides", max_age=timedelta(days=1))
    registry = Registry.build([rider, view, boost])
    store = OfflineStore(tmp_path)
    t0 = 10 * DAY_US
    first = [("r1", t0 + 100, t0 + 100, 1.0), ("r1", t0 + 200, t0 + 300, 2.0),
             ("r1", t0 + 150, t0 + 400, 3.0), ("r3", t0 + 1000, t0 + 100, 9.0)]  # fmt: skip
    store.write(view, _history(first))
    store.write(view, _history([("r1", t0 + 200, t0 + 300, 6.0)]))
    times = [t0 + 50, t0 + 100, t0 + 250, t0 + 300, t0 + 450, t0 + 300 + DAY_US, t0 + 999,
             t0 + 1000, t0 + 5000]  # fmt: skip
    riders = ["r1"] * 6 + ["r3", "r3", "r2"]
    labels = pa.table(
        {
            "rider_id": riders,
            "event_timestamp": pa.array(times, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "bonus": [0.5] * len(times),
            "label": list(range(len(times))),
        }
    )
    features = ["rides:*", "rides_boost:boosted"]
    expected = get_historical_features(registry, labels, features, store).to_pydict()
    spark = session()
    frame, used = training_frame(registry, spark.createDataFrame(labels), features, store)
    got = frame.toArrow().sort_by("label").to_pydict()
    assert list(got) == list(expected)
    for name, values in expected.items():
        if name == "event_timestamp":
            continue
        assert got[name] == values, name
    assert set(got["rides:__status"]) == {1, 2, 3}
    assert used["rides"]["version"] == 1
