"""`materialize` loads a Parquet file whole or not at all, through the engine's write validation:
embeddings need exact widths, nulls follow each feature's rule, and a bad file is refused with a
message naming the view, the file, the column and the first bad rows, before anything is written
(real Redis Cluster)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurewell.definitions import (
    Embedding,
    Entity,
    Feature,
    FeatureView,
    Float64,
    Int64,
    ListOf,
    ParquetSource,
    Registry,
)
from featurewell.devcluster import LocalCluster
from featurewell.engine.calls import Budget, FeatureRequest, InputColumn
from featurewell.engine.engine import FeatureEngine
from featurewell.errors import InvalidRequest
from featurewell.ingest import columns
from featurewell.ingest.materialize import ViewLoad, materialize
from featurewell.store.online import OnlineStore
from featurewell.values import Ragged

item = Entity("item", join_keys={"item_id": Int64})


def now_us() -> int:
    return time.time_ns() // 1000


def items(n: int) -> list[int]:
    """Item ids no other test uses (the cluster is shared)."""
    base = uuid.uuid4().int % 10**12 * 10**5
    return [base + i for i in range(n)]


def view_of(path: Path, *features: Feature, timestamp: str = "event_time") -> FeatureView:
    source = ParquetSource(str(path), timestamp_field=timestamp)
    return FeatureView(f"m_{uuid.uuid4().hex[:8]}", entity=item, features=features, source=source)


def load(cluster: LocalCluster, view: FeatureView, **options: Any) -> list[ViewLoad]:
    async def go() -> list[ViewLoad]:
        store = await OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
        try:
            engine = FeatureEngine(Registry.build([item, view]), store)
            return await materialize(engine, [view], **options)
        finally:
            await store.close()

    return asyncio.run(go())


def served(cluster: LocalCluster, view: FeatureView, ids: Sequence[int], feature: str) -> Any:
    """(present per row, the feature's values) as the engine serves them."""

    async def go() -> Any:
        store = await OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
        try:
            engine = FeatureEngine(Registry.build([item, view]), store)
            request = FeatureRequest(
                (f"{view.name}:{feature}",), {"item_id": InputColumn(Int64.kind, ids)}, {}
            )
            result = await engine.get_features(request, Budget(2.0))
            (present,) = [s.rows.present for s in result.served]
            return present.tolist(), result.columns[0].values
        finally:
            await store.close()

    return asyncio.run(go())


def refused(cluster: LocalCluster, view: FeatureView, **options: Any) -> str:
    with pytest.raises(InvalidRequest) as error:
        load(cluster, view, **options)
    text = str(error.value)
    assert f"materialize of {view.ref!r} from {view.source.path if view.source else ''}" in text
    assert "nothing written" in text
    return text


def test_embeddings_of_3_and_5_numbers_are_refused_not_reshaped(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    path = tmp_path / "vec.parquet"
    ids = items(2)
    vectors = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0, 8.0]]  # 8 numbers: it used to load as 2 x 4
    pq.write_table(pa.table({"item_id": ids, "event_time": [now_us()] * 2, "vec": vectors}), path)
    view = view_of(path, Feature("vec", Embedding(4)))

    text = refused(cluster, view)

    assert "refused: 2 problems," in text
    assert "row 0, 'vec': 3 numbers; embedding[4] needs exactly 4 per row" in text
    assert "row 1, 'vec': 5 numbers" in text
    assert served(cluster, view, ids, "vec")[0] == [False, False]


def test_a_valid_file_loads_exact_embeddings(cluster: LocalCluster, tmp_path: Path) -> None:
    path = tmp_path / "vec.parquet"
    ids = items(3)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=np.float32)), 4)
    pq.write_table(pa.table({"item_id": ids, "event_time": [now_us()] * 3, "vec": vectors}), path)
    view = view_of(path, Feature("vec", Embedding(4)))

    (done,) = load(cluster, view)

    assert (done.rows, done.written) == (3, 3)
    present, values = served(cluster, view, ids, "vec")
    assert present == [True] * 3
    assert np.asarray(values).tolist() == np.arange(12, dtype=np.float32).reshape(3, 4).tolist()


def test_nulls_follow_each_features_rule(cluster: LocalCluster, tmp_path: Path) -> None:
    path = tmp_path / "nulls.parquet"
    ids = items(4)
    table = {
        "item_id": ids,
        "event_time": [now_us()] * 4,
        "count": [1, 2, 3, 4],
        "tags": [[1], None, [2, 3], []],  # nulls="default": row 1 gets [7]
        "score": [0.5, 0.25, None, 1.0],  # nulls="skip_row": row 2 is not written
    }
    pq.write_table(pa.table(table), path)
    view = view_of(
        path,
        Feature("count", Int64),
        Feature("tags", ListOf(Int64), default=[7], nulls="default"),
        Feature("score", Float64, nulls="skip_row"),
    )

    (done,) = load(cluster, view)

    assert (done.rows, done.written) == (3, 3)
    present, tags = served(cluster, view, ids, "tags")
    assert present == [True, True, False, True]
    assert isinstance(tags, Ragged)
    assert [tags.row(i).tolist() for i in range(4)] == [[1], [7], [7], []]  # row 2: not found


def test_a_null_list_and_a_null_int_are_refused_by_default(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    path = tmp_path / "nulls.parquet"
    ids = items(3)
    table = {
        "item_id": ids,
        "event_time": [now_us()] * 3,
        "count": [1, None, 3],
        "tags": [[1], [2], None],
        "odd": [[1.0, None], [2.0], [3.0]],
    }
    pq.write_table(pa.table(table), path)
    view = view_of(
        path,
        Feature("count", Int64),
        Feature("tags", ListOf(Int64)),
        Feature("odd", ListOf(Float64)),
    )

    text = refused(cluster, view)

    assert "refused: 3 problems," in text
    assert "row 1, 'count': null value; declare the feature with nulls='default'" in text
    assert "row 2, 'tags': null value" in text
    assert "row 0, 'odd': a list holding a null item" in text
    assert "float64" not in text  # the old message blamed the dtype, not the null
    assert served(cluster, view, ids, "count")[0] == [False] * 3


def test_one_bad_row_deep_in_the_file_refuses_it_all(cluster: LocalCluster, tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    ids = items(5000)
    score = np.linspace(0, 1, 5000)
    score[4500] = np.nan
    times = np.full(5000, now_us(), np.int64)
    times[4999] = now_us() + 3600 * 1_000_000  # an hour ahead: would shadow later writes
    pq.write_table(pa.table({"item_id": ids, "ts": times, "score": score}), path)
    view = view_of(path, Feature("score", Float64), timestamp="ts")

    text = refused(cluster, view, batch_rows=2000)

    assert "refused: 2 problems," in text
    assert "row 4500, 'score': nan is not a finite number" in text
    assert "row 4999, 'ts': event time" in text  # named as the file names it
    assert "s in the future" in text
    present, _ = served(cluster, view, ids[:2000], "score")  # not even the first batch
    assert not any(present)


def test_wrong_types_nulls_in_keys_and_times_are_named(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    path = tmp_path / "types.parquet"
    table = {
        "item_id": [1, None, 3],
        "event_time": [now_us(), now_us(), None],
        "count": [1.5, 2.0, 3.0],  # floats for an int feature: never truncated
    }
    pq.write_table(pa.table(table), path)
    view = view_of(path, Feature("count", Int64))

    text = refused(cluster, view)

    assert "refused: 3 problems," in text  # the column problem counts once, not once per batch
    assert "column 'count': holds double; feature 'count' is int64: convert the column" in text
    assert "row 1, 'item_id': null entity key" in text
    assert "row 2, 'event_time': null event time" in text


def featurewell(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "featurewell.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


REPO = """
from featurewell.definitions import Embedding, Entity, Feature, FeatureView, Int64, ParquetSource

item = Entity("item", join_keys={"item_id": Int64})
source = ParquetSource("vec.parquet")
vecs = FeatureView("NAME", entity=item, features=[Feature("vec", Embedding(4))], source=source)
"""


def test_the_command_refuses_a_bad_file_with_a_message_not_a_traceback(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    name = f"m_{uuid.uuid4().hex[:8]}"
    (tmp_path / "repo.py").write_text(REPO.replace("NAME", name))
    vectors = [[1.0, 2.0, 3.0], None]
    table = pa.table({"item_id": items(2), "event_time": [now_us()] * 2, "vec": vectors})
    pq.write_table(table, tmp_path / "vec.parquet")
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)

    done = featurewell("materialize", "--repo", str(tmp_path / "repo.py"), "--redis", seeds)

    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert f"materialize of '{name}@v1' from {tmp_path / 'vec.parquet'} refused" in done.stderr
    assert "row 0, 'vec': 3 numbers; embedding[4] needs exactly 4 per row" in done.stderr
    assert "row 1, 'vec': null value" in done.stderr


def test_timestamp_columns_of_any_unit_become_microseconds() -> None:
    ns = pa.array([1_700_000_000_123_456_789, None], pa.timestamp("ns"))
    assert columns.timestamps(ns)[0].tolist()[0] == 1_700_000_000_123_456
    assert columns.timestamps(ns)[1] == [(1, "null event time")]
    seconds = pa.array([1_700_000_000, 2**62], pa.timestamp("s", tz="UTC"))
    values, problems = columns.timestamps(seconds)
    assert values.tolist()[0] == 1_700_000_000_000_000
    assert problems == [(1, f"event time {2**62} s is beyond the int64 µs range")]
    assert columns.timestamps(pa.array(["2024-01-01"]))[1][0][0] == -1  # text: the whole column


def test_a_column_of_the_wrong_type_is_one_problem_not_one_per_row(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    path = tmp_path / "text_times.parquet"
    table = {
        "item_id": [0.5] * 3000,  # floats for an Int64 key
        "event_time": ["2024-01-01"] * 3000,  # text for the timestamp
        "count": list(range(3000)),
    }
    pq.write_table(pa.table(table), path)
    view = view_of(path, Feature("count", Int64))

    text = refused(cluster, view, batch_rows=1000)

    assert "refused: 2 problems, nothing written" in text
    assert "column 'item_id': holds double; the entity key takes integers" in text
    assert "column 'event_time': holds string; event times are timestamps or integer µs" in text
