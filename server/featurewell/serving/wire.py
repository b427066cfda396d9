"""Protobuf <-> domain objects, in one place. Nothing outside this module reads or builds v1
messages on the server side (the packed column layout itself lives in featurewell.v1.columns,
shared with the client)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


_PRESENT_BYTE = bytes([PRESENT])

Message = TypeVar(
    "Message",
    pb.GetFeaturesRequest,
    pb.WriteFeaturesRequest,
    pb.ListFeaturesRequest,
    pb.SubscribeInvalidationsRequest,
)


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
        # A list, made once: each read of a protobuf repeated field makes its Python values
        # anew (a str per item id), and the engine reads a key column three or four times
        # (lengths, empty keys, the store's tags).
        out[name] = InputColumn(_INPUT_KINDS[kind], list(getattr(column, kind).values))
    return out


def feature_response(result: FeatureResult, typed: bool = False) -> pb.GetFeaturesResponse:
    """The packed answer; with `typed` (the request's `typed_values`), typed lists instead."""
    if typed:
        return typed_response(result)
    response = pb.GetFeaturesResponse(row_count=result.rows)
    packed_statuses: dict[int, bytes] = {}  # a view's columns share one statuses array
    for column in result.columns:
        out = response.columns.add(name=column.name, entity=column.entity, version=column.version)
        fill_column(out, int(column.dtype.kind), _packable(column.values), dim=column.dtype.dim)
        statuses = column.statuses
        packed = packed_statuses.get(id(statuses))
        if packed is None:
            packed = statuses.tobytes()
            if not packed.strip(_PRESENT_BYTE):  # all PRESENT (one C pass, no numpy call)
                packed = b""
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


def typed_response(result: FeatureResult) -> pb.GetFeaturesResponse:
    """Every column as typed repeated fields (`FeatureColumn.typed`, `typed_statuses`, ...):
    what grpcurl shows as JSON numbers and strings, and any language's stubs read without the
    packed layout. Slower than packing (a Python value per element): opt-in only."""
    response = pb.GetFeaturesResponse(row_count=result.rows)
    for column in result.columns:
        kind = int(column.dtype.kind)
        out = response.columns.add(
            name=column.name,
            type=kind,
            dim=column.dtype.dim,
            length=len(column.values),
            entity=column.entity,
            version=column.version,
        )
        values = column.values
        if isinstance(values, Ragged):
            out.typed_row_lengths.extend(np.diff(values.offsets).tolist())
            values = values.flat
        field = _TYPED_FIELDS[kind]
        getattr(out.typed, field).values.extend(np.asarray(values).ravel().tolist())
        out.typed_statuses.extend(column.statuses.tolist())
        if column.event_time_us is not None:
            out.typed_event_timestamps.extend(column.event_time_us.tolist())
    for fallback in result.fallbacks:
        response.fallbacks.add(
            view=fallback.view,
            reason=int(fallback.reason),
            from_cache=fallback.from_cache,
            from_default=fallback.from_default,
        )
    return response


# ValueType -> the `Values` field that carries it when typed.
_TYPED_FIELDS = {
    int(Kind.INT64): "int64s",
    int(Kind.FLOAT32): "doubles",
    int(Kind.FLOAT64): "doubles",
    int(Kind.BOOL): "bools",
    int(Kind.STRING): "strings",
    int(Kind.EMBEDDING): "doubles",
    int(Kind.INT64_LIST): "int64s",
    int(Kind.FLOAT64_LIST): "doubles",
}


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


def catalog_filter(request: pb.ListFeaturesRequest | bytes) -> CatalogFilter:
    message = parsed(pb.ListFeaturesRequest, request)
    if message.status not in pb.ViewStatus.values():
        raise InvalidRequest(
            f"status {message.status} is not a ViewStatus: use ACTIVE, STAGING, DEPRECATED or "
            "INACTIVE (or leave it unset for any)"
        )
    key, has_value, value = message.tag.partition("=")
    return CatalogFilter(
        owner=message.owner,
        tag_key=key,
        tag_value=value if has_value else None,
        entity=message.entity,
        name_prefix=message.name_prefix,
        status=message.status,
    )


@dataclass(frozen=True)
class CatalogFilter:
    """ListFeatures' filters: a view version is listed when it matches every one set."""

    owner: str = ""
    tag_key: str = ""
    tag_value: str | None = None  # None: any value of tag_key
    entity: str = ""
    name_prefix: str = ""
    status: int = pb.VIEW_STATUS_UNSPECIFIED

    def matches(self, view: FeatureView, status: int) -> bool:
        if self.owner and view.owner != self.owner:
            return False
        if self.entity and view.entity.name != self.entity:
            return False
        if self.name_prefix and not view.name.startswith(self.name_prefix):
            return False
        if self.tag_key and (
            self.tag_key not in view.tags
            or (self.tag_value is not None and view.tags[self.tag_key] != self.tag_value)
        ):
            return False
        return not self.status or status == self.status

    @property
    def any_view_filter(self) -> bool:
        return bool(self.owner or self.tag_key or self.name_prefix or self.status)


def view_status(registry: Registry, view: FeatureView) -> int:
    """ACTIVE (the default version), DEPRECATED (marked), STAGING (above the default) or
    INACTIVE (below it)."""
    if view.deprecated is not None:
        return pb.VIEW_STATUS_DEPRECATED
    default = registry.default_versions[view.name]
    if view.version == default:
        return pb.VIEW_STATUS_ACTIVE
    return pb.VIEW_STATUS_STAGING if view.version > default else pb.VIEW_STATUS_INACTIVE


def catalog(
    registry: Registry,
    can_read: Callable[[FeatureView, str], bool] | None = None,
    wanted: CatalogFilter | None = None,
) -> pb.ListFeaturesResponse:
    """The catalog of the views `wanted` matches; with `can_read(view, feature)` (an
    authenticated caller's grants) only the views and features it may read, and the transforms
    all of whose inputs it may read."""
    wanted = wanted or CatalogFilter()
    response = pb.ListFeaturesResponse()
    versions: dict[str, list[int]] = {}  # the versions the caller may read something of
    for (name, version), view in sorted(registry.views.items()):
        if can_read is None or any(can_read(view, f.name) for f in view.features):
            versions.setdefault(name, []).append(version)
    listed_entities: set[str] = set()
    for (name, version), view in sorted(registry.views.items()):
        status = view_status(registry, view)
        if not wanted.matches(view, status):
            continue
        features = [f for f in view.features if can_read is None or can_read(view, f.name)]
        if not features:
            continue
        listed_entities.add(view.entity.name)
        spec = response.views.add(
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
            status=status,
            freshness_sla_seconds=_seconds(view.sla),
            versions=versions[name],
        )
        if view.deprecated is not None:
            day = view.deprecated.removal_date
            spec.deprecation.replacement = view.deprecated.replacement
            spec.deprecation.removal_date = day.isoformat() if day is not None else ""
            spec.deprecation.reason = view.deprecated.reason
    for entity in registry.entities.values():
        if wanted.entity and entity.name != wanted.entity:
            continue
        if wanted.any_view_filter and entity.name not in listed_entities:
            continue
        response.entities.add(
            name=entity.name,
            join_keys=list(entity.key_names),
            key_types=[int(t.kind) for t in entity.join_keys.values()],
            description=entity.description,
        )
    if wanted.any_view_filter or wanted.entity:
        return response  # transforms have no owner, tags, entity or status to match
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
