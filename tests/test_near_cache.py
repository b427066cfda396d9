"""The client's near cache end to end (docs/near-cache.md): real servers on the shared cluster,
real writes through them. Server TTLs are long here (30 s) where a test must tell an
invalidation from an expiry: a change seen within seconds can only have come from the stream."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from featurewell.client import (
    AsyncFeatureClient,
    ClientOptions,
    FeatureClient,
    FeatureResult,
    NearCache,
    Status,
    Unavailable,
)
from featurewell.devcluster import LocalCluster
from featurewell.store.keys import key_slot
from tests import defs
from tests.tools import Ids, ServerThread, free_port, make_settings, wait_until

LONG_TTL = NearCache(max_ttl_s=30.0)
FEATURES = ["profile:age", "profile:country", "profile:taste", "profile:recent"]


@pytest.fixture(scope="module")
def near_server(cluster: LocalCluster) -> Iterator[ServerThread]:
    running = ServerThread(make_settings(cluster, near_cache_ttl_s=30.0), defs.registry())
    yield running
    running.stop()


def near_client(address: str, near: NearCache = LONG_TTL, **options: Any) -> FeatureClient:
    return FeatureClient(address, options=ClientOptions(timeout=5.0, near_cache=near, **options))


def age(result: FeatureResult) -> int:
    return int(result.values("profile:age")[0])


def from_near_cache(
    client: FeatureClient, user: str, features: list[str] = FEATURES, **asked: Any
) -> FeatureResult:
    """Read until an answer comes from the near cache (once its subscription is live)."""
    assert client.near_cache is not None
    stats = client.near_cache.stats

    def hit() -> FeatureResult | None:
        before = stats.hits
        result = client.get_features(features, {"user_id": [user]}, **asked)
        return result if stats.hits > before else None

    found = wait_until(hit, 15, "an answer from the near cache")
    assert found is not None
    return found


def test_a_hit_answers_as_the_server_does(
    near_server: ServerThread, client: FeatureClient, ids: Ids
) -> None:
    user = ids("hit")
    defs.write_profiles(client, [user], ages=[30])
    with near_client(near_server.address) as near:
        for stamps in (False, True):
            cached = from_near_cache(near, user, include_event_timestamps=stamps)
            served = client.get_features(
                FEATURES, {"user_id": [user]}, include_event_timestamps=stamps
            )
            assert list(cached) == list(served)
            for name in FEATURES:
                ours, theirs = cached[name], served[name]
                assert ours.statuses.tolist() == theirs.statuses.tolist() == [Status.PRESENT]
                assert [np.asarray(v).tolist() for v in ours.values] == [
                    np.asarray(v).tolist() for v in theirs.values
                ]
                assert (ours.event_time_us is None) is (not stamps)
                if stamps:
                    assert ours.event_time_us is not None
                    assert theirs.event_time_us is not None
                    assert ours.event_time_us.tolist() == theirs.event_time_us.tolist()
            # Shared by every hit, so no caller may change it for the others.
            assert not cached["profile:age"].values.flags.writeable
            assert cached.request_id == ""
            assert cached.fallbacks == []


def test_writes_through_any_server_are_seen_long_before_the_ttl(
    near_server: ServerThread, cluster: LocalCluster, client: FeatureClient, ids: Ids
) -> None:
    user = ids("written")
    with FeatureClient(near_server.address, timeout=5.0) as same_server:
        defs.write_profiles(same_server, [user], ages=[30])
        with near_client(near_server.address) as near:
            assert age(from_near_cache(near, user)) == 30
            # WriteFeatures through the server the near cache subscribes to...
            defs.write_profiles(same_server, [user], ages=[31])
            wait_until(
                lambda: age(near.get_features(FEATURES, {"user_id": [user]})) == 31,
                10,
                "a write through the same server to reach the near cache",
            )
            assert age(from_near_cache(near, user)) == 31
            # ...and through another server (any writer of the cluster: Redis announces it).
            defs.write_profiles(client, [user], ages=[32])
            wait_until(
                lambda: age(near.get_features(FEATURES, {"user_id": [user]})) == 32,
                10,
                "a write through another server to reach the near cache",
            )
            # ...and by any client of Redis itself (an operator deleting the row).
            assert age(from_near_cache(near, user)) == 32
            key = f"fw:profile:v2:{{{user}}}"
            deleted = subprocess.run(
                ["redis-cli", "-p", str(cluster.owner(key_slot(key))), "DEL", key],
                capture_output=True,
                text=True,
                check=True,
            )
            assert deleted.stdout.strip() == "1"
            wait_until(
                lambda: near.get_features(FEATURES, {"user_id": [user]}).count(Status.NOT_FOUND),
                10,
                "a row deleted in Redis to reach the near cache",
            )
            assert near.near_cache is not None
            assert near.near_cache.stats.invalidated >= 3


def test_a_broken_stream_falls_back_to_the_ttl_and_a_reconnect_resubscribes(
    cluster: LocalCluster, client: FeatureClient, ids: Ids
) -> None:
    user = ids("broken")
    defs.write_profiles(client, [user], ages=[40])
    port = free_port()
    first = ServerThread(make_settings(cluster, port=port, near_cache_ttl_s=5.0), defs.registry())
    near = near_client(
        f"127.0.0.1:{port}", NearCache(max_ttl_s=30.0, max_resubscribe_s=0.2), read_attempts=1
    )
    second: ServerThread | None = None
    try:
        assert near.near_cache is not None
        stats = near.near_cache.stats
        assert age(from_near_cache(near, user)) == 40
        first.stop()  # the stream breaks: no invalidation can arrive any more
        defs.write_profiles(client, [user], ages=[41])
        hits = stats.hits
        assert age(near.get_features(FEATURES, {"user_id": [user]})) == 40
        assert stats.hits == hits + 1  # the held answer, within its 5 s TTL
        assert not near.near_cache.live

        def refused() -> bool:
            try:
                near.get_features(FEATURES, {"user_id": [user]})
            except Unavailable:
                return True
            return False

        wait_until(refused, 15, "the held answer to expire (its TTL), sending calls on")
        subscribed = stats.subscriptions
        second = ServerThread(
            make_settings(cluster, port=port, near_cache_ttl_s=30.0), defs.registry()
        )
        wait_until(lambda: stats.subscriptions > subscribed, 15, "the client to resubscribe")
        assert age(from_near_cache(near, user)) == 41
        defs.write_profiles(client, [user], ages=[42])  # the new stream carries invalidations
        wait_until(
            lambda: age(near.get_features(FEATURES, {"user_id": [user]})) == 42,
            10,
            "a write to reach the resubscribed near cache",
        )
    finally:
        near.close()
        if second is not None:
            second.stop()


def test_memory_is_bounded_by_entries_and_bytes(
    near_server: ServerThread, client: FeatureClient, ids: Ids
) -> None:
    users = [ids(f"bounded{n}") for n in range(12)]
    defs.write_profiles(client, users, ages=list(range(12)))
    with near_client(near_server.address, NearCache(max_entries=4, max_ttl_s=30.0)) as near:
        assert near.near_cache is not None
        from_near_cache(near, users[0])
        for user in users:
            near.get_features(FEATURES, {"user_id": [user]})
        assert len(near.near_cache) == 4
        assert near.near_cache.stats.evicted == 8
        one_entry = near.near_cache.bytes // 4
    with near_client(
        near_server.address, NearCache(max_bytes=3 * one_entry + 10, max_ttl_s=30.0)
    ) as near:
        assert near.near_cache is not None
        from_near_cache(near, users[0])
        for user in users:
            near.get_features(FEATURES, {"user_id": [user]})
        assert near.near_cache.bytes <= 3 * one_entry + 10
        assert 0 < len(near.near_cache) <= 3
        # What it keeps is still answered right.
        assert age(from_near_cache(near, users[-1])) == 11


def test_a_held_value_turns_stale_past_its_max_age(
    near_server: ServerThread, client: FeatureClient, ids: Ids
) -> None:
    user = ids("ageing")
    # profile@v2 has a max age of 1 h: this row turns stale 2 s from now.
    defs.write_profiles(client, [user], ages=[50], at_us=defs.now_us() - 3_598_000_000)
    with near_client(near_server.address) as near:
        assert near.near_cache is not None
        held = from_near_cache(near, user)
        assert held.statuses("profile:age").tolist() == [Status.PRESENT]
        misses = near.near_cache.stats.misses

        def stale_answer() -> FeatureResult | None:
            result = near.get_features(FEATURES, {"user_id": [user]})
            return result if result.stale_count else None

        stale = wait_until(stale_answer, 15, "the held value to turn STALE")
        assert stale is not None
        assert near.near_cache.stats.misses == misses  # answered by the near cache
        assert stale.statuses("profile:age").tolist() == [Status.STALE]
        served = client.get_features(FEATURES, {"user_id": [user]})
        assert served.statuses("profile:age").tolist() == [Status.STALE]  # as the server says


def test_answers_that_may_not_be_kept_go_to_the_server(
    near_server: ServerThread, client: FeatureClient, ids: Ids
) -> None:
    user = ids("uncached")
    defs.write_profiles(client, [user], ages=[60])
    defs.write_items(client, [7])
    with near_client(near_server.address) as near:
        assert near.near_cache is not None
        stats = near.near_cache.stats
        from_near_cache(near, user)
        hits, admitted = stats.hits, stats.admitted
        # Several entities in one call, an on-demand output, strict: all answered by the server
        # every time (the on-demand one is looked up, never kept).
        for _ in range(3):
            near.get_features(["profile:age"], {"user_id": [user, ids("other")]})
            near.get_features(["affinity:affinity"], {"user_id": [user], "item_id": [7]})
            near.get_features(["profile:age"], {"user_id": [user]}, strict=True)
        assert (stats.hits, stats.admitted) == (hits, admitted)


def test_the_async_client_shares_the_near_cache(
    near_server: ServerThread, client: FeatureClient, ids: Ids
) -> None:
    user = ids("async")
    defs.write_profiles(client, [user], ages=[70])

    async def read() -> tuple[int, int]:
        options = ClientOptions(timeout=5.0, near_cache=LONG_TTL)
        async with AsyncFeatureClient(near_server.address, options=options) as near:
            assert near.near_cache is not None
            for _ in range(1500):
                result = await near.get_features(FEATURES, {"user_id": [user]})
                if near.near_cache.stats.hits:
                    return age(result), near.near_cache.stats.hits
                await asyncio.sleep(0.01)
        raise AssertionError("the async client never answered from its near cache")

    assert asyncio.run(read()) == (70, 1)
