"""Corrupt stored rows: written straight to the row keys with redis-py (as a foreign writer or a
bad migration would), each one is that row's DATA_LOSS with the defaults, counted per view, and
the rest of the call is served. GET (one view) and MGET (several) answer alike."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import redis.cluster

from featurewell.client import FeatureClient, FeatureClientError, Status
from featurewell.definitions import FeatureView, Registry
from featurewell.devcluster import LocalCluster
from featurewell.store import versions
from featurewell.store.codec import RowCodec
from featurewell.store.keys import DEFAULTS_KEY, entity_tags, key_prefix
from featurewell.store.online import OnlineStore
from featurewell.values import Ragged
from tests import defs
from tests.tools import Ids, ServerThread, make_settings, wait_until

PROFILE = RowCodec(defs.profile)


@pytest.fixture(scope="module")
def rc(cluster: LocalCluster) -> Iterator[redis.cluster.RedisCluster]:
    host, port = cluster.seeds[0]
    with redis.cluster.RedisCluster(host=host, port=port) as connected:
        yield connected


def row_key(view: FeatureView, key: str | int) -> bytes:
    column: list[Any] = [key]
    (tag,) = entity_tags([column], 1)
    return key_prefix(view) + tag + b"}"


def profile_row(country: bytes = b"XY", recent: bytes = b"", at_us: int | None = None) -> bytes:
    """A profile@v2 row with these raw variable parts (country's bytes, recent's bytes)."""
    (row,) = PROFILE.encode(
        np.array([defs.now_us() if at_us is None else at_us], np.int64),
        {
            "age": np.array([30], np.int64),
            "score": np.array([0.3]),
            "premium": np.array([True]),
            "country": np.array(["XY"], dtype=object),
            "taste": np.ones((1, 4), np.float32),
            "recent": _lists([[]]),
            "weights": _lists([[2.0]]),
        },
    )
    fixed = row[: PROFILE.fixed_size]
    weights = np.array([2.0]).tobytes()
    parts = [country, recent, weights]
    return fixed + b"".join(struct.pack("<I", len(p)) + p for p in parts)


def _lists(rows: list[list[float]]) -> Ragged:
    return Ragged.from_rows([np.asarray(r) for r in rows], np.dtype("<f8"))


def corrupt_rows_metric(server: ServerThread, view: str) -> float:
    registry = server.server.telemetry.metrics.registry
    return registry.get_sample_value("featurewell_corrupt_rows_total", {"view": view}) or 0.0


# Each case writes one corrupt profile@v2 row for a user with redis-py.
CASES: dict[str, Callable[[redis.cluster.RedisCluster, bytes], Any]] = {
    "invalid-utf8": lambda rc, key: rc.set(key, profile_row(country=b"\xff\xfe")),
    "list-of-partial-elements": lambda rc, key: rc.set(key, profile_row(recent=b"abc")),
    "row-of-wrong-size": lambda rc, key: rc.set(key, b"not a row"),
    "foreign-json": lambda rc, key: rc.set(key, b'{"age": 3, "country": "fr"}'),
    "bad-length-prefix": lambda rc, key: rc.set(key, profile_row()[:-12] + b"\xff\xff\xff\x7f"),
    "negative-event-time": lambda rc, key: rc.set(key, profile_row(at_us=-5)),
    "wrong-type-list": lambda rc, key: rc.rpush(key, b"x"),
    "wrong-type-hash": lambda rc, key: rc.hset(key, "age", "3"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_corrupt_row_is_its_own_data_loss_and_the_rest_is_served(
    client: FeatureClient,
    server: ServerThread,
    rc: redis.cluster.RedisCluster,
    ids: Ids,
    case: str,
) -> None:
    good, bad = ids("good"), ids(f"bad-{case}")
    defs.write_profiles(client, [good], ages=[41])
    CASES[case](rc, row_key(defs.profile, bad))
    before = corrupt_rows_metric(server, "profile@v2")

    # One view: one GET per row.
    single = client.get_features(
        ["profile:age", "profile:country", "profile:recent"], entities={"user_id": [good, bad]}
    )
    assert single.statuses("profile:age").tolist() == [Status.PRESENT, Status.DATA_LOSS]
    assert single["profile:age"].values.tolist() == [41, -1]  # the bad row: the default
    assert single["profile:country"].values.tolist() == ["c41", "zz"]
    assert single.data_loss_count == 3  # three columns of one bad row

    # Two views of one entity: one MGET per row, the same answer for the bad view. (A bad
    # variable part is found when a string or list feature of the view is read.) MGET answers
    # nil for a key of another type: NOT_FOUND, unless row_type_checks looks again (below).
    wrong_type = case.startswith("wrong-type")
    multi = client.get_features(
        ["profile:age", "profile:country", "profile@v1:age"], entities={"user_id": [good, bad]}
    )
    bad_status = Status.NOT_FOUND if wrong_type else Status.DATA_LOSS
    assert multi.statuses("profile:age").tolist() == [Status.PRESENT, bad_status]
    assert multi.statuses("profile@v1:age").tolist() == [Status.NOT_FOUND, Status.NOT_FOUND]
    matrix, names = multi.to_numpy()
    assert names == ["profile:age", "profile@v1:age"]
    assert matrix[:, 0].tolist() == [41, -1]

    # Strict: the call fails, naming the view.
    with pytest.raises(FeatureClientError) as error:
        client.get_features(
            ["profile:age", "profile:country"], entities={"user_id": [bad]}, strict=True
        )
    assert error.value.code == grpc.StatusCode.DATA_LOSS
    assert "'profile@v2'" in str(error.value)

    reads = 1 if wrong_type else 2
    wait_until(
        lambda: corrupt_rows_metric(server, "profile@v2") >= before + reads,
        30.0,
        "featurewell_corrupt_rows_total{view='profile@v2'} counting the reads that saw it",
    )


def test_one_corrupt_row_of_500_fails_nothing_else(
    client: FeatureClient, rc: redis.cluster.RedisCluster, ids: Ids
) -> None:
    base = int(abs(hash(ids("items"))) % 10**12) * 1000
    items = list(range(base, base + 500))
    defs.write_items(client, items)
    rc.set(row_key(defs.item_stats, items[250]), b"\x00" * 3)  # fixed-width view, wrong size

    result = client.get_features(
        ["item_stats:popularity", "item_stats:vec"], entities={"item_id": items}
    )

    statuses = result.statuses("item_stats:popularity")
    assert int(np.count_nonzero(statuses == Status.PRESENT)) == 499
    assert statuses[250] == Status.DATA_LOSS
    matrix, _ = result.to_numpy()
    assert matrix.shape == (500, 5)
    assert matrix[250].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0]  # the defaults


def test_wrong_type_key_is_data_loss_on_get_and_with_row_type_checks_on_mget(
    client: FeatureClient,
    rc: redis.cluster.RedisCluster,
    ids: Ids,
    cluster: LocalCluster,
    registry: Registry,
) -> None:
    """A single-view GET reports a key of another type at no cost. A multi-view MGET sees it
    as missing (NOT_FOUND), unless `row_type_checks` pays a second look (TYPE) for rows it
    found missing: then both paths answer DATA_LOSS."""
    user = ids("wrongtype-v1")
    rc.sadd(row_key(defs.profile_v1, user), b"member")  # the v1 key is a set
    defs.write_profiles(client, [user], ages=[20])
    both = ["profile@v1:age", "profile:age"]

    get = client.get_features(["profile@v1:age"], entities={"user_id": [user]})
    mget = client.get_features(both, entities={"user_id": [user]})
    assert get.statuses("profile@v1:age").tolist() == [Status.DATA_LOSS]
    assert mget.statuses("profile@v1:age").tolist() == [Status.NOT_FOUND]  # the default
    assert mget.statuses("profile:age").tolist() == [Status.PRESENT]

    checking = ServerThread(make_settings(cluster, row_type_checks=True), registry)
    try:
        with FeatureClient(checking.address, timeout=5.0) as checked:
            mget = checked.get_features(both, entities={"user_id": [user]})
    finally:
        checking.stop()
    assert mget.statuses("profile@v1:age").tolist() == [Status.DATA_LOSS]
    assert mget.statuses("profile:age").tolist() == [Status.PRESENT]
    assert mget["profile:age"].values.tolist() == [20]


# -- promoted default versions --------------------------------------------------------------

BAD_PROMOTIONS: dict[Any, Any] = {
    b"hostile-not-a-number": b"two",
    b"hostile-negative": b"-3",
    b"hostile-\xff\xfe": b"2",  # a view name that is not UTF-8
    b"hostile-huge-float": b"1e400",
}


@pytest.fixture
def bad_promotions(rc: redis.cluster.RedisCluster) -> Iterator[None]:
    """Bad entries beside a good one in the shared defaults hash, removed afterwards (the views
    are named for this test only: no other test serves them)."""
    rc.hset(DEFAULTS_KEY, mapping={**BAD_PROMOTIONS, b"hostile-good": b"4"})
    try:
        yield
    finally:
        rc.hdel(DEFAULTS_KEY, *BAD_PROMOTIONS, b"hostile-good")


async def test_bad_promoted_versions_are_ignored_and_logged(
    cluster: LocalCluster, bad_promotions: None, caplog: pytest.LogCaptureFixture
) -> None:
    store = await OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
    try:
        found = await versions.promoted(store.cluster)
    finally:
        await store.close()
    assert found.get("hostile-good") == 4
    assert not {name for name in found if name.startswith("hostile-") and name != "hostile-good"}
    assert caplog.text.count("ignoring a bad promoted default version") == len(BAD_PROMOTIONS)


def test_a_server_starts_and_follows_promotions_past_bad_entries(
    cluster: LocalCluster, registry: Registry, bad_promotions: None
) -> None:
    running = ServerThread(make_settings(cluster, versions_poll_s=0.05), registry)
    try:
        assert running.server.promoted.get("hostile-good") == 4
        task = running.server.versions_task
        assert task is not None
        time.sleep(0.3)  # several polls over the bad entries
        assert not task.done()
    finally:
        running.stop()


def test_writing_the_row_repairs_a_key_of_another_type(
    client: FeatureClient, rc: redis.cluster.RedisCluster, ids: Ids
) -> None:
    user = ids("repair")
    rc.rpush(row_key(defs.profile, user), b"x")
    assert client.get_features(["profile:age"], entities={"user_id": [user]}).statuses(
        "profile:age"
    ).tolist() == [Status.DATA_LOSS]

    assert defs.write_profiles(client, [user], ages=[52]).written == 1

    repaired = client.get_features(["profile:age"], entities={"user_id": [user]})
    assert repaired.statuses("profile:age").tolist() == [Status.PRESENT]
    assert repaired["profile:age"].values.tolist() == [52]
