"""The positional row codec: every type round-trips; bad rows are refused, not misread."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from featurewell.client import FeatureClient, FeatureClientError, Status
from featurewell.devcluster import LocalCluster, call
from featurewell.errors import InvalidRequest
from featurewell.store.codec import RowCodec
from featurewell.store.keys import entity_tags, key_prefix, slot_of
from featurewell.values import Ragged
from tests import defs
from tests.tools import Ids, fixed

CODEC = RowCodec(defs.profile)


def _columns(n: int) -> dict[str, Any]:
    return {
        "age": np.arange(n, dtype=np.int64) - 3,
        "score": np.linspace(-1, 1, n),
        "premium": np.arange(n) % 2 == 1,
        "country": np.array([f"c{i}-ü" for i in range(n)], dtype=object),
        "taste": np.arange(n * 4, dtype=np.float32).reshape(n, 4),
        "recent": Ragged.from_rows(
            [np.arange(i, dtype=np.int64) for i in range(n)], np.dtype("<i8")
        ),
        "weights": Ragged.from_rows([np.full(i % 3, 0.5) for i in range(n)], np.dtype("<f8")),
    }


def test_every_type_round_trips_with_missing_rows_defaulted() -> None:
    columns = _columns(5)
    rows: list[bytes | None] = list(CODEC.encode(np.arange(5, dtype=np.int64) + 100, columns))
    rows.insert(2, None)

    decoded = CODEC.decode(rows)

    assert decoded.present.tolist() == [True, True, False, True, True, True]
    assert decoded.event_time_us.tolist() == [100, 101, 0, 102, 103, 104]
    keep = [0, 1, 3, 4, 5]
    assert fixed(decoded.values["age"]).tolist() == [-3, -2, -1, -1, 0, 1]  # default -1 at index 2
    np.testing.assert_array_equal(fixed(decoded.values["score"])[keep], columns["score"])
    assert fixed(decoded.values["score"])[2] == 0.5
    assert fixed(decoded.values["premium"]).tolist() == [False, True, False, False, True, False]
    country = fixed(decoded.values["country"])
    assert country.tolist() == ["c0-ü", "c1-ü", "zz", "c2-ü", "c3-ü", "c4-ü"]
    np.testing.assert_array_equal(fixed(decoded.values["taste"])[keep], columns["taste"])
    assert fixed(decoded.values["taste"])[2].tolist() == [0, 0, 0, 1]
    recent = decoded.values["recent"]
    assert isinstance(recent, Ragged)
    assert [recent.row(i).tolist() for i in range(6)] == [
        [],
        [0],
        [],
        [0, 1],
        [0, 1, 2],
        [0, 1, 2, 3],
    ]
    weights = decoded.values["weights"]
    assert isinstance(weights, Ragged)
    assert weights.row(2).tolist() == [1.0]  # the declared default list


def test_fixed_width_rows_have_one_size() -> None:
    codec = RowCodec(defs.item_stats)
    rows = codec.encode(
        np.array([1, 2], np.int64),
        {"popularity": np.array([1, 2], np.float32), "vec": np.ones((2, 4))},
    )
    assert {len(r) for r in rows} == {codec.fixed_size} == {8 + 4 + 16}


def test_decode_only_wanted_features() -> None:
    rows = CODEC.encode(np.array([7], np.int64), _columns(1))
    decoded = CODEC.decode(rows, wanted={"taste"})
    assert set(decoded.values) == {"taste"}


@pytest.mark.parametrize(
    "mangle",
    [lambda r: r[:-1], lambda r: r + b"x", lambda r: r[:10], lambda r: b""],
    ids=["short", "trailing", "truncated-fixed", "empty"],
)
def test_corrupt_rows_are_flagged_not_misread(mangle: Any) -> None:
    good, bad = CODEC.encode(np.array([7, 8], np.int64), _columns(2))
    decoded = CODEC.decode([good, mangle(bad), None])
    assert decoded.corrupt is not None
    assert decoded.corrupt.tolist() == [False, True, False]
    assert decoded.present.tolist() == [True, False, False]  # served as missing: the defaults
    assert fixed(decoded.values["age"]).tolist() == [-3, -1, -1]
    assert fixed(decoded.values["country"]).tolist() == ["c0-ü", "zz", "zz"]
    assert str(CODEC.corrupt_error(1)).count("'profile@v2'") == 1


def test_rows_corrupt_in_different_ways_in_one_batch_are_all_flagged() -> None:
    rows = CODEC.encode(np.array([7, 8, 9], np.int64), _columns(3))
    fixed_size = CODEC.fixed_size
    bad_string = rows[2][: fixed_size + 4] + b"\xff" + rows[2][fixed_size + 5 :]  # c2-ü -> \xff2-ü
    decoded = CODEC.decode([rows[0], b"short", bad_string])
    assert decoded.corrupt is not None
    assert decoded.corrupt.tolist() == [False, True, True]
    assert fixed(decoded.values["country"]).tolist() == ["c0-ü", "zz", "zz"]


def test_intact_rows_have_no_corrupt_mask() -> None:
    decoded = CODEC.decode([*CODEC.encode(np.array([7], np.int64), _columns(1)), None])
    assert decoded.corrupt is None


def test_wrong_shapes_are_refused_on_encode() -> None:
    columns = _columns(2)
    columns["taste"] = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(InvalidRequest, match=r"'taste' \(embedding\[4\]\) needs shape \(2, 4\)"):
        CODEC.encode(np.array([1, 2], np.int64), columns)


def test_corrupt_stored_row_is_data_loss(
    client: FeatureClient, cluster: LocalCluster, ids: Ids
) -> None:
    user = ids("corrupt")
    (tag,) = entity_tags([[user]], 1)
    key = key_prefix(defs.profile) + tag + b"}"
    for port in cluster.masters:  # only the owner accepts it; the others answer MOVED
        reply = call(port, "SET", key, b"not a row")
        if reply == b"OK":
            break
    else:
        pytest.fail(f"no master accepted slot {slot_of(tag)}")

    result = client.get_features(["profile:age"], entities={"user_id": [user]})
    assert result.statuses("profile:age").tolist() == [Status.DATA_LOSS]
    with pytest.raises(FeatureClientError) as error:
        client.get_features(["profile:age"], entities={"user_id": [user]}, strict=True)
    assert error.value.code == grpc.StatusCode.DATA_LOSS
    assert "'profile@v2'" in str(error.value)
