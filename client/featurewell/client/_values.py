"""A write's feature values -> (ValueType, values packed the way `featurewell.v1.columns` wants).

Each feature's values are typed from their numpy dtype:

    int array                      INT64
    float32 array                  FLOAT32
    float64 array                  FLOAT64
    bool array                     BOOL
    str values (list, U or object) STRING
    2-D float32 array              EMBEDDING (rows x dim)
    (flat, offsets) tuple          INT64_LIST or FLOAT64_LIST, by flat's dtype
    list of 1-D int/float64 arrays INT64_LIST or FLOAT64_LIST, by the rows' dtype

Where that is ambiguous (Python ints for a float feature, float64 vectors for an embedding, float32
rows for a list) the caller states the type: `(ValueType.FLOAT32, values)`. Anything the client
cannot type raises `InvalidValues` before a call is made. (The server accepts floats of either
width for a float feature, and refuses ints for it.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from featurewell.client._errors import InvalidValues
from featurewell.client._result import ValueType
from featurewell.v1.columns import ELEMENT_DTYPES, LIST_TYPES

# Values of one feature in a write: an array-like (typed by its dtype), (flat, offsets), a list of
# 1-D arrays, or any of those with the type stated: (ValueType.FLOAT32, values).
FeatureValues: TypeAlias = npt.ArrayLike | tuple[ValueType, Any] | Sequence[npt.NDArray[Any]]

# 1-D arrays: numpy dtype kind -> ValueType, and float itemsize -> ValueType.
_BY_KIND = {"i": ValueType.INT64, "u": ValueType.INT64, "b": ValueType.BOOL, "U": ValueType.STRING}
_FLOATS = {4: ValueType.FLOAT32, 8: ValueType.FLOAT64}
_STATE_IT = "state the type: (ValueType.{}, values)"


def typed_values(name: str, values: Any) -> tuple[ValueType, Any]:
    """The ValueType of one feature's values, and the values as `fill_column` packs them: an
    array for fixed-width types, a list of str, or (flat, offsets) for lists. Values the type
    cannot hold (uint64 above int64's range, float64 beyond float32's) are refused here, before
    packing would wrap or overflow them silently."""
    value_type, typed = _typed(name, values)
    numbers = typed[0] if value_type in LIST_TYPES else typed
    unsigned = isinstance(numbers, np.ndarray) and numbers.dtype.kind == "u" and numbers.size
    if unsigned and int(numbers.max()) > np.iinfo(np.int64).max:
        raise InvalidValues(
            f"feature {name!r}: {numbers.dtype} value {int(numbers.max())} does not fit in "
            f"{value_type.name} (int64)"
        )
    return value_type, typed


def _typed(name: str, values: Any) -> tuple[ValueType, Any]:
    if isinstance(values, tuple) and len(values) == 2 and isinstance(values[0], ValueType):
        return values[0], _as_type(name, values[0], values[1])
    if isinstance(values, tuple):
        if len(values) == 2 and _is_int(values[0]):
            number = int(values[0])
            member = ValueType(number).name if number in set(ValueType) else "FLOAT32"
            raise InvalidValues(
                f"feature {name!r}: the type in (type, values) must be a ValueType, not "
                f"{number}: write (ValueType.{member}, values), or leave the type out to infer "
                f"it from the dtype"
            )
        if len(values) != 2:
            raise InvalidValues(
                f"feature {name!r}: a tuple is (flat, offsets) for a list feature, or "
                f"(ValueType.X, values); got a tuple of {len(values)}"
            )
        return _infer_flat(name, values)
    if isinstance(values, list) and values and all(isinstance(v, np.ndarray) for v in values):
        return _infer_rows(name, values)
    if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
        return ValueType.STRING, values
    array = _array(name, values)
    if array.dtype == object and array.ndim == 1:
        items = array.tolist()
        if all(isinstance(v, str) for v in items):
            return ValueType.STRING, items
        if items and all(isinstance(v, np.ndarray) for v in items):
            return _infer_rows(name, items)
        odd = next(v for v in items if not isinstance(v, str))
        raise InvalidValues(
            f"feature {name!r}: an object array holding {type(odd).__name__} values; strings "
            f"must all be str, lists a 1-D array per row"
        )
    if array.ndim == 2:
        if _is_float(array.dtype, 4):
            return ValueType.EMBEDDING, array
        raise InvalidValues(
            f"feature {name!r}: a 2-D {array.dtype} array; embeddings are float32: pass "
            f"values.astype(np.float32) or (ValueType.EMBEDDING, values); for a list feature pass "
            f"a list of 1-D arrays or (flat, offsets)"
        )
    _check_rows(name, array, ndim=1)
    value_type = _BY_KIND.get(array.dtype.kind) or _FLOATS.get(
        array.dtype.itemsize if array.dtype.kind == "f" else 0
    )
    if value_type is None:
        raise InvalidValues(
            f"feature {name!r}: {array.dtype} values have no ValueType: convert them to int, "
            f"float32, float64, bool or str first"
        )
    if value_type == ValueType.STRING:
        return value_type, array.tolist()
    return value_type, array


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_float(dtype: np.dtype[Any], itemsize: int) -> bool:
    return dtype.kind == "f" and dtype.itemsize == itemsize


def _as_type(name: str, value_type: ValueType, values: Any) -> Any:
    """`values` converted to the stated type; a conversion that could lose the kind of value
    (float to int, int to bool, text to numbers) is refused rather than done silently."""
    if value_type == ValueType.STRING:
        items = values.tolist() if isinstance(values, np.ndarray) else list(values)
        odd = next((v for v in items if not isinstance(v, str)), None)
        if odd is not None:
            raise InvalidValues(
                f"feature {name!r}: STRING values must all be str, got {type(odd).__name__}"
            )
        return items
    if value_type in LIST_TYPES:
        if isinstance(values, tuple):
            flat, offsets = _flat_offsets(name, values)
        else:
            flat, offsets = _from_rows(name, list(values))
        return _cast(name, value_type, flat), offsets
    array = _array(name, values)
    if array.dtype == object:
        array = _array(name, array.tolist())
    _check_rows(name, array, ndim=2 if value_type == ValueType.EMBEDDING else 1)
    return _cast(name, value_type, array)


def _infer_flat(name: str, values: tuple[Any, ...]) -> tuple[ValueType, Any]:
    flat, offsets = _flat_offsets(name, values)
    if len(flat) == 0 and not isinstance(values[0], np.ndarray):
        raise InvalidValues(
            f"feature {name!r}: no elements to tell INT64_LIST from FLOAT64_LIST: pass a typed "
            f"numpy array, or {_STATE_IT.format('INT64_LIST')}"
        )
    return _list_type(name, flat.dtype), (flat, offsets)


def _infer_rows(name: str, rows: list[Any]) -> tuple[ValueType, Any]:
    flat, offsets = _from_rows(name, rows)
    dtypes = [r.dtype for r in rows if len(r)] or [r.dtype for r in rows]
    return _list_type(name, np.result_type(*dtypes)), (flat, offsets)


def _list_type(name: str, dtype: np.dtype[Any]) -> ValueType:
    if dtype.kind in "iu":
        return ValueType.INT64_LIST
    if _is_float(dtype, 8):
        return ValueType.FLOAT64_LIST
    hint = (
        "np.stack(rows) for an embedding, or "
        if _is_float(dtype, 4)
        else "int64 or float64 elements, or "
    )
    raise InvalidValues(
        f"feature {name!r}: list elements of {dtype} are ambiguous or unsupported: pass {hint}"
        f"{_STATE_IT.format('FLOAT64_LIST')}"
    )


def _flat_offsets(name: str, values: tuple[Any, ...]) -> tuple[npt.NDArray[Any], Any]:
    flat, offsets = (_array(name, v) for v in values)
    if flat.ndim != 1 or offsets.ndim != 1 or len(offsets) == 0 or offsets.dtype.kind not in "iu":
        raise InvalidValues(
            f"feature {name!r}: (flat, offsets) needs a 1-D array of every row's elements and "
            f"rows + 1 integer offsets; got shapes {flat.shape} and {offsets.shape} {offsets.dtype}"
        )
    if offsets[0] != 0 or offsets[-1] != len(flat) or np.any(np.diff(offsets) < 0):
        raise InvalidValues(
            f"feature {name!r}: (flat, offsets) needs offsets rising from 0 to len(flat) = "
            f"{len(flat)}, got {offsets.tolist()[:8]}; to pass rows, use a list of 1-D arrays, "
            f"not a tuple"
        )
    return flat, offsets


def _from_rows(name: str, rows: list[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[np.int32]]:
    arrays = [_array(name, r) for r in rows]
    if any(a.ndim != 1 for a in arrays):
        raise InvalidValues(f"feature {name!r}: every row of a list feature must be 1-D")
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    filled = [a for a in arrays if len(a)]
    flat = np.concatenate(filled) if filled else np.empty(0, dtype=np.int64)
    return flat, offsets


def _cast(name: str, value_type: ValueType, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    dtype = ELEMENT_DTYPES[value_type]
    if len(array) and not np.can_cast(array.dtype, dtype, "same_kind"):
        raise InvalidValues(
            f"feature {name!r}: {array.dtype} values cannot be written as {value_type.name} "
            f"without changing them: convert them first if that is meant "
            f"(values.astype({dtype.name!r}))"
        )
    if array.dtype.kind == "f" and array.dtype.itemsize > dtype.itemsize and array.size:
        finite = np.isfinite(array)
        if np.any(np.abs(array[finite]) > np.finfo(dtype).max):
            raise InvalidValues(
                f"feature {name!r}: {array.dtype} values beyond the range of {value_type.name} "
                f"({dtype}) would become inf: scale or clip them first"
            )
    return array.astype(dtype, copy=False)


def _array(name: str, values: Any) -> npt.NDArray[Any]:
    if isinstance(values, np.ndarray):
        return values
    try:
        return np.asarray(values)
    except (TypeError, ValueError):
        raise InvalidValues(
            f"feature {name!r}: the values do not make an array of numbers or str (rows of "
            f"different lengths?): for a list feature pass a list of 1-D numpy arrays, or "
            f"{_STATE_IT.format('INT64_LIST')}"
        ) from None


def _check_rows(name: str, array: npt.NDArray[Any], *, ndim: int) -> None:
    if array.ndim != ndim:
        shape = "a 2-D array (rows x dim)" if ndim == 2 else "one value per row (a 1-D array)"
        raise InvalidValues(f"feature {name!r}: expected {shape}, got shape {array.shape}")
