"""A failover under a near cache: writes move to a node the server's feed was not listening to,
so every stream must reset, the clients must resubscribe, and the new feed must hear the new
master. Its own 3+3 cluster (node timeout 1 s), as the resilience tests that move masters."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from featurewell.client import ClientOptions, FeatureClient, NearCache
from featurewell.devcluster import LocalCluster, call, start_local_cluster
from featurewell.store.keys import entity_tags, slot_of
from tests import defs
from tests.tools import ServerThread, make_settings, wait_until

FEATURES = ["profile:age", "profile:country"]


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    with start_local_cluster(masters=3, replicas_per_master=1, node_timeout_ms=1000) as running:
        yield running


def _age(client: FeatureClient, user: str) -> int:
    return int(client.get_features(FEATURES, {"user_id": [user]}).values("profile:age")[0])


def _hit(client: FeatureClient, user: str, age: int, hits: int) -> bool:
    """Whether `client` reads `age` for `user` and its near cache has answered since `hits`."""
    near = client.near_cache
    assert near is not None
    return _age(client, user) == age and near.stats.hits > hits


def _reads(client: FeatureClient, user: str, age: int) -> bool:
    return _age(client, user) == age


def _replica_of(cluster: LocalCluster, master: int) -> int:
    """The port of `master`'s replica, as the cluster sees it."""
    for port in cluster.ports:
        if port == master:
            continue
        info = call(port, "INFO", "replication").decode()
        if "role:slave" in info and f"master_port:{master}" in info:
            return port
    raise AssertionError(f"no replica of {master}")


def test_a_failover_resets_streams_and_the_new_master_is_heard(own_cluster: LocalCluster) -> None:
    user = "failover-user"
    slot = slot_of(entity_tags([[user]], 1)[0])
    # A long server TTL: a change seen within seconds can only have come from an invalidation.
    server = ServerThread(
        make_settings(own_cluster, near_cache_ttl_s=30.0, store_timeout_ms=500.0),
        defs.registry(),
    )
    metrics = server.server.telemetry.metrics.registry
    near = FeatureClient(
        server.address,
        options=ClientOptions(
            timeout=5.0, near_cache=NearCache(max_ttl_s=30.0, max_resubscribe_s=0.2)
        ),
    )
    try:
        with FeatureClient(server.address, timeout=5.0) as writer:
            defs.write_profiles(writer, [user], ages=[50])
            assert near.near_cache is not None
            stats = near.near_cache.stats
            hits = stats.hits  # the first read subscribes: hits follow once the stream is live
            wait_until(lambda: _age(near, user) == 50 and stats.hits > hits, 15, "a near-cache hit")
            subscriptions = stats.subscriptions

            # A graceful failover (the replica takes over with every write): nothing is lost,
            # but writes for this user now land on a node the feed has never heard.
            old = own_cluster.owner(slot)
            replica = _replica_of(own_cluster, old)
            assert call(replica, "CLUSTER", "FAILOVER") == b"OK"
            wait_until(lambda: own_cluster.owner(slot) == replica, 15, "the replica to take over")
            # The server learns of the new master from a MOVED (docs/near-cache.md, Limits):
            # until then the TTL is the bound.
            wait_until(lambda: _age(writer, user) == 50, 15, "a read through the new master")
            cluster = server.server.service.engine.store.cluster
            # The MOVED first adds the new master beside the old one (the old still owns its
            # other slots); the refresh then drops the old: the map is final when both are seen.
            wait_until(
                lambda: (
                    ("127.0.0.1", replica) in cluster.masters
                    and ("127.0.0.1", old) not in cluster.masters
                ),
                15,
                "the new slot map",
            )
            wait_until(lambda: stats.subscriptions > subscriptions, 15, "the client to resubscribe")
            counted = metrics.get_sample_value(
                "featurewell_near_cache_resets_total", {"reason": "masters_changed"}
            )
            assert counted is not None
            assert counted >= 1
            # The stream that replaced it must hear the new master: cache the current value
            # again, write through the server (it follows the MOVED), and see it long before
            # 30 s. A stream opened on the in-between map is reset once more when the server
            # sees the final one; that attempt proves nothing (the reset brought the change),
            # so it is made again on the stream that follows.
            age = 50
            for _ in range(3):
                hits = stats.hits
                wait_until(
                    functools.partial(_hit, near, user, age, hits),
                    15,
                    "a near-cache hit after the failover",
                    retry_on=(Exception,),
                )
                resets, invalidated = stats.resets, stats.invalidated
                age += 1
                defs.write_profiles(writer, [user], ages=[age])
                wait_until(
                    functools.partial(_reads, near, user, age),
                    10,
                    "a write on the new master to reach the cache",
                )
                if stats.resets == resets:
                    break
            else:
                raise AssertionError("every write after the failover came with a reset")
            # An invalidation on the new stream, not another reset, brought the change.
            assert stats.invalidated > invalidated
    finally:
        near.close()
        server.stop()
