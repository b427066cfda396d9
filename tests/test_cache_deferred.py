"""The columnar cache takes a read's fetched rows after the read has answered
(`ColumnarCache.offer_decoded(later=True)`): the fill keeps the read's own invalidation count,
so a write announced between the answer and the fill keeps its row out, and the next read
never misses rows an earlier read fetched."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from featurewell.devcluster import LocalCluster, call
from featurewell.store.cache import CachePolicy
from featurewell.store.columnar import FILL_AFTER_S, ColumnarCache
from featurewell.store.keys import slot_of
from tests import defs
from tests.pair_rows import CODEC, PREFIX, connect, encoded, progress
from tests.tools import Ids


async def test_a_write_announced_before_the_deferred_fill_keeps_its_row_out(
    cluster: LocalCluster, ids: Ids
) -> None:
    cache = ColumnarCache(CachePolicy(admit_after=1))
    store = await connect(cluster, cache)
    try:
        tags = [ids(f"deferred{i}").encode() for i in range(4)]
        at_us = defs.now_us()
        for tag, row in zip(tags, encoded([0.1, 0.2, 0.3, 0.4], at_us), strict=True):
            assert call(cluster.owner(slot_of(tag)), "SET", PREFIX + tag + b"}", row) == b"OK"
        assert await progress(store, tags) == [0.1, 0.2, 0.3, 0.4]
        assert len(cache) == 0  # answered first: its rows enter the cache after
        # Before the fill runs, another client rewrites the first row, and Redis's
        # invalidation of it reaches this server (what the tracker does with it):
        (newer,) = encoded([0.9], at_us + 1)
        key = PREFIX + tags[0] + b"}"
        assert call(cluster.owner(slot_of(tags[0])), "SET", key, newer) == b"OK"
        cache.invalidate([key])
        await asyncio.sleep(5 * FILL_AFTER_S)
        assert len(cache) == 3  # the other rows entered; the rewritten one stayed out
        assert cache.lookup((PREFIX,), tags, time.monotonic())[1].tolist() == [0]
        assert await progress(store, tags) == [0.9, 0.2, 0.3, 0.4]
    finally:
        await store.close()


async def test_a_read_right_after_another_finds_its_rows() -> None:
    """The next read settles the fills still due before its lookup: it does not wait for
    the timer to find the rows the previous read fetched."""
    cache = ColumnarCache(CachePolicy(admit_after=1))
    tags = [b"a", b"b", b"c"]
    stored = encoded([1.0, 2.0, 3.0], defs.now_us())
    decoded = [CODEC.decode(stored, CODEC.fixed_names)]
    now = time.monotonic()
    group = (PREFIX,)
    cache.offer_decoded(
        group, [CODEC], tags, stored, [stored], decoded, [0, 2], 60.0, now, 0, later=True
    )
    assert len(cache) == 0
    gathered, missed = cache.lookup((PREFIX,), tags, now)
    assert missed.tolist() == [1]
    assert gathered is not None
    assert gathered[0].fixed["progress"].tolist() == [1.0, 3.0]
    await asyncio.sleep(5 * FILL_AFTER_S)  # the timer, when it fires, finds nothing left
    assert len(cache) == 2


async def test_a_fill_due_longer_than_the_race_window_is_dropped() -> None:
    """Invalidations are remembered for the race window only: a fill from a read that started
    longer ago could no longer be checked against them, so it is not made."""
    cache = ColumnarCache(CachePolicy(admit_after=1, race_window_s=0.05))
    stored = encoded([1.0], defs.now_us())
    decoded = [CODEC.decode(stored, CODEC.fixed_names)]
    started = time.monotonic() - 0.06
    group = (PREFIX,)
    cache.offer_decoded(
        group, [CODEC], [b"a"], stored, [stored], decoded, [0], 60.0, started, 0, later=True
    )
    await asyncio.sleep(5 * FILL_AFTER_S)
    assert len(cache) == 0
    assert cache.lookup((PREFIX,), [b"a"], time.monotonic())[1].tolist() == [0]


def test_a_one_entity_lookup_answers_as_a_batch_would() -> None:
    """A lookup of one entity takes a path of its own (no numpy pass): the same rows, hits and
    misses as the same entity's place in a batch, fresh, expired, dropped or never cached."""
    cache = ColumnarCache(CachePolicy(admit_after=1))
    group = (PREFIX,)
    tags = [b"fresh", b"short", b"dropped", b"never"]
    stored = [*encoded([1.0, 2.0, 3.0], defs.now_us()), None]
    cache.offer(group, [CODEC], tags[:1] + tags[2:], stored[:1] + stored[2:], 60.0, 0.0, 0)
    cache.offer(group, [CODEC], tags[1:2], stored[1:2], 0.5, 0.0, 0)  # past its TTL at 1.0
    cache.invalidate([PREFIX + b"dropped}"])
    batch, batch_missed = cache.lookup(group, tags, 1.0)
    assert batch is not None
    assert batch_missed.tolist() == [1, 2]
    for n, tag in enumerate(tags):
        hits, misses = cache.stats.hits, cache.stats.misses
        gathered, missed = cache.lookup(group, [tag], 1.0)
        if n in batch_missed.tolist():
            assert gathered is None
            assert missed.tolist() == [0]
            assert (cache.stats.hits, cache.stats.misses) == (hits, misses + 1)
            continue
        assert missed.tolist() == []
        assert gathered is not None
        assert (cache.stats.hits, cache.stats.misses) == (hits + 1, misses)
        (one,) = gathered
        at = batch[0].positions.tolist().index(n)
        assert one.positions.tolist() == [0]
        assert one.present.tolist() == [batch[0].present[at]]
        assert one.fixed.tolist() == [batch[0].fixed[at].tolist()]


async def test_a_fill_that_fails_does_not_fail_the_next_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fill that raises (a bug: here, a decode missing for the view) is logged; the read
    settling it still gets its answer, and the fills queued behind it are still made."""
    cache = ColumnarCache(CachePolicy(admit_after=1))
    group = (PREFIX,)
    stored = encoded([1.0, 2.0], defs.now_us())
    decoded = [CODEC.decode(stored[1:], CODEC.fixed_names)]
    now = time.monotonic()
    cache.offer_decoded(
        group, [CODEC], [b"a"], stored[:1], [stored[:1]], [], [0], 60.0, now, 0, later=True
    )
    cache.offer_decoded(
        group, [CODEC], [b"b"], stored[1:], [stored[1:]], decoded, [0], 60.0, now, 0, later=True
    )
    with caplog.at_level(logging.ERROR, "featurewell.store"):
        gathered, missed = cache.lookup(group, [b"a", b"b"], now)
    assert "could not take a read's rows" in caplog.text
    assert missed.tolist() == [0]
    assert gathered is not None
    assert gathered[0].fixed["progress"].tolist() == [2.0]
