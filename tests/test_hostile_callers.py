"""Caller names (`x-featurewell-model`) from hostile clients: validated, counted as "(invalid)"
when bad, and the consumers they create bounded in memory and in Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import redis.cluster

from featurewell.devcluster import LocalCluster
from featurewell.engine.calls import FeatureResult, ServedView
from featurewell.store import consumers as stored
from featurewell.store.codec import RowCodec
from featurewell.store.keys import CONSUMER_CALLS_KEY, CONSUMER_SEEN_KEY
from featurewell.store.online import OnlineStore
from featurewell.telemetry import consumers
from featurewell.telemetry.consumers import INVALID, Consumers, caller_name
from featurewell.v1 import feature_service_pb2 as pb
from tests import defs
from tests.tools import Ids, ServerThread


@pytest.mark.parametrize(
    ("header", "recorded"),
    [
        ("ranker/3.2", "ranker/3.2"),
        (b"ranker/3.2", "ranker/3.2"),
        ("r" * 200, "r" * 200),
        ("r" * 201, INVALID),
        ("", INVALID),
        (b"caf\xc3\xa9", INVALID),  # not ASCII
        (b"\xff\xfe", INVALID),  # not even UTF-8
        ("tab\there", INVALID),
        ("a|b", INVALID),  # the caller/view separator in Redis
        ("(unnamed)", INVALID),  # our own names
    ],
)
def test_caller_names_are_validated(header: str | bytes, recorded: str) -> None:
    assert caller_name(header) == recorded


def test_pairs_per_flush_are_bounded_in_memory() -> None:
    decoded = RowCodec(defs.pair).decode([None])
    result = FeatureResult(1, [], served=[ServedView(defs.pair, decoded, np.ones(1, np.uint8))])
    seen = Consumers(max_pairs=3)
    for i in range(100):
        seen.observe([("x-featurewell-model", f"invented-{i}")], result)
    assert len(seen._calls) == 4  # three callers and the overflow
    assert seen._calls[(consumers.OVERFLOW, "pair@v1")] == 97


@pytest.fixture
def rc(cluster: LocalCluster) -> Iterator[redis.cluster.RedisCluster]:
    host, port = cluster.seeds[0]
    with redis.cluster.RedisCluster(host=host, port=port) as connected:
        yield connected


async def test_stored_pairs_are_bounded_in_redis(
    cluster: LocalCluster, rc: redis.cluster.RedisCluster
) -> None:
    run = uuid.uuid4().hex[:8]
    view = f"hostile-{run}@v1"
    store = await OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
    try:
        room = int(rc.hlen(CONSUMER_CALLS_KEY)) + 2  # room for two new pairs
        calls = {(f"invented-{i}", view): 1 for i in range(5)}
        seen = dict.fromkeys(calls, 1_700_000_000)
        await stored.add(store.cluster, calls, seen, 5.0, max_pairs=room)
        found = {
            pair: got
            for pair, got in (await stored.read(store.cluster, 5.0)).items()
            if pair[1] == view
        }
    finally:
        await store.close()
        fields = [f"{c}|{v}" for c, v in calls] + [f"{stored.OVERFLOW}|{view}"]
        rc.hdel(CONSUMER_CALLS_KEY, *fields)
        rc.hdel(CONSUMER_SEEN_KEY, *fields)
    assert found == {
        ("invented-0", view): (1, 1_700_000_000),
        ("invented-1", view): (1, 1_700_000_000),
        (stored.OVERFLOW, view): (3, 1_700_000_000),
    }


def test_an_invalid_caller_is_served_and_recorded_as_invalid(
    server: ServerThread, ids: Ids
) -> None:
    request = pb.GetFeaturesRequest(
        features=["profile:age"],
        entities={"user_id": pb.Values(strings=pb.StringList(values=[ids("caller")]))},
    )
    hostile = "m" * 5000
    with grpc.insecure_channel(server.address) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/featurewell.v1.FeatureService/GetFeatures"
        )
        reply = call(
            request.SerializeToString(), timeout=5, metadata=(("x-featurewell-model", hostile),)
        )
    assert pb.GetFeaturesResponse.FromString(reply).row_count == 1
    telemetry = server.server.telemetry
    server.run(_settle())
    server.run(telemetry.consumers.flush(server.server.store, timeout=5.0))
    recorded = server.run(consumers.read(server.server.store.cluster))
    callers = {c.caller for c in recorded if c.view == "profile@v2"}
    assert INVALID in callers
    assert hostile not in callers


async def _settle() -> None:
    await asyncio.sleep(0.05)  # telemetry runs 2 ms after the answer
