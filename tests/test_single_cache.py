"""Kept answers to hot single-entity calls (serving/single_cache.py), through real servers on the
real cluster: a kept answer is byte for byte the answer a server without a cache fetches, a write
from anywhere ends it, a row past its max age is answered STALE by the engine, and the caller's
permissions are checked on every call."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from featurewell.client import FeatureClient, PermissionDenied, Status
from featurewell.devcluster import LocalCluster, call
from featurewell.serving.single_cache import SingleAnswers
from featurewell.v1 import feature_service_pb2 as pb
from tests import auth_tools, defs
from tests.auth_tools import RANKER, WRITER
from tests.test_cache import _key, age_of
from tests.tools import Ids, ServerThread, make_settings, wait_until

PROFILE = ["profile:*"]
METHOD = "/featurewell.v1.FeatureService/GetFeatures"


@pytest.fixture(scope="module")
def servers(cluster: LocalCluster) -> Iterator[tuple[ServerThread, ServerThread, ServerThread]]:
    """Two cached servers (long TTLs: only invalidations end an entry early) and one without a
    cache, whose every answer is fetched."""
    registry = defs.registry()
    started = [
        ServerThread(make_settings(cluster, cache_ttl_s=60.0, cache_admit_after=1), registry),
        ServerThread(make_settings(cluster, cache_ttl_s=60.0), registry),
        ServerThread(make_settings(cluster, cache_entries=0), registry),
    ]
    yield started[0], started[1], started[2]
    for server in started:
        server.stop()


def _single(server: ServerThread) -> SingleAnswers:
    return server.server.service.single


def _raw(server: ServerThread, request: pb.GetFeaturesRequest) -> bytes:
    """The server's answer as sent on the wire."""
    with grpc.insecure_channel(server.address) as channel:
        method: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        return bytes(method(request.SerializeToString(), timeout=5))


def _request(user: str, features: list[str], **flags: bool) -> pb.GetFeaturesRequest:
    values = pb.Values(strings=pb.StringList(values=[user]))
    request = pb.GetFeaturesRequest(features=features, entities={"user_id": values})
    for flag, on in flags.items():
        setattr(request, flag, on)
    return request


@pytest.mark.parametrize(
    ("features", "flags"),
    [
        (PROFILE, {}),  # every type: fixed, strings, lists, an embedding
        (["profile:age", "profile:taste"], {"include_event_timestamps": True}),
        (["profile:country", "profile:score"], {"typed_values": True}),
    ],
)
def test_a_kept_answer_is_the_fetched_answer_byte_for_byte(
    servers: tuple[ServerThread, ServerThread, ServerThread],
    ids: Ids,
    features: list[str],
    flags: dict[str, bool],
) -> None:
    cached, _, uncached = servers
    user = ids("kept")
    with FeatureClient(cached.address) as client:
        defs.write_profiles(client, [user], ages=[41])
    request = _request(user, features, **flags)
    single = _single(cached)
    served = single.served
    answers = [_raw(cached, request) for _ in range(4)]  # fetched, cached, learned, kept
    assert single.served >= served + 1
    fetched = _raw(uncached, request)
    assert answers == [fetched] * 4
    reply = pb.GetFeaturesResponse.FromString(fetched)
    assert reply.row_count == 1
    assert len(reply.columns) >= 2


def test_a_composite_entity_with_two_views_is_kept_and_matches(
    servers: tuple[ServerThread, ServerThread, ServerThread], ids: Ids
) -> None:
    cached, _, uncached = servers
    user = ids("pair")
    with FeatureClient(cached.address) as client:
        defs.write_profiles(client, [user], ages=[23])
        client.write_features(
            "pair",
            entities={"user_id": [user], "item_id": [7]},
            event_timestamps_us=[defs.now_us()],
            features={"progress": np.array([0.75], dtype=np.float32)},
        )
    request = _request(user, ["pair:progress", "profile:age", "profile@v1:age"])
    request.entities["item_id"].int64s.values.append(7)
    single = _single(cached)
    served = single.served
    answers = [_raw(cached, request) for _ in range(4)]
    fetched = _raw(uncached, request)
    assert answers == [fetched] * 4
    # profile@v1 has no row for the user (NOT_FOUND): an answer the engine gives, never kept.
    assert single.served == served
    request.features.remove("profile@v1:age")
    answers = [_raw(cached, request) for _ in range(4)]
    assert single.served > served  # two groups (user_item, user), each row fresh: kept
    assert answers == [_raw(uncached, request)] * 4


def test_a_write_from_anywhere_ends_a_kept_answer(
    servers: tuple[ServerThread, ServerThread, ServerThread], cluster: LocalCluster, ids: Ids
) -> None:
    first, second, _ = servers
    user = ids("written")
    single = _single(first)
    with FeatureClient(first.address) as a, FeatureClient(second.address) as b:

        def kept(age: int) -> None:
            served = single.served
            for _ in range(4):
                assert age_of(a, user) == (age, Status.PRESENT)
            assert single.served > served  # the last calls were kept answers

        defs.write_profiles(a, [user], ages=[30])
        kept(30)
        defs.write_profiles(a, [user], ages=[31])  # through this server: gone at once
        assert age_of(a, user) == (31, Status.PRESENT)
        kept(31)
        defs.write_profiles(b, [user], ages=[32])  # another server: Redis tracking tells
        # 30 s for Redis's invalidation on a loaded machine: well inside the 60 s TTL.
        wait_until(lambda: age_of(a, user) == (32, Status.PRESENT), 30, "the age written via b")
        kept(32)
        key, slot = _key(user)
        assert call(cluster.owner(slot), "DEL", key) == 1  # any Redis client
        wait_until(lambda: age_of(a, user) == (-1, Status.NOT_FOUND), 30, "the key deleted")
        served = single.served
        for _ in range(3):  # a row known missing is answered by the engine, never kept
            assert age_of(a, user) == (-1, Status.NOT_FOUND)
        assert single.served == served


def test_a_kept_answer_is_not_served_past_its_max_age(
    servers: tuple[ServerThread, ServerThread, ServerThread], ids: Ids
) -> None:
    cached, _, _ = servers
    user = ids("ageing")
    single = _single(cached)
    with FeatureClient(cached.address) as client:
        # Fresh for another 3 s (profile's max age is an hour: time for the write and four
        # reads on a loaded machine); the cache TTL is a minute.
        at_us = defs.now_us() - 3600 * 1_000_000 + 3_000_000
        defs.write_profiles(client, [user], ages=[50], at_us=at_us)
        served = single.served
        for _ in range(4):
            assert age_of(client, user) == (50, Status.PRESENT)
        assert single.served > served
        wait_until(lambda: age_of(client, user) == (50, Status.STALE), 30, "the row to go stale")
        served = single.served
        for _ in range(3):
            assert age_of(client, user) == (50, Status.STALE)
        assert single.served == served


@pytest.fixture(scope="module")
def stack(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[auth_tools.AuthStack]:
    yield from auth_tools.auth_stack(cluster, tmp_path_factory.mktemp("single-auth"))


def test_permissions_are_checked_on_every_kept_answer(
    stack: auth_tools.AuthStack, ids: Ids
) -> None:
    user = ids("secret")
    single = _single(stack.mtls)
    features = ["secret:score"]
    with (
        stack.mtls_client(stack.pki.client(uri=RANKER)) as ranker,
        stack.mtls_client(stack.pki.client(dns=WRITER)) as writer,
    ):
        writer.write_features(
            "secret",
            entities={"user_id": [user]},
            event_timestamps_us=[defs.now_us()],
            features={"score": np.array([0.25], dtype=np.float32), "ssn": ["1"]},
        )
        served = single.served
        for _ in range(4):
            got = ranker.get_features(features, {"user_id": [user]})
            assert got.values(features[0]).tolist() == [0.25]
        assert single.served > served  # the ranker's same request is now a kept answer
        with pytest.raises(PermissionDenied, match=f"principal '{WRITER}'"):
            writer.get_features(features, {"user_id": [user]})  # the same bytes, refused


def test_a_hot_entity_served_from_kept_answers_never_expires_under_its_callers(
    cluster: LocalCluster, ids: Ids
) -> None:
    """Kept answers bypass the cache's lookup, where refresh-ahead notes late rows: in the last
    part of a TTL the engine answers instead, so the row is refreshed and every call past the
    first TTL still finds it in the cache (no miss, no wait for Redis)."""
    server = ServerThread(
        make_settings(  # a store timeout a loaded machine's refresh reads always meet
            cluster,
            cache_ttl_s=1.0,
            cache_admit_after=1,
            cache_refresh_ahead=0.5,
            store_timeout_ms=1000,
        ),
        defs.registry(),
    )
    try:
        user = ids("refreshed")
        with FeatureClient(server.address) as client:
            defs.write_profiles(client, [user], ages=[33])
            assert age_of(client, user) == (33, Status.PRESENT)  # fetched, and cached
            cache = server.server.store.cache
            assert cache is not None
            wait_until(lambda: len(cache) == 1, 30, "the row to be cached")
            misses, single = cache.stats.misses, _single(server)
            ended = time.monotonic() + 2.5  # two and a half TTLs
            while time.monotonic() < ended:
                assert age_of(client, user) == (33, Status.PRESENT)
                time.sleep(0.005)
            assert cache.stats.misses == misses  # never expired
            assert cache.stats.refreshes >= 2
            assert single.served > 0  # most calls were still kept answers
    finally:
        server.stop()
