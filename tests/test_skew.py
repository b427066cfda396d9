"""Skew, measured against a real server on the real cluster: what GetFeatures answered, logged in
the served-feature layout (offline/served.py), against the point-in-time join. Injected skew (a
transform changed on the server only; history that disagrees with serving) goes red; clean
features stay green. The batch engine's side: test_skew_batch.py.

Until the served-feature logger is on main, `log_answer` writes exactly the layout it writes,
from the real answers."""

from __future__ import annotations

import textwrap
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurewell.client import FeatureClient
from featurewell.client._result import FeatureResult
from featurewell.definitions import Feature, Kind, Registry, load_repo
from featurewell.devcluster import LocalCluster
from featurewell.offline import OfflineStore, served
from featurewell.offline.skew import FeatureSkew, measure
from featurewell.values import PRESENT
from tests.tools import ServerThread, make_settings

MINUTE_US = 60_000_000

REPO = """
from datetime import timedelta
from featurewell.definitions import (
    Count, Embedding, Entity, EventSource, Feature, FeatureView, Float64, Int64, String,
    Sum, on_demand,
)

rider = Entity("rider", join_keys={"rider_id": String})
rides = FeatureView(
    "NAME",
    entity=rider,
    features=[
        Feature("score", Float64, default=-1.0),
        Feature("clicks", Int64),
        Feature("tier", String, default="-"),
        Feature("taste", Embedding(2)),
    ],
)
trips = EventSource("NAME_trips", keys={"rider_id": String}, fields={"km": Float64})
activity = FeatureView(
    "NAME_activity",
    entity=rider,
    events=trips,
    tile=timedelta(minutes=1),
    features=[
        Feature("trips_1h", Int64, computed=Count(window=timedelta(hours=1))),
        Feature("km_1h", Float64, computed=Sum("km", window=timedelta(hours=1))),
    ],
)


@on_demand(inputs={"score": "NAME:score"}, outputs=[Feature("doubled", Float64)],
           name="NAME_doubled")
def doubled(x):
    return {"doubled": x["score"] * 2}


@on_demand(inputs={"score": "NAME:score"}, outputs=[Feature("scaled", Float64)],
           name="NAME_scaled")
def scaled(x):
    return {"scaled": x["score"] * SCALE}
"""


def write_repo(path: Path, name: str, scale: float) -> Path:
    path.write_text(textwrap.dedent(REPO).replace("NAME", name).replace("SCALE", repr(scale)))
    return path


def _arrow(feature: Feature, values: Any) -> pa.Array:
    """Served values typed as history types them (offline/store.py)."""
    kind = feature.dtype.kind
    if kind is Kind.EMBEDDING:
        flat = pa.array(np.asarray(values, np.float32).ravel())
        return pa.FixedSizeListArray.from_arrays(flat, feature.dtype.dim)
    if kind is Kind.STRING:
        return pa.array([str(v) for v in values], pa.string())
    return pa.array(np.asarray(values))


def log_records(
    folder: Path,
    keys: Mapping[str, Sequence[Any]],
    features: Sequence[Feature],
    values: Mapping[str, Any],
    statuses: Sequence[int],
    event_times: Sequence[int],
    *,
    request_id: str,
    logged_at_us: int,
    version: int,
) -> None:
    """One logged call's records for one view or transform, in the served-log layout."""
    rows = len(statuses)
    columns: dict[str, Any] = {
        "request_id": pa.array([request_id] * rows, pa.string()),
        "logged_at_us": pa.array([logged_at_us] * rows, pa.int64()),
        "caller": pa.array(["ranker"] * rows, pa.string()),
        "principal": pa.array([""] * rows, pa.string()),
        "row": pa.array(range(rows), pa.int32()),
        "event_time": pa.array(event_times, pa.int64()),
        "status": pa.array(statuses, pa.uint8()),
        "version": pa.array([version] * rows, pa.int32()),
    }
    assert list(columns) == served.COLUMNS.names
    columns.update({k: pa.array(list(v)) for k, v in keys.items()})
    columns.update({f.name: _arrow(f, values[f.name]) for f in features})
    table = pa.table(columns)
    date = datetime.fromtimestamp(logged_at_us / 1e6, tz=UTC).strftime("%Y-%m-%d")
    target = folder / f"date={date}"
    target.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target / f"{time.time_ns() // 1000:016d}-{uuid.uuid4().hex[:12]}.parquet")


def log_answer(
    root: Path, registry: Registry, answer: FeatureResult, keys: Mapping[str, Sequence[Any]]
) -> str:
    """Log a real GetFeatures answer as the server's logger would; returns its request id."""
    request_id = uuid.uuid4().hex
    logged_at = time.time_ns() // 1000
    tables: dict[str, list[str]] = {}
    for name in answer.columns:
        table, _, feature = name.partition(":")
        tables.setdefault(table, []).append(feature)
    for table, names in tables.items():
        first = answer.columns[f"{table}:{names[0]}"]
        statuses = [int(s) for s in answer.statuses(f"{table}:{names[0]}")]
        values = {n: answer.columns[f"{table}:{n}"].values for n in names}
        if table in registry.transforms:
            transform = registry.transforms[table]
            folder = served.transform_folder(root, table)
            features = [transform.outputs[transform.output_index[n]] for n in names]
            times, version = [0] * answer.rows, 0
            columns: Mapping[
                str, Sequence[Any]
            ] = {}  # as the logger: a transform's outputs, no entity keys
        else:
            view = max((v for (n, _), v in registry.views.items() if n == table), key=_version)
            folder = served.view_folder(root, view)
            features = [view.features[view.feature_index[n]] for n in names]
            stamps = first.event_time_us
            times = [0] * answer.rows if stamps is None else [int(t) for t in stamps]
            version = view.version
            columns = keys
        log_records(
            folder,
            columns,
            features,
            values,
            statuses,
            times,
            request_id=request_id,
            logged_at_us=logged_at,
            version=version,
        )
    return request_id


def _version(view: Any) -> int:
    return int(view.version)


def by_name(results: Sequence[FeatureSkew]) -> dict[str, FeatureSkew]:
    return {f"{r.table}:{r.feature}/{r.against}": r for r in results}


@pytest.fixture
def served_stack(cluster: LocalCluster, tmp_path: Path) -> dict[str, Any]:
    return build_served_stack(cluster, tmp_path)


def build_served_stack(cluster: LocalCluster, tmp_path: Path) -> dict[str, Any]:
    """A server whose repo differs from the training repo in one transform (scaled: 1.1 on the
    server, 1.0 in the repo), history written as the online rows were, and logged answers."""
    name = f"skew_{uuid.uuid4().hex[:6]}"
    repo = write_repo(tmp_path / "repo.py", name, 1.0)
    server_repo = write_repo(tmp_path / "server_repo.py", name, 1.1)
    registry, server_registry = load_repo(str(repo)), load_repo(str(server_repo))
    store = OfflineStore(tmp_path / "offline")
    view = registry.views[(name, 1)]
    riders = [f"r{n}" for n in range(6)]
    written = riders[:5]  # r5: never written, NOT_FOUND on both sides
    now = time.time_ns() // 1000
    event_times = [now - (10 - n) * MINUTE_US for n in range(len(written))]
    values: dict[str, Any] = {
        "score": np.array([0.5 * n + 1 for n in range(len(written))]),
        "clicks": np.array([10 * n for n in range(len(written))], np.int64),
        "tier": [f"t{n}" for n in range(len(written))],
        "taste": np.array([[n, 1.0] for n in range(len(written))], np.float32),
    }
    server = ServerThread(make_settings(cluster), server_registry)
    try:
        with FeatureClient(server.address) as client:
            client.write_features(name, {"rider_id": written}, event_times, values)
            history = {"rider_id": written, "event_time": event_times}
            history["created"] = [time.time_ns() // 1000] * len(written)
            store.write(
                view,
                pa.table(
                    {
                        **history,
                        **{f.name: _arrow(f, values[f.name]) for f in view.features},
                    }
                ),
            )
            requests = []
            for _ in range(3):
                answer = client.get_features(
                    [f"{name}:*", f"{name}_doubled:doubled", f"{name}_scaled:scaled"],
                    entities={"rider_id": riders},
                    include_event_timestamps=True,
                )
                requests.append(log_answer(store.root, registry, answer, {"rider_id": riders}))
    finally:
        server.stop()
    return {
        "name": name,
        "repo": repo,
        "registry": registry,
        "store": store,
        "riders": riders,
        "requests": requests,
    }


def test_a_transform_changed_on_the_server_only_goes_red(served_stack: dict[str, Any]) -> None:
    name = served_stack["name"]
    results = by_name(measure(served_stack["registry"], served_stack["store"], None, None))
    for feature in ("score", "clicks", "tier", "taste"):
        clean = results[f"{name}@v1:{feature}/offline"]
        assert (clean.compared, clean.mismatched) == (18, 0), clean  # 3 calls x 6 riders
    assert results[f"{name}_doubled:doubled/offline"].mismatched == 0  # the same code
    changed = results[f"{name}_scaled:scaled/offline"]
    # Rows found: 3 calls x 5 riders differ (x1.1); r5 served the default on both sides.
    assert (changed.compared, changed.mismatched, changed.status_mismatched) == (18, 15, 0)
    example = changed.examples[0]
    assert example["served"] == pytest.approx(example["offline"] * 1.1)


def test_the_window_selects_records_by_logging_time(served_stack: dict[str, Any]) -> None:
    name = served_stack["name"]
    now = time.time_ns() // 1000
    later = measure(served_stack["registry"], served_stack["store"], now, None)
    assert later == []  # nothing logged after now
    results = by_name(measure(served_stack["registry"], served_stack["store"], None, now))
    assert results[f"{name}@v1:score/offline"].compared == 18


def test_history_that_disagrees_with_serving_is_skew(served_stack: dict[str, Any]) -> None:
    """Rows served but never written to history (pushed, say) and a history value that differs
    from the online one: status mismatches and value mismatches, each counted."""
    name, store = served_stack["name"], served_stack["store"]
    registry = served_stack["registry"]
    view = registry.views[(name, 1)]
    for path in sorted(store.folder(view).glob("date=*/*.parquet")):
        history = pq.read_table(path)
        keep = pa.array([r != "r4" for r in history.column("rider_id").to_pylist()])
        history = history.filter(keep)  # r4 was served, but history never had it
        scores = np.asarray(history.column("score").to_numpy()).copy()
        scores[0] += 0.01  # r0: history has another value than was served
        history = history.set_column(history.column_names.index("score"), "score", pa.array(scores))
        pq.write_table(history, path)
    results = by_name(measure(registry, store, None, None))
    score = results[f"{name}@v1:score/offline"]
    assert (score.compared, score.mismatched, score.status_mismatched) == (18, 6, 3)
    clicks = results[f"{name}@v1:clicks/offline"]
    assert (clicks.mismatched, clicks.status_mismatched) == (3, 3)  # r4 only


def test_transform_records_without_logged_inputs_are_not_compared(
    served_stack: dict[str, Any],
) -> None:
    """The logger writes a transform's outputs without entity keys: they come from the input
    view's records of the same call. With those gone, nothing is compared, and it says why."""
    import shutil

    name, store = served_stack["name"], served_stack["store"]
    shutil.rmtree(store.root / served.SERVED / name)
    results = by_name(measure(served_stack["registry"], store, None, None))
    scaled = results[f"{name}_scaled:scaled/offline"]
    assert (scaled.compared, scaled.mismatched) == (0, 0)
    assert scaled.note == "not compared: no input view logged for its 18 records (keys unknown)"


def test_a_view_logged_once_per_call_keys_every_transform_row(
    served_stack: dict[str, Any],
) -> None:
    """A ranking call logs one row of the user's view and a transform row per item: each
    transform row gets the user's keys from that one row."""
    name, store, registry = served_stack["name"], served_stack["store"], served_stack["registry"]
    view, transform = registry.views[(name, 1)], registry.transforms[f"{name}_doubled"]
    at = time.time_ns() // 1000
    log_records(
        served.view_folder(store.root, view),
        {"rider_id": ["r0"]},
        list(view.features),
        {
            "score": [1.0],
            "clicks": [0],
            "tier": ["t0"],
            "taste": np.array([[0, 1]], np.float32),
        },
        [PRESENT],
        [at - 10 * MINUTE_US],
        request_id="c" * 32,
        logged_at_us=at,
        version=1,
    )
    log_records(
        served.transform_folder(store.root, transform.name),
        {},
        list(transform.outputs),
        {"doubled": [2.0, 2.0, 2.5]},  # the third is not what the repo's code gives
        [PRESENT] * 3,
        [0] * 3,
        request_id="c" * 32,
        logged_at_us=at,
        version=0,
    )
    doubled = by_name(measure(registry, store, at, None))[f"{transform.name}:doubled/offline"]
    assert (doubled.compared, doubled.mismatched, doubled.skipped) == (3, 1, 0)
    assert doubled.examples[0]["row"] == 2
    assert doubled.examples[0]["rider_id"] == "r0"
