"""The hot-key cache against hostile entity ids: entries are counted by their real size, ids
over the tag limit are never cached nor counted, and the admission counts stay within their
byte bound however many ids a client invents."""

from __future__ import annotations

from featurewell.client import FeatureClient
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster
from featurewell.store.cache import CachePolicy, HotKeyCache
from tests import defs
from tests.tools import Ids, ServerThread, make_settings

G = (b"fw:v:v1:{",)


def test_entries_are_counted_by_their_real_size() -> None:
    cache = HotKeyCache(CachePolicy(admit_after=1, max_bytes=100_000_000))
    cache.offer(G, [b"small"], [b"x" * 10], 10.0, now=0.0, since=0)  # the group's first row
    small = cache.bytes
    cache.offer(G, [b"large"], [b"y" * 1_000_000], 10.0, now=0.0, since=0)
    assert cache.bytes - small >= 1_000_000  # not sized like the group's first row
    cache.invalidate([G[0] + b"large}"])
    assert cache.bytes == small
    cache.invalidate([G[0] + b"small}"])
    assert (cache.bytes, len(cache)) == (0, 0)


def test_a_refreshed_entry_is_recounted_at_its_new_size() -> None:
    cache = HotKeyCache(CachePolicy(admit_after=1))
    cache.offer(G, [b"k"], [b"x" * 10], 1.0, now=0.0, since=0)
    cache.lookup(G, [], now=2.0)  # expired: kept as a fallback
    cache.offer(G, [b"k"], [b"x" * 50_000], 1.0, now=2.0, since=0)
    assert 50_000 <= cache.bytes < 51_000


def test_one_huge_row_is_not_cached_at_the_expense_of_many() -> None:
    cache = HotKeyCache(CachePolicy(admit_after=1, max_bytes=100_000))
    cache.offer(G, [b"a", b"b"], [b"x" * 10, b"y" * 10], 10.0, now=0.0, since=0)
    cache.offer(G, [b"huge"], [b"z" * 500_000], 10.0, now=0.0, since=0)
    found, _ = cache.lookup(G, [b"a", b"b", b"huge"], now=1.0)
    assert found[:2] == [b"x" * 10, b"y" * 10]  # the hot rows stay
    assert (len(cache), cache.bytes) == (2, sum(e[2] for e in cache._groups[G].held.values()))
    assert cache.bytes < 1000


def test_ids_over_the_tag_limit_are_never_cached_nor_counted() -> None:
    cache = HotKeyCache(CachePolicy(admit_after=1, max_tag_bytes=1024))
    huge = b"u" * 60_000
    assert cache.select(G, [b"ok", huge]) == [0]
    cache.offer(G, [b"ok", huge], [b"r", b"r"], 10.0, now=0.0, since=0)
    assert len(cache) == 1
    cache = HotKeyCache(CachePolicy(admit_after=3, max_tag_bytes=1024))
    cache.select(G, [huge])
    assert cache.seen_bytes == 0


def test_admission_counts_stay_within_their_byte_bound() -> None:
    cache = HotKeyCache(CachePolicy(admit_after=3, max_seen_bytes=200_000))
    for batch in range(200):  # 100,000 invented ids of ~1 KB, each seen once
        tags = [b"%06d-%s" % (batch * 500 + i, b"x" * 1000) for i in range(500)]
        cache.select(G, tags)
        assert cache.seen_bytes <= 200_000 + 500 * 1200
    assert cache.seen_bytes <= 200_000


def test_a_long_entity_id_is_served_but_not_cached(
    cluster: LocalCluster, registry: Registry, ids: Ids
) -> None:
    # Keys this long are refused by default (max_entity_key_bytes); a deployment that raises the
    # limit still gets a cache that never holds them.
    settings = make_settings(cluster, cache_admit_after=1, max_entity_key_bytes=8192)
    server = ServerThread(settings, registry)
    try:
        with FeatureClient(server.address, timeout=5) as client:
            short, long = ids("short"), ids("long-" + "x" * 5000)
            defs.write_profiles(client, [short, long], ages=[1, 2])
            cache = server.server.store.cache
            assert cache is not None
            for _ in range(3):
                result = client.get_features(["profile:age"], entities={"user_id": [short, long]})
                assert result["profile:age"].values.tolist() == [1, 2]
            assert len(cache) == 1  # the short id only
            assert cache.bytes < 2000
    finally:
        server.stop()
