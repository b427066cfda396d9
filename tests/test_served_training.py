"""Training on what was served: labels joined to logged GetFeatures answers of a real server, by
request id or by entity and time, hold exactly the served values, statuses and versions, even
after the online values (and their history) moved on."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurewell.cli import main
from featurewell.client import FeatureClient
from featurewell.definitions import load_repo
from featurewell.devcluster import LocalCluster
from featurewell.errors import InvalidRequest, UnknownFeature
from featurewell.offline import OfflineStore, served
from featurewell.offline.served_training import from_served_log
from featurewell.values import NOT_FOUND, PRESENT
from tests.test_skew import log_answer, log_records, write_repo
from tests.tools import ServerThread, make_settings


@pytest.fixture
def logged(cluster: LocalCluster, tmp_path: Path) -> dict[str, Any]:
    """Two logged calls with new values written between them; the answers as served."""
    name = f"st_{uuid.uuid4().hex[:6]}"
    repo = write_repo(tmp_path / "repo.py", name, 1.0)
    registry = load_repo(str(repo))
    store = OfflineStore(tmp_path / "offline")
    store.root.mkdir()
    riders = ["a", "b", "c"]
    calls = []
    server = ServerThread(make_settings(cluster), registry)
    try:
        with FeatureClient(server.address) as client:
            for step in range(2):
                now = time.time_ns() // 1000
                client.write_features(
                    name,
                    {"rider_id": riders[:2]},  # c: never written
                    [now, now],
                    {
                        "score": np.array([1.0 + step, 2.0 + step]),
                        "clicks": np.array([step, step], np.int64),
                        "tier": [f"s{step}", f"s{step}"],
                        "taste": np.array([[step, 1], [1, step]], np.float32),
                    },
                )
                answer = client.get_features(
                    [f"{name}:score", f"{name}:tier", f"{name}_doubled:doubled"],
                    entities={"rider_id": riders},
                    include_event_timestamps=True,
                )
                request = log_answer(store.root, registry, answer, {"rider_id": riders})
                calls.append((request, time.time_ns() // 1000, answer))
                time.sleep(0.01)
    finally:
        server.stop()
    return {"name": name, "repo": repo, "registry": registry, "store": store, "calls": calls}


def test_labels_by_request_id_get_exactly_what_was_served(logged: dict[str, Any]) -> None:
    name, calls = logged["name"], logged["calls"]
    (first, _, answer0), (second, _, answer1) = calls
    labels = pa.table(
        {
            "request_id": [first, first, second, first, "0" * 32],
            "row": pa.array([0, 2, 1, 1, 0], pa.int32()),
            "clicked": [1, 0, 1, 0, 1],
        }
    )
    got = from_served_log(
        logged["registry"], labels, [f"{name}:*", f"{name}_doubled:doubled"], logged["store"].root
    ).to_pydict()
    assert got["clicked"] == [1, 0, 1, 0, 1]  # the labels, in their order
    served0 = answer0[f"{name}:score"].values
    served1 = answer1[f"{name}:score"].values
    assert got[f"{name}:score"] == [served0[0], served0[2], served1[1], served0[1], None]
    assert got[f"{name}:score"][:4] == [1.0, -1.0, 3.0, 2.0]  # a, c (default), b then, b
    assert got[f"{name}:tier"] == ["s0", "-", "s1", "s0", None]
    assert got[f"{name}:__status"] == [PRESENT, NOT_FOUND, PRESENT, PRESENT, None]
    assert got[f"{name}:__version"] == [1, 1, 1, 1, None]
    assert got[f"{name}_doubled:doubled"] == [2.0, -2.0, 6.0, 4.0, None]
    # Not logged by that call: the feature column is there, empty (nothing was served).
    assert got[f"{name}:clicks"] == [None] * 5


def test_labels_by_entity_and_time_get_the_latest_record_logged(logged: dict[str, Any]) -> None:
    name, calls = logged["name"], logged["calls"]
    (_, at0, _), (_, at1, _) = calls
    labels = pa.table(
        {
            "rider_id": ["a", "a", "b", "a"],
            "event_timestamp": pa.array([at0, at1, at0 + 1, at0 - 10**9], pa.int64()),
        }
    )
    got = from_served_log(
        logged["registry"], labels, [f"{name}:score"], logged["store"].root, join="time"
    ).to_pydict()
    assert got[f"{name}:score"] == [1.0, 2.0, 2.0, None]  # before anything was logged: none
    assert got[f"{name}:__logged_at_us"][3] is None


def test_bad_requests_say_what_to_fix(logged: dict[str, Any], tmp_path: Path) -> None:
    name, registry, root = logged["name"], logged["registry"], logged["store"].root
    labels = pa.table({"rider_id": ["a"], "event_timestamp": pa.array([5], pa.int64())})
    with pytest.raises(InvalidRequest, match="needs a 'request_id' column"):
        from_served_log(registry, labels, [f"{name}:score"], root)
    with pytest.raises(InvalidRequest, match="'row' of the entity in the call or its key"):
        from_served_log(registry, pa.table({"request_id": ["x"]}), [f"{name}:score"], root)
    with pytest.raises(UnknownFeature, match="no feature 'speed'"):
        from_served_log(registry, labels, [f"{name}:speed"], root, join="time")
    with pytest.raises(InvalidRequest, match="on-demand transform: its records carry no"):
        from_served_log(registry, labels, [f"{name}_doubled:doubled"], root, join="time")
    with pytest.raises(InvalidRequest, match="no served-feature log under"):
        from_served_log(registry, labels, [f"{name}:score"], tmp_path, join="time")


def test_the_cli_trains_on_the_served_log(
    logged: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, (first, _, _) = logged["name"], logged["calls"][0]
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"request_id": [first, first], "rider_id": ["b", "c"]}), labels)
    out = tmp_path / "train.parquet"
    main(
        [
            "training-set",
            "--repo",
            str(logged["repo"]),
            "--offline-dir",
            str(logged["store"].root),
            "--labels",
            str(labels),
            "--features",
            f"{name}:score",
            "--out",
            str(out),
            "--from-served-log",
        ]
    )
    shown = capsys.readouterr().out
    assert "2 rows from the served-feature log (joined by request_id)" in shown
    assert f"{name} (served v1): present 1, not_found 1; no record 0" in shown
    table = pq.read_table(out).to_pydict()
    assert table[f"{name}:score"] == [2.0, -1.0]  # joined by request id and the entity keys


def test_a_view_logged_once_per_call_joins_every_row_of_it(tmp_path: Path) -> None:
    """A ranking call of 1 user + N items logs one row of the user's view: every impression
    row of that call gets it."""
    name = f"one_{uuid.uuid4().hex[:6]}"
    registry = load_repo(str(write_repo(tmp_path / "repo.py", name, 1.0)))
    view = registry.views[(name, 1)]
    root = tmp_path / "offline"
    log_records(
        served.view_folder(root, view),
        {"rider_id": ["u"]},
        list(view.features),
        {
            "score": [7.0],
            "clicks": [3],
            "tier": ["gold"],
            "taste": np.ones((1, 2), np.float32),
        },
        [PRESENT],
        [5],
        request_id="a" * 32,
        logged_at_us=time.time_ns() // 1000,
        version=1,
    )
    labels = pa.table(
        {"request_id": ["a" * 32] * 3 + ["b" * 32], "row": pa.array([0, 1, 2, 1], pa.int32())}
    )
    got = from_served_log(registry, labels, [f"{name}:score"], root).to_pydict()
    assert got[f"{name}:score"] == [7.0, 7.0, 7.0, None]
