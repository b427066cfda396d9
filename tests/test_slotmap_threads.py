"""The slot map is read from other threads (a metrics scrape lists the masters) while the event
loop replaces it: a reader must always see one whole map, never the new owners beside the old
node list (an IndexError a failover test once met)."""

from __future__ import annotations

import sys
import threading
from typing import Any

from featurewell.store.slotmap import SlotMap


def _reply(masters: int) -> list[Any]:
    """A CLUSTER SLOTS reply splitting the slots evenly over `masters` nodes."""
    step = 16384 // masters
    return [
        [i * step, 16383 if i == masters - 1 else (i + 1) * step - 1, [b"127.0.0.1", 7000 + i]]
        for i in range(masters)
    ]


def test_readers_on_other_threads_always_see_a_whole_map() -> None:
    slot_map = SlotMap()
    small, large = _reply(1), _reply(6)
    slot_map.apply(small, ("127.0.0.1", 7000))
    seen: set[int] = set()
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                seen.add(len(slot_map.masters))
                assert slot_map.node_of(16383) is not None
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython can
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20_000):
            slot_map.apply(large, ("127.0.0.1", 7000))
            slot_map.apply(small, ("127.0.0.1", 7000))
    finally:
        done.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert errors == []
    assert seen <= {1, 6}


def test_masters_follow_every_change_of_the_map() -> None:
    # `masters` is kept between changes (telemetry asks every second): each apply, and each
    # MOVED redirect changing the map in place, must show in the next answer.
    slot_map = SlotMap()
    assert slot_map.masters == []
    slot_map.apply(_reply(2), ("127.0.0.1", 7000))
    assert slot_map.masters == [("127.0.0.1", 7000), ("127.0.0.1", 7001)]
    slot_map.move(0, ("127.0.0.1", 7009))  # a node the map did not know takes one slot
    assert slot_map.masters == [("127.0.0.1", 7000), ("127.0.0.1", 7001), ("127.0.0.1", 7009)]
    for slot in range(8192, 16384):  # 7001's slots all move to 7000: it owns none
        slot_map.move(slot, ("127.0.0.1", 7000))
    assert slot_map.masters == [("127.0.0.1", 7000), ("127.0.0.1", 7009)]
    slot_map.apply(_reply(1), ("127.0.0.1", 7000))
    assert slot_map.masters == [("127.0.0.1", 7000)]
    listed = slot_map.masters
    listed.append(("127.0.0.1", 1))  # a caller's list is its own
    assert slot_map.masters == [("127.0.0.1", 7000)]
