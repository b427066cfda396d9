"""In-memory column values shared by the store, the engine and the wire."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


class Status(enum.IntEnum):
    """Per-value status. The numbers are the wire's `FeatureStatus` numbers."""

    PRESENT = 1
    NOT_FOUND = 2
    STALE = 3
    FALLBACK = 4  # the store failed: the definition's default was served
    FALLBACK_CACHE = 5  # the store failed: the last cached row (past its TTL) was served
    DATA_LOSS = 6  # the stored row is corrupt: the default was served


# Plain ints for hot paths: IntEnum attribute access costs a metaclass lookup every time.
PRESENT, NOT_FOUND, STALE, FALLBACK, FALLBACK_CACHE, DATA_LOSS = (int(s) for s in Status)
# Status of each row from its `present` flag: index False -> NOT_FOUND, True -> PRESENT.
_BY_PRESENCE = np.array([NOT_FOUND, PRESENT], dtype=np.uint8)


def presence_statuses(present: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    """PRESENT or NOT_FOUND per row, in one table lookup."""
    return _BY_PRESENCE[present.view(np.uint8)]


# How bad each status is, for combining the inputs of an on-demand output: index = Status value.
_SEVERITY = np.array([0, 0, 2, 1, 4, 3, 5], dtype=np.uint8)
_BY_SEVERITY = np.array(
    [
        Status.PRESENT,
        Status.STALE,
        Status.NOT_FOUND,
        Status.FALLBACK_CACHE,
        Status.FALLBACK,
        Status.DATA_LOSS,
    ],
    np.uint8,
)


def worst_status(statuses: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.uint8]:
    """Row-wise worst of several status columns (each of length 1 or N)."""
    severity = _SEVERITY[statuses[0]]
    for other in statuses[1:]:
        severity = np.maximum(severity, _SEVERITY[other])
    return _BY_SEVERITY[severity]


@dataclass(frozen=True, slots=True)
class Ragged:
    """Variable-length lists: `flat` holds the elements back to back; row i is
    flat[offsets[i]:offsets[i + 1]]."""

    flat: npt.NDArray[Any]
    offsets: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, index: int) -> npt.NDArray[Any]:
        return self.flat[self.offsets[index] : self.offsets[index + 1]]

    @classmethod
    def from_rows(cls, rows: list[npt.NDArray[Any]], dtype: np.dtype[Any]) -> Ragged:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(rows).astype(dtype) if rows else np.zeros(0, dtype)
        return cls(flat, offsets)


# A column's values: numeric ndarray (N,) or (N, dim), object ndarray of str, or Ragged lists.
ColumnValues = npt.NDArray[Any] | Ragged
