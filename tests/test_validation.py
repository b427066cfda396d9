"""One write validation for every path (issue 15, item 4), over real gRPC on a real cluster:
each hostile write of "What we saw" is refused as INVALID_ARGUMENT naming the row, the column
and the reason, and nothing of the call is written (the row reads back unchanged)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from featurewell.client import FeatureClient, InvalidArgument, Status
from featurewell.client._request import build_write_request
from featurewell.definitions import (
    Bool,
    Embedding,
    Entity,
    Feature,
    FeatureView,
    Float32,
    Float64,
    Int64,
    ListOf,
    Registry,
    String,
)
from featurewell.devcluster import LocalCluster, call
from featurewell.engine.calls import InputColumn, WriteRequest
from featurewell.engine.engine import FeatureEngine
from featurewell.engine.validation import (
    Problem,
    WriteRules,
    check_write,
    entity_key_problem,
    entity_key_problems,
    refusal,
)
from featurewell.errors import DefinitionError, InvalidRequest
from featurewell.store.keys import entity_tags, key_prefix, slot_of
from featurewell.store.online import OnlineStore
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc
from featurewell.values import Ragged
from tests.tools import ServerThread, make_settings

HOUR_US = 3600 * 1_000_000
I64_MAX = 2**63 - 1

sensor = Entity("sensor", join_keys={"sensor_id": String})
readings = FeatureView(
    "readings",
    entity=sensor,
    features=[
        Feature("level", Float32),
        Feature("raw", Float64, allow_non_finite=True),  # NaN means "no signal": allowed here
        Feature("count", Int64),
        Feature("on", Bool),
        Feature("vec", Embedding(4)),
        Feature("recent", ListOf(Int64), max_length=3),
        Feature("label", String),
    ],
)
REGISTRY = Registry.build([sensor, readings])


def now_us() -> int:
    return time.time_ns() // 1000


def row(n: int = 1, **changes: Any) -> dict[str, Any]:
    """Valid features for `n` rows of `readings`, with `changes`."""
    features: dict[str, Any] = {
        "level": np.full(n, 0.5, np.float32),
        "raw": np.full(n, 1.5, np.float64),
        "count": np.arange(n, dtype=np.int64),
        "on": np.ones(n, dtype=bool),
        "vec": np.ones((n, 4), np.float32),
        "recent": [np.array([1, 2], np.int64) for _ in range(n)],
        "label": [f"l{i}" for i in range(n)],
    }
    features.update(changes)
    return features


@pytest.fixture(scope="module")
def vserver(cluster: LocalCluster) -> Iterator[ServerThread]:
    running = ServerThread(make_settings(cluster), REGISTRY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def vclient(vserver: ServerThread) -> Iterator[FeatureClient]:
    with FeatureClient(vserver.address, timeout=5.0) as connected:
        yield connected


def sensor_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def stored(client: FeatureClient, sensor_id: str) -> tuple[int, float, int]:
    """(status, level, event time) of the sensor's row as served."""
    result = client.get_features(
        ["readings:level"], entities={"sensor_id": [sensor_id]}, include_event_timestamps=True
    )
    column = result["readings:level"]
    assert column.event_time_us is not None
    return (
        int(result.statuses("readings:level")[0]),
        float(column.values[0]),
        int(column.event_time_us[0]),
    )


def refused(client: FeatureClient, ids: list[str], times: list[int], features: Any) -> str:
    with pytest.raises(InvalidArgument) as error:
        client.write_features("readings", {"sensor_id": ids}, times, features)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "nothing written" in str(error.value)
    return str(error.value)


@pytest.mark.parametrize(
    ("ahead_us", "message"),
    [
        (None, "event time 9223372036854775807 µs is"),  # i64 max
        (HOUR_US, "s in the future (more than max_future_skew_s 300)"),
    ],
)
def test_future_event_times_are_refused_and_the_row_is_unchanged(
    vclient: FeatureClient, ahead_us: int | None, message: str
) -> None:
    sid = sensor_id("future")
    good_at = now_us()
    assert vclient.write_features("readings", {"sensor_id": [sid]}, [good_at], row()).written == 1
    at = I64_MAX if ahead_us is None else now_us() + ahead_us

    text = refused(vclient, [sid], [at], row(level=np.array([9.0], np.float32)))

    assert "row 0, 'event_time'" in text
    assert message in text
    assert stored(vclient, sid) == (Status.PRESENT, 0.5, good_at)
    later = now_us()  # and later writes are not shadowed: the next one lands
    assert vclient.write_features("readings", {"sensor_id": [sid]}, [later], row()).written == 1


def test_one_bad_row_refuses_the_whole_call_naming_first_rows_and_count(
    vclient: FeatureClient,
) -> None:
    ids = [sensor_id(f"batch{i}") for i in range(8)]
    level = np.full(8, 0.5, np.float32)
    level[[2, 3, 5, 6, 7]] = [np.nan, np.inf, -np.inf, np.nan, np.nan]
    count = np.arange(8, dtype=np.int64)

    text = refused(vclient, ids, [now_us()] * 8, row(8, level=level, count=count))

    assert "refused: 5 problems, nothing written" in text
    assert "row 2, 'level': nan is not a finite number" in text
    assert "row 3, 'level': inf is not a finite number" in text
    assert "row 5, 'level': -inf" in text
    assert "allow_non_finite=True" in text
    result = vclient.get_features(["readings:level"], entities={"sensor_id": ids})
    assert result.count(Status.NOT_FOUND) == 8  # the valid rows were not written either


def test_non_finite_values_are_stored_where_the_feature_allows_them(
    vclient: FeatureClient,
) -> None:
    sid = sensor_id("nan-ok")
    raw = np.array([np.nan], np.float64)
    assert vclient.write_features("readings", {"sensor_id": [sid]}, [now_us()], row(raw=raw))

    result = vclient.get_features(["readings:raw"], entities={"sensor_id": [sid]})
    assert np.isnan(result.values("readings:raw")[0])


def test_float64_too_large_for_a_float32_feature_is_refused(vclient: FeatureClient) -> None:
    sid = sensor_id("overflow")
    level = np.array([1e300], np.float64)  # typed FLOAT64 by the client, sent as 1e300

    text = refused(vclient, [sid], [now_us()], row(level=level))

    assert "row 0, 'level': 1e+300 overflows float32" in text
    assert stored(vclient, sid)[0] == Status.NOT_FOUND


def test_floats_for_an_int_feature_are_refused_not_truncated(vclient: FeatureClient) -> None:
    text = refused(vclient, [sensor_id("f2i")], [now_us()], row(count=np.array([2.7])))
    assert "column 'count': int64 takes no float64 values" in text


@pytest.mark.parametrize("megabytes", [1, 10])
def test_huge_entity_ids_are_refused(
    vclient: FeatureClient, cluster: LocalCluster, megabytes: int
) -> None:
    huge = "u" * (megabytes * 1024 * 1024) + uuid.uuid4().hex

    text = refused(vclient, [huge], [now_us()], row())

    assert f"{megabytes * 1024 * 1024 + 32} bytes, over max_entity_key_bytes 1024" in text
    assert len(text) < 1000  # the id is not echoed back whole
    assert not row_exists(cluster, huge)  # asked of Redis itself: a 10 MB GET is the read side's


def test_reads_of_keys_no_write_could_store_are_refused(vclient: FeatureClient) -> None:
    """No row lives under a key longer than writes accept: a read of one is refused with the
    limit named, and does not reach Redis or the cache. Keys at the limit are read as usual."""
    at_limit = "é" * 512  # 1,024 bytes in UTF-8
    result = vclient.get_features([f"{readings.name}:level"], entities={"sensor_id": [at_limit]})
    assert result.count(Status.NOT_FOUND) == 1
    with pytest.raises(InvalidArgument) as refused_read:
        vclient.get_features(
            [f"{readings.name}:level"], entities={"sensor_id": ["ok", at_limit + "x"]}
        )
    assert "1025 bytes, over max_entity_key_bytes 1024" in str(refused_read.value)


def row_exists(cluster: LocalCluster, sid: str) -> bool:
    (tag,) = entity_tags([[sid]], 1)
    key = key_prefix(readings) + tag + b"}"
    return bool(call(cluster.owner(slot_of(tag)), "EXISTS", key))


@pytest.mark.parametrize("width", [3, 5])
def test_embeddings_of_the_wrong_width_are_refused(vclient: FeatureClient, width: int) -> None:
    vec = np.ones((1, width), np.float32)
    text = refused(vclient, [sensor_id("emb")], [now_us()], row(vec=vec))
    assert f"embedding[4] needs exactly 4 numbers per row, got {width}" in text


def test_lists_over_their_declared_bound_are_refused(vclient: FeatureClient) -> None:
    recent = [np.array([1], np.int64), np.array([1, 2, 3, 4], np.int64)]
    ids = [sensor_id("list0"), sensor_id("list1")]
    text = refused(vclient, ids, [now_us()] * 2, row(2, recent=recent))
    assert "1 problem, nothing written: row 1, 'recent': 4 items, over max_length 3" in text


def test_a_bool_byte_other_than_0_or_1_is_refused(vserver: ServerThread) -> None:
    sid = sensor_id("bool")
    request = build_write_request("readings", {"sensor_id": [sid]}, [now_us()], row())
    (on,) = [c for c in request.features if c.name == "on"]
    on.data = b"\x07"  # a hand-made message: the client never sends this
    with grpc.insecure_channel(vserver.address) as channel:
        stub = pb_grpc.FeatureServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.WriteFeatures(request, timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "row 0, 'on': bool byte 7 is neither 0 (false) nor 1 (true)" in str(
        error.value.details()
    )


# -- the engine's checks, on the same store (paths that are not WriteFeatures) ------------------


def test_strings_and_keys_that_cannot_be_utf8_are_refused(cluster: LocalCluster) -> None:
    ok = sensor_id("ok")

    async def write() -> None:
        store = await OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
        try:
            engine = FeatureEngine(REGISTRY, store)
            assert (await engine.write(_request([ok]))).written == 1  # the same path works
            request = _request([ok, "bad\ud800"], label=np.array(["x", "y\udfff"], object))
            await engine.write(request)
        finally:
            await store.close()

    with pytest.raises(InvalidRequest) as error:
        asyncio.run(write())
    text = str(error.value)
    assert "refused: 2 problems," in text
    assert "row 1, 'sensor_id': entity key value 'bad\\ud800' is not valid Unicode" in text
    assert "row 1, 'label': 'y\\udfff' is not valid Unicode" in text


def test_null_and_oversize_values_in_every_column_kind_are_named() -> None:
    rules = WriteRules(max_entity_key_bytes=8)
    request = _request(
        ["a", "", "0123456789", None],  # type: ignore[list-item]
        count=np.array([1, 2, 2**64 - 1, 3], np.uint64),
        label=np.array(["a", None, 3, "d"], object),
        recent=Ragged(np.array([1.5]), np.array([0, 1, 1, 1, 1], np.int32)),
    )

    problems = check_write(readings, request, rules, now_us())

    said = {(p.row, p.column): p.reason for p in problems}
    assert said[(-1, "recent")].startswith("int64_list takes no float64 elements: convert")
    assert said[(1, "sensor_id")] == "an entity key value is the empty string"
    assert "10 bytes, over max_entity_key_bytes 8" in said[(2, "sensor_id")]
    assert said[(3, "sensor_id")] == "the entity key is null"
    assert said[(2, "count")] == "18446744073709551615 does not fit in int64"
    assert said[(1, "label")] == "null, not a string"
    assert said[(2, "label")] == "3 is int, not a str"
    assert [p.row for p in problems] == sorted(p.row for p in problems)


def test_old_and_non_positive_event_times_are_refused() -> None:
    now = now_us()
    times = np.array([now, 0, -5, 1_700_000_000, now - 20 * 365 * 86_400 * 10**6], np.int64)
    request = _request([f"s{i}" for i in range(5)], times=times)

    problems = check_write(readings, request, WriteRules(), now)

    assert [p.row for p in problems] == [1, 2, 3, 4]
    assert "not a positive time since the epoch" in problems[0].reason
    assert "is it in seconds or ms, not µs?" in problems[2].reason
    # With no age bound at all, a non-positive time is still refused.
    unbounded = WriteRules(max_event_age_us=10**19)
    assert [p.row for p in check_write(readings, request, unbounded, now)] == [1, 2]


def test_a_refusal_names_five_problems_and_counts_the_rest() -> None:
    problems = [Problem(i, "x", "bad") for i in range(12)]
    text = refusal("write to 'v@v1' refused", problems)
    assert text.startswith("write to 'v@v1' refused: 12 problems, nothing written: row 0, 'x'")
    assert text.endswith("row 4, 'x': bad; and 7 more")
    assert refusal("w", problems[:2], total=40).endswith("row 1, 'x': bad; and 38 more")


def test_feature_options_are_checked_with_the_definitions() -> None:
    with pytest.raises(DefinitionError, match="allow_non_finite is for float features"):
        Feature("n", Int64, allow_non_finite=True)
    with pytest.raises(DefinitionError, match="nulls must be one of"):
        Feature("n", Int64, nulls="zero")
    with pytest.raises(DefinitionError, match="max_length is for ListOf features"):
        Feature("n", Embedding(2), max_length=2)
    assert Feature("v", Embedding(2), allow_non_finite=True, nulls="skip_row").nulls == "skip_row"


def _columns(n: int) -> dict[str, Any]:
    values = row(n)
    values["recent"] = Ragged(
        np.arange(2 * n, dtype=np.int64), np.arange(0, 2 * n + 1, 2, dtype=np.int32)
    )
    values["label"] = np.array(values["label"], dtype=object)
    return values


def _request(keys: list[str], times: Any = None, **changes: Any) -> WriteRequest:
    n = len(keys)
    features = _columns(n)
    features.update(changes)
    return WriteRequest(
        "readings",
        {"sensor_id": InputColumn(String.kind, keys)},
        times if times is not None else np.full(n, now_us(), np.int64),
        features,
    )


def test_the_entity_key_limit_is_in_utf8_bytes_exactly() -> None:
    rules = WriteRules(max_entity_key_bytes=1024)
    fits = ["a" * 1024, "ü" * 512, "€" * 341, "k"]
    over = ["a" * 1025, "ü" * 513, "€" * 342]

    assert entity_key_problems(fits, String.kind, rules, "sensor_id") == []
    found = entity_key_problems(fits + over, String.kind, rules, "sensor_id")
    assert [(p.row, p.reason.split(" is ")[-1]) for p in found] == [
        (4, "1025 bytes, over max_entity_key_bytes 1024"),
        (5, "1026 bytes, over max_entity_key_bytes 1024"),
        (6, "1026 bytes, over max_entity_key_bytes 1024"),
    ]
    # The stream checks each event's keys with entity_key_problem: a JSON "\ud800" escape too.
    surrogate = entity_key_problem("a\ud800", rules)
    assert surrogate == "entity key value 'a\\ud800' is not valid Unicode (a lone surrogate?)"
    ints = entity_key_problems([1, 2**63, True], Int64.kind, rules, "n")
    assert [(p.row, p.reason) for p in ints] == [
        (1, "entity key value 9223372036854775808 does not fit in int64"),
        (2, "entity key value True must be a string or an integer"),
    ]


def test_embedding_rows_of_several_lengths_from_python_are_one_clear_problem() -> None:
    request = _request(["a", "b"], vec=[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0, 8.0]])

    problems = check_write(readings, request, WriteRules(), now_us())

    assert [str(p) for p in problems] == [
        "column 'vec': embedding[4] needs 2 rows of one shape, got rows of different lengths"
    ]


def test_event_times_must_be_integers() -> None:
    request = _request(["a"], times=np.array([now_us() + 0.5]))
    (problem,) = check_write(readings, request, WriteRules(), now_us())
    assert str(problem) == "column 'event_time': event times are integer µs, got float64 values"
