"""The hot-key cache: its policy on its own, then through a real server on the real cluster
(admission, TTL capped by max age, invalidation by local and remote writes, cache fallbacks)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from featurewell.client import FallbackReason, FeatureClient, Status
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster, call
from featurewell.engine.plan import Planner
from featurewell.store.breaker import Breaker, BreakerPolicy, BreakerState
from featurewell.store.cache import MISS, CachePolicy, HotKeyCache
from featurewell.store.keys import entity_tags, key_prefix, slot_of
from tests import defs
from tests.tools import Ids, ServerThread, make_settings, scrape_until, sleep_node, wait_until

# -- the policy --------------------------------------------------------------------------------


def _cache(**policy: Any) -> HotKeyCache:
    return HotKeyCache(CachePolicy(**policy))


def _found(cache: HotKeyCache, group: Any, tags: list[bytes], now: float) -> list[Any]:
    found, missed = cache.lookup(group, tags, now)
    assert missed.tolist() == [row is MISS for row in found]
    return found


G = (b"fw:v:v1:{",)  # a group of one view: rows are GET replies
PAIR = (b"fw:a:v1:{", b"fw:b:v1:{")  # two views read together: rows are MGET replies


def test_admits_only_rows_fetched_often_enough() -> None:
    cache = _cache(admit_after=3)
    picks = [cache.select(G, [b"hot", b"cold"]) for _ in range(2)]
    picks += [cache.select(G, [b"hot"])]  # the third fetch of hot: now it is worth caching
    assert picks == [[], [], [0]]
    cache.offer(G, [b"hot"], [b"h"], 10.0, now=0.0, since=cache.sequence)
    assert _found(cache, G, [b"hot", b"cold"], 1.0) == [b"h", MISS]
    assert (cache.stats.admissions, cache.stats.hits, cache.stats.misses) == (1, 1, 1)
    _found(cache, G, [], 20.0)  # expired, kept as a fallback...
    assert cache.select(G, [b"hot"]) == [0]  # ...and refetched for the cache at once


def test_bounded_by_entries_and_bytes_expired_first_then_oldest() -> None:
    cache = _cache(admit_after=1, max_entries=3)
    cache.offer(G, [b"a", b"b", b"c"], [b"1", b"2", b"3"], 10.0, now=0.0, since=0)
    cache.offer(G, [b"d"], [b"4"], 10.0, now=0.0, since=0)
    assert _found(cache, G, [b"a", b"b", b"c", b"d"], 1.0) == [MISS, b"2", b"3", b"4"]
    assert (len(cache), cache.stats.evictions) == (3, 1)
    cache.offer(PAIR, [b"e"], [[b"5", None]], 1.0, now=2.0, since=0)
    _found(cache, G, [], 3.5)  # e has expired: it is the first to go, before older fresh rows
    cache.offer(G, [b"f"], [b"6"], 10.0, now=3.5, since=0)
    assert _found(cache, G, [b"b", b"c", b"d", b"f"], 3.6) == [MISS, b"3", b"4", b"6"]
    assert _found(cache, PAIR, [b"e"], 3.6) == [MISS]

    small = _cache(admit_after=1, max_bytes=1000)
    small.offer(G, [b"k%d" % i for i in range(20)], [b"x" * 100] * 20, 10.0, now=0.0, since=0)
    assert 0 < small.bytes <= 1000
    assert 0 < len(small) < 20


def test_ttl_then_fallback_horizon() -> None:
    cache = _cache(admit_after=1, fallback_s=60.0)
    cache.offer(G, [b"k"], [None], 5.0, now=100.0, since=0)  # Redis had no row: cached as such
    assert _found(cache, G, [b"k"], 104.0) == [None]  # a fresh "no row"
    assert _found(cache, G, [b"k"], 105.5) == [MISS]  # past its TTL it no longer answers reads
    assert cache.fallback(G, b"k", 160.0) is None  # but it can still stand in for Redis
    assert cache.fallback(G, b"k", 165.6) is MISS  # until the horizon ends


def test_writes_invalidate_every_group_holding_the_key() -> None:
    cache = _cache(admit_after=1)
    cache.offer(PAIR, [b"t1", b"t2"], [[b"a", b"b"], [b"c", b"d"]], 10.0, now=0.0, since=0)
    cache.offer((PAIR[1],), [b"t1"], [b"b"], 10.0, now=0.0, since=0)
    cache.invalidate([b"fw:b:v1:{t1}"])  # the Redis key of view b, entity t1
    assert _found(cache, PAIR, [b"t1", b"t2"], 1.0) == [MISS, [b"c", b"d"]]
    assert _found(cache, (PAIR[1],), [b"t1"], 1.0) == [MISS]
    assert cache.fallback(PAIR, b"t1", 1.0) is MISS  # outdated: not even a fallback


def test_a_read_that_raced_a_write_does_not_cache_its_old_value() -> None:
    cache = _cache(admit_after=1)
    since = cache.sequence  # a read starts...
    cache.invalidate([G[0] + b"k}"])  # ...a write of k lands and is announced...
    cache.offer(G, [b"k", b"other"], [b"old", b"o"], 10.0, now=0.0, since=since)  # ...it ends
    assert _found(cache, G, [b"k", b"other"], 1.0) == [MISS, b"o"]


def test_refreshed_entries_stay_in_place_and_the_eviction_order_stays_bounded() -> None:
    """Past its TTL an entry is fetched again and re-dated in place, each refresh adding a
    reference to the eviction order: compacting it keeps that bounded, and eviction still takes
    an expired entry before a fresh one."""
    cache = _cache(admit_after=1, max_entries=50)
    tags = [b"t%d" % n for n in range(50)]
    for round_ in range(200):  # every entry expires and is fetched again, 200 times
        assert cache.select(G, tags) == list(range(50))  # (admitted at once; then: held)
        cache.offer(G, tags, [b"v%d" % round_] * 50, 1.0, now=2.0 * round_, since=cache.sequence)
    assert (len(cache), cache.stats.admissions, cache.stats.evictions) == (50, 50, 0)
    assert cache.bytes == sum(entry[2] for entry in cache._groups[G].held.values())
    assert cache._order_tags <= 2 * len(cache) + 1024  # 10,000 refreshes, references bounded
    assert _found(cache, G, tags[:2], 398.5) == [b"v199", b"v199"]
    cache.offer(G, tags[:1], [b"new"], 10.0, now=399.5, since=cache.sequence)  # t0 fresh again
    cache.offer(G, [b"extra"], [b"x"], 10.0, now=400.0, since=cache.sequence)  # one over
    assert cache.stats.evictions == 1
    assert _found(cache, G, [b"t0", b"extra"], 400.5) == [b"new", b"x"]  # an expired one left


def test_lost_invalidations_keep_entries_only_as_fallbacks() -> None:
    cache = _cache(admit_after=1)
    now = time.monotonic()  # `expire_all` reads the clock, as the store's reads do
    cache.offer(G, [b"k"], [b"v"], 10.0, now=now, since=0)
    cache.expire_all()
    assert _found(cache, G, [b"k"], now + 1.0) == [MISS]
    assert cache.fallback(G, b"k", now + 1.0) == b"v"
    assert cache.select(G, [b"k"]) == [0]  # fetched again (tracked) at the next read


def test_frequency_counts_stay_bounded() -> None:
    cache = _cache(admit_after=5, max_entries=10)
    for i in range(10_000):  # a long tail of keys seen once
        assert cache.select(G, [b"tail%d" % i]) == []
    assert sum(len(rows.seen) for rows in cache._groups.values()) <= 1024 + 1


def test_breaker_opens_after_failures_and_closes_after_a_good_trial() -> None:
    breaker = Breaker(BreakerPolicy(failures=2, open_s=1.0))

    def state() -> BreakerState:
        return breaker.state

    assert breaker.allow(0.0)
    assert not breaker.failure(0.0)
    assert breaker.failure(0.1)  # the second failure in a row opens it
    assert state() is BreakerState.OPEN
    assert not breaker.allow(0.5)
    assert breaker.allow(1.2)  # the first caller after the open period is the trial...
    assert state() is BreakerState.HALF_OPEN
    assert not breaker.allow(1.3)
    assert breaker.failure(1.4)  # a failed trial opens it again
    assert not breaker.allow(2.0)
    assert breaker.allow(2.5)
    breaker.success()
    assert state() is BreakerState.CLOSED
    assert breaker.allow(2.6)
    assert breaker.opened == 2


def test_a_trial_that_never_reports_does_not_block_recovery() -> None:
    breaker = Breaker(BreakerPolicy(failures=1, open_s=1.0))
    breaker.failure(0.0)
    assert breaker.allow(1.1)  # trial started, its call then cancelled: no report
    assert not breaker.allow(1.5)
    assert breaker.allow(2.2)


def test_cache_ttl_never_exceeds_a_fraction_of_maxage_of(registry: Registry) -> None:
    planner = Planner(registry, cache_ttl_s=1000.0, cache_ttl_fraction=0.1)
    assert (defs.profile.max_age, defs.item_stats.max_age) == (
        timedelta(hours=1),
        timedelta(days=1),
    )
    assert planner.read_of(defs.profile).cache_ttl_s == 360.0  # 10% of an hour
    assert planner.read_of(defs.item_stats).cache_ttl_s == 1000.0  # 10% of a day is more
    assert Planner(registry).read_of(defs.profile).cache_ttl_s == 0.0  # cache off


# -- through a real server ---------------------------------------------------------------------


def _key(user: str) -> tuple[bytes, int]:
    (tag,) = entity_tags([[user]], 1)
    return key_prefix(defs.profile) + tag + b"}", slot_of(tag)


def age_of(client: FeatureClient, user: str) -> tuple[int, int]:
    """The user's profile:age and its status (test_cache_columnar reads them too)."""
    result = client.get_features(["profile:age"], entities={"user_id": [user]})
    return int(result.values("profile:age")[0]), int(result.statuses("profile:age")[0])


def test_hot_rows_are_served_from_memory_and_writes_invalidate_them(
    cluster: LocalCluster, registry: Registry, ids: Ids
) -> None:
    # Two servers with long TTLs: only invalidations can make them see a new value quickly.
    first = ServerThread(make_settings(cluster, cache_ttl_s=60.0), registry)
    second = ServerThread(make_settings(cluster, cache_ttl_s=60.0), registry)
    try:
        user = ids("hot")
        with FeatureClient(first.address) as a, FeatureClient(second.address) as b:
            defs.write_profiles(a, [user], ages=[30])
            cache = first.server.store.cache
            assert cache is not None
            for _ in range(3):
                assert age_of(a, user) == (30, Status.PRESENT)
            assert cache.stats.admissions >= 1
            assert cache.stats.hits >= 1

            defs.write_profiles(a, [user], ages=[31])  # through this server: gone at once
            assert age_of(a, user) == (31, Status.PRESENT)

            for _ in range(3):
                age_of(a, user)
            defs.write_profiles(b, [user], ages=[32])  # through another server: Redis tells us
            # 30 s: Redis's invalidation on a loaded machine, still well inside the 60 s TTL
            # (an expiry is not what this waits for).
            wait_until(
                lambda: age_of(a, user) == (32, Status.PRESENT),
                30,
                "a to serve the age written through b",
            )

            key, slot = _key(user)
            for _ in range(3):
                age_of(a, user)
            port = cluster.owner(slot)
            assert call(port, "DEL", key) == 1  # any Redis client, not only featurewell
            wait_until(
                lambda: age_of(a, user) == (-1, Status.NOT_FOUND), 30, "a to see the key deleted"
            )
    finally:
        first.stop()
        second.stop()


def test_a_failing_node_is_answered_from_the_expired_cache_entry(
    cluster: LocalCluster, registry: Registry, ids: Ids
) -> None:
    server = ServerThread(make_settings(cluster, cache_ttl_s=0.05, metrics_port=0), registry)
    try:
        user = ids("fallback")
        with FeatureClient(server.address) as client:
            defs.write_profiles(client, [user], ages=[44])
            for _ in range(3):
                age_of(client, user)
            time.sleep(0.1)  # the entry is past its TTL: it no longer answers reads...
            port = cluster.owner(_key(user)[1])
            sleeper = sleep_node(port, 1.5)  # the call below must meet it asleep, loaded or not
            try:
                result = client.get_features(
                    ["profile:age", "profile:country"], entities={"user_id": [user]}
                )
            finally:
                sleeper.join()
        # ...but stands in for Redis when Redis cannot answer, flagged as such.
        assert result.values("profile:age").tolist() == [44]
        assert result.values("profile:country").tolist() == ["c44"]
        assert result.statuses("profile:age").tolist() == [Status.FALLBACK_CACHE]
        (fallback,) = result.fallbacks
        assert (fallback.reason, fallback.from_cache, fallback.from_default) == (
            FallbackReason.STORE_TIMEOUT,
            1,
            0,
        )
        assert server.server.metrics_port is not None
        key = 'featurewell_fallback_rows_total{reason="store_timeout",source="cache",view="%s"}'
        metrics = scrape_until(server.server.metrics_port, lambda m: key % "profile@v2" in m)
        assert metrics[key % "profile@v2"] == 1
        assert metrics["featurewell_cache_hits_total"] >= 1
        assert metrics["featurewell_cache_admissions_total"] >= 1
        assert metrics["featurewell_cache_entries"] >= 1
    finally:
        server.stop()
