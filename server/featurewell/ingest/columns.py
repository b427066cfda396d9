"""Arrow columns of a source file -> the engine's write columns, with every problem named.

A Parquet column can hold what a WriteFeatures call cannot: nulls, lists of the wrong length for
an embedding, integers where a feature takes floats. Each conversion returns the values the
engine takes plus the problems it found as (row in the batch, reason), so `materialize` can
name the file, the column and the rows and refuse the file before anything is written. Where a
row is bad the values hold a harmless placeholder (zeros): they are never written.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from featurewell.definitions import Feature, Kind
from featurewell.values import ColumnValues, Ragged

# A problem of one row of the batch (row -1: the whole column), in words.
RowProblem: TypeAlias = tuple[int, str]
Converted: TypeAlias = tuple[Any, list[RowProblem]]

_NULL_RULE_HINT = "declare the feature with nulls='default' or nulls='skip_row' to load such rows"


def null_rows(array: pa.Array) -> npt.NDArray[np.bool_]:
    """True where the column holds a null."""
    if array.null_count == 0:
        return np.zeros(len(array), dtype=np.bool_)
    return np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=np.bool_)


def key_values(kind: Kind, array: pa.Array) -> Converted:
    """An entity key column as Python values (the engine's key checks run on those)."""
    wanted = "integers" if kind is Kind.INT64 else "strings"
    fits = pa.types.is_integer if kind is Kind.INT64 else _is_text
    if not fits(array.type):
        return [0] * len(array), [(-1, f"holds {array.type}; the entity key takes {wanted}")]
    problems = [(row, "null entity key") for row in np.flatnonzero(null_rows(array)).tolist()]
    return array.to_pylist(), problems


def timestamps(array: pa.Array) -> Converted:
    """The event time column as int64 µs since the epoch: integers are µs already; timestamps
    of any unit are converted (ns cut to µs; s and ms beyond the int64 µs range are refused,
    not wrapped)."""
    if pa.types.is_timestamp(array.type):
        unit = array.type.unit
        array = array.cast(pa.int64())
    elif pa.types.is_integer(array.type):
        unit = "us"
    else:
        return np.zeros(len(array), np.int64), [
            (-1, f"holds {array.type}; event times are timestamps or integer µs since the epoch")
        ]
    nulls = null_rows(array)
    problems = [(row, "null event time") for row in np.flatnonzero(nulls).tolist()]
    values = np.asarray(pc.fill_null(array, 0).to_numpy(zero_copy_only=False))
    scale = {"s": 1_000_000, "ms": 1_000}.get(unit, 1)
    limit = np.iinfo(np.int64).max // scale
    if values.dtype.kind == "u":
        too_big = values > limit
    else:
        too_big = np.abs(values.astype(np.float64)) > limit
    problems += [
        (row, f"event time {values[row]} {unit} is beyond the int64 µs range")
        for row in np.flatnonzero(too_big).tolist()
    ]
    values = np.where(too_big, 0, values).astype(np.int64)
    if unit == "ns":
        return values // 1000, problems
    return values * scale, problems


def feature_values(feature: Feature, array: pa.Array) -> tuple[ColumnValues, list[RowProblem]]:
    """One feature's column. Nulls follow the feature's `nulls` rule: "reject" names each null
    row, "default" writes the feature's default ("skip_row" rows are filtered out before)."""
    problems: list[RowProblem] = []
    nulls = null_rows(array)
    if nulls.any():
        if feature.nulls == "default":
            array = _with_default(feature, array, nulls)
        else:
            problems += [
                (row, f"null value; {_NULL_RULE_HINT}") for row in np.flatnonzero(nulls).tolist()
            ]
            array = _with_default(feature, array, nulls)  # a placeholder: never written
    kind = feature.dtype.kind
    if kind is Kind.STRING:
        if not _is_text(array.type):
            return _zeros(feature, len(array)), [(-1, _type_problem(feature, array))]
        return np.asarray(array.to_pylist(), dtype=object), problems
    if feature.dtype.is_fixed_width and kind is not Kind.EMBEDDING:
        return _scalars(feature, array, problems)
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)) and not (
        pa.types.is_fixed_size_list(array.type)
    ):
        return _zeros(feature, len(array)), [(-1, _type_problem(feature, array))]
    element = array.type.value_type
    if not _element_fits(kind, element):
        return _zeros(feature, len(array)), [(-1, _type_problem(feature, array))]
    flat = pc.list_flatten(array)
    if flat.null_count:
        parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        bad_rows = np.unique(parents[null_rows(flat)]).tolist()
        problems += [(int(row), "a list holding a null item") for row in bad_rows]
        flat = pc.fill_null(flat, 0)
    numbers = np.asarray(flat.to_numpy(zero_copy_only=False))
    lengths = np.asarray(pc.list_value_length(array).to_numpy(zero_copy_only=False), np.int64)
    if kind is Kind.EMBEDDING:
        dim = feature.dtype.dim
        wrong = np.flatnonzero(lengths != dim)
        problems += [
            (row, f"{int(lengths[row])} numbers; {feature.dtype} needs exactly {dim} per row")
            for row in wrong.tolist()
        ]
        if len(wrong):
            return _zeros(feature, len(array)), problems
        return numbers.reshape(len(array), dim), problems
    offsets = np.zeros(len(array) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return Ragged(numbers, offsets), problems


def _scalars(feature: Feature, array: pa.Array, problems: list[RowProblem]) -> Converted:
    kind = feature.dtype.kind
    fits = {
        Kind.INT64: pa.types.is_integer,
        Kind.FLOAT32: pa.types.is_floating,
        Kind.FLOAT64: pa.types.is_floating,
        Kind.BOOL: pa.types.is_boolean,
    }[kind]
    if not fits(array.type):
        return _zeros(feature, len(array)), [(-1, _type_problem(feature, array))]
    return np.asarray(array.to_numpy(zero_copy_only=False)), problems


def _with_default(feature: Feature, array: pa.Array, nulls: npt.NDArray[np.bool_]) -> pa.Array:
    """`array` with its nulls replaced by the feature's default (Python work only for lists)."""
    default = feature.default
    try:
        if not feature.dtype.is_fixed_width or feature.dtype.kind is Kind.EMBEDDING:
            fill = default.tolist() if isinstance(default, np.ndarray) else default
            rows = zip(array.to_pylist(), nulls.tolist(), strict=True)
            return pa.array([fill if null else value for value, null in rows], type=array.type)
        scalar = default.item() if isinstance(default, np.generic) else default
        return pc.fill_null(array, pa.scalar(scalar, type=array.type))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        return array  # a column of the wrong type: its type problem is reported instead


def _element_fits(kind: Kind, element: pa.DataType) -> bool:
    if kind is Kind.INT64_LIST:
        return bool(pa.types.is_integer(element))
    return bool(pa.types.is_floating(element))


def _is_text(arrow_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))


def _type_problem(feature: Feature, array: pa.Array) -> str:
    return (
        f"holds {array.type}; feature {feature.name!r} is {feature.dtype}: convert the column "
        "(nothing is cast silently)"
    )


def _zeros(feature: Feature, rows: int) -> ColumnValues:
    dtype = feature.dtype
    if dtype.kind is Kind.STRING:
        return np.full(rows, "", dtype=object)
    if dtype.kind is Kind.EMBEDDING:
        return np.zeros((rows, dtype.dim), dtype=np.float32)
    if dtype.is_list:
        return Ragged(np.zeros(0, dtype.element_dtype), np.zeros(rows + 1, dtype=np.int32))
    return np.zeros(rows, dtype=dtype.element_dtype)
