"""The single-entity fast paths (docs/performance.md): one row decoded and given its status
without numpy reductions, and the after-answer queue. Each must answer exactly what the batch
path answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from featurewell.client import FeatureClient, Status
from featurewell.devcluster import LocalCluster, call
from featurewell.serving import service
from featurewell.serving.service import AFTER_ANSWER_S, AfterAnswer
from featurewell.store.codec import RowCodec
from featurewell.store.keys import entity_tags, key_prefix
from featurewell.values import Ragged
from tests import defs
from tests.tools import Ids, fixed, wait_until_async

ITEM_STATS = RowCodec(defs.item_stats)  # fixed-width features only


def _row(at_us: int) -> bytes:
    (row,) = ITEM_STATS.encode(
        np.array([at_us], np.int64),
        {"popularity": np.array([0.25], np.float32), "vec": np.ones((1, 4))},
    )
    return row


def test_one_row_decodes_as_in_a_batch() -> None:
    alone = ITEM_STATS.decode([_row(123)])
    batch = ITEM_STATS.decode([_row(123), _row(123)])
    assert alone.corrupt is None
    assert alone.present.tolist() == [True]
    assert alone.event_time_us.tolist() == [123]
    assert fixed(alone.values["popularity"]).tolist() == [0.25]
    assert fixed(alone.values["vec"]).tolist() == fixed(batch.values["vec"])[:1].tolist()


def test_one_row_with_a_negative_event_time_is_corrupt() -> None:
    decoded = ITEM_STATS.decode([_row(-5)])
    assert decoded.corrupt is not None
    assert decoded.corrupt.tolist() == [True]
    assert decoded.present.tolist() == [False]  # served as missing: the defaults
    assert fixed(decoded.values["popularity"]).tolist() == [0.0]


def test_shared_single_row_arrays_cannot_be_written() -> None:
    """One row's presence is a shared array: a consumer writing into it must fail loudly rather
    than change every later call's answer."""
    decoded = ITEM_STATS.decode([_row(7)])
    with pytest.raises(ValueError, match="read-only"):
        decoded.present[0] = False
    decoded.event_time_us[0] = 8  # the call's own copy, not the stored block
    assert ITEM_STATS.decode([_row(7)]).event_time_us.tolist() == [7]


def _profile_row() -> bytes:
    (row,) = RowCodec(defs.profile).encode(
        np.array([defs.now_us()], np.int64),
        {
            "age": np.array([30], np.int64),
            "score": np.array([0.3]),
            "premium": np.array([True]),
            "country": np.array(["XY"], dtype=object),
            "taste": np.ones((1, 4), np.float32),
            "recent": Ragged.from_rows([np.arange(2, dtype=np.int64)], np.dtype("<i8")),
            "weights": Ragged.from_rows([np.ones(1)], np.dtype("<f8")),
        },
    )
    return row


def _store_raw(cluster: LocalCluster, user: str, row: bytes) -> None:
    (tag,) = entity_tags([[user]], 1)
    key = key_prefix(defs.profile) + tag + b"}"
    if not any(call(port, "SET", key, row) == b"OK" for port in cluster.masters):
        pytest.fail("no master took the key")


@pytest.mark.parametrize(
    ("case", "status", "age"),
    [
        ("fresh", Status.PRESENT, 41),
        ("two-hours-old", Status.STALE, 41),  # profile's max_age is 1 hour
        ("missing", Status.NOT_FOUND, -1),
        ("negative-time", Status.DATA_LOSS, -1),
    ],
)
def test_one_entity_gets_the_status_a_batch_gets(
    client: FeatureClient, cluster: LocalCluster, ids: Ids, case: str, status: Status, age: int
) -> None:
    user, other = ids(f"one-{case}"), ids(f"other-{case}")
    defs.write_profiles(client, [other], ages=[7])
    if case in ("fresh", "two-hours-old"):
        at_us = defs.now_us() - (2 * 3600 * 10**6 if case == "two-hours-old" else 0)
        defs.write_profiles(client, [user], ages=[41], at_us=at_us)
    elif case == "negative-time":  # a valid row but for its time (writes refuse it)
        _store_raw(cluster, user, (-1).to_bytes(8, "little", signed=True) + _profile_row()[8:])

    references = ["profile:age", "profile:taste"]
    alone = client.get_features(references, entities={"user_id": [user]})
    batch = client.get_features(references, entities={"user_id": [user, other]})

    assert alone.statuses("profile:age").tolist() == [status]
    assert batch.statuses("profile:age").tolist()[0] == status
    assert alone["profile:age"].values.tolist() == [age]
    assert alone.statuses("profile:taste").tolist() == [status]


async def test_after_answer_runs_everything_later_in_order_past_a_failure() -> None:
    ran: list[int] = []

    def record(n: int) -> None:
        if n == 1:
            raise RuntimeError("a broken recorder")
        ran.append(n)

    after = AfterAnswer()
    for n in range(4):
        after(record, n)
    assert ran == []  # nothing on the call's own path
    await asyncio.sleep(AFTER_ANSWER_S * 5)
    assert ran == [0, 2, 3]
    after(record, 4)  # the timer re-arms once the queue has emptied
    await asyncio.sleep(AFTER_ANSWER_S * 5)
    assert ran == [0, 2, 3, 4]


async def test_after_answer_keeps_each_entry_until_it_is_due() -> None:
    loop = asyncio.get_running_loop()
    ran_at: list[float] = []
    added_at: list[float] = []
    after = AfterAnswer()
    stamp: Callable[[], Any] = lambda: ran_at.append(loop.time())  # noqa: E731
    for _ in range(3):
        added_at.append(loop.time())
        after(stamp)
        await asyncio.sleep(AFTER_ANSWER_S / 2)
    await asyncio.sleep(AFTER_ANSWER_S * 5)
    assert len(ran_at) == 3
    # Loop time, not a stopwatch: an entry never runs before its due time (less the timer's
    # own rounding, which the queue allows for).
    assert all(r >= a + AFTER_ANSWER_S - 0.0006 for a, r in zip(added_at, ran_at, strict=True))


async def test_after_answer_flushes_once_for_all_it_ran_in_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The flush comes 0.5 s after a run here (FLUSH_EVERY_S is 50 ms): the three runs below
    # must fall within one flush's wait, and a loaded machine can stall a process 50 ms. The
    # flushes are then awaited, not slept for: a run late after a stall arms its flush late.
    monkeypatch.setattr(service, "FLUSH_EVERY_S", 0.5)
    ran: list[int] = []
    flushed: list[list[int]] = []  # what had run at each flush
    after = AfterAnswer(lambda: flushed.append(list(ran)))
    for n in range(3):
        after(ran.append, n)
        await asyncio.sleep(AFTER_ANSWER_S * 2)  # each runs on a timer tick of its own
    assert ran == [0, 1, 2]
    assert flushed == []  # not one flush per run
    await wait_until_async(lambda: flushed, 30, "the flush")
    assert flushed == [[0, 1, 2]]
    after(ran.append, 3)  # the flush re-arms with the next run
    await wait_until_async(lambda: len(flushed) == 2, 30, "the second flush")
    assert flushed == [[0, 1, 2], [0, 1, 2, 3]]
