"""Requests built from Python and numpy values, shared by the sync and async clients."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from featurewell.client._values import FeatureValues, typed_values
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1.columns import fill_column


def to_values(column: Sequence[Any] | np.ndarray[Any, Any]) -> pb.Values:
    """A Python or numpy column as typed Values (ints, strings, floats or bools). A column that
    is not all numbers or all bools is strings; values given as `str` are sent as they are."""
    if type(column) in (list, tuple) and column and type(column[0]) is str:
        # Ids (a ranker's 500 candidates): protobuf takes them as they are, in C, and refuses
        # them if any value is not a str (then they go the way of every other column).
        # Through numpy they cost ~50 us more a call: a unicode array, then a list again.
        with contextlib.suppress(TypeError):
            return pb.Values(strings=pb.StringList(values=column))
    array = np.asarray(column)
    if array.dtype.kind in "iu":
        return pb.Values(int64s=pb.Int64List(values=array.tolist()))
    if array.dtype.kind == "f":
        return pb.Values(doubles=pb.DoubleList(values=array.tolist()))
    if array.dtype.kind == "b":
        return pb.Values(bools=pb.BoolList(values=array.tolist()))
    # The values themselves, not the array's: a unicode array drops trailing NULs, so "u1" and
    # "u1\x00" would be one entity. (A numpy unicode array given as such has lost them already.)
    values = array.tolist() if isinstance(column, np.ndarray) else column
    return pb.Values(
        strings=pb.StringList(values=[v if type(v) is str else str(v) for v in values])
    )


def build_request(
    features: Sequence[str],
    entities: Mapping[str, Sequence[Any]],
    context: Mapping[str, Sequence[Any]] | None = None,
    *,
    strict: bool = False,
    include_event_timestamps: bool = False,
) -> pb.GetFeaturesRequest:
    return pb.GetFeaturesRequest(
        features=list(features),
        entities={k: to_values(v) for k, v in entities.items()},
        context={k: to_values(v) for k, v in (context or {}).items()},
        strict=strict,
        include_event_timestamps=include_event_timestamps,
    )


def build_write_request(
    view: str,
    entities: Mapping[str, Sequence[Any]],
    event_timestamps_us: Sequence[int] | np.ndarray[Any, Any],
    features: Mapping[str, FeatureValues],
) -> pb.WriteFeaturesRequest:
    """`features` maps each feature name to its values, typed by `typed_values`."""
    request = pb.WriteFeaturesRequest(
        view=view,
        entities={k: to_values(v) for k, v in entities.items()},
        event_timestamps=np.asarray(event_timestamps_us, dtype=np.int64).tolist(),
    )
    for name, values in features.items():
        value_type, packed = typed_values(name, values)
        fill_column(request.features.add(name=name), value_type, packed)
    return request


def build_list_request(
    owner: str = "",
    tag: str = "",
    entity: str = "",
    name_prefix: str = "",
    status: int = 0,
) -> pb.ListFeaturesRequest:
    """ListFeatures' filters; a view is listed when it matches every one given. `tag` is
    "key" (any value) or "key=value"; `status` a ViewStatus (0: any)."""
    return pb.ListFeaturesRequest(
        owner=owner,
        tag=tag,
        entity=entity,
        name_prefix=name_prefix,
        status=status,  # type: ignore[arg-type]
    )
