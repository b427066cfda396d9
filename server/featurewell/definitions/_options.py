"""A feature's write options: what its values may hold beyond its type (non-finite floats, a
list length bound) and what a bulk load does with a null. The write paths enforce them
(engine/validation.py, ingest/materialize.py); here they are only checked to make sense."""

from __future__ import annotations

from typing import Any

from featurewell.definitions._types import FeatureType, Kind
from featurewell.errors import DefinitionError

# What `featurewell materialize` does with a null in a feature's source column.
NULL_RULES = ("reject", "default", "skip_row")
_FLOAT_KINDS = (Kind.FLOAT32, Kind.FLOAT64, Kind.EMBEDDING, Kind.FLOAT64_LIST)


def check_options(
    name: str, dtype: FeatureType, allow_non_finite: Any, nulls: Any, max_length: Any
) -> None:
    where = f"feature {name!r}"
    if not isinstance(allow_non_finite, bool):
        raise DefinitionError(f"{where}: allow_non_finite must be True or False")
    if allow_non_finite and dtype.kind not in _FLOAT_KINDS:
        raise DefinitionError(f"{where}: allow_non_finite is for float features, not {dtype}")
    if nulls not in NULL_RULES:
        raise DefinitionError(f"{where}: nulls must be one of {NULL_RULES}, got {nulls!r}")
    if max_length is None:
        return
    if not dtype.is_list:
        raise DefinitionError(f"{where}: max_length is for ListOf features, not {dtype}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 0:
        raise DefinitionError(f"{where}: max_length must be a whole number >= 0")
