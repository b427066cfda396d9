"""The columnar table's numpy lookup index (store/probe.py) against a dict, through adds,
removals, growth and rebuilds; and the table never answers a slot for a tag it does not hold,
whatever the probe says."""

from __future__ import annotations

import random

import numpy as np

from featurewell.store.columnar import _Table
from featurewell.store.probe import ProbeIndex
from tests.test_cache_columnar import PROFILE


def test_the_probe_finds_what_a_dict_holds_through_churn() -> None:
    rng = random.Random(7)
    capacity = 8
    probe = ProbeIndex(capacity)
    held: dict[bytes, int] = {}
    free = list(range(capacity))
    for step in range(6000):
        if free and (rng.random() < 0.6 or not held):
            tag = b"t%d" % rng.randrange(10**6)
            if tag in held:
                continue
            slot = free.pop()
            probe.add(tag, slot)
            held[tag] = slot
        elif held:
            slot = held.pop(rng.choice(list(held)))
            probe.remove(slot)
            free.append(slot)
        if not free:  # full: grow, as the table does
            probe.grow(2 * capacity)
            free = list(range(2 * capacity - 1, capacity - 1, -1))
            capacity *= 2
        if step % 500 == 0 or step == 5999:
            asked = [*held, b"absent", b"t-1"]
            got = probe.find(asked, sentinel=capacity).tolist()
            assert got == [held[t] for t in held] + [capacity, capacity]
    assert probe.used == len(held)


def test_a_hash_collision_never_answers_another_tags_slot() -> None:
    table = _Table([PROFILE])
    slot = table.slot(b"mine")
    # Forge the probe: every tag now "hashes" to mine's entry.
    table.probe.keys[:] = table.probe.hashes[slot]
    table.probe.slots[:] = slot
    none = len(table.fresh_until) - 1  # the sentinel
    others = [b"other%d" % i for i in range(40)]  # past the few a dict answers: the probe's
    assert table.find([b"mine", *others]).tolist() == [slot] + [none] * 40
    table.release(b"mine")
    assert table.find([b"mine", *others]).tolist() == [none] * 41
    assert np.all(table.tags[: len(table.tags) - 1] == None)  # noqa: E711


def test_a_table_placing_batches_finds_every_tag_it_holds() -> None:
    """Batches of new and known tags (`_Table.slots`, growing the blocks when needed) and
    releases: every held tag found in its own slot, no slot handed out twice, none leaked."""
    rng = random.Random(11)
    table = _Table([PROFILE])
    held: dict[bytes, int] = {}
    for _ in range(300):
        batch = list({b"t%d" % rng.randrange(3000) for _ in range(rng.randrange(1, 40))})
        slots = table.slots(batch).tolist()
        for tag, slot in zip(batch, slots, strict=True):
            assert held.setdefault(tag, slot) == slot  # a known tag keeps its slot
        assert len(set(held.values())) == len(held)
        for tag in rng.sample(list(held), k=min(len(held), rng.randrange(30))):
            assert table.release(tag) == held.pop(tag)
        asked = [*held, b"absent"]
        assert table.find(asked).tolist() == [*held.values(), len(table.fresh_until) - 1]
        capacity = len(table.fresh_until) - 1
        assert len(table.free) + len(held) == capacity  # every slot free or held, once
        assert table.probe.used == len(held)
