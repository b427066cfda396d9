"""AsyncFeatureClient: the same client for asyncio code (grpc.aio)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from featurewell.client._channel import ClientOptions
from featurewell.client._client import open_channel
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


class AsyncFeatureClient:
    """Asyncio client with `FeatureClient`'s methods as coroutines. Create it inside the event
    loop that uses it; `async with` closes it."""

    def __init__(
        self, target: str, *, timeout: float | None = None, options: ClientOptions | None = None
    ) -> None:
        options = options or ClientOptions()
        if timeout is not None:
            options = dataclasses.replace(options, timeout=timeout)
        self.options = options
        self._caller = options.caller
        self.timeout = options.timeout
        credentials = options.credentials()
        settings = options.channel_options(target)
        self._channel = (
            grpc.aio.insecure_channel(target, options=settings)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, options=settings)
        )
        self._stub = pb_grpc.FeatureServiceStub(self._channel)
        # The near cache's stream runs on a thread with a sync channel of its own (shared with
        # FeatureClient); hits never await.
        self.near_cache: NearCacheStore | None = None
        self._subscription: Subscription | None = None
        near = options.near_cache_options
        if near is not None:
            self.near_cache = NearCacheStore(near)
            self._subscription = Subscription(
                self.near_cache, open_channel(target, options), options.caller, options.bearer
            )

    def _metadata(self) -> tuple[tuple[str, str | bytes], ...] | None:
        return call_metadata(self._caller, self.options.bearer())

    async def close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription.channel.close()
        await self._channel.close()

    async def __aenter__(self) -> AsyncFeatureClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get_features(
        self,
        features: Sequence[str],
        entities: Mapping[str, Sequence[Any]],
        context: Mapping[str, Sequence[Any]] | None = None,
        *,
        strict: bool = False,
        include_event_timestamps: bool = False,
        timeout: float | None = None,
    ) -> FeatureResult:
        near = self.near_cache
        if near is not None:
            hit, key, ticket = near.consult(
                self.options, features, entities, context, strict, include_event_timestamps
            )
            if hit is not None:
                return hit
            if key is not None:  # asked with event times: the cache ages statuses by them
                read = await self._read(features, entities, None, False, True, timeout)
                return near.admit(key, ticket, read, entities)
        return await self._read(
            features, entities, context, strict, include_event_timestamps, timeout
        )

    async def _read(
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
            call = self._stub.GetFeatures(
                request, timeout=timeout or self.timeout, metadata=self._metadata()
            )
            response = await call
            trailing = await call.trailing_metadata()
        except grpc.RpcError as exc:
            raise translate(exc) from None
        return FeatureResult(response, deprecations_of(trailing), request_id_of(trailing))

    async def write_features(
        self,
        view: str,
        entities: Mapping[str, Sequence[Any]],
        event_timestamps_us: Sequence[int] | np.ndarray[Any, Any],
        features: Mapping[str, FeatureValues],
        *,
        timeout: float | None = None,
    ) -> WriteResult:
        """See `FeatureClient.write_features`."""
        request = build_write_request(view, entities, event_timestamps_us, features)
        try:
            response: pb.WriteFeaturesResponse = await self._stub.WriteFeatures(
                request, timeout=timeout or self.timeout * 10, metadata=self._metadata()
            )
        except grpc.RpcError as exc:
            raise translate(exc) from None
        return WriteResult(view, response.written, response.skipped_older)

    async def list_features(
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
            response: pb.ListFeaturesResponse = await self._stub.ListFeatures(
                request,
                timeout=timeout or self.timeout,
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            raise translate(exc) from None
        return response
