"""How a served value and a training value compare, and what a comparison found.

Integers, booleans and strings exactly; floats within a relative tolerance (`rtol`, and `atol`
near zero; NaN equals NaN); embeddings by cosine similarity (at least `cosine`; two zero vectors
are equal); lists element by element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from featurewell.definitions import Feature, Kind
from featurewell.values import NOT_FOUND, PRESENT, STALE

COMPARED_STATUSES = (PRESENT, STALE, NOT_FOUND)  # the others: degraded answers, not compared
EXAMPLES = 3


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 1e-5  # floats: |a - b| <= rtol * max(|a|, |b|) + atol
    atol: float = 1e-6
    cosine: float = 0.9999  # embeddings: cosine similarity at least this


@dataclass
class FeatureSkew:
    table: str  # `view@vN` or the transform
    feature: str
    against: str  # "offline" (the point-in-time join) or "batch" (the event log)
    compared: int = 0
    mismatched: int = 0
    status_mismatched: int = 0  # of `mismatched`: found on one side only
    skipped: int = 0  # served degraded (a fallback): not compared
    examples: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.mismatched / self.compared if self.compared else 0.0


def differ(
    feature: Feature,
    served_values: pa.ChunkedArray | pa.Array,
    other: pa.ChunkedArray | pa.Array,
    tolerance: Tolerance,
) -> npt.NDArray[np.bool_]:
    """Per row, whether the two values differ under the feature type's rule (module docstring)."""
    kind = feature.dtype.kind
    if kind in (Kind.FLOAT32, Kind.FLOAT64):
        a = np.asarray(pc.cast(served_values, pa.float64()).to_numpy(zero_copy_only=False))
        b = np.asarray(pc.cast(other, pa.float64()).to_numpy(zero_copy_only=False))
        close = np.abs(a - b) <= tolerance.rtol * np.maximum(np.abs(a), np.abs(b)) + tolerance.atol
        return np.asarray(~(close | (np.isnan(a) & np.isnan(b))), bool)
    if kind is Kind.EMBEDDING:
        dim = feature.dtype.dim
        a = _matrix(served_values, dim)
        b = _matrix(other, dim)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        dot = (a * b).sum(axis=1)
        zero = norms == 0
        cosine = np.where(zero, 0.0, dot / np.where(zero, 1.0, norms))
        same_zero = zero & (np.abs(a).sum(axis=1) == 0) & (np.abs(b).sum(axis=1) == 0)
        return np.asarray(~(same_zero | (cosine >= tolerance.cosine)), bool)
    if feature.dtype.is_list:
        return np.array(
            [
                not same(x, y, tolerance)
                for x, y in zip(served_values.to_pylist(), other.to_pylist(), strict=True)
            ],
            bool,
        )
    equal = pc.equal(served_values, pc.cast(other, served_values.type))
    return np.asarray(pc.fill_null(pc.invert(equal), True).to_numpy(zero_copy_only=False), bool)


def _matrix(column: pa.ChunkedArray | pa.Array, dim: int) -> npt.NDArray[np.float64]:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return np.asarray(flat, np.float64).reshape(-1, dim)


def same(a: Any, b: Any, tolerance: Tolerance) -> bool:
    """Two Python values (lists, scalars) under the same rules as `differ`."""
    if isinstance(a, list | tuple | np.ndarray) or isinstance(b, list | tuple | np.ndarray):
        a, b = list(np.asarray(a).tolist()), list(np.asarray(b).tolist())
        return len(a) == len(b) and all(same(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(float(a)) and math.isnan(float(b)):
            return True
        return math.isclose(float(a), float(b), rel_tol=tolerance.rtol, abs_tol=tolerance.atol)
    return bool(a == b)
