"""The cached read path decodes fetched rows once (store/assembly.py): the rows a read admits go
into the blocks from the same `DecodedRows` that answers it. A row admitted that way must answer
exactly as one admitted through `ColumnarCache.offer` (which decodes the stored bytes itself)
and as the stored bytes decode; a write racing the admission must keep the row out; rows that do
not decode must stay out of the blocks."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from featurewell.store.blocks import Table
from featurewell.store.cache import MISS, CachePolicy
from featurewell.store.codec import DecodedRows, RowCodec
from featurewell.store.columnar import ColumnarCache, merge
from tests.test_cache_columnar import GROUP, ITEMS, PAIR, PROFILE, _assert_same, _profiles, _read


def _items(count: int) -> list[bytes]:
    return ITEMS.encode(
        np.arange(count, dtype=np.int64) + 5,
        {
            "popularity": np.linspace(0.1, 0.9, count).astype(np.float32),
            "vec": np.arange(4 * count, dtype=np.float32).reshape(count, 4),
        },
    )


def _pairs() -> tuple[list[bytes], list[list[Any]]]:
    """Six entities' (profile, item) rows: one without an item row, one without either, one
    whose profile does not decode."""
    tags = [b"e%d" % i for i in range(6)]
    stored: list[list[Any]] = [
        [p, i] for p, i in zip(_profiles([3, 14, 25, 36, 47, 58]), _items(6), strict=True)
    ]
    stored[1][1] = None
    stored[2] = [None, None]
    stored[4][0] = b"\x01" * 5
    return tags, stored


def _offer_decoded(
    cache: ColumnarCache,
    group: Any,
    codecs: list[RowCodec],
    tags: list[bytes],
    stored: list[Any],
    chosen: list[int],
    since: int = 0,
) -> list[DecodedRows]:
    """What store/assembly.py does with a read's fetched rows: decode each view once, offer the
    chosen rows from that, and return it (the read's answer is built from it)."""
    views = len(codecs)
    raw = [stored] if views == 1 else [[row[v] for row in stored] for v in range(views)]
    decoded = [c.decode(rows, c.fixed_names) for c, rows in zip(codecs, raw, strict=True)]
    cache.offer_decoded(group, codecs, tags, stored, raw, decoded, chosen, 10.0, 0.0, since)
    return decoded


@pytest.mark.parametrize("chosen", [[0, 1, 2, 3, 4, 5], [1, 4], [5]])
def test_rows_admitted_from_the_answer_read_as_rows_offered_raw(chosen: list[int]) -> None:
    tags, stored = _pairs()
    single = ColumnarCache(CachePolicy(admit_after=1))
    double = ColumnarCache(CachePolicy(admit_after=1))
    _offer_decoded(single, PAIR, [PROFILE, ITEMS], tags, stored, chosen)
    double.offer(
        PAIR, [PROFILE, ITEMS], [tags[j] for j in chosen], [stored[j] for j in chosen], 10.0,
        now=0.0, since=0,
    )  # fmt: skip
    blocks = set(chosen) - {4}  # the row that does not decode never enters the blocks
    for cache in (single, double):
        assert sorted(set(range(6)) - set(cache.lookup(PAIR, tags, 1.0)[1].tolist())) == sorted(
            blocks
        )
        got = _read(cache, PAIR, [PROFILE, ITEMS], tags, stored)
        _assert_same(got[0], PROFILE.decode([row[0] for row in stored]))
        _assert_same(got[1], ITEMS.decode([row[1] for row in stored]))
        if 4 in chosen:  # its raw entry stays, as before: it stands in if Redis fails
            assert cache.fallback(PAIR, tags[4], 1.0) == stored[4]
    assert len(single) == len(double) == len(chosen)  # the raw entries, fallbacks included


def test_the_answer_from_the_single_decode_is_the_stored_bytes_decoded() -> None:
    tags, stored = _pairs()
    cache = ColumnarCache(CachePolicy(admit_after=1))
    profiles = [row[0] for row in stored]
    (decoded,) = _offer_decoded(cache, GROUP, [PROFILE], tags, profiles, [0, 1, 3])
    for wanted in ({"age", "taste"}, {"score"}):  # fixed-width only: served from `decoded`
        _assert_same(
            merge(PROFILE, profiles, None, wanted, decoded), PROFILE.decode(profiles, wanted)
        )
    # A read that wants a string or a list decodes the stored bytes (the variable parts).
    for variable in (None, {"age", "country"}, {"recent"}):
        _assert_same(
            merge(PROFILE, profiles, None, variable, decoded), PROFILE.decode(profiles, variable)
        )
    # Beside cached rows: the fetched ones from `decoded`, the cached ones from the blocks.
    gathered, missed = cache.lookup(GROUP, tags, 1.0)
    assert gathered is not None
    assert missed.tolist() == [2, 4, 5]
    fetched = [profiles[r] for r in missed.tolist()]
    again = PROFILE.decode(fetched, PROFILE.fixed_names)
    _assert_same(
        merge(PROFILE, fetched, gathered[0], {"age", "taste"}, again),
        PROFILE.decode(profiles, {"age", "taste"}),
    )


def test_a_write_racing_the_admission_keeps_its_row_out() -> None:
    tags, stored = _pairs()
    cache = ColumnarCache(CachePolicy(admit_after=1))
    since = cache.sequence  # the read starts...
    cache.invalidate([PAIR[1] + b"e0}"])  # ...a write of e0's item row lands and is announced
    _offer_decoded(cache, PAIR, [PROFILE, ITEMS], tags, stored, [0, 3], since=since)
    assert cache.lookup(PAIR, tags[:4], 1.0)[1].tolist() == [0, 1, 2]  # only e3 cached
    assert cache.fallback(PAIR, b"e0", 1.0) is MISS  # nothing kept of the older row
    assert len(cache) == 1


def test_a_row_dropped_while_admitted_elsewhere_leaves_no_decoded_copy() -> None:
    """A row first admitted, then fetched again as corrupt (rewritten by something else):
    the older decoded copy must not keep answering."""
    cache = ColumnarCache(CachePolicy(admit_after=1))
    (good,) = _profiles([9])
    _offer_decoded(cache, GROUP, [PROFILE], [b"k"], [good], [0])
    assert cache.lookup(GROUP, [b"k"], 1.0)[1].tolist() == []
    cache.invalidate([GROUP[0] + b"k}"])
    _offer_decoded(cache, GROUP, [PROFILE], [b"k"], [b"\x01" * 5], [0], since=cache.sequence)
    assert cache.lookup(GROUP, [b"k"], 1.0)[1].tolist() == [0]


def test_a_table_placing_batches_finds_every_tag_it_holds() -> None:
    """Batches of new and known tags (`Table.slots`, growing the blocks when needed) and
    releases: every held tag found in its own slot, no slot handed out twice, none leaked."""
    rng = random.Random(11)
    table = Table([PROFILE])
    held: dict[bytes, int] = {}
    for _ in range(300):
        batch = list({b"t%d" % rng.randrange(3000) for _ in range(rng.randrange(1, 40))})
        slots = table.slots(batch).tolist()
        for tag, slot in zip(batch, slots, strict=True):
            assert held.setdefault(tag, slot) == slot  # a known tag keeps its slot
        assert len(set(held.values())) == len(held)
        for tag in rng.sample(list(held), k=min(len(held), rng.randrange(30))):
            assert table.release(tag) == held.pop(tag)
        found = table.find([*held, b"absent"]).tolist()
        assert found == [*held.values(), -1]  # -1: the sentinel slot, never fresh
        capacity = len(table.fresh_until) - 1
        assert len(table.free) + len(held) == capacity  # every slot free or held, once
