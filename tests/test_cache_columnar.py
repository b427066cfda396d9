"""The columnar cache on its own (real codecs, no Redis): cached rows decode to exactly what the
codec makes of the stored bytes, they leave with their raw entries, slots are reused without
leaking, races and lost invalidations stop them answering, and memory stays bounded."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from featurewell.client import FeatureClient, Status
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster, call
from featurewell.store.cache import CachePolicy
from featurewell.store.codec import DecodedRows, RowCodec
from featurewell.store.columnar import ColumnarCache, merge
from featurewell.store.keys import entity_tags, key_prefix, slot_of
from featurewell.values import Ragged
from tests import defs
from tests.test_cache import age_of
from tests.tools import Ids, ServerThread, fixed, make_settings, sleep_node, wait_until

PROFILE = RowCodec(defs.profile)
ITEMS = RowCodec(defs.item_stats)
GROUP = (key_prefix(defs.profile),)
PAIR = (key_prefix(defs.profile), key_prefix(defs.item_stats))


def _profiles(ages: list[int], at_us: int = 1_700_000_000_000_000) -> list[bytes]:
    n = len(ages)
    return PROFILE.encode(
        np.full(n, at_us, np.int64) + np.arange(n),
        {
            "age": np.asarray(ages, np.int64),
            "score": np.asarray(ages, np.float64) / 3,
            "premium": np.asarray(ages, np.int64) % 2 == 0,
            "country": np.array([f"c{a}" for a in ages], dtype=object),
            "taste": np.arange(4 * n, dtype=np.float32).reshape(n, 4) * np.float32(ages[0]),
            "recent": Ragged.from_rows(
                [np.arange(a % 4, dtype=np.int64) for a in ages], np.dtype(np.int64)
            ),
            "weights": Ragged.from_rows(
                [np.full(a % 3, a / 7) for a in ages], np.dtype(np.float64)
            ),
        },
    )


def _assert_same(got: DecodedRows, want: DecodedRows) -> None:
    assert got.present.tolist() == want.present.tolist()
    assert got.event_time_us.tolist() == want.event_time_us.tolist()
    assert sorted(got.values) == sorted(want.values)
    for name, values in want.values.items():
        mine = got.values[name]
        if isinstance(values, Ragged):
            assert isinstance(mine, Ragged)
            assert mine.offsets.tolist() == values.offsets.tolist()
            assert mine.flat.tolist() == values.flat.tolist()
            assert mine.flat.dtype == values.flat.dtype
        else:
            assert isinstance(mine, np.ndarray)
            assert mine.dtype == values.dtype, name
            assert mine.tolist() == values.tolist(), name


def _read(
    cache: ColumnarCache, group: Any, codecs: list[RowCodec], tags: list[bytes], stored: list[Any]
) -> list[DecodedRows]:
    """What a read of `tags` decodes per view: the cache's rows beside the `stored` ones of
    the rows it missed."""
    gathered, missed = cache.lookup(group, tags, now=1.0)
    out = []
    for v, codec in enumerate(codecs):
        rows = [stored[r] if len(codecs) == 1 else stored[r][v] for r in missed.tolist()]
        out.append(merge(codec, rows, gathered[v] if gathered else None, None))
    return out


@pytest.mark.parametrize("cached_rows", [[], [0, 3], [0, 1, 2, 3, 4, 5]])
def test_cached_rows_decode_exactly_as_the_stored_bytes(cached_rows: list[int]) -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1))
    tags = [b"u%d" % i for i in range(6)]
    stored: list[Any] = list(_profiles([10, 21, 32, 43, 54, 65]))
    stored[3] = None  # an entity without a row: cached as such, NOT_FOUND either way
    cache.offer(
        GROUP, [PROFILE], [tags[r] for r in cached_rows], [stored[r] for r in cached_rows],
        10.0, now=0.0, since=0,
    )  # fmt: skip
    (got,) = _read(cache, GROUP, [PROFILE], tags, stored)
    _assert_same(got, PROFILE.decode(stored))
    assert cache.stats.hits == len(cached_rows)
    gathered, _ = cache.lookup(GROUP, tags, 1.0)
    if gathered is not None:  # only the wanted features are materialised, cached or not
        rows = [row for r, row in enumerate(stored) if r not in cached_rows]
        _assert_same(merge(PROFILE, rows, gathered[0], {"age"}), PROFILE.decode(stored, {"age"}))


def test_stored_bytes_ending_in_zeros_are_kept_exactly() -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1))
    (row,) = PROFILE.encode(
        np.array([5], np.int64),
        {
            "age": np.array([1], np.int64),
            "score": np.array([0.0]),
            "premium": np.array([False]),
            "country": np.array([""], dtype=object),
            "taste": np.zeros((1, 4), np.float32),
            "recent": Ragged.from_rows([np.zeros(2, np.int64)], np.dtype(np.int64)),
            "weights": Ragged.from_rows([np.zeros(3)], np.dtype(np.float64)),
        },
    )
    assert row.endswith(b"\x00" * 24)  # what a bytes dtype would strip
    cache.offer(GROUP, [PROFILE], [b"k"], [row], 10.0, now=0.0, since=0)
    (got,) = _read(cache, GROUP, [PROFILE], [b"k"], [row])
    _assert_same(got, PROFILE.decode([row]))


def test_groups_of_several_views_keep_each_views_rows() -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1))
    items = ITEMS.encode(
        np.array([5, 6], np.int64),
        {"popularity": np.array([0.25, 0.5], np.float32), "vec": np.eye(2, 4, dtype=np.float32)},
    )
    stored: list[list[bytes | None]] = [
        [p, i] for p, i in zip(_profiles([7, 8]), items, strict=True)
    ]
    stored[1][1] = None  # the second entity has no item row
    tags = [b"a", b"b"]
    cache.offer(PAIR, [PROFILE, ITEMS], tags, stored, 10.0, now=0.0, since=0)
    got = _read(cache, PAIR, [PROFILE, ITEMS], tags, stored)
    _assert_same(got[0], PROFILE.decode([row[0] for row in stored]))
    _assert_same(got[1], ITEMS.decode([row[1] for row in stored]))
    assert got[1].present.tolist() == [True, False]


def test_invalidated_rows_leave_and_their_slots_are_reused_cleanly() -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1))
    tags = [b"k%d" % i for i in range(20)]  # past the first capacity: the blocks grow
    stored = _profiles(list(range(20)))
    cache.offer(GROUP, [PROFILE], tags, stored, 10.0, now=0.0, since=0)
    assert cache.lookup(GROUP, tags, 1.0)[1].tolist() == []
    cache.invalidate([GROUP[0] + b"k3}", GROUP[0] + b"k7}"])
    assert cache.lookup(GROUP, tags, 1.0)[1].tolist() == [3, 7]
    # A new entity takes a freed slot: it must carry nothing of the row it replaces.
    cache.offer(GROUP, [PROFILE], [b"new"], [None], 10.0, now=0.0, since=0)
    (got,) = _read(cache, GROUP, [PROFILE], [b"new", b"k4"], [None, stored[4]])
    _assert_same(got, PROFILE.decode([None, stored[4]]))
    assert fixed(got.values["country"]).tolist() == ["zz", "c4"]  # the default, not k3's or k7's


def test_a_read_that_raced_a_write_does_not_fill_the_blocks() -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1))
    since = cache.sequence  # a read starts...
    cache.invalidate([GROUP[0] + b"k}"])  # ...a write of k lands and is announced...
    old, other = _profiles([1, 2])
    cache.offer(GROUP, [PROFILE], [b"k", b"o"], [old, other], 10.0, now=0.0, since=since)
    assert cache.lookup(GROUP, [b"k", b"o"], 1.0)[1].tolist() == [0]


def test_past_the_ttl_or_lost_invalidations_rows_only_stand_in_as_fallbacks() -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1))
    (row,) = _profiles([5])
    cache.offer(GROUP, [PROFILE], [b"k"], [row], 2.0, now=0.0, since=0)
    assert cache.lookup(GROUP, [b"k"], 1.9)[1].tolist() == []
    assert cache.lookup(GROUP, [b"k"], 2.0)[1].tolist() == [0]  # the TTL ends at 2.0
    assert cache.fallback(GROUP, b"k", 3.0) == row
    cache.offer(GROUP, [PROFILE], [b"k"], [row], 10.0, now=3.0, since=cache.sequence)
    assert cache.lookup(GROUP, [b"k"], 4.0)[1].tolist() == []  # refreshed
    cache.expire_all()  # the tracking connection dropped
    assert cache.lookup(GROUP, [b"k"], 4.0)[1].tolist() == [0]
    assert cache.fallback(GROUP, b"k", 4.0) == row


def test_rows_that_do_not_decode_are_never_served_from_the_blocks() -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1))
    (good,) = _profiles([5])
    cache.offer(GROUP, [PROFILE], [b"bad", b"good"], [b"\x01" * 5, good], 10.0, 0.0, 0)
    assert cache.lookup(GROUP, [b"bad", b"good"], 1.0)[1].tolist() == [0]


def test_memory_is_bounded_by_entries_and_bytes() -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1, max_entries=50))
    for batch in range(40):
        tags = [b"%d-%d" % (batch, i) for i in range(25)]
        cache.offer(GROUP, [PROFILE], tags, _profiles(list(range(25))), 10.0, 0.0, 0)
        assert len(cache) <= 50
        table = cache._tables[GROUP]
        assert len(table.index) == len(cache)  # the blocks hold exactly the entries
        assert len(table.fresh_until) - 1 <= 2 * 64  # doubling: at most twice the entries
    small = ColumnarCache(CachePolicy(admit_after=1, max_bytes=20_000))
    for batch in range(40):
        tags = [b"%d-%d" % (batch, i) for i in range(25)]
        small.offer(GROUP, [PROFILE], tags, _profiles(list(range(25))), 10.0, 0.0, 0)
        assert 0 < small.bytes <= 20_000
    assert len(small._tables[GROUP].index) == len(small) < 200
    for tag in list(small._tables[GROUP].index):
        small.invalidate([GROUP[0] + tag + b"}"])
    assert (len(small), small.bytes, small._tables) == (0, 0, {})  # the table goes with them


# -- through real servers on the real cluster ----------------------------------------------------

EVERYTHING = ["profile:*", "item_stats:*", "affinity:affinity"]


def _answer(client: FeatureClient, users: list[str], items: list[int]) -> dict[str, Any]:
    """Every column's values, statuses and event times, as plain lists."""
    result = client.get_features(
        EVERYTHING,
        entities={"user_id": users, "item_id": items},
        include_event_timestamps=True,
    )
    out: dict[str, Any] = {"fallbacks": list(result.fallbacks)}
    for name in result:
        column = result[name]
        values = column.values
        listed = (
            [np.asarray(v).tolist() for v in values]
            if isinstance(values, list)
            else np.asarray(values).tolist()
        )
        times = column.event_time_us.tolist() if column.event_time_us is not None else None
        out[name] = (listed, column.statuses.tolist(), times)
    return out


def _item_ids(ids: Ids, count: int) -> list[int]:
    """`count` item ids of this test's own (items are ints; the cluster is shared)."""
    base = int(ids("items").encode().hex()[-12:], 16) % 10**12 * 1000
    return [base + i for i in range(count)]


def _cached(server: ServerThread) -> ColumnarCache:
    cache = server.server.store.cache
    assert isinstance(cache, ColumnarCache)
    return cache


def test_cached_answers_are_the_fetched_answers(
    cluster: LocalCluster, registry: Registry, ids: Ids
) -> None:
    """Values, statuses (PRESENT, NOT_FOUND, STALE) and event times, row for row, from a server
    with the cache off and from one answering every row from its blocks."""
    off = ServerThread(make_settings(cluster, cache_entries=0), registry)
    on = ServerThread(make_settings(cluster, cache_admit_after=1, cache_ttl_s=60.0), registry)
    try:
        users = [ids(f"eq{i}") for i in range(3)]
        items = _item_ids(ids, 300)
        with FeatureClient(off.address) as a, FeatureClient(on.address) as b:
            defs.write_profiles(a, users[:2], ages=[20, 41])
            defs.write_items(a, items[:200])  # the last 100 have no row: NOT_FOUND
            defs.write_items(a, items[200:250], at_us=defs.now_us() - 2 * 86_400_000_000)  # STALE
            user_column = [users[n % 3] for n in range(300)]
            want = _answer(a, user_column, items)
            first = _answer(b, user_column, items)  # fetched, then cached
            cache = _cached(on)
            hits = cache.stats.hits
            second = _answer(b, user_column, items)  # every row from memory
            assert cache.stats.hits - hits == 300 + 300  # both groups, every row
            cache.invalidate([key_prefix(defs.item_stats) + b"%d}" % i for i in items[::3]])
            hits = cache.stats.hits
            mixed = _answer(b, user_column, items)  # a third from Redis, the rest from memory
            assert cache.stats.hits - hits == 300 + 200
        assert want == first == second == mixed
        statuses = set(want["item_stats:popularity"][1])
        assert statuses == {Status.PRESENT, Status.NOT_FOUND, Status.STALE}
        assert Status.NOT_FOUND in want["profile:age"][1]
    finally:
        off.stop()
        on.stop()


def test_writes_here_and_elsewhere_reach_cached_batches(
    cluster: LocalCluster, registry: Registry, ids: Ids
) -> None:
    settings = make_settings(cluster, cache_admit_after=1, cache_ttl_s=60.0)
    first, second = ServerThread(settings, registry), ServerThread(settings, registry)
    try:
        items = _item_ids(ids, 100)

        def popularity(client: FeatureClient) -> list[float]:
            got = client.get_features(["item_stats:popularity"], entities={"item_id": items})
            return [round(float(v), 4) for v in got.values("item_stats:popularity")]

        with FeatureClient(first.address) as a, FeatureClient(second.address) as b:
            defs.write_items(a, items)
            before = popularity(a)
            assert popularity(a) == before  # cached now
            assert len(_cached(first)) >= 100
            later = defs.now_us() + 1
            a.write_features(  # through this server: gone from its cache at once
                "item_stats",
                entities={"item_id": items[:3]},
                event_timestamps_us=[later] * 3,
                features={
                    "popularity": np.full(3, 0.9, np.float32),
                    "vec": np.ones((3, 4), np.float32),
                },
            )
            assert popularity(a)[:4] == [0.9, 0.9, 0.9, before[3]]
            b.write_features(  # through another server: Redis tells this one
                "item_stats",
                entities={"item_id": [items[50]]},
                event_timestamps_us=[later + 1],
                features={
                    "popularity": np.full(1, 0.7, np.float32),
                    "vec": np.ones((1, 4), np.float32),
                },
            )
            # 30 s: Redis's invalidation on a loaded machine, well inside the 60 s TTL.
            wait_until(lambda: popularity(a)[50] == 0.7, 30, "the write through b to reach a")
            (tag,) = entity_tags([[items[60]]], 1)
            key = key_prefix(defs.item_stats) + tag + b"}"
            assert call(cluster.owner(slot_of(tag)), "DEL", key) == 1  # any client at all
            wait_until(
                lambda: popularity(a)[60] == 0.0 and popularity(a)[61] == before[61],
                30,
                "a to see the key deleted",
            )
    finally:
        first.stop()
        second.stop()


def test_a_read_racing_writes_never_keeps_the_older_row(
    cluster: LocalCluster, registry: Registry, ids: Ids
) -> None:
    """Readers fill the cache while a writer rewrites the same rows through the same server:
    once a write is acknowledged, no read may return the row it replaced."""
    server = ServerThread(make_settings(cluster, cache_admit_after=1, cache_ttl_s=60.0), registry)
    stop = threading.Event()
    try:
        users = [ids(f"race{i}") for i in range(50)]
        with FeatureClient(server.address, timeout=5) as writer:
            defs.write_profiles(writer, users, ages=[0] * 50)

            def read_forever() -> None:
                with FeatureClient(server.address, timeout=5) as reader:
                    while not stop.is_set():
                        reader.get_features(["profile:age"], entities={"user_id": users})

            readers = [threading.Thread(target=read_forever) for _ in range(3)]
            for thread in readers:
                thread.start()
            # At least 29 rewrites, and on until the readers have been served from memory too
            # (at most 1,000): on a loaded machine the readers' threads and connections could
            # start after the writer had finished.
            age = 0
            while age < 29 or (_cached(server).stats.hits == 0 and age < 1000):
                age += 1
                defs.write_profiles(writer, users, ages=[age] * 50)
                got = writer.get_features(["profile:age"], entities={"user_id": users})
                assert got.values("profile:age").tolist() == [age] * 50, age
            stop.set()
            for thread in readers:
                thread.join()
        assert _cached(server).stats.hits > 0  # the readers were served from memory
    finally:
        stop.set()
        server.stop()


def test_a_cached_row_past_its_max_age_reads_stale(
    cluster: LocalCluster, registry: Registry, ids: Ids
) -> None:
    # The TTL may be the whole max age here: the status comes from the row's event time at
    # read time, cached or not.
    settings = make_settings(cluster, cache_admit_after=1, cache_ttl_s=60.0, cache_ttl_fraction=1.0)
    server = ServerThread(settings, registry)
    try:
        user = ids("aging")
        max_age_us = 3600 * 1_000_000
        with FeatureClient(server.address) as client:
            # Fresh for 3 s more: the write and two reads fit in that on a loaded machine too.
            defs.write_profiles(
                client, [user], ages=[9], at_us=defs.now_us() - max_age_us + 3_000_000
            )
            assert age_of(client, user) == (9, Status.PRESENT)
            hits = _cached(server).stats.hits
            assert age_of(client, user) == (9, Status.PRESENT)
            reads = 0

            def stale() -> bool:
                nonlocal reads
                reads += 1
                return age_of(client, user) == (9, Status.STALE)

            wait_until(stale, 30, "the cached row to turn STALE", interval=0.05)
            assert _cached(server).stats.hits == hits + 1 + reads  # all from memory
    finally:
        server.stop()


def test_a_sleeping_node_leaves_fresh_rows_served_and_expired_ones_as_fallbacks(
    cluster: LocalCluster, registry: Registry, ids: Ids
) -> None:
    ttl_s, asleep_s, rounds = 0.5, 1.5, 5
    server = ServerThread(make_settings(cluster, cache_admit_after=1, cache_ttl_s=ttl_s), registry)
    try:
        every_item = _item_ids(ids, 60 * rounds)
        with FeatureClient(server.address, timeout=5) as client:
            # A round proves something only if the fresh read ended within the TTL and the
            # stale one before the node woke; a starved machine can miss either window (as it
            # could the old fixed ones), and then the round runs again on rows of its own.
            for round_ in range(rounds):
                items = every_item[60 * round_ : 60 * (round_ + 1)]
                tags = entity_tags([items], len(items))
                asleep = cluster.owner(slot_of(tags[0]))
                on_it = [cluster.owner(slot_of(tag)) == asleep for tag in tags]

                def read(items: list[int] = items) -> Any:
                    return client.get_features(
                        ["item_stats:popularity"], entities={"item_id": items}
                    )

                defs.write_items(client, items)
                started = time.monotonic()  # no row is cached before this
                want = read().values("item_stats:popularity").tolist()
                read()  # cached (by now: a read settles the fills due before it)
                cached = time.monotonic()
                falls_asleep = time.monotonic()  # it wakes asleep_s after this at the earliest
                sleeper = sleep_node(asleep, asleep_s)
                try:
                    fresh = read()  # every row from memory: the sleeping node is not asked
                    fresh_at = time.monotonic()
                    # Past the TTL: rows of the sleeping node fall back.
                    time.sleep(max(0.0, cached + ttl_s - time.monotonic()) + 0.05)
                    stale = read()
                    stale_at = time.monotonic()
                finally:
                    sleeper.join()
                if fresh_at < started + ttl_s and stale_at < falls_asleep + asleep_s:
                    break
            else:
                pytest.fail(f"no round of {rounds} fitted the TTL and the node's sleep")
        assert fresh.values("item_stats:popularity").tolist() == want
        assert set(fresh.statuses("item_stats:popularity").tolist()) == {Status.PRESENT}
        assert stale.values("item_stats:popularity").tolist() == want
        expected = [Status.FALLBACK_CACHE if mine else Status.PRESENT for mine in on_it]
        assert stale.statuses("item_stats:popularity").tolist() == expected
        (fallback,) = stale.fallbacks
        assert (fallback.from_cache, fallback.from_default) == (sum(on_it), 0)
    finally:
        server.stop()
