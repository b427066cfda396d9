"""The packed column layout of `FeatureColumn`, between protobuf and numpy.

This is part of the wire format, beside the stubs generated from `feature_service.proto` (it is
written by hand; `make proto` does not touch it). The client decodes responses and encodes writes
with it, and the server's wire module does the reverse, so both ends agree byte for byte.

A `FeatureColumn` of `length` rows carries its values by `type`:

| type                     | field     | layout                                              |
|--------------------------|-----------|-----------------------------------------------------|
| INT64, FLOAT32, FLOAT64  | `data`    | `length` little-endian int64 / float32 / float64    |
| BOOL                     | `data`    | `length` bytes, 0 or 1                              |
| EMBEDDING                | `data`    | `length * dim` little-endian float32, row-major     |
| INT64_LIST, FLOAT64_LIST | `data`    | every row's elements back to back (int64 / float64) |
|                          | `offsets` | `length + 1` little-endian int32; row i holds       |
|                          |           | elements `offsets[i]` to `offsets[i + 1]`           |
| STRING                   | `strings` | `length` values                                     |

(`statuses` and `event_timestamps`, the same for every type, are described in the .proto.)

Decoding is zero-copy for fixed-width and list columns (read-only numpy views of the message's
bytes) and checks every buffer against the declared type and length: a mismatch raises
`ColumnFormatError`, never a misread.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.v1 import feature_service_pb2 as pb

__all__ = [
    "ELEMENT_DTYPES",
    "LIST_TYPES",
    "ColumnFormatError",
    "fill_column",
    "fixed_values",
    "list_values",
    "string_values",
]

# ValueType -> little-endian element dtype of `data`.
ELEMENT_DTYPES: dict[int, np.dtype[Any]] = {
    pb.VALUE_TYPE_INT64: np.dtype("<i8"),
    pb.VALUE_TYPE_FLOAT32: np.dtype("<f4"),
    pb.VALUE_TYPE_FLOAT64: np.dtype("<f8"),
    pb.VALUE_TYPE_BOOL: np.dtype("?"),
    pb.VALUE_TYPE_EMBEDDING: np.dtype("<f4"),
    pb.VALUE_TYPE_INT64_LIST: np.dtype("<i8"),
    pb.VALUE_TYPE_FLOAT64_LIST: np.dtype("<f8"),
}
# The variable-length types: elements in `data`, row boundaries in `offsets`.
LIST_TYPES: tuple[int, ...] = (pb.VALUE_TYPE_INT64_LIST, pb.VALUE_TYPE_FLOAT64_LIST)


class ColumnFormatError(ValueError):
    """A FeatureColumn whose buffers do not match its declared type and length."""


def fixed_values(column: pb.FeatureColumn) -> npt.NDArray[Any]:
    """Values of a fixed-width column: shape (length,) or (length, dim) for embeddings.
    Zero-copy: the array is a read-only view of the message's bytes."""
    dtype = ELEMENT_DTYPES.get(column.type)
    if dtype is None or column.type in LIST_TYPES:
        raise ColumnFormatError(f"column {column.name!r} is not a fixed-width type")
    width = column.dim if column.type == pb.VALUE_TYPE_EMBEDDING else 1
    if column.type == pb.VALUE_TYPE_EMBEDDING and width <= 0:
        raise ColumnFormatError(f"embedding column {column.name!r} needs a positive dim")
    expected = column.length * width * dtype.itemsize
    if len(column.data) != expected:
        raise ColumnFormatError(
            f"column {column.name!r}: {len(column.data)} bytes of data, expected {expected} "
            f"({column.length} rows of {width} x {dtype})"
        )
    values = np.frombuffer(column.data, dtype=dtype)
    return (
        values.reshape(column.length, width) if column.type == pb.VALUE_TYPE_EMBEDDING else values
    )


def list_values(column: pb.FeatureColumn) -> tuple[npt.NDArray[Any], npt.NDArray[np.int32]]:
    """(flat elements, offsets) of a list column; row i is flat[offsets[i]:offsets[i+1]]."""
    dtype = ELEMENT_DTYPES[column.type]
    if len(column.data) % dtype.itemsize or len(column.offsets) != 4 * (column.length + 1):
        raise ColumnFormatError(
            f"list column {column.name!r} needs {column.length + 1} int32 offsets and whole "
            f"{dtype} elements"
        )
    flat = np.frombuffer(column.data, dtype=dtype)
    offsets = np.frombuffer(column.offsets, dtype="<i4")
    if (
        offsets[0] != 0
        or offsets[-1] != len(flat)
        or (len(offsets) > 2 and np.any(offsets[1:] < offsets[:-1]))
    ):
        raise ColumnFormatError(f"list column {column.name!r} has inconsistent offsets")
    return flat, offsets


def string_values(column: pb.FeatureColumn) -> list[str]:
    """Values of a string column."""
    if len(column.strings) != column.length:
        raise ColumnFormatError(
            f"string column {column.name!r} has {len(column.strings)} values for length "
            f"{column.length}"
        )
    return list(column.strings)


def fill_column(
    column: pb.FeatureColumn, value_type: int, values: Any, *, dim: int = 0
) -> pb.FeatureColumn:
    """Pack `values` into `column` (already named): numpy arrays for fixed-width types, a
    sequence of str for strings, (flat, offsets) for lists."""
    column.type = value_type  # type: ignore[assignment]
    if value_type == pb.VALUE_TYPE_STRING:
        strings = values.tolist() if isinstance(values, np.ndarray) else list(values)
        column.length = len(strings)
        column.strings.extend(strings)
    elif value_type in LIST_TYPES:
        flat, offsets = values
        column.length = len(offsets) - 1
        column.data = np.ascontiguousarray(flat, dtype=ELEMENT_DTYPES[value_type]).tobytes()
        column.offsets = np.ascontiguousarray(offsets, dtype="<i4").tobytes()
    else:
        array = np.ascontiguousarray(values, dtype=ELEMENT_DTYPES[value_type])
        column.length = len(array)
        if value_type == pb.VALUE_TYPE_EMBEDDING:
            column.dim = dim or (array.shape[1] if array.ndim == 2 else 0)
        column.data = array.tobytes()
    return column
