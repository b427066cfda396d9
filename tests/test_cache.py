"""The hot-key cache: its policy on its own, then through a real server on the real cluster
(admission, TTL capped by max age, invalidation by local and remote writes, cache fallbacks)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from featurewell.client import FallbackReason, FeatureClient, Status
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster, _call
from featurewell.serving.plan import Planner
from featurewell.store.breaker import Breaker, BreakerPolicy, BreakerState
from featurewell.store.cache import CachePolicy, HotKeyCache
from featurewell.store.keys import entity_tags, key_prefix, slot_of
from tests import defs
from tests.conftest import ServerThread, make_settings
from tests.load import scrape

# -- the policy --------------------------------------------------------------------------------


def _cache(**policy: Any) -> HotKeyCache:
    return HotKeyCache(CachePolicy(**policy))


def test_admits_only_keys_seen_often_enough() -> None:
    cache = _cache(admit_after=3)
    for _ in range(2):
        cache.offer([b"hot", b"cold"], [b"h", b"c"], 10.0, now=0.0, since=cache.sequence)
        cache.offer([b"hot"], [b"h"], 10.0, now=0.0, since=cache.sequence)
    assert [e.value if e else None for e in cache.fresh([b"hot", b"cold"], 1.0)] == [b"h", None]
    assert (cache.stats.admissions, cache.stats.hits, cache.stats.misses) == (1, 1, 1)


def test_bounded_by_entries_and_bytes_least_recently_used_first() -> None:
    cache = _cache(admit_after=1, max_entries=3)
    cache.offer([b"a", b"b", b"c"], [b"1", b"2", b"3"], 10.0, now=0.0, since=0)
    cache.fresh([b"a"], 1.0)  # a is now the most recently used
    cache.offer([b"d"], [b"4"], 10.0, now=0.0, since=0)
    assert [e is not None for e in cache.fresh([b"a", b"b", b"c", b"d"], 1.0)] == [
        True, False, True, True,
    ]  # fmt: skip
    assert (len(cache), cache.stats.evictions) == (3, 1)

    small = _cache(admit_after=1, max_bytes=1000)
    small.offer([b"k%d" % i for i in range(20)], [b"x" * 100] * 20, 10.0, now=0.0, since=0)
    assert small.bytes <= 1000
    assert 0 < len(small) < 20


def test_ttl_then_fallback_horizon() -> None:
    cache = _cache(admit_after=1, fallback_s=60.0)
    cache.offer([b"k"], [None], 5.0, now=100.0, since=0)  # Redis had no row: cached as such
    assert cache.fresh([b"k"], 104.0)[0] is not None
    assert cache.fresh([b"k"], 105.5) == [None]  # past its TTL it no longer answers reads
    entry = cache.fallback(b"k", 160.0)
    assert entry is not None
    assert entry.value is None
    assert cache.fallback(b"k", 165.5) is None  # until the horizon ends


def test_a_read_that_raced_a_write_does_not_cache_its_old_value() -> None:
    cache = _cache(admit_after=1)
    since = cache.sequence  # a read starts...
    cache.invalidate([b"k"])  # ...a write of k lands and is announced...
    cache.offer([b"k", b"other"], [b"old", b"o"], 10.0, now=0.0, since=since)  # ...the read ends
    assert [e is not None for e in cache.fresh([b"k", b"other"], 1.0)] == [False, True]


def test_lost_invalidations_keep_entries_only_as_fallbacks() -> None:
    cache = _cache(admit_after=1)
    cache.offer([b"k"], [b"v"], 10.0, now=0.0, since=0)
    cache.expire_all()
    assert cache.fresh([b"k"], 1.0) == [None]
    assert cache.fallback(b"k", 1.0) is not None


def test_frequency_counts_stay_bounded() -> None:
    cache = _cache(admit_after=5, max_entries=10)
    for i in range(10_000):  # a long tail of keys seen once
        cache.offer([b"tail%d" % i], [b"v"], 10.0, now=0.0, since=0)
    assert len(cache._seen) <= 1024 + 1


def test_breaker_opens_after_failures_and_closes_after_a_good_trial() -> None:
    breaker = Breaker(BreakerPolicy(failures=2, open_s=1.0))
    assert breaker.allow(0.0)
    assert not breaker.failure(0.0)
    assert breaker.failure(0.1)  # the second failure in a row opens it
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(0.5)
    assert breaker.allow(1.2)  # the first caller after the open period is the trial...
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow(1.3)
    assert breaker.failure(1.4)  # a failed trial opens it again
    assert not breaker.allow(2.0)
    assert breaker.allow(2.5)
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow(2.6)
    assert breaker.opened == 2


def test_a_trial_that_never_reports_does_not_block_recovery() -> None:
    breaker = Breaker(BreakerPolicy(failures=1, open_s=1.0))
    breaker.failure(0.0)
    assert breaker.allow(1.1)  # trial started, its call then cancelled: no report
    assert not breaker.allow(1.5)
    assert breaker.allow(2.2)


def test_cache_ttl_never_exceeds_a_fraction_of_max_age(registry: Registry) -> None:
    planner = Planner(registry, cache_ttl_s=1000.0, cache_ttl_fraction=0.1)
    assert (defs.profile.max_age, defs.item_stats.max_age) == (
        timedelta(hours=1), timedelta(days=1),
    )  # fmt: skip
    assert planner.read_of(defs.profile).cache_ttl_s == 360.0  # 10% of an hour
    assert planner.read_of(defs.item_stats).cache_ttl_s == 1000.0  # 10% of a day is more
    assert Planner(registry).read_of(defs.profile).cache_ttl_s == 0.0  # cache off


# -- through a real server ---------------------------------------------------------------------


def _key(user: str) -> tuple[bytes, int]:
    (tag,) = entity_tags([[user]], 1)
    return key_prefix(defs.profile) + tag + b"}", slot_of(tag)


def _age(client: FeatureClient, user: str) -> tuple[int, int]:
    result = client.get_features(["profile:age"], entities={"user_id": [user]})
    return int(result.values("profile:age")[0]), int(result.statuses("profile:age")[0])


def test_hot_rows_are_served_from_memory_and_writes_invalidate_them(
    cluster: LocalCluster, registry: Registry, ids: Any
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
                assert _age(a, user) == (30, Status.PRESENT)
            assert cache.stats.admissions >= 1
            assert cache.stats.hits >= 1

            defs.write_profiles(a, [user], ages=[31])  # through this server: gone at once
            assert _age(a, user) == (31, Status.PRESENT)

            for _ in range(3):
                _age(a, user)
            defs.write_profiles(b, [user], ages=[32])  # through another server: Redis tells us
            assert _eventually(lambda: _age(a, user) == (32, Status.PRESENT), timeout=2.0)

            key, slot = _key(user)
            for _ in range(3):
                _age(a, user)
            port = cluster.owner(slot)
            assert _call(port, "DEL", key) == 1  # any Redis client, not only featurewell
            assert _eventually(lambda: _age(a, user) == (-1, Status.NOT_FOUND), timeout=2.0)
    finally:
        first.stop()
        second.stop()


def test_a_failing_node_is_answered_from_the_expired_cache_entry(
    cluster: LocalCluster, registry: Registry, ids: Any
) -> None:
    server = ServerThread(make_settings(cluster, cache_ttl_s=0.05, metrics_port=0), registry)
    try:
        user = ids("fallback")
        with FeatureClient(server.address) as client:
            defs.write_profiles(client, [user], ages=[44])
            for _ in range(3):
                _age(client, user)
            time.sleep(0.1)  # the entry is past its TTL: it no longer answers reads...
            port = cluster.owner(_key(user)[1])
            sleeper = threading.Thread(target=_call, args=(port, "DEBUG", "SLEEP", "0.5"))
            sleeper.start()
            time.sleep(0.05)
            try:
                result = client.get_features(["profile:age", "profile:country"],
                                             entities={"user_id": [user]})  # fmt: skip
            finally:
                sleeper.join()
        # ...but stands in for Redis when Redis cannot answer, flagged as such.
        assert result.values("profile:age").tolist() == [44]
        assert result.values("profile:country").tolist() == ["c44"]
        assert result.statuses("profile:age").tolist() == [Status.FALLBACK_CACHE]
        (fallback,) = result.fallbacks
        assert (fallback.reason, fallback.from_cache, fallback.from_default) == (
            FallbackReason.STORE_TIMEOUT, 1, 0,
        )  # fmt: skip
        assert server.server.metrics_port is not None
        metrics = scrape(server.server.metrics_port)
        key = 'featurewell_fallback_values_total{reason="store_timeout",source="cache",view="%s"}'
        assert metrics[key % "profile@v2"] == 1
        assert metrics["featurewell_cache_hits_total"] >= 1
        assert metrics["featurewell_cache_admissions_total"] >= 1
        assert metrics["featurewell_cache_entries"] >= 1
    finally:
        server.stop()


def _eventually(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False
