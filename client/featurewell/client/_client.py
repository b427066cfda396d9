"""FeatureClient: the synchronous client over the generated stubs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from featurewell.client._channel import ClientOptions
from featurewell.client._errors import translate
from featurewell.client._near_cache import NearCacheStore
from featurewell.client._request import (
    build_list_request,
    build_request,
    build_write_request,
)
from featurewell.client._result import FeatureResult, WriteResult
from featurewell.client._subscription import Subscription
from featurewell.client._tracing import call_metadata, deprecations_of, request_id_of
from featurewell.client._values import FeatureValues
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc


def open_channel(target: str, options: ClientOptions) -> grpc.Channel:
    credentials = options.credentials()
    settings = options.channel_options(target)
    if credentials is None:
        return grpc.insecure_channel(target, options=settings)
    return grpc.secure_channel(target, credentials, options=settings)


class FeatureClient:
    """Synchronous client. `target` is 'host:port', or 'dns:///name:port' to spread calls over
    every address the name resolves to. Thread-safe; keep one per process."""

    def __init__(
        self, target: str, *, timeout: float | None = None, options: ClientOptions | None = None
    ) -> None:
        options = options or ClientOptions()
        if timeout is not None:
            options = dataclasses.replace(options, timeout=timeout)
        self.options = options
        self._caller = options.caller
        self.timeout = options.timeout
        self._channel = open_channel(target, options)
        self._stub = pb_grpc.FeatureServiceStub(self._channel)
        # ClientOptions(near_cache=...): hot single-entity answers kept here (docs/near-cache.md)
        self.near_cache: NearCacheStore | None = None
        self._subscription: Subscription | None = None
        near = options.near_cache_options
        if near is not None:
            self.near_cache = NearCacheStore(near)
            self._subscription = Subscription(
                self.near_cache, self._channel, options.caller, options.bearer
            )

    def _metadata(self) -> tuple[tuple[str, str | bytes], ...] | None:
        return call_metadata(self._caller, self.options.bearer())

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
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
        """Features for a batch of entities; length-1 key columns broadcast. Retried on
        UNAVAILABLE / RESOURCE_EXHAUSTED within `timeout` (default: the client's). With the
        near cache on, a single-entity call may be answered from it (docs/near-cache.md)."""
        near = self.near_cache
        if near is not None:
            hit, key, ticket = near.consult(
                self.options, features, entities, context, strict, include_event_timestamps
            )
            if hit is not None:
                return hit
            if key is not None:  # asked with event times: the cache ages statuses by them
                read = self._read(features, entities, None, False, True, timeout)
                return near.admit(key, ticket, read, entities)
        return self._read(features, entities, context, strict, include_event_timestamps, timeout)

    def _read(
        self,
        features: Sequence[str],
        entities: Mapping[str, Sequence[Any]],
        context: Mapping[str, Sequence[Any]] | None,
        strict: bool,
        include_event_timestamps: bool,
        timeout: float | None,
    ) -> FeatureResult:
        request = build_request(
            features,
            entities,
            context,
            strict=strict,
            include_event_timestamps=include_event_timestamps,
        )
        try:
            response, call = self._stub.GetFeatures.with_call(
                request, timeout=timeout or self.timeout, metadata=self._metadata()
            )
        except grpc.RpcError as exc:
            raise translate(exc) from None
        trailing = call.trailing_metadata()
        return FeatureResult(response, deprecations_of(trailing), request_id_of(trailing))

    def write_features(
        self,
        view: str,
        entities: Mapping[str, Sequence[Any]],
        event_timestamps_us: Sequence[int] | np.ndarray[Any, Any],
        features: Mapping[str, FeatureValues],
        *,
        timeout: float | None = None,
    ) -> WriteResult:
        """Write whole rows of `view` ("view" or "view@v2"): one value per row for every
        feature, each row with its event time. `features` maps each feature name to its values,
        typed from their dtype: int -> INT64, float32 -> FLOAT32, float64 -> FLOAT64, bool ->
        BOOL, str -> STRING, a 2-D float32 array -> EMBEDDING, and for list features a list of
        1-D int or float64 arrays (one per row) or a (flat, offsets) tuple -> INT64_LIST or
        FLOAT64_LIST. Where the values do not say, state the type: `(ValueType.FLOAT32,
        [0.5, 1.0])`. Values the client cannot type raise `InvalidValues` before any call.

        A row older than the stored one is skipped (`WriteResult.skipped_older`). Never retried:
        resend it yourself (a re-sent row is a no-op in effect, as older-or-equal events are)."""
        request = build_write_request(view, entities, event_timestamps_us, features)
        try:
            response: pb.WriteFeaturesResponse = self._stub.WriteFeatures(
                request, timeout=timeout or self.timeout * 10, metadata=self._metadata()
            )
        except grpc.RpcError as exc:
            raise translate(exc) from None
        return WriteResult(view, response.written, response.skipped_older)

    def list_features(
        self,
        *,
        owner: str = "",
        tag: str = "",
        entity: str = "",
        name_prefix: str = "",
        status: int = 0,
        timeout: float | None = None,
    ) -> pb.ListFeaturesResponse:
        """The catalog: entities, view versions (status, SLA, deprecation, versions) and
        transforms; filters narrow it to the views matching all those given (`tag`: "key" or
        "key=value"; `status`: a ViewStatus). Views the caller may not read are never listed."""
        request = build_list_request(owner, tag, entity, name_prefix, status)
        try:
            response: pb.ListFeaturesResponse = self._stub.ListFeatures(
                request,
                timeout=timeout or self.timeout,
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            raise translate(exc) from None
        return response
