"""Every bad input gets the right gRPC status and a message that says what to fix, and loses
nothing: the server keeps serving, and a rejected write stores nothing."""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np
import pytest

from featurewell.app import start_server
from featurewell.client import (
    ClientOptions,
    FallbackReason,
    FeatureClient,
    FeatureClientError,
    Status,
)
from featurewell.devcluster import LocalCluster, call
from featurewell.errors import StoreUnavailable
from featurewell.settings import Settings
from featurewell.store.keys import entity_tags, slot_of
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc
from tests import defs
from tests.tools import Ids, ServerThread, sleep_node, wait_until


def _code(error: pytest.ExceptionInfo[FeatureClientError]) -> grpc.StatusCode:
    return error.value.code


@pytest.mark.parametrize(
    ("features", "entities", "context", "code", "message"),
    [
        (["nope:x"], {"user_id": ["u"]}, None, grpc.StatusCode.NOT_FOUND, "no feature view 'nope'"),
        (
            ["profile:nope"],
            {"user_id": ["u"]},
            None,
            grpc.StatusCode.NOT_FOUND,
            "has no feature 'nope'; it has ['age'",
        ),
        (
            ["profile@v9:age"],
            {"user_id": ["u"]},
            None,
            grpc.StatusCode.NOT_FOUND,
            "has no version 9; it has [1, 2]",
        ),
        (
            ["profile"],
            {"user_id": ["u"]},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "malformed: use 'view:feature'",
        ),
        (
            ["affinity@v2:affinity"],
            {"user_id": ["u"]},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "on-demand transforms have no versions",
        ),
        ([], {"user_id": ["u"]}, None, grpc.StatusCode.INVALID_ARGUMENT, "no features requested"),
        (
            ["profile:age"],
            {"usr_id": ["u"]},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown entity key 'usr_id'; known keys: ['item_id', 'user_id']",
        ),
        (["profile:age"], {}, None, grpc.StatusCode.INVALID_ARGUMENT, "need entity key 'user_id'"),
        (
            ["item_stats:popularity"],
            {"item_id": ["i1"]},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "entity key 'item_id' is int64; got string values",
        ),
        (
            ["profile:age"],
            {"user_id": [1, 2]},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "entity key 'user_id' is string; got int64 values",
        ),
        (
            ["pair:progress"],
            {"user_id": ["a", "b"], "item_id": [1, 2, 3]},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "column lengths must be 1 (broadcast) or 3",
        ),
        (["profile:age"], {"user_id": []}, None, grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
        (
            ["profile:age"],
            {"user_id": [""]},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "empty string value",
        ),
        (
            ["profile:age"],
            {"user_id": [f"u{i}" for i in range(2001)]},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "batch of 2001 rows exceeds the limit of 2000",
        ),
        (
            ["birth:adult"],
            {"user_id": ["u"]},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "need request context 'year' (int64)",
        ),
        (
            ["birth:adult"],
            {"user_id": ["u"]},
            {"year": ["2026"]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "context 'year' is int64; got string values",
        ),
    ],
)
def test_bad_get_requests(
    client: FeatureClient,
    features: list[str],
    entities: dict[str, Any],
    context: dict[str, Any] | None,
    code: grpc.StatusCode,
    message: str,
) -> None:
    with pytest.raises(FeatureClientError) as error:
        client.get_features(features, entities=entities, context=context)
    assert _code(error) == code
    assert message in str(error.value)


def test_entity_column_without_values_is_rejected(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.FeatureServiceStub(channel)
        request = pb.GetFeaturesRequest(features=["profile:age"], entities={"user_id": pb.Values()})
        with pytest.raises(grpc.RpcError) as error:
            stub.GetFeatures(request, timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entity key 'user_id' has no values" in (error.value.details() or "")


def test_too_many_feature_references(client: FeatureClient) -> None:
    with pytest.raises(FeatureClientError) as error:
        client.get_features(["profile:age"] * 1001, entities={"user_id": ["u"]})
    assert _code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceed the limit of 1000" in str(error.value)


def test_deadline_shorter_than_the_margin(server: ServerThread) -> None:
    # A server whose answer margin exceeds any deadline the client could send.
    request = pb.GetFeaturesRequest(
        features=["profile:age"],
        entities={"user_id": pb.Values(strings=pb.StringList(values=["u"]))},
    )
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.FeatureServiceStub(channel)
        service = server.server.service
        original = service.calls.margin.base_s
        service.calls.margin.base_s = 10.0
        try:
            with pytest.raises(grpc.RpcError) as error:
                stub.GetFeatures(request, timeout=5)
        finally:
            service.calls.margin.base_s = original
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "raise the deadline" in (error.value.details() or "")


@pytest.mark.parametrize(
    ("view", "features", "code", "message"),
    [
        ("nope", {}, grpc.StatusCode.NOT_FOUND, "no feature view 'nope'"),
        ("pair@vX", {}, grpc.StatusCode.INVALID_ARGUMENT, "write 'view' or 'view@v2'"),
        ("pair", {}, grpc.StatusCode.INVALID_ARGUMENT, "send every feature; missing ['progress']"),
        (
            "pair",
            {"progress": np.array([1], np.float32), "bogus": np.array([1], np.int64)},
            grpc.StatusCode.NOT_FOUND,
            "has no features ['bogus']",
        ),
        (
            "pair",
            {"progress": np.array([1], np.int64)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "column 'progress': float32 takes no int64 values",
        ),
    ],
)
def test_bad_writes_store_nothing(
    client: FeatureClient,
    ids: Ids,
    view: str,
    features: dict[str, Any],
    code: grpc.StatusCode,
    message: str,
) -> None:
    user = ids("bad-write")
    with pytest.raises(FeatureClientError) as error:
        client.write_features(
            view,
            entities={"user_id": [user], "item_id": [1]},
            event_timestamps_us=[defs.now_us()],
            features=features,
        )
    assert _code(error) == code, str(error.value)
    assert message in str(error.value)
    result = client.get_features(["pair:progress"], entities={"user_id": [user], "item_id": [1]})
    assert result.statuses("pair:progress").tolist() == [Status.NOT_FOUND]


def test_write_with_mismatched_buffer_is_rejected(
    client: FeatureClient, server: ServerThread
) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.FeatureServiceStub(channel)
        request = pb.WriteFeaturesRequest(
            view="pair",
            entities={
                "user_id": pb.Values(strings=pb.StringList(values=["u"])),
                "item_id": pb.Values(int64s=pb.Int64List(values=[1])),
            },
            event_timestamps=[defs.now_us()],
            features=[
                pb.FeatureColumn(
                    name="progress", type=pb.VALUE_TYPE_FLOAT32, length=1, data=b"\x00\x00"
                )
            ],
        )
        with pytest.raises(grpc.RpcError) as error:
            stub.WriteFeatures(request, timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 bytes of data, expected 4" in (error.value.details() or "")


def test_write_needs_positive_timestamps_and_matching_keys(client: FeatureClient) -> None:
    features = {"progress": np.array([1], np.float32)}
    with pytest.raises(FeatureClientError, match="event time 0 µs is not a positive time"):
        client.write_features("pair", {"user_id": ["u"], "item_id": [1]}, [0], features)
    with pytest.raises(FeatureClientError, match="entity key 'item_id' has 2 values for 1 rows"):
        client.write_features("pair", {"user_id": ["u"], "item_id": [1, 2]}, [5], features)
    with pytest.raises(FeatureClientError, match="needs entity key 'item_id'"):
        client.write_features("pair", {"user_id": ["u"]}, [5], features)


def test_server_still_serves_after_bad_requests(client: FeatureClient, ids: Ids) -> None:
    user = ids("after")
    defs.write_profiles(client, [user], ages=[44])
    for _ in range(3):
        with pytest.raises(FeatureClientError):
            client.get_features(["profile:nope"], entities={"user_id": [user]})
    assert client.get_features(["profile:age"], entities={"user_id": [user]})[
        "profile:age"
    ].values.tolist() == [44]


async def test_unreachable_redis_at_startup_fails_before_listening() -> None:
    settings = Settings.load(environ={}).with_changes(
        redis=(("127.0.0.1", 1),), port=0, connect_timeout_s=0.5, redis_wait_at_start=False
    )
    # (By default it starts NOT_SERVING instead: tests/test_startup.py.)
    with pytest.raises(StoreUnavailable, match=r"Redis Cluster unreachable.*127\.0\.0\.1:1"):
        await start_server(settings, defs.registry())


def test_slow_store_falls_back_or_is_unavailable_or_deadline_exceeded(
    server: ServerThread, cluster: LocalCluster, ids: Ids, caplog: pytest.LogCaptureFixture
) -> None:
    # One attempt per call: this test reads the server's own answer, not the client's retries.
    client = FeatureClient(server.address, options=ClientOptions(read_attempts=1))
    user = ids("slow")
    defs.write_profiles(client, [user], ages=[5])
    (tag,) = entity_tags([[user]], 1)
    port = next(p for p in cluster.masters if _owns(p, slot_of(tag)))
    asleep_s = 2.0  # the three calls below fit well inside it, on a loaded machine too
    sleeper = sleep_node(port, asleep_s)
    try:
        # Non-strict: answered within the server's cap (50 ms), the value flagged as a fallback.
        started = time.monotonic()
        degraded = client.get_features(["profile:age"], entities={"user_id": [user]}, timeout=5)
        answered_in = time.monotonic() - started
        # Strict: the server's own cap expires first: UNAVAILABLE, worth retrying elsewhere.
        with pytest.raises(FeatureClientError) as capped:
            client.get_features(
                ["profile:age"], entities={"user_id": [user]}, strict=True, timeout=5
            )
        # Strict, and the caller's 30 ms deadline is shorter than the cap: DEADLINE_EXCEEDED.
        with pytest.raises(FeatureClientError) as bounded:
            client.get_features(
                ["profile:age"], entities={"user_id": [user]}, strict=True, timeout=0.03
            )
    finally:
        sleeper.join()  # and asserts the node did sleep
        # The timeouts opened the shared server's breaker for that node: wait for a trial call
        # to close it, so the next module's calls there are not refused (circuit_open).
        wait_until(
            lambda: (
                client.get_features(
                    ["profile:age"], entities={"user_id": [user]}, strict=True, timeout=5
                ).rows
                == 1
            ),
            30,
            "the node's breaker to close again",
            interval=0.05,
            retry_on=(FeatureClientError,),
        )
    assert degraded.statuses("profile:age").tolist() == [Status.FALLBACK]
    assert degraded.values("profile:age").tolist() == [-1]  # the definition's default
    assert [(f.view, f.reason, f.from_cache, f.from_default) for f in degraded.fallbacks] == [
        ("profile@v2", FallbackReason.STORE_TIMEOUT, 0, 1)
    ]
    assert answered_in < asleep_s - 0.5  # not held until the node woke up
    assert capped.value.code == grpc.StatusCode.UNAVAILABLE
    assert "strict call: 1 rows could not be read from Redis" in str(capped.value)
    assert "(timeout; the server log names the node)" in str(capped.value)
    assert f":{port}" not in str(capped.value)  # node addresses stay in the server's log
    assert f"127.0.0.1:{port}: timeout" in caplog.text
    assert bounded.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def _owns(port: int, slot: int) -> bool:
    return any(
        start <= slot <= end
        for start, end, *_ in call(port, "CLUSTER", "SLOTS")
        if int(_[0][1]) == port
    )
