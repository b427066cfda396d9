"""Typed results: of GetFeatures, columns with per-value status and the matrix a model eats; of
WriteFeatures, the rows written. The enums mirror the proto's by number."""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1.columns import LIST_TYPES, fixed_values, list_values, string_values


@functools.lru_cache(maxsize=64)
def _all_present(length: int) -> npt.NDArray[np.uint8]:
    """A shared read-only statuses array for columns sent without one (all present)."""
    statuses = np.full(length, pb.FEATURE_STATUS_PRESENT, dtype=np.uint8)
    statuses.flags.writeable = False
    return statuses


class ValueType(enum.IntEnum):
    """A feature's type on the wire. Writes infer it from the values' dtype; state it where the
    values alone do not say: `features={"score": (ValueType.FLOAT32, [0.5])}`."""

    INT64 = pb.VALUE_TYPE_INT64
    FLOAT32 = pb.VALUE_TYPE_FLOAT32
    FLOAT64 = pb.VALUE_TYPE_FLOAT64
    BOOL = pb.VALUE_TYPE_BOOL
    STRING = pb.VALUE_TYPE_STRING
    EMBEDDING = pb.VALUE_TYPE_EMBEDDING  # float32 vectors of a fixed dimension
    INT64_LIST = pb.VALUE_TYPE_INT64_LIST
    FLOAT64_LIST = pb.VALUE_TYPE_FLOAT64_LIST


class Status(enum.IntEnum):
    PRESENT = pb.FEATURE_STATUS_PRESENT
    NOT_FOUND = pb.FEATURE_STATUS_NOT_FOUND
    STALE = pb.FEATURE_STATUS_STALE
    FALLBACK = pb.FEATURE_STATUS_FALLBACK  # the store failed: the default was served
    FALLBACK_CACHE = pb.FEATURE_STATUS_FALLBACK_CACHE  # the store failed: a cached copy served
    DATA_LOSS = pb.FEATURE_STATUS_DATA_LOSS  # the stored row is corrupt: the default was served


class FallbackReason(enum.IntEnum):
    STORE_TIMEOUT = pb.FALLBACK_REASON_STORE_TIMEOUT
    STORE_UNAVAILABLE = pb.FALLBACK_REASON_STORE_UNAVAILABLE
    CIRCUIT_OPEN = pb.FALLBACK_REASON_CIRCUIT_OPEN


@dataclass(frozen=True)
class Fallback:
    """Rows of one view the server answered from fallbacks, and why."""

    view: str
    reason: FallbackReason
    from_cache: int
    from_default: int


@dataclass(frozen=True)
class Column:
    """One feature for every row. `values` has `length` rows: 1 means one value for all rows."""

    name: str
    type: ValueType
    length: int
    values: Any
    statuses: npt.NDArray[np.uint8]
    event_time_us: npt.NDArray[np.int64] | None
    entity: str
    version: int

    @property
    def width(self) -> int:
        """Matrix columns this feature takes (the dimension of an embedding, else 1)."""
        return int(self.values.shape[1]) if self.type == ValueType.EMBEDDING else 1

    @classmethod
    def from_proto(cls, message: pb.FeatureColumn) -> Column:
        if message.type == pb.VALUE_TYPE_STRING:
            values: Any = np.array(string_values(message), dtype=object)
        elif message.type in LIST_TYPES:
            flat, offsets = list_values(message)
            values = [flat[offsets[i] : offsets[i + 1]] for i in range(message.length)]
        else:
            values = fixed_values(message)
        if message.statuses:
            statuses = np.frombuffer(message.statuses, dtype=np.uint8)
        else:
            statuses = _all_present(message.length)
        stamps = (
            np.frombuffer(message.event_timestamps, "<i8") if message.event_timestamps else None
        )
        return cls(
            message.name,
            ValueType(message.type),
            message.length,
            values,
            statuses,
            stamps,
            message.entity,
            message.version,
        )


@dataclass(frozen=True)
class WriteResult:
    """The answer to one WriteFeatures call."""

    view: str  # as named in the call: "view" (its default version) or "view@v2"
    written: int  # rows stored
    skipped_older: int  # rows skipped: the store already held a newer event for the entity


class FeatureResult:
    """The answer to one GetFeatures call: `rows` rows, one Column per feature."""

    def __init__(self, response: pb.GetFeaturesResponse) -> None:
        self.rows = response.row_count
        self.columns = {c.name: Column.from_proto(c) for c in response.columns}
        self.fallbacks = [
            Fallback(f.view, FallbackReason(f.reason), f.from_cache, f.from_default)
            for f in response.fallbacks
        ]

    @property
    def stale_count(self) -> int:
        """Values served although older than their view's max age."""
        return self.count(Status.STALE)

    @property
    def fallback_count(self) -> int:
        """Values served from a fallback (cache copy or default) because the store failed."""
        return self.count(Status.FALLBACK) + self.count(Status.FALLBACK_CACHE)

    @property
    def data_loss_count(self) -> int:
        """Values whose stored row was corrupt (the default was served; the row needs
        re-writing)."""
        return self.count(Status.DATA_LOSS)

    @property
    def degraded(self) -> bool:
        """Whether any value came from a fallback because the store could not answer."""
        return bool(self.fallbacks)

    def __getitem__(self, name: str) -> Column:
        return self.columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def values(self, name: str) -> Any:
        """A feature's values broadcast to `rows` rows."""
        column = self.columns[name]
        if column.length == self.rows or column.type in LIST_TYPES:
            return column.values
        return np.broadcast_to(column.values, (self.rows, *column.values.shape[1:]))

    def statuses(self, name: str) -> npt.NDArray[np.uint8]:
        """Each row's Status of a feature, broadcast to `rows` rows."""
        return np.broadcast_to(self.columns[name].statuses, (self.rows,))

    def count(self, status: Status) -> int:
        """How many values (over all columns, after broadcast) have `status`."""
        return sum(int(np.count_nonzero(self.statuses(n) == status)) for n in self.columns)

    def to_numpy(
        self, features: Sequence[str] | None = None, dtype: npt.DTypeLike = np.float32
    ) -> tuple[npt.NDArray[Any], list[str]]:
        """A (rows x width) matrix of the numeric features, length-1 columns broadcast, and the
        matrix's column names (an embedding `f` of dim d gives `f[0]` ... `f[d-1]`)."""
        chosen = (
            list(features)
            if features is not None
            else [
                n
                for n, c in self.columns.items()
                if c.type not in LIST_TYPES and c.type != ValueType.STRING
            ]
        )
        widths = [self.columns[n].width for n in chosen]
        matrix = np.empty((self.rows, sum(widths)), dtype=dtype)
        names: list[str] = []
        start = 0
        for name, width in zip(chosen, widths, strict=True):
            column = self.columns[name]
            if column.type in LIST_TYPES or column.type == ValueType.STRING:
                raise TypeError(f"{name!r} is not numeric and cannot go into a matrix")
            matrix[:, start : start + width] = column.values.reshape(column.length, width)
            names += [name] if width == 1 else [f"{name}[{i}]" for i in range(width)]
            start += width
        return matrix, names

    def to_dict(self) -> dict[str, Any]:
        """Feature name -> values broadcast to `rows` rows."""
        return {name: self.values(name) for name in self.columns}

    def to_pandas(self) -> Any:
        """A DataFrame with one row per entity row (needs pandas)."""
        import pandas as pd

        data = {}
        for name in self.columns:
            values = self.values(name)
            data[name] = list(values) if getattr(values, "ndim", 1) > 1 else values
        return pd.DataFrame(data)
