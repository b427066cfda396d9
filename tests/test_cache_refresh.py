"""Refresh-ahead (store/refresh.py): a cached row read late in its TTL is fetched again in the
background, so it does not expire under its readers; the refetch keeps every freshness rule of
a read (the race check, invalidations) and a failed one only lets the rows expire."""

from __future__ import annotations

import time

import numpy as np

from featurewell.devcluster import LocalCluster, call
from featurewell.store.breaker import Breaker, BreakerPolicy, BreakerState
from featurewell.store.cache import CachePolicy
from featurewell.store.columnar import ColumnarCache
from featurewell.store.keys import slot_of
from tests import defs
from tests.pair_rows import CODEC, PREFIX, connect, encoded, progress
from tests.tools import Ids, sleep_node, wait_until_async

GROUP = (PREFIX,)


def _until(cache: ColumnarCache, tag: bytes) -> float:
    entry = cache.rows._groups[GROUP].held[tag]
    return float(entry[1])


def _cached(cache: ColumnarCache, values: list[float], tags: list[bytes], ttl: float) -> float:
    """The rows offered to the cache at a fixed `now` (1.0); returns when they stop being
    fresh."""
    cache.offer(GROUP, [CODEC], tags, encoded(values, defs.now_us()), ttl, 1.0, cache.sequence)
    return 1.0 + ttl


def test_rows_read_late_in_their_ttl_are_noted_once_per_ttl() -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1, refresh_ahead=0.2))
    tags = [b"a", b"b", b"c"]
    until = _cached(cache, [1.0, 2.0, 3.0], tags, ttl=10.0)
    cache.lookup(GROUP, tags, until - 2.5, 10.0)  # 2.5 s left of 10: not late
    assert not cache.late
    cache.lookup(GROUP, tags[:2], until - 1.5, 10.0)  # 1.5 s left: late
    cache.lookup(GROUP, tags, until - 1.0, 10.0)  # "c" is new; "a" and "b" are noted already
    cache.lookup(GROUP, [b"b"], until - 0.5, 10.0)  # one entity (the single-call path)
    assert cache.late
    assert [(g, ttl, tags) for g, ttl, _, tags in cache.take_late()] == [
        (GROUP, 10.0, [b"a", b"b", b"c"])
    ]
    assert not cache.late
    assert cache.take_late() == []
    cache.lookup(GROUP, tags, until - 0.5, 0.0)  # a read that does not say its TTL: never
    assert not cache.late


def test_off_notes_nothing() -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1))
    until = _cached(cache, [1.0], [b"a"], ttl=10.0)
    cache.lookup(GROUP, [b"a"], until - 0.1, 10.0)
    assert not cache.late


def test_a_refreshed_row_is_fresh_for_a_new_ttl_and_noted_again_late_in_it() -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1, refresh_ahead=0.2))
    until = _cached(cache, [1.0, 2.0], [b"a", b"b"], ttl=10.0)
    cache.lookup(GROUP, [b"a", b"b"], until - 1.0, 10.0)
    ((_, _, codecs, late),) = cache.take_late()
    fetched_at = until - 0.9
    newer = encoded([1.5, 2.5], defs.now_us() + 1)
    cache.offer(GROUP, codecs, late, newer, 10.0, fetched_at, cache.sequence, refresh=True)
    assert cache.stats.refreshes == 2
    gathered, missed = cache.lookup(GROUP, [b"a", b"b"], until + 5.0, 10.0)  # past the old TTL
    assert missed.tolist() == []
    assert gathered is not None
    assert np.round(gathered[0].fixed["progress"], 3).tolist() == [1.5, 2.5]
    assert not cache.late  # 4.1 s left of the new TTL
    cache.lookup(GROUP, [b"a"], fetched_at + 9.5, 10.0)
    assert [tags for _, _, _, tags in cache.take_late()] == [[b"a"]]


def test_a_refresh_never_brings_back_a_row_a_write_ended() -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1, refresh_ahead=0.2))
    key = PREFIX + b"a}"
    until = _cached(cache, [1.0, 2.0], [b"a", b"b"], ttl=10.0)
    since = cache.sequence  # the refresh read goes out...
    cache.invalidate([key])  # ...a write is announced while it is in flight...
    rows = encoded([1.5, 2.5], defs.now_us())
    cache.offer(GROUP, [CODEC], [b"a", b"b"], rows, 10.0, until - 1.0, since, refresh=True)
    assert cache.lookup(GROUP, [b"a", b"b"], until + 1.0)[1].tolist() == [0]  # ..."a" stays out
    # A row that left (written, evicted) before its refresh started is not brought back
    # either: the next read fetches it, counted as a sighting like any other.
    since = cache.sequence
    rows = encoded([1.7], defs.now_us())
    cache.offer(GROUP, [CODEC], [b"a"], rows, 10.0, until, since, refresh=True)
    assert cache.lookup(GROUP, [b"a"], until + 1.0)[1].tolist() == [0]
    # A refresh that went out before the read that took the entry does not replace it.
    cache.offer(GROUP, [CODEC], [b"b"], encoded([9.0], 0), 10.0, until - 1.5, since, refresh=True)
    gathered, _ = cache.lookup(GROUP, [b"b"], until + 1.0)
    assert gathered is not None
    assert np.round(gathered[0].fixed["progress"], 3).tolist() == [2.5]


def test_a_refresh_in_flight_when_invalidations_were_lost_keeps_nothing() -> None:
    """A tracking connection lost while a refresh is in flight: its rows may have come through
    the connection whose invalidations were lost, so the entries stay expired (fallbacks)."""
    cache = ColumnarCache(CachePolicy(admit_after=1, refresh_ahead=0.2))
    read_at = time.monotonic()
    cache.offer(GROUP, [CODEC], [b"a"], encoded([1.0], defs.now_us()), 60.0, read_at, 0)
    since = cache.sequence  # the refresh read goes out...
    cache.expire_all()  # ...and the tracking connection drops
    rows = encoded([1.5], defs.now_us())
    cache.offer(GROUP, [CODEC], [b"a"], rows, 60.0, time.monotonic(), since, refresh=True)
    assert cache.stats.refreshes == 0
    assert cache.lookup(GROUP, [b"a"], time.monotonic())[1].tolist() == [0]


async def test_a_hot_row_never_expires_under_its_readers(cluster: LocalCluster, ids: Ids) -> None:
    """End to end: rows read late in their TTL are fetched again in the background (one
    tracked read), and past the first TTL still answer from the cache."""
    # A long refresh timeout: these runs must see the refresh through on a loaded machine.
    cache = ColumnarCache(CachePolicy(admit_after=1, refresh_ahead=0.999, refresh_timeout_s=2.0))
    store = await connect(cluster, cache)
    assert store.refresher is not None
    try:
        tags = [ids(f"refresh{i}").encode() for i in range(20)]
        rows = encoded([i / 10 for i in range(20)], defs.now_us())
        for tag, row in zip(tags, rows, strict=True):
            assert call(cluster.owner(slot_of(tag)), "SET", PREFIX + tag + b"}", row) == b"OK"
        assert await progress(store, tags, 10.0) == [i / 10 for i in range(20)]
        await wait_until_async(lambda: len(cache) == 20, 30, "the rows to be cached")
        first = _until(cache, tags[0])
        # 0.999 of the TTL: every later read is late in it.
        await wait_until_async(lambda: time.monotonic() > first - 9.99, 30, "a late moment")
        hits, misses = cache.stats.hits, cache.stats.misses
        assert await progress(store, tags, 10.0) == [i / 10 for i in range(20)]
        assert (cache.stats.hits - hits, cache.stats.misses - misses) == (20, 0)
        await wait_until_async(lambda: cache.stats.refreshes == 20, 30, "the refresh")
        assert store.refresher.failed == 0
        refreshed = [_until(cache, tag) for tag in tags]
        assert min(refreshed) > first
        gathered, missed = cache.lookup(GROUP, tags, first + 0.001)  # past the first TTL
        assert missed.tolist() == []
        assert gathered is not None
        # Still coherent: a write from another client ends the refreshed entry.
        (newer,) = encoded([7.0], defs.now_us() + 1)
        owner = cluster.owner(slot_of(tags[3]))
        assert call(owner, "SET", PREFIX + tags[3] + b"}", newer) == b"OK"
        await wait_until_async(lambda: len(cache) == 19, 30, "the invalidation")
        assert (await progress(store, tags, 10.0))[3] == 7.0
    finally:
        await store.close()


async def test_a_refresh_that_times_out_lets_the_rows_expire(
    cluster: LocalCluster, ids: Ids
) -> None:
    """A node asleep during a refresh: the refresh gives up at its timeout, counted; the rows
    keep their old TTL (they expire, then reads fetch them), and the node's breaker is not
    tripped by it."""
    policy = CachePolicy(admit_after=1, refresh_ahead=0.999, refresh_timeout_s=0.05)
    cache = ColumnarCache(policy)
    store = await connect(cluster, cache)
    refresher = store.refresher
    assert refresher is not None
    try:
        tag = ids("refresh-asleep").encode()
        (row,) = encoded([0.5], defs.now_us())
        port = cluster.owner(slot_of(tag))
        assert call(port, "SET", PREFIX + tag + b"}", row) == b"OK"
        assert await progress(store, [tag], 10.0) == [0.5]
        await wait_until_async(lambda: len(cache) == 1, 30, "the row to be cached")
        first = _until(cache, tag)
        await wait_until_async(lambda: time.monotonic() > first - 9.99, 30, "a late moment")
        sleeper = sleep_node(port, 1.0)
        try:
            assert await progress(store, [tag], 10.0) == [0.5]  # answered from the cache
            await wait_until_async(lambda: refresher.failed >= 1, 30, "the refresh to fail")
        finally:
            sleeper.join()
        assert cache.stats.refreshes == 0
        assert _until(cache, tag) == first
        assert all(b.failures == 0 for b in store.cluster.breakers.values())
    finally:
        await store.close()


async def test_rows_of_a_node_whose_breaker_is_open_are_left_to_reads(
    cluster: LocalCluster, ids: Ids
) -> None:
    """A refresh would take the half-open trial a read should make: the rows of a node whose
    breaker is not closed are not refreshed (they expire; reads decide about the node)."""
    # A long refresh timeout: these runs must see the refresh through on a loaded machine.
    cache = ColumnarCache(CachePolicy(admit_after=1, refresh_ahead=0.999, refresh_timeout_s=2.0))
    store = await connect(cluster, cache)
    try:
        tags = [ids(f"shunned{i}").encode() for i in range(30)]
        for tag, row in zip(tags, encoded([0.5] * 30, defs.now_us()), strict=True):
            assert call(cluster.owner(slot_of(tag)), "SET", PREFIX + tag + b"}", row) == b"OK"
        assert await progress(store, tags, 10.0) == [0.5] * 30
        await wait_until_async(lambda: len(cache) == 30, 30, "the rows to be cached")
        shunned = ("127.0.0.1", cluster.owner(slot_of(tags[0])))
        # Open, its connections left as they are, and due for its half-open trial at once.
        breaker = Breaker(BreakerPolicy(failures=1, open_s=0.001))
        assert breaker.failure()
        store.cluster.breakers[shunned] = breaker
        first = {tag: _until(cache, tag) for tag in tags}
        await wait_until_async(
            lambda: time.monotonic() > max(first.values()) - 9.99, 30, "a late moment"
        )
        assert await progress(store, tags, 10.0) == [0.5] * 30  # every row from the cache
        others = [t for t in tags if store.cluster.node_of(slot_of(t)) != shunned]
        assert 0 < len(others) < 30
        await wait_until_async(lambda: cache.stats.refreshes == len(others), 30, "the refresh")
        assert [t for t in tags if _until(cache, t) == first[t]] == [
            t for t in tags if t not in others
        ]
        assert breaker.state is BreakerState.OPEN  # its trial is still a read's to make
        assert store.refresher is not None
        assert store.refresher.failed == 0
    finally:
        await store.close()
