"""FeatureClient: a thin synchronous client over the generated stubs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from featurewell.client._columns import fill_column
from featurewell.client._errors import translate
from featurewell.client._result import FeatureResult
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 1.0
_MAX_MESSAGE = 64 * 1024 * 1024
_VALUE_TYPES = {
    "i": pb.VALUE_TYPE_INT64,
    "u": pb.VALUE_TYPE_INT64,
    "f": pb.VALUE_TYPE_FLOAT64,
    "b": pb.VALUE_TYPE_BOOL,
}


def to_values(column: Sequence[Any] | np.ndarray[Any, Any]) -> pb.Values:
    """A Python or numpy column as typed Values (ints, strings, floats or bools)."""
    array = np.asarray(column)
    if array.dtype.kind in "iu":
        return pb.Values(int64s=pb.Int64List(values=array.tolist()))
    if array.dtype.kind == "f":
        return pb.Values(doubles=pb.DoubleList(values=array.tolist()))
    if array.dtype.kind == "b":
        return pb.Values(bools=pb.BoolList(values=array.tolist()))
    return pb.Values(strings=pb.StringList(values=[str(v) for v in array.tolist()]))


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


class FeatureClient:
    """Synchronous client. `target` is 'host:port' (or 'dns:///host:port')."""

    def __init__(self, target: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
            ],
        )
        self._stub = pb_grpc.FeatureServiceStub(self._channel)
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_features(
        self,
        features: Sequence[str],
        entities: Mapping[str, Sequence[Any]],
        context: Mapping[str, Sequence[Any]] | None = None,
        *,
        strict: bool = False,
        include_event_timestamps: bool = False,
        timeout: float | None = None,
    ) -> FeatureResult:
        request = build_request(
            features, entities, context,
            strict=strict, include_event_timestamps=include_event_timestamps,
        )  # fmt: skip
        try:
            response = self._stub.GetFeatures(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise translate(exc) from None
        return FeatureResult(response)

    def write_features(
        self,
        view: str,
        entities: Mapping[str, Sequence[Any]],
        event_timestamps_us: Sequence[int] | np.ndarray[Any, Any],
        features: Mapping[str, tuple[int, Any]],
        *,
        timeout: float | None = None,
    ) -> pb.WriteFeaturesResponse:
        """Write whole rows of `view`. `features` maps each feature name to (ValueType, values):
        numpy arrays for numbers and embeddings, a list of str, or (flat, offsets) for lists."""
        request = pb.WriteFeaturesRequest(
            view=view,
            entities={k: to_values(v) for k, v in entities.items()},
            event_timestamps=np.asarray(event_timestamps_us, dtype=np.int64).tolist(),
        )
        for name, (value_type, values) in features.items():
            fill_column(request.features.add(name=name), value_type, values)
        try:
            response: pb.WriteFeaturesResponse = self._stub.WriteFeatures(
                request, timeout=timeout or self.timeout * 10
            )
        except grpc.RpcError as exc:
            raise translate(exc) from None
        return response

    def list_features(self, *, timeout: float | None = None) -> pb.ListFeaturesResponse:
        try:
            response: pb.ListFeaturesResponse = self._stub.ListFeatures(
                pb.ListFeaturesRequest(), timeout=timeout or self.timeout
            )
        except grpc.RpcError as exc:
            raise translate(exc) from None
        return response
