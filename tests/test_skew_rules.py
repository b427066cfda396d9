"""How values and records compare in a skew measurement: per type (exact, relative tolerance,
cosine), degraded answers skipped, tables the repo does not define named, unreadable files
named."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from featurewell.definitions import Feature, load_repo
from featurewell.devcluster import LocalCluster
from featurewell.errors import ConfigError
from featurewell.offline import OfflineStore, served
from featurewell.offline.skew import Tolerance, differ, measure
from featurewell.values import FALLBACK, NOT_FOUND, PRESENT
from tests.test_skew import build_served_stack, by_name, log_records, write_repo


@pytest.fixture
def served_stack(cluster: LocalCluster, tmp_path: Path) -> dict[str, Any]:
    return build_served_stack(cluster, tmp_path)


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
    """A writer's temporary (renamed whole in a moment, or left behind by a crashed writer) is
    not read at all; a damaged log file is named, not a raw pyarrow error."""
    name, store = served_stack["name"], served_stack["store"]
    folder = next((store.root / served.SERVED / name / "v1").glob("date=*"))
    (folder / "0-crashed.tmp").write_bytes(b"PAR1 half")
    assert measure(served_stack["registry"], store, None, None)  # the temporary is skipped
    damaged = folder / "0-damaged.parquet"
    damaged.write_bytes(b"PAR1 half")
    try:
        with pytest.raises(ConfigError, match=r"cannot read the served-feature log under .*v1: "):
            measure(served_stack["registry"], store, None, None)
    finally:
        damaged.unlink()  # the module's other tests read the same log
