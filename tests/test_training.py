"""Point-in-time training sets: adversarial timestamps by hand, and a replay against the real
online store (a real cluster, a real server): for every label, the training set holds exactly
what GetFeatures answered at that moment of the replay."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from featurewell.client import FeatureClient
from featurewell.definitions import (
    Embedding,
    Entity,
    Feature,
    FeatureView,
    Float64,
    Registry,
    String,
    load_repo,
    on_demand,
)
from featurewell.devcluster import LocalCluster
from featurewell.errors import InvalidRequest, UnknownFeature
from featurewell.offline import OfflineStore, get_historical_features, versions
from featurewell.values import NOT_FOUND, PRESENT, STALE
from tests.tools import ServerThread, make_settings

DAY_US = 86_400_000_000
rider = Entity("rider", join_keys={"rider_id": String})


def _views(name: str, max_age: timedelta | None) -> tuple[FeatureView, Any]:
    view = FeatureView(
        name,
        entity=rider,
        max_age=max_age,
        features=[
            Feature("score", Float64, default=-1.0),
            Feature("tier", String, default="-"),
            Feature("taste", Embedding(2)),
        ],
    )

    @on_demand(
        inputs={"score": f"{name}:score"},
        context={"bonus": Float64},
        outputs=[Feature("boosted", Float64)],
        name=f"{name}_boost",
    )
    def boost(x: Any) -> Any:
        return {"boosted": x["score"] * 2 + x["bonus"]}

    return view, boost


def _history(rows: list[tuple[str, int, int, float]]) -> pa.Table:
    """(rider, event time, created, score) rows; tier and taste follow the score."""
    return pa.table(
        {
            "rider_id": [r[0] for r in rows],
            "event_time": pa.array([r[1] for r in rows], pa.int64()),
            "created": pa.array([r[2] for r in rows], pa.int64()),
            "score": [r[3] for r in rows],
            "tier": [f"t{int(r[3])}" for r in rows],
            "taste": pa.FixedSizeListArray.from_arrays(
                pa.array([v for r in rows for v in (r[3], -r[3])], pa.float32()), 2
            ),
        }
    )


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("spark", marks=pytest.mark.spark)])
@pytest.mark.parametrize("table_format", ["parquet", "delta"])
def test_adversarial_timestamps(tmp_path: Path, table_format: str, engine: str) -> None:
    view, boost = _views("rides", max_age=timedelta(days=1))
    registry = Registry.build([rider, view, boost])
    store = OfflineStore(tmp_path, table_format)
    t0 = 10 * DAY_US
    store.write(
        view,
        _history(
            [
                ("r1", t0 + 100, t0 + 100, 1.0),  # A
                ("r1", t0 + 200, t0 + 300, 2.0),  # B: about t0+200, but only written at t0+300
                ("r1", t0 + 150, t0 + 400, 3.0),  # C: older than B, written after it: never served
                ("r1", t0 + 500, t0 + 500, 5.0),  # D
                ("r3", t0 + 1000, t0 + 100, 9.0),  # about the future: not known before t0+1000
            ]
        ),
    )
    store.write(view, _history([("r1", t0 + 500, t0 + 600, 6.0)]))  # E: D corrected, same time
    cases = [  # (label time, rider, expected score, status)
        (t0 + 50, "r1", -1.0, NOT_FOUND),  # before anything was known
        (t0 + 100, "r1", 1.0, PRESENT),  # a tie: known at exactly the label time
        (t0 + 250, "r1", 1.0, PRESENT),  # B's event time passed, but B was not written yet
        (t0 + 300, "r1", 2.0, PRESENT),
        (t0 + 450, "r1", 2.0, PRESENT),  # C arrived, older than B: B still served
        (t0 + 500, "r1", 5.0, PRESENT),
        (t0 + 600, "r1", 6.0, PRESENT),  # equal event time, later write: the correction
        (t0 + 600 + DAY_US, "r1", 6.0, STALE),  # past max age: served, marked stale
        (t0 + 999, "r3", -1.0, NOT_FOUND),  # written early, about a later time
        (t0 + 1000, "r3", 9.0, PRESENT),
        (t0 + 5000, "r2", -1.0, NOT_FOUND),  # no history at all
    ]
    labels = pa.table(
        {
            "rider_id": [c[1] for c in cases],
            "event_timestamp": pa.array([c[0] for c in cases], pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "bonus": [0.5] * len(cases),
            "label": list(range(len(cases))),
        }
    )
    table = get_historical_features(
        registry, labels, ["rides:*", "rides_boost:boosted"], store, engine=engine
    )
    if engine != "duckdb":  # cell for cell, types and recorded versions too
        assert table.equals(
            get_historical_features(registry, labels, ["rides:*", "rides_boost:boosted"], store),
            check_metadata=True,
        )
    got = table.to_pydict()
    assert got["label"] == list(range(len(cases)))  # label rows kept, in their order
    assert got["rides:score"] == [c[2] for c in cases]
    assert got["rides:__status"] == [c[3] for c in cases]
    assert got["rides:tier"] == [("-" if c[3] == NOT_FOUND else f"t{int(c[2])}") for c in cases]
    assert got["rides:taste"] == [[0.0, 0.0] if c[3] == NOT_FOUND else [c[2], -c[2]] for c in cases]
    assert got["rides_boost:boosted"] == [c[2] * 2 + 0.5 for c in cases]  # the server's code
    assert got["rides_boost:__status"] == got["rides:__status"]


def test_bad_label_tables_are_refused(tmp_path: Path) -> None:
    view, boost = _views("trips", max_age=None)
    registry = Registry.build([rider, view, boost])
    store = OfflineStore(tmp_path)
    good = pa.table({"rider_id": ["r1"], "event_timestamp": pa.array([5], pa.int64())})
    with pytest.raises(InvalidRequest, match="no 'ts' column"):
        get_historical_features(registry, good, ["trips:score"], store, timestamp_column="ts")
    with pytest.raises(InvalidRequest, match="lacks entity key column 'rider_id'"):
        get_historical_features(registry, good.drop(["rider_id"]), ["trips:score"], store)
    wrong = pa.table({"rider_id": [1], "event_timestamp": pa.array([5], pa.int64())})
    with pytest.raises(InvalidRequest, match="'rider_id' is int64; the entity declares string"):
        get_historical_features(registry, wrong, ["trips:score"], store)
    with pytest.raises(InvalidRequest, match="needs request context 'bonus'"):
        get_historical_features(registry, good, ["trips_boost:boosted"], store)
    with pytest.raises(UnknownFeature, match="no feature 'speed'"):
        get_historical_features(registry, good, ["trips:speed"], store)
    with pytest.raises(InvalidRequest, match="empty"):
        get_historical_features(registry, good.slice(0, 0), ["trips:score"], store)


def test_training_rows_equal_what_serving_answered_at_each_label(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Random writes (out of order, late, corrected) replayed into the real online store; at
    each label time GetFeatures is asked, and the training set must hold the same answers."""
    name = f"replay_{uuid.uuid4().hex[:6]}"
    view, _ = _views(name, max_age=None)
    plain = FeatureView(name, entity=rider, features=list(view.features[:2]))  # no embedding
    registry = Registry.build([rider, plain])
    rng = np.random.default_rng(3)
    riders = [f"r{n}-{uuid.uuid4().hex[:4]}" for n in range(12)]
    writes = []  # (written at, rider, event time, score): written in this order
    for n in range(240):
        event_time = int(rng.integers(0, 400)) * 1_000_000 + 10 * DAY_US
        writes.append((n, riders[int(rng.integers(len(riders)))], event_time, float(n)))
    # After that many writes; the first ones ask riders nothing was written for yet.
    labels_at = sorted({0, 1, 2, 3, *(int(x) for x in rng.integers(4, 240, 40))})
    store = OfflineStore(tmp_path)
    # Event times of January 1970: the server must take events that old (max_event_age_days).
    server = ServerThread(make_settings(cluster, max_event_age_days=30_000), registry)
    served: list[tuple[int, str, float, str, int]] = []
    try:
        with FeatureClient(server.address) as client:
            done = 0
            for label_at in labels_at:
                for _, rider_id, event_time, score in writes[done:label_at]:
                    client.write_features(
                        name,
                        {"rider_id": [rider_id]},
                        [event_time],
                        {"score": [score], "tier": [f"t{int(score)}"]},
                    )
                done = label_at
                asked = riders[label_at % len(riders)]
                answer = client.get_features([f"{name}:*"], entities={"rider_id": [asked]})
                served.append(
                    (
                        label_at,
                        asked,
                        float(answer[f"{name}:score"].values[0]),
                        str(answer[f"{name}:tier"].values[0]),
                        int(answer.statuses(f"{name}:score")[0]),
                    )
                )
    finally:
        server.stop()
    # The same writes as history, created in replay order after every event time they carry;
    # a label "after k writes" sits between the k-th and the next, so it knows exactly k.
    base = 11 * DAY_US
    history = pa.table(
        {
            "rider_id": [w[1] for w in writes],
            "event_time": pa.array([w[2] for w in writes], pa.int64()),
            "created": pa.array([base + w[0] * 10 for w in writes], pa.int64()),
            "score": [w[3] for w in writes],
            "tier": [f"t{int(w[3])}" for w in writes],
        }
    )
    store.write(plain, history)
    labels = pa.table(
        {
            "rider_id": [s[1] for s in served],
            "event_timestamp": pa.array([base + s[0] * 10 - 5 for s in served], pa.int64()),
        }
    )
    got = get_historical_features(registry, labels, [f"{name}:*"], store)
    assert got.column(f"{name}:score").to_pylist() == [s[2] for s in served]
    assert got.column(f"{name}:tier").to_pylist() == [s[3] for s in served]
    assert got.column(f"{name}:__status").to_pylist() == [s[4] for s in served]
    assert {s[4] for s in served} == {PRESENT, NOT_FOUND}  # both kinds were exercised


def test_the_stream_writes_history_that_trains_on_what_it_served(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """`featurewell stream` with an offline store: every row it writes online lands in history,
    so a training set labelled now equals what GetFeatures serves now."""
    import asyncio

    from tests.test_stream import _drain, _runner, close, definitions, make_events, member, served

    source, view = definitions(f"taps_{uuid.uuid4().hex[:6]}")
    registry = Registry.build([member, view])
    members = [f"m{n}-{uuid.uuid4().hex[:4]}" for n in range(15)]
    events, _ = make_events(members, 600, seed=9)
    store = OfflineStore(tmp_path)
    loop = asyncio.new_event_loop()
    server = ServerThread(make_settings(cluster), registry)
    runner = None
    try:
        from featurewell.compute.redis_streams import append

        runner = loop.run_until_complete(
            _runner(cluster, registry, source, batch_size=100, history=store)
        )
        loop.run_until_complete(append(runner.cluster, source, events))
        loop.run_until_complete(_drain(runner))
        loop.run_until_complete(runner.checkpoint())
        loop.run_until_complete(runner.flush_history())
        now_values, times = served(server, view, members)
    finally:
        server.stop()
        close(loop, runner)
    history = store.folder(view)
    assert list(history.glob("date=*/*.parquet"))
    late = max(times) + 1_000_000  # after every row was written
    labels = pa.table(
        {
            "member_id": members + members[:1],
            "event_timestamp": pa.array([late] * len(members) + [min(times) - 10**9], pa.int64()),
        }
    )
    got = get_historical_features(registry, labels, [f"{view.name}:*"], store)
    for name, values in now_values.items():
        column = got.column(name).to_pylist()
        assert column[:-1] == values, name  # the same numbers: one write, two stores
    status = got.column(f"{view.name}:__status").to_pylist()
    assert status == [PRESENT] * len(members) + [NOT_FOUND]  # before any row: not found


TRAIN_REPO = """
from featurewell.definitions import Entity, Feature, FeatureView, Float64, String
rider = Entity("rider", join_keys={"rider_id": String})
rides = FeatureView("rides", entity=rider, features=[Feature("score", Float64, default=-1.0),
                                                       Feature("tier", String, default="-")])
"""


def test_training_set_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    import pyarrow.parquet as pq

    (tmp_path / "repo.py").write_text(TRAIN_REPO)
    registry = load_repo(str(tmp_path / "repo.py"))
    store = OfflineStore(tmp_path / "offline")
    store.write(registry.view("rides"), _history([("r1", 100, 100, 4.0)]).drop(["taste"]))
    labels = pa.table({"rider_id": ["r1", "r1", "r9"], "at": pa.array([50, 150, 150], pa.int64())})
    pq.write_table(labels, tmp_path / "labels.parquet")
    command = [
        sys.executable,
        "-m",
        "featurewell.cli",
        "training-set",
        "--repo",
        str(tmp_path / "repo.py"),
        "--labels",
        str(tmp_path / "labels.parquet"),
        "--features",
        "rides:*",
        "--timestamp-column",
        "at",
        "--out",
        str(tmp_path / "train.parquet"),
    ]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "pass --offline-dir DIR" in refused.stderr
    done = subprocess.run(
        [*command, "--offline-dir", str(tmp_path / "offline")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "3 rows x 2 features" in done.stdout
    version = "rides v1 (highest in the repo, no promoted defaults given)"
    assert (
        f"{version}: not_found 2, present 1" in done.stdout
        or f"{version}: present 1, not_found 2" in done.stdout
    )
    assert "note: no promoted defaults given" in done.stdout
    written = pq.read_table(tmp_path / "train.parquet")
    assert versions.recorded(written.schema.metadata) == {
        "rides": {"version": 1, "how": "highest in the repo, no promoted defaults given"}
    }
    table = written.to_pydict()
    assert table["rides:score"] == [-1.0, 4.0, -1.0]
    assert table["rides:tier"] == ["-", "t4", "-"]
