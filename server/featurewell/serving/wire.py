"""Protobuf <-> domain objects, in one place. Nothing outside this module reads or builds v1
messages on the server side (the packed column layout itself lives in featurewell.v1.columns,
shared with the client)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import DecodeError

from featurewell.definitions import Feature, FeatureRef, FeatureView, Kind, Registry
from featurewell.engine.calls import (
    FeatureRequest,
    FeatureResult,
    InputColumn,
    WriteRequest,
    WriteResult,
)
from featurewell.errors import InvalidRequest, shown
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1.columns import (
    ColumnFormatError,
    fill_column,
    fixed_values,
    list_values,
    string_values,
)
from featurewell.values import PRESENT, ColumnValues, Ragged

_INPUT_KINDS = {
    "int64s": Kind.INT64,
    "strings": Kind.STRING,
    "doubles": Kind.FLOAT64,
    "bools": Kind.BOOL,
}


Message = TypeVar("Message", pb.GetFeaturesRequest, pb.WriteFeaturesRequest, pb.ListFeaturesRequest)


def parsed(kind: type[Message], request: Message | bytes) -> Message:
    """The request as its message. The server registers FeatureService with bytes in (see
    serving/server.py), so a request that is not valid protobuf, or whose string fields are
    not valid UTF-8, is parsed here and refused as INVALID_ARGUMENT instead of failing inside
    gRPC as UNKNOWN. A message object (the servicer called directly, or registered with the
    generated stubs) passes through untouched."""
    if type(request) is not bytes:
        return request  # type: ignore[return-value]
    try:
        return kind.FromString(request)
    except DecodeError as exc:
        raise InvalidRequest(
            f"the {kind.__name__} ({len(request)} bytes) is not valid protobuf ({shown(str(exc))}"
            "): corrupt bytes, or a string field that is not valid UTF-8; build it with the "
            "featurewell client or the generated v1 stubs"
        ) from None


def feature_request(request: pb.GetFeaturesRequest | bytes) -> FeatureRequest:
    message = parsed(pb.GetFeaturesRequest, request)
    return FeatureRequest(
        features=tuple(message.features),
        entities=_inputs(message.entities, "entity key"),
        context=_inputs(message.context, "context"),
        strict=message.strict,
        include_event_timestamps=message.include_event_timestamps,
    )


def _inputs(columns: Mapping[str, pb.Values], what: str) -> dict[str, InputColumn]:
    out: dict[str, InputColumn] = {}
    for name, column in columns.items():
        kind = column.WhichOneof("kind")
        if kind is None:
            raise InvalidRequest(f"{what} {shown(name)} has no values: set int64s, strings, ...")
        out[name] = InputColumn(_INPUT_KINDS[kind], getattr(column, kind).values)
    return out


def feature_response(result: FeatureResult) -> pb.GetFeaturesResponse:
    response = pb.GetFeaturesResponse(row_count=result.rows)
    packed_statuses: dict[int, bytes] = {}  # a view's columns share one statuses array
    for column in result.columns:
        out = response.columns.add(name=column.name, entity=column.entity, version=column.version)
        fill_column(out, int(column.dtype.kind), _packable(column.values), dim=column.dtype.dim)
        statuses = column.statuses
        packed = packed_statuses.get(id(statuses))
        if packed is None:
            packed = b"" if statuses.min() == statuses.max() == PRESENT else statuses.tobytes()
            packed_statuses[id(statuses)] = packed
        if packed:
            out.statuses = packed
        if column.event_time_us is not None:
            out.event_timestamps = column.event_time_us.astype("<i8", copy=False).tobytes()
    for fallback in result.fallbacks:
        response.fallbacks.add(
            view=fallback.view,
            reason=int(fallback.reason),  # FailureReason numbers are the wire's FallbackReason
            from_cache=fallback.from_cache,
            from_default=fallback.from_default,
        )
    return response


def _packable(values: ColumnValues) -> Any:
    return (values.flat, values.offsets) if isinstance(values, Ragged) else values


def write_request(request: pb.WriteFeaturesRequest | bytes) -> WriteRequest:
    message = parsed(pb.WriteFeaturesRequest, request)
    features: dict[str, ColumnValues] = {}
    for column in message.features:
        if column.name in features:
            raise InvalidRequest(f"feature {shown(column.name)} is sent twice")
        try:
            features[column.name] = _column_values(column)
        except ColumnFormatError as exc:
            raise InvalidRequest(str(exc)) from None
    return WriteRequest(
        view=message.view,
        entities=_inputs(message.entities, "entity key"),
        event_time_us=np.asarray(message.event_timestamps, dtype=np.int64),
        features=features,
    )


def _column_values(column: pb.FeatureColumn) -> ColumnValues:
    if column.type == pb.VALUE_TYPE_STRING:
        return np.array(string_values(column), dtype=object)
    if column.type in (pb.VALUE_TYPE_INT64_LIST, pb.VALUE_TYPE_FLOAT64_LIST):
        flat, offsets = list_values(column)
        return Ragged(flat, offsets)
    if column.type == pb.VALUE_TYPE_UNSPECIFIED:
        raise InvalidRequest(f"feature column {shown(column.name)} has no type")
    return fixed_values(column)


def write_response(outcome: WriteResult) -> pb.WriteFeaturesResponse:
    return pb.WriteFeaturesResponse(written=outcome.written, skipped_older=outcome.skipped_older)


def catalog(
    registry: Registry, can_read: Callable[[FeatureView, str], bool] | None = None
) -> pb.ListFeaturesResponse:
    """The catalog; with `can_read(view, feature)` (an authenticated caller's grants) only the
    views and features it may read, and the transforms all of whose inputs it may read."""
    response = pb.ListFeaturesResponse()
    for entity in registry.entities.values():
        response.entities.add(
            name=entity.name,
            join_keys=list(entity.key_names),
            key_types=[int(t.kind) for t in entity.join_keys.values()],
            description=entity.description,
        )
    for (name, version), view in sorted(registry.views.items()):
        features = [f for f in view.features if can_read is None or can_read(view, f.name)]
        if not features:
            continue
        response.views.add(
            name=name,
            version=version,
            is_default=registry.default_versions[name] == version,
            entity=view.entity.name,
            features=[_feature_spec(f) for f in features],
            max_age_seconds=_seconds(view.max_age),
            retention_seconds=_seconds(view.retention),
            owner=view.owner,
            description=view.description,
            tags=dict(view.tags),
        )
    for transform in registry.transforms.values():
        if can_read is not None and not all(
            _input_readable(registry, ref, can_read) for ref in transform.inputs.values()
        ):
            continue
        response.on_demand.add(
            name=transform.name,
            inputs=list(transform.inputs.values()),
            context=list(transform.context),
            outputs=[_feature_spec(f) for f in transform.outputs],
            description=transform.description,
        )
    return response


def _input_readable(
    registry: Registry, text: str, can_read: Callable[[FeatureView, str], bool]
) -> bool:
    ref = FeatureRef.parse(text)  # checked when the registry was built
    view, feature = registry.feature(ref)
    return can_read(view, feature.name)


def _feature_spec(feature: Feature) -> pb.FeatureSpec:
    default = feature.default
    text = str(default.tolist() if isinstance(default, np.ndarray | np.generic) else default)
    return pb.FeatureSpec(
        name=feature.name,
        type=int(feature.dtype.kind),  # type: ignore[arg-type]
        dim=feature.dtype.dim,
        description=feature.description,
        default=text,
    )


def _seconds(age: timedelta | None) -> float:
    return age.total_seconds() if age is not None else 0.0
