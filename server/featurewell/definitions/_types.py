"""Value types of features, entity keys and request context, and their defaults."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.errors import DefinitionError


class Kind(enum.IntEnum):
    """A value's kind. The numbers are the wire's `ValueType` numbers."""

    INT64 = 1
    FLOAT32 = 2
    FLOAT64 = 3
    BOOL = 4
    STRING = 5
    EMBEDDING = 6
    INT64_LIST = 7
    FLOAT64_LIST = 8


_SCALAR_DTYPES: dict[Kind, str] = {
    Kind.INT64: "<i8",
    Kind.FLOAT32: "<f4",
    Kind.FLOAT64: "<f8",
    Kind.BOOL: "?",
}
_LIST_ELEMENT_DTYPES: dict[Kind, str] = {Kind.INT64_LIST: "<i8", Kind.FLOAT64_LIST: "<f8"}


@dataclass(frozen=True, slots=True)
class FeatureType:
    """A feature's type: a kind plus, for embeddings, the dimension."""

    kind: Kind
    dim: int = 0

    def __post_init__(self) -> None:
        if self.kind is Kind.EMBEDDING and self.dim <= 0:
            raise DefinitionError(f"Embedding needs a positive dimension, got {self.dim}")
        if self.kind is not Kind.EMBEDDING and self.dim != 0:
            raise DefinitionError(f"only embeddings have a dimension, not {self.kind.name}")

    @property
    def is_fixed_width(self) -> bool:
        """True when every value has the same byte size (stored in a row's fixed block)."""
        return self.kind in _SCALAR_DTYPES or self.kind is Kind.EMBEDDING

    @property
    def is_list(self) -> bool:
        return self.kind in _LIST_ELEMENT_DTYPES

    @property
    def element_dtype(self) -> np.dtype[Any]:
        """numpy dtype of one scalar element (of the value, the vector or the list)."""
        if self.kind in _SCALAR_DTYPES:
            return np.dtype(_SCALAR_DTYPES[self.kind])
        if self.kind is Kind.EMBEDDING:
            return np.dtype("<f4")
        if self.kind in _LIST_ELEMENT_DTYPES:
            return np.dtype(_LIST_ELEMENT_DTYPES[self.kind])
        return np.dtype(object)

    def __str__(self) -> str:
        if self.kind is Kind.EMBEDDING:
            return f"embedding[{self.dim}]"
        return self.kind.name.lower()

    def zero(self) -> Any:
        """The default used when a feature declares none."""
        if self.kind is Kind.STRING:
            return ""
        if self.kind is Kind.EMBEDDING:
            return np.zeros(self.dim, dtype="<f4")
        if self.is_list:
            return np.zeros(0, dtype=self.element_dtype)
        return self.element_dtype.type(0)

    def coerce(self, value: Any, what: str) -> Any:
        """Validate a Python value (a default, an expected statistic) against this type."""
        kind = self.kind
        if kind is Kind.BOOL:
            if not isinstance(value, bool | np.bool_):
                raise DefinitionError(f"{what} must be a bool, got {value!r}")
            return np.bool_(value)
        if kind is Kind.INT64:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise DefinitionError(f"{what} must be an int, got {value!r}")
            if not -(2**63) <= int(value) < 2**63:
                raise DefinitionError(f"{what} does not fit in int64: {value!r}")
            return np.int64(value)
        if kind in (Kind.FLOAT32, Kind.FLOAT64):
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise DefinitionError(f"{what} must be a number, got {value!r}")
            return self.element_dtype.type(value)
        if kind is Kind.STRING:
            if not isinstance(value, str):
                raise DefinitionError(f"{what} must be a str, got {value!r}")
            return value
        array = _as_numeric_array(value, what)
        if kind is Kind.EMBEDDING and array.shape != (self.dim,):
            raise DefinitionError(f"{what} must have {self.dim} numbers, got {array.shape[0]}")
        if kind is Kind.INT64_LIST and array.size and not np.all(np.mod(array, 1) == 0):
            raise DefinitionError(f"{what} must hold integers, got {value!r}")
        return array.astype(self.element_dtype)


def _as_numeric_array(value: Any, what: str) -> npt.NDArray[Any]:
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        raise DefinitionError(f"{what} must be a sequence of numbers, got {value!r}")
    try:
        array = np.asarray(value, dtype="<f8")
    except (TypeError, ValueError):
        raise DefinitionError(f"{what} must be a sequence of numbers, got {value!r}") from None
    if array.ndim != 1 or not all(math.isfinite(x) for x in array.tolist()):
        raise DefinitionError(f"{what} must be a flat sequence of finite numbers, got {value!r}")
    return array


Int64 = FeatureType(Kind.INT64)
Float32 = FeatureType(Kind.FLOAT32)
Float64 = FeatureType(Kind.FLOAT64)
Bool = FeatureType(Kind.BOOL)
String = FeatureType(Kind.STRING)


def Embedding(dim: int) -> FeatureType:  # noqa: N802 - reads as a type in definitions
    """A fixed-dimension float32 vector."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise DefinitionError(f"Embedding dimension must be an int, got {dim!r}")
    return FeatureType(Kind.EMBEDDING, dim)


def ListOf(element: FeatureType) -> FeatureType:  # noqa: N802 - reads as a type in definitions
    """A variable-length list of int64 or float64 numbers."""
    if element == Int64:
        return FeatureType(Kind.INT64_LIST)
    if element == Float64:
        return FeatureType(Kind.FLOAT64_LIST)
    raise DefinitionError(f"ListOf takes Int64 or Float64, got {element}")


KEY_TYPES = (Int64, String)
CONTEXT_TYPES = (Int64, Float64, Bool, String)
