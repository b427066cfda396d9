"""Skew, measured against a real server on the real cluster: what GetFeatures answered, logged in
the served-feature layout (offline/served.py), against the point-in-time join and the batch
engine. Injected skew (a transform changed on the server only; a stream writing values the
event log disagrees with) goes red; a clean run stays green.

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

from featurewell.cli import main
from featurewell.client import FeatureClient
from featurewell.client._result import FeatureResult
from featurewell.compute import batch
from featurewell.compute.program import compile_view
from featurewell.definitions import Feature, Kind, Registry, load_repo
from featurewell.devcluster import LocalCluster
from featurewell.engine.calls import InputColumn, WriteRequest
from featurewell.errors import ConfigError
from featurewell.offline import OfflineStore, served
from featurewell.offline.skew import FeatureSkew, Tolerance, differ, measure
from featurewell.values import FALLBACK, NOT_FOUND, PRESENT
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


def test_the_cli_reports_and_fails_above_a_ratio(
    served_stack: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    name = served_stack["name"]
    args = [
        "skew",
        "--repo",
        str(served_stack["repo"]),
        "--offline-dir",
        str(served_stack["store"].root),
        "--since",
        "2000-01-01T00:00:00Z",
        "--until",
        str(time.time_ns() // 1000 + 1),
        "--json",
        str(tmp_path / "skew.json"),
    ]
    main(args)
    shown = capsys.readouterr().out
    lines = {line.split()[0]: line for line in shown.splitlines() if line and line[0] != " "}
    assert lines[f"{name}_scaled:scaled"].endswith("SKEW")
    assert not lines[f"{name}@v1:score"].endswith("SKEW")
    with pytest.raises(SystemExit) as failed:
        main([*args, "--fail-above", "0.5"])
    assert failed.value.code == 1
    main([*args, "--fail-above", "0.9"])  # 15/18 = 0.83: under


def test_degraded_answers_are_compared_by_status_only(tmp_path: Path) -> None:
    """A FALLBACK default is an outage, not skew: skipped. NOT_FOUND served where history has
    nothing: a match."""
    name = f"deg_{uuid.uuid4().hex[:6]}"
    registry = load_repo(str(write_repo(tmp_path / "repo.py", name, 1.0)))
    view = registry.views[(name, 1)]
    store = OfflineStore(tmp_path / "offline")
    store.root.mkdir()
    features = list(view.features)
    values = {
        "score": [-1.0, -1.0],
        "clicks": [0, 0],
        "tier": ["-", "-"],
        "taste": np.zeros((2, 2), np.float32),
    }
    log_records(
        served.view_folder(store.root, view),
        {"rider_id": ["a", "b"]},
        features,
        values,
        [FALLBACK, NOT_FOUND],
        [0, 0],
        request_id="f" * 32,
        logged_at_us=time.time_ns() // 1000,
        version=1,
    )
    score = by_name(measure(registry, store, None, None))[f"{name}@v1:score/offline"]
    assert (score.compared, score.mismatched, score.skipped) == (1, 0, 1)


def test_value_rules_per_type() -> None:
    tol = Tolerance(rtol=1e-3, atol=1e-9, cosine=0.99)
    f64 = Feature("x", load_type("Float64"))
    got = differ(
        f64,
        pa.array([1.0, 1.0, float("nan"), 0.0]),
        pa.array([1.0005, 1.01, float("nan"), 0.0]),
        tol,
    )
    assert got.tolist() == [False, True, False, False]
    emb = Feature("e", load_type("Embedding", 2))
    a = pa.FixedSizeListArray.from_arrays(pa.array([1, 0, 1, 0, 0, 0], pa.float32()), 2)
    b = pa.FixedSizeListArray.from_arrays(pa.array([2, 0.01, 0, 1, 0, 0], pa.float32()), 2)
    assert differ(emb, a, b, tol).tolist() == [False, True, False]  # scale is not skew
    text = Feature("t", load_type("String"))
    assert differ(text, pa.array(["a", "b"]), pa.array(["a", "B"]), tol).tolist() == [False, True]


def load_type(name: str, *args: int) -> Any:
    from featurewell import definitions

    kind = getattr(definitions, name)
    return kind(*args) if args else kind


def test_a_stream_bug_disagrees_with_the_batch_engine(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A computed view whose online rows (and their history, written by the same stream) are
    wrong for one rider: the point-in-time join agrees with what was served (history has the
    same bug), the batch engine over the event log does not."""
    name = f"sb_{uuid.uuid4().hex[:6]}"
    registry = load_repo(str(write_repo(tmp_path / "repo.py", name, 1.0)))
    view = registry.views[(f"{name}_activity", 1)]
    store = OfflineStore(tmp_path / "offline")
    now = time.time_ns() // 1000
    riders = ["a", "b", "c"]
    events = pa.table(
        {
            "rider_id": ["a", "a", "b", "c", "c", "c"],
            "km": [1.0, 2.0, 5.0, 1.5, 1.5, 1.0],
            "event_time": pa.array([now - (20 - n) * MINUTE_US for n in range(6)], pa.int64()),
            "event_id": [f"e{n}" for n in range(6)],
        }
    )
    as_of = now - 10 * MINUTE_US
    truth = batch.compute(compile_view(view), batch.accepted_events(events, 3_600_000_000), as_of)
    counts = np.array([truth[(r,)][0] for r in riders], np.int64)
    km = np.array([truth[(r,)][1] for r in riders])
    counts_bug = counts.copy()
    counts_bug[2] += 1  # the stream counted one of c's trips twice
    results = {}
    for label, written in (("clean", counts), ("bug", counts_bug)):
        root = tmp_path / label
        store = OfflineStore(root)
        server = ServerThread(make_settings(cluster), registry)
        ids = [f"{label}-{r}" for r in riders]
        log = events.set_column(
            0, "rider_id", pa.array([f"{label}-{r}" for r in events.column(0).to_pylist()])
        )
        try:
            # Written as the stream writes (the engine's write, no WriteFeatures call), and
            # to history as `stream --history-out` records what it wrote.
            request = WriteRequest(
                view.ref,
                {"rider_id": InputColumn(Kind.STRING, ids)},
                np.full(3, as_of, np.int64),
                {"trips_1h": written, "km_1h": km},
            )
            server.run(server.server.service.engine.write(request))
            store.write(
                view,
                pa.table(
                    {
                        "rider_id": ids,
                        "event_time": [as_of] * 3,
                        "created": [time.time_ns() // 1000] * 3,
                        "trips_1h": written,
                        "km_1h": km,
                    }
                ),
            )
            with FeatureClient(server.address) as client:
                answer = client.get_features(
                    [f"{view.name}:*"], entities={"rider_id": ids}, include_event_timestamps=True
                )
                log_answer(root, registry, answer, {"rider_id": ids})
        finally:
            server.stop()
        results[label] = by_name(
            measure(registry, store, None, None, events={f"{name}_trips": log})
        )
    clean, bug = results["clean"], results["bug"]
    ref = f"{view.name}@v1"
    assert clean[f"{ref}:trips_1h/batch"].compared == 3
    assert clean[f"{ref}:trips_1h/batch"].mismatched == 0
    assert clean[f"{ref}:km_1h/batch"].mismatched == 0
    assert bug[f"{ref}:trips_1h/offline"].mismatched == 0  # history has the stream's bug too
    assert bug[f"{ref}:trips_1h/batch"].mismatched == 1
    assert bug[f"{ref}:trips_1h/batch"].examples[0]["served"] == int(counts[2]) + 1
    assert bug[f"{ref}:km_1h/batch"].mismatched == 0
    assert PRESENT in {int(s) for s in answer.statuses(f"{view.name}:trips_1h")}


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


def test_logged_tables_the_repo_does_not_define_are_named(tmp_path: Path) -> None:
    name = f"gh_{uuid.uuid4().hex[:6]}"
    registry = load_repo(str(write_repo(tmp_path / "repo.py", name, 1.0)))
    store = OfflineStore(tmp_path / "offline")
    view = registry.views[(name, 1)]
    at = time.time_ns() // 1000
    for folder in (
        store.root / served.SERVED / name / "v7",
        served.transform_folder(store.root, "gone"),
    ):
        log_records(
            folder, {}, [], {}, [PRESENT], [0], request_id="d" * 32, logged_at_us=at, version=7
        )
    log_records(
        served.view_folder(store.root, view),
        {"rider_id": ["x"]},
        [],
        {},
        [NOT_FOUND],
        [0],
        request_id="d" * 32,
        logged_at_us=at,
        version=1,
    )
    results = measure(registry, store, None, None)
    notes = {(r.table, r.feature): r.note for r in results if r.feature == "*"}
    assert notes == {
        (f"{name}@v7", "*"): "not compared: the repo has no such view version",
        ("gone", "*"): "not compared: the repo has no such on-demand transform",
    }
    # Features not in these records (logged before they were added) say so.
    score = by_name(results)[f"{name}@v1:score/offline"]
    assert (score.compared, score.note) == (0, "not logged (a feature added after these records)")


def test_a_file_that_is_not_parquet_is_named(served_stack: dict[str, Any]) -> None:
    """A writer's temporary is retried (it is renamed whole in a moment); one left behind by a
    crashed writer is named, not a raw pyarrow error."""
    name, store = served_stack["name"], served_stack["store"]
    folder = next((store.root / served.SERVED / name / "v1").glob("date=*"))
    (folder / "0-crashed.tmp").write_bytes(b"PAR1 half")
    with pytest.raises(ConfigError, match=r"cannot read the served-feature log under .*v1: "):
        measure(served_stack["registry"], store, None, None)


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--since", "yesterday"], "'yesterday' is not a time: give ISO-8601"),
        (["--since", "1700000000"], "integer times are µs since the epoch"),
        (["--every", "soon"], "'soon' is not a duration like 60s"),
        (["--every", "0s"], "--every must be a positive duration"),
        (["--log", "nope=x.parquet"], "--log names no event source: ['nope']"),
        (["--offline-dir", "/nonexistent-skew"], "offline store /nonexistent-skew does not exist"),
    ],
)
def test_bad_flags_say_what_to_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], complaint: str
) -> None:
    repo = write_repo(tmp_path / "repo.py", f"bf_{uuid.uuid4().hex[:6]}", 1.0)
    with pytest.raises(SystemExit) as failed:
        main(["skew", "--repo", str(repo), "--offline-dir", str(tmp_path), *flags])
    assert failed.value.code == 2
    assert complaint in capsys.readouterr().err


def test_no_log_at_all_is_a_warning_not_silence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = write_repo(tmp_path / "repo.py", f"nl_{uuid.uuid4().hex[:6]}", 1.0)
    main(["skew", "--repo", str(repo), "--offline-dir", str(tmp_path)])
    shown = capsys.readouterr().out
    assert f"warning: no served-feature log under {tmp_path / '_served'}" in shown
    assert "no served records in the window: nothing to compare" in shown
