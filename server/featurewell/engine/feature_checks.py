"""One feature's column of a write, checked in bulk (engine/validation.py's `check_write` runs
these for every feature): the value kind the feature takes, finiteness, float32 overflow, int64
range, bool bytes, exact embedding widths, list bounds, valid strings. Numeric columns cost a few
numpy passes whatever their size; Python runs per row only for rows found bad, and for strings.
"""

from __future__ import annotations

import reprlib
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from featurewell.definitions import Feature, Kind
from featurewell.store.codec import ACCEPTED_KINDS
from featurewell.values import ColumnValues, Ragged

# A problem of one row (row -1: the whole column) in words; validation.py names the column.
RowProblem: TypeAlias = tuple[int, str]

_INT64_MAX = np.iinfo(np.int64).max
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def feature_problems(feature: Feature, values: ColumnValues, rows: int) -> list[RowProblem]:
    """Every problem of one feature's column of `rows` values."""
    if feature.dtype.kind is Kind.STRING:
        return _string_problems(values, rows)
    if feature.dtype.is_list:
        return _list_problems(feature, values, rows)
    return _fixed_problems(feature, values, rows)


def _fixed_problems(feature: Feature, values: ColumnValues, rows: int) -> list[RowProblem]:
    dtype = feature.dtype
    if isinstance(values, Ragged):
        return [(-1, f"{dtype} takes one value per row, got lists")]
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):  # e.g. Python lists of embedding rows of several lengths
        return [(-1, f"{dtype} needs {rows} rows of one shape, got rows of different lengths")]
    embedding = dtype.kind is Kind.EMBEDDING
    expected = (rows, dtype.dim) if embedding else (rows,)
    if array.shape != expected:
        if embedding and array.ndim == 2 and array.shape[0] == rows:
            reason = f"{dtype} needs exactly {dtype.dim} numbers per row, got {array.shape[1]}"
        else:
            reason = f"{dtype} needs shape {expected}, got {array.shape}"
        return [(-1, reason)]
    kind_problem = _kind_problem(feature, array.dtype)
    if kind_problem is not None:
        return [kind_problem]
    if dtype.kind is Kind.INT64:
        return _int64_overflow(array, None)
    if dtype.kind is Kind.BOOL:
        raw = array.view(np.uint8)  # a bool buffer from the wire may hold any byte
        return [
            (row, f"bool byte {byte} is neither 0 (false) nor 1 (true)")
            for row, byte in rows_and_values(raw > 1, raw)
        ]
    return _float_problems(feature, array.reshape(rows, -1), None)


def _list_problems(feature: Feature, values: ColumnValues, rows: int) -> list[RowProblem]:
    dtype = feature.dtype
    if not isinstance(values, Ragged):
        return [(-1, f"{dtype} takes a list per row, got {_shape(values)}")]
    if len(values) != rows:
        return [(-1, f"{dtype} needs {rows} lists, got {len(values)}")]
    flat = np.asarray(values.flat)
    kind_problem = _kind_problem(feature, flat.dtype)
    if kind_problem is not None:
        return [kind_problem]
    offsets = np.asarray(values.offsets, dtype=np.int64) - int(values.offsets[0])
    problems = []
    if feature.max_length is not None:
        lengths = np.diff(offsets)
        problems += [
            (row, f"{length} items, over max_length {feature.max_length}")
            for row, length in rows_and_values(lengths > feature.max_length, lengths)
        ]
    if dtype.kind is Kind.INT64_LIST:
        return problems + _int64_overflow(flat, offsets)
    return problems + _float_problems(feature, flat.reshape(-1, 1), offsets)


def _string_problems(values: ColumnValues, rows: int) -> list[RowProblem]:
    if isinstance(values, Ragged) or len(values) != rows:
        return [(-1, f"string needs {rows} strings, got {_shape(values)}")]
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if set(map(type, items)) <= {str, np.str_} and utf8(items):
        return []
    out = []
    for row, value in enumerate(items):
        if value is None:
            out.append((row, "null, not a string"))
        elif not isinstance(value, str):
            out.append((row, f"{reprlib.repr(value)} is {type(value).__name__}, not a str"))
        elif not utf8([value]):
            out.append((row, f"{reprlib.repr(value)} is not valid Unicode (lone surrogate?)"))
    return out


def _kind_problem(feature: Feature, got: np.dtype[Any]) -> RowProblem | None:
    if got.kind in ACCEPTED_KINDS[feature.dtype.kind]:
        return None
    what = "elements" if feature.dtype.is_list else "values"
    return (
        -1,
        f"{feature.dtype} takes no {got} {what}: convert them first if that is meant "
        "(nothing is cast silently)",
    )


def _int64_overflow(array: npt.NDArray[Any], offsets: npt.NDArray[Any] | None) -> list[RowProblem]:
    """uint64 values above the int64 range (any other integer dtype fits)."""
    if array.dtype.kind != "u" or array.dtype.itemsize < 8:
        return []
    over = array > _INT64_MAX
    return [
        (row, f"{value} does not fit in int64")
        for row, value in rows_and_values(over, array, offsets)
    ]


def _float_problems(
    feature: Feature, array: npt.NDArray[Any], offsets: npt.NDArray[Any] | None
) -> list[RowProblem]:
    """Non-finite values (unless the feature allows them) and values a float32 feature cannot
    hold (float64 1e300 would become inf). `array` is 2-D: rows x numbers, or elements x 1 with
    `offsets` saying which row each element belongs to."""
    finite = np.isfinite(array)
    problems = []
    if not feature.allow_non_finite and not finite.all():
        problems += [
            (
                row,
                f"{value} is not a finite number; declare the feature with "
                "allow_non_finite=True to store NaN and infinities",
            )
            for row, value in rows_and_values(~finite, array, offsets)
        ]
    narrow = feature.dtype.element_dtype.itemsize < array.dtype.itemsize
    if narrow:
        too_big = finite & (np.abs(array) > _FLOAT32_MAX)
        problems += [
            (row, f"{value!r} overflows float32 (largest 3.4e38): it would be inf")
            for row, value in rows_and_values(too_big, array, offsets)
        ]
    return problems


def rows_and_values(
    bad: npt.NDArray[np.bool_], values: npt.NDArray[Any], offsets: npt.NDArray[Any] | None = None
) -> list[tuple[int, Any]]:
    """(row, first bad value of the row) for each row holding a bad value: `bad` and `values`
    have an item per row (2-D: a row's numbers), or with `offsets` an item per list element
    (row r holds items offsets[r] to offsets[r + 1]). Python work only for the bad items."""
    if not bad.any():
        return []
    items_bad = bad.reshape(len(bad), -1)
    items = values.reshape(len(values), -1)
    hit = np.flatnonzero(items_bad.any(axis=1))
    rows = hit if offsets is None else np.searchsorted(offsets, hit, side="right") - 1
    out: list[tuple[int, Any]] = []
    for item, row in zip(hit.tolist(), rows.tolist(), strict=True):
        if out and out[-1][0] == row:  # a row with several bad elements: name it once
            continue
        first = int(np.flatnonzero(items_bad[item])[0])
        out.append((int(row), items[item][first].item()))
    return out


def utf8(items: list[str]) -> bool:
    """True when every string encodes as UTF-8 (a lone surrogate does not)."""
    try:
        "".join(items).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shape(values: Any) -> str:
    if isinstance(values, Ragged):
        return f"{len(values)} lists"
    return (
        f"shape {np.shape(values)}" if isinstance(values, np.ndarray) else f"{len(values)} values"
    )
