"""Typed results: of GetFeatures, columns with per-value status and the matrix a model eats; of
WriteFeatures, the rows written. The enums mirror the proto's by number."""

from __future__ import annotations

import enum
import functools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1.columns import (
    ELEMENT_DTYPES,
    LIST_TYPES,
    fixed_values,
    list_values,
    string_values,
)


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


class ViewStatus(enum.IntEnum):
    """Where a view version stands (ListFeatures' `FeatureViewSpec.status`)."""

    ACTIVE = pb.VIEW_STATUS_ACTIVE  # the default version
    STAGING = pb.VIEW_STATUS_STAGING  # above the default: filled and validated before a promote
    DEPRECATED = pb.VIEW_STATUS_DEPRECATED  # marked deprecated in its definition
    INACTIVE = pb.VIEW_STATUS_INACTIVE  # below the default, not marked


class DeprecatedFeatureWarning(UserWarning):
    """A call read a view version marked deprecated (`FeatureResult.deprecations` has them)."""


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
        if message.HasField("typed"):
            return cls._from_typed(message)
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

    @classmethod
    def _from_typed(cls, message: pb.FeatureColumn) -> Column:
        """A column answered with `typed_values` (the request option grpcurl users want)."""
        kind = message.typed.WhichOneof("kind")
        raw = list(getattr(message.typed, kind).values) if kind else []
        values: Any
        if message.type == pb.VALUE_TYPE_STRING:
            values = np.array(raw, dtype=object)
        elif message.type in LIST_TYPES:
            flat = np.array(raw, dtype=ELEMENT_DTYPES[message.type])
            ends = np.cumsum(np.asarray(message.typed_row_lengths, dtype=np.int64))
            values = np.split(flat, ends[:-1]) if len(ends) else []
        else:
            values = np.array(raw, dtype=ELEMENT_DTYPES[message.type])
            if message.type == pb.VALUE_TYPE_EMBEDDING:
                values = values.reshape(message.length, message.dim)
        stamps = np.array(message.typed_event_timestamps, dtype=np.int64)
        return cls(
            message.name,
            ValueType(message.type),
            message.length,
            values,
            np.array(message.typed_statuses, dtype=np.uint8),
            stamps if len(stamps) else None,
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
    """The answer to one GetFeatures call: `rows` rows, one Column per feature.

    `deprecations`: the deprecated view versions the call read, as the server flagged them
    ("view@v1 -> view@v2 on 2027-01-31"); each also raises a `DeprecatedFeatureWarning`
    (shown once per call site by Python's default warning filter).

    `request_id`: the id the server logged this answer under (32 hex digits) when the call was
    sampled for the served-feature log, else "" (docs/skew.md)."""

    def __init__(
        self,
        response: pb.GetFeaturesResponse,
        deprecations: Sequence[str] = (),
        request_id: str = "",
    ) -> None:
        self.request_id = request_id
        self.deprecations = list(deprecations)
        for notice in self.deprecations:
            warnings.warn(
                f"featurewell: read a deprecated view version: {notice}",
                DeprecatedFeatureWarning,
                stacklevel=3,
            )
        self.rows = response.row_count
        self.columns = {c.name: Column.from_proto(c) for c in response.columns}
        self.fallbacks = [
            Fallback(f.view, FallbackReason(f.reason), f.from_cache, f.from_default)
            for f in response.fallbacks
        ]

    @classmethod
    def from_columns(
        cls, rows: int, columns: dict[str, Column], deprecations: Sequence[str] = ()
    ) -> FeatureResult:
        """An answer from the client's near cache (no fallbacks, never sampled: no request id)."""
        result = cls.__new__(cls)
        result.request_id = ""
        result.deprecations = list(deprecations)
        result.rows = rows
        result.columns = dict(columns)
        result.fallbacks = []
        return result

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

    @property
    def non_numeric(self) -> list[str]:
        """Features `to_numpy()` leaves out by default: STRING and list columns (read them with
        `values(name)`, `to_pandas()` or `to_numpy(dtype=object)`)."""
        return [n for n, c in self.columns.items() if c.type in _NON_NUMERIC]

    def to_numpy(
        self, features: Sequence[str] | None = None, dtype: npt.DTypeLike = np.float32
    ) -> tuple[npt.NDArray[Any], list[str]]:
        """A (rows x width) matrix of the features, length-1 columns broadcast, and the
        matrix's column names (an embedding `f` of dim d gives `f[0]` ... `f[d-1]`).

        By default every numeric feature goes in and STRING and list features are left out
        (`non_numeric` names them). The default dtype, float32, is what most models eat, and
        it rounds: INT64 and FLOAT64 values above 2**24 (16,777,216) in magnitude lose digits
        (a Unix time in seconds, 1.7961418e+09, is off by up to 64 s). `dtype=np.float64` is
        exact for integers up to 2**53. An integer dtype refuses float features and any
        integer narrower than int64 (no silent truncation). `dtype=object` takes every feature,
        strings as str and list rows as arrays.
        """
        dtype = np.dtype(dtype)
        whole = dtype == np.dtype(object)
        chosen = (
            list(features)
            if features is not None
            else [n for n, c in self.columns.items() if whole or c.type not in _NON_NUMERIC]
        )
        for name in chosen:
            _check_fits(name, self.columns[name].type, dtype)
        widths = [self.columns[n].width for n in chosen]
        matrix = np.empty((self.rows, sum(widths)), dtype=dtype)
        names: list[str] = []
        start = 0
        for name, width in zip(chosen, widths, strict=True):
            column = self.columns[name]
            if column.type in LIST_TYPES:
                matrix[:, start] = _object_column(column.values, self.rows)
            elif column.type == ValueType.STRING:
                matrix[:, start] = np.broadcast_to(column.values, (self.rows,))
            else:
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


_NON_NUMERIC = (*LIST_TYPES, ValueType.STRING)
_FLOATS = (ValueType.FLOAT32, ValueType.FLOAT64, ValueType.EMBEDDING)


def _check_fits(name: str, value_type: int, dtype: np.dtype[Any]) -> None:
    """Refuse what would truncate silently or cannot go in a numeric matrix."""
    if dtype == np.dtype(object):
        return
    if value_type in _NON_NUMERIC:
        raise TypeError(
            f"{name!r} is not numeric and cannot go into a {dtype} matrix: leave it out, or "
            "pass dtype=object"
        )
    if dtype.kind in "iu" and value_type in _FLOATS:
        raise TypeError(f"{name!r} holds floats: an integer dtype ({dtype}) would truncate them")
    if dtype.kind in "iu" and value_type == ValueType.INT64 and dtype != np.dtype(np.int64):
        raise TypeError(f"{name!r} is INT64: {dtype} would narrow it; use int64 or float64")


def _object_column(values: Any, rows: int) -> npt.NDArray[Any]:
    cells = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # one by one: equal-length rows must stay arrays
        cells[i] = np.asarray(value)
    return np.broadcast_to(cells, (rows,)) if len(cells) == 1 else cells
