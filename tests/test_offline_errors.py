"""Clear errors instead of silent empty training sets: a missing offline store or source file is
named, label times in the wrong unit are refused with the fix, pandas nanosecond timestamps are
truncated to µs, and the command warns when a view is 100% NOT_FOUND."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurewell.definitions import (
    Entity,
    Feature,
    FeatureView,
    Float64,
    ParquetSource,
    Registry,
    String,
)
from featurewell.errors import ConfigError, InvalidRequest
from featurewell.offline import OfflineStore, get_historical_features
from featurewell.values import NOT_FOUND, PRESENT

T0 = 1_790_000_000_000_000  # µs
rider = Entity("rider", join_keys={"rider_id": String})
rides = FeatureView("rides", entity=rider, features=[Feature("score", Float64, default=-1.0)])


def _history(event_time: int, created: int, score: float) -> pa.Table:
    return pa.table(
        {
            "rider_id": ["r1"],
            "event_time": pa.array([event_time], pa.int64()),
            "created": pa.array([created], pa.int64()),
            "score": [score],
        }
    )


def _labels(times: pa.Array) -> pa.Table:
    return pa.table({"rider_id": ["r1"] * len(times), "event_timestamp": times})


def test_a_missing_offline_store_or_source_file_is_named(tmp_path: Path) -> None:
    registry = Registry.build([rider, rides])
    labels = _labels(pa.array([T0], pa.int64()))
    missing = tmp_path / "ofline"  # a typo
    with pytest.raises(ConfigError, match=f"offline store {missing} does not exist"):
        get_historical_features(registry, labels, ["rides:score"], OfflineStore(missing))
    sourced = FeatureView(
        "trips",
        entity=rider,
        source=ParquetSource(str(tmp_path / "trips.parquet")),
        features=[Feature("score", Float64)],
    )
    registry = Registry.build([rider, sourced])
    with pytest.raises(ConfigError, match=f"ParquetSource {tmp_path / 'trips.parquet'} does not"):
        get_historical_features(registry, labels, ["trips:score"], OfflineStore(tmp_path))


def test_label_times_in_another_unit_are_refused_with_the_fix(tmp_path: Path) -> None:
    registry = Registry.build([rider, rides])
    store = OfflineStore(tmp_path)
    store.write(rides, _history(T0, T0, 1.0))
    for value, unit, fix in (
        (T0 // 1_000_000, "seconds", "multiply by 1,000,000"),
        (T0 // 1_000, "milliseconds", "multiply by 1,000"),
        (T0 * 1_000, "nanoseconds", "divide by 1,000"),
    ):
        with pytest.raises(InvalidRequest, match=f"look like {unit} since the epoch.*{fix}"):
            get_historical_features(
                registry, _labels(pa.array([value], pa.int64())), ["rides:score"], store
            )
    # The same times as typed timestamps of those units are fine: their unit is known.
    for unit, value in (("s", T0 // 1_000_000), ("ms", T0 // 1_000)):
        typed = pa.array([value], pa.int64()).cast(pa.timestamp(unit))
        got = get_historical_features(registry, _labels(typed), ["rides:score"], store)
        assert got.column("rides:score").to_pylist() == [1.0]


def test_nanosecond_timestamps_are_truncated_to_microseconds(tmp_path: Path) -> None:
    registry = Registry.build([rider, rides])
    store = OfflineStore(tmp_path)
    store.write(rides, _history(T0, T0 + 1, 1.0))  # known from T0 + 1 µs
    nanos = [(T0 + 1) * 1000 + 999, (T0 + 1) * 1000, (T0 + 1) * 1000 - 1]
    labels = _labels(pa.array(nanos, pa.timestamp("ns", tz="UTC")))  # as pandas gives them
    got = get_historical_features(registry, labels, ["rides:score"], store)
    assert got.column("rides:score").to_pylist() == [1.0, 1.0, -1.0]
    assert got.column("rides:__status").to_pylist() == [PRESENT, PRESENT, NOT_FOUND]
    assert got.column("event_timestamp").equals(labels.column("event_timestamp"))  # kept as is


REPO = """
from featurewell.definitions import Entity, Feature, FeatureView, Float64, String
rider = Entity("rider", join_keys={"rider_id": String})
rides = FeatureView("rides", entity=rider, features=[Feature("score", Float64, default=-1.0)])
"""


def test_the_command_names_bad_paths_and_warns_of_empty_views(tmp_path: Path) -> None:
    (tmp_path / "repo.py").write_text(REPO)
    OfflineStore(tmp_path / "offline").write(rides, _history(T0, T0, 1.0))
    labels = tmp_path / "labels.parquet"
    pq.write_table(_labels(pa.array([T0 - 1, T0 - 2], pa.int64())), labels)  # before any row

    def command(offline: Path, label_file: Path = labels) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "featurewell.cli", "training-set", "--repo",
             str(tmp_path / "repo.py"), "--offline-dir", str(offline), "--labels",
             str(label_file), "--features", "rides:*", "--out", str(tmp_path / "out.parquet")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    typo = command(tmp_path / "ofline")
    assert typo.returncode == 2
    assert f"offline store {tmp_path / 'ofline'} does not exist" in typo.stderr
    assert "Traceback" not in typo.stderr
    seconds = tmp_path / "seconds.parquet"
    pq.write_table(_labels(pa.array([T0 // 1_000_000], pa.int64())), seconds)
    wrong_unit = command(tmp_path / "offline", seconds)
    assert wrong_unit.returncode == 2
    assert "look like seconds" in wrong_unit.stderr
    assert "Traceback" not in wrong_unit.stderr
    empty = command(tmp_path / "offline")
    assert empty.returncode == 0, empty.stderr
    assert "warning: every rides value is NOT_FOUND" in empty.stdout
    found = tmp_path / "found.parquet"
    pq.write_table(_labels(pa.array([T0, T0 - 1], pa.int64())), found)
    some = command(tmp_path / "offline", found)
    assert some.returncode == 0, some.stderr
    assert "warning" not in some.stdout
