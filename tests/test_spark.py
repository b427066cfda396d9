"""The spark engine beyond the shared parity tests (tests/test_training*.py run on both engines):
a pruned and compacted store read by Spark equals DuckDB reading every file, and
`training-set --engine spark` through the command."""

from __future__ import annotations

import subprocess
import sys
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
    store = OfflineStore(tmp_path)
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
    labels = pa.table({"rider_id": ["a", "a", "a", "b"], "at": pa.array([t - 1, t, t + 20, t])})
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
    table = pq.read_table(tmp_path / "train.parquet").to_pydict()
    assert table["rides:score"] == [-1.0, 1.0, 2.0, -1.0]
    assert table["rides:__status"] == [2, 1, 1, 2]
    misused = subprocess.run(
        [*command, "--spark-master", "local[1]"], capture_output=True, text=True, timeout=60
    )
    assert misused.returncode == 2
    assert "--spark-master is for --engine spark" in misused.stderr
