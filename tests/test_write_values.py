"""write_features types each feature's values on the client: from their numpy dtype, or as the
caller states with (ValueType.X, values). Values it cannot type fail before any call, with a
message naming the feature and the fix."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from featurewell.client import (
    AsyncFeatureClient,
    FeatureClient,
    InvalidArgument,
    InvalidValues,
    ValueType,
)
from featurewell.client._request import build_write_request
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1.columns import fixed_values, list_values, string_values

NOWHERE = "127.0.0.1:1"  # nothing listens: a call that went out would fail as UNAVAILABLE


def _column(values: Any) -> pb.FeatureColumn:
    request = build_write_request("v", {"k": [1, 2]}, [1, 2], {"f": values})
    (column,) = request.features
    return column


def _decoded(column: pb.FeatureColumn) -> Any:
    kind = ValueType(column.type)
    if kind is ValueType.STRING:
        return string_values(column)
    if kind in (ValueType.INT64_LIST, ValueType.FLOAT64_LIST):
        flat, offsets = list_values(column)
        return [flat[offsets[i] : offsets[i + 1]].tolist() for i in range(column.length)]
    return fixed_values(column).tolist()


@pytest.mark.parametrize(
    ("values", "value_type", "decoded"),
    [
        ([3, 4], ValueType.INT64, [3, 4]),
        (np.array([3, 4], np.int32), ValueType.INT64, [3, 4]),
        (np.array([3, 4], np.uint8), ValueType.INT64, [3, 4]),
        (np.array([0.5, 1.5], np.float32), ValueType.FLOAT32, [0.5, 1.5]),
        ([0.5, 1.5], ValueType.FLOAT64, [0.5, 1.5]),
        (np.array([0.5, 1.5], dtype=">f8"), ValueType.FLOAT64, [0.5, 1.5]),
        ([True, False], ValueType.BOOL, [True, False]),
        (["a", "ü"], ValueType.STRING, ["a", "ü"]),
        (np.array(["a", "b"]), ValueType.STRING, ["a", "b"]),
        (np.array(["a", "b"], dtype=object), ValueType.STRING, ["a", "b"]),
        (np.array([[1, 2], [3, 4]], np.float32), ValueType.EMBEDDING, [[1, 2], [3, 4]]),
        ((np.array([1, 2, 3], np.int64), [0, 1, 3]), ValueType.INT64_LIST, [[1], [2, 3]]),
        (([0.5, 1.0], [0, 0, 2]), ValueType.FLOAT64_LIST, [[], [0.5, 1.0]]),
        ([np.array([1, 2], np.int64), np.array([])], ValueType.INT64_LIST, [[1, 2], []]),
        (
            [np.array([0.5], np.float64), np.array([], np.float64)],
            ValueType.FLOAT64_LIST,
            [[0.5], []],
        ),
        (
            np.array([np.array([7], np.int64), np.array([8, 9], np.int64)], dtype=object),
            ValueType.INT64_LIST,
            [[7], [8, 9]],
        ),
    ],
)
def test_the_value_type_is_inferred_from_the_dtype(
    values: Any, value_type: ValueType, decoded: Any
) -> None:
    column = _column(values)
    assert (column.name, ValueType(column.type), column.length) == ("f", value_type, 2)
    assert _decoded(column) == decoded


@pytest.mark.parametrize(
    ("values", "decoded"),
    [
        ((ValueType.FLOAT32, [1, 0.25]), [1.0, 0.25]),  # Python numbers as float32
        ((ValueType.FLOAT64, np.array([1, 2], np.int64)), [1.0, 2.0]),
        ((ValueType.INT64, np.array([1, 2], dtype=object)), [1, 2]),
        ((ValueType.BOOL, [True, False]), [True, False]),
        ((ValueType.STRING, ("a", "b")), ["a", "b"]),
        ((ValueType.EMBEDDING, [[0.5, 1.0], [2.0, 4.0]]), [[0.5, 1.0], [2.0, 4.0]]),  # float64
        ((ValueType.INT64_LIST, [[1, 2], []]), [[1, 2], []]),  # Python lists, an empty row
        ((ValueType.FLOAT64_LIST, [np.array([0.5], np.float32), [1, 2]]), [[0.5], [1.0, 2.0]]),
        ((ValueType.FLOAT64_LIST, ([1, 2, 3], [0, 1, 3])), [[1.0], [2.0, 3.0]]),
    ],
)
def test_a_stated_value_type_converts_the_values(values: Any, decoded: Any) -> None:
    column = _column(values)
    assert column.type == values[0]
    assert _decoded(column) == decoded


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (5, "expected one value per row (a 1-D array), got shape ()"),
        ("abc", "expected one value per row"),
        ((2, [0.5, 1.5]), "must be a ValueType, not 2: write (ValueType.FLOAT32, values)"),
        (np.ones((2, 2)), "a 2-D float64 array; embeddings are float32"),
        (np.ones((2, 1, 1), np.float32), "got shape (2, 1, 1)"),
        ([[1, 2], [3]], "rows of different lengths?): for a list feature pass a list of 1-D"),
        (
            [np.array([1], np.float32), np.array([2], np.float32)],
            "np.stack(rows) for an embedding, or state",
        ),
        (np.array(["a", None], dtype=object), "an object array holding NoneType values"),
        (np.array([b"x", b"y"]), "|S1 values have no ValueType: convert them to"),
        (np.array(["2024-01-01", "2024-01-02"], dtype="datetime64[D]"), "datetime64[D] values"),
        (([], [0, 0, 0]), "no elements to tell INT64_LIST from FLOAT64_LIST"),
        (
            (np.array([1, 2], np.int64), np.array([3], np.int64)),
            "offsets rising from 0 to len(flat) = 2",
        ),
        ((1, 2, 3), "a tuple is (flat, offsets) for a list feature"),
        ((ValueType.INT64, [0.5, 1.0]), "float64 values cannot be written as INT64"),
        ((ValueType.BOOL, [0, 1]), "values.astype('bool')"),
        ((ValueType.STRING, ["a", 1]), "STRING values must all be str, got int"),
        ((ValueType.EMBEDDING, np.array([1, 2], np.float32)), "expected a 2-D array (rows x dim)"),
        ((ValueType.INT64_LIST, [[0.5], [1]]), "cannot be written as INT64_LIST"),
        ((ValueType.FLOAT32, [1e300, 1.0]), "beyond the range of FLOAT32 (float32) would become"),
        ((ValueType.EMBEDDING, [[1e39, 0.0], [0.0, 0.0]]), "would become inf: scale or clip"),
        (np.array([2**64 - 1, 1], np.uint64), "uint64 value 18446744073709551615 does not fit"),
        ((np.array([2**63, 1], np.uint64), [0, 1, 2]), "does not fit in INT64_LIST (int64)"),
    ],
)
def test_values_the_client_cannot_type_fail_before_any_call(values: Any, message: str) -> None:
    with FeatureClient(NOWHERE) as client, pytest.raises(InvalidValues) as error:
        client.write_features("v", {"k": [1, 2]}, [1, 2], {"ok": [1, 2], "taste": values})
    assert str(error.value).startswith("feature 'taste': ")
    assert message in str(error.value)
    assert isinstance(error.value, InvalidArgument)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_async_client_types_values_the_same_way() -> None:
    async with AsyncFeatureClient(NOWHERE) as client:
        with pytest.raises(InvalidValues, match="feature 'x': a 2-D int64 array"):
            await client.write_features("v", {"k": [1]}, [1], {"x": np.array([[1, 2]], np.int64)})
