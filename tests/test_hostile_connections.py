"""HTTP/2 and gRPC limits against hostile or broken clients, on real servers: request bytes per
call, open calls per connection, idle connections, keepalive ping floods."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from featurewell.client import FeatureClient, FeatureClientError
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster
from featurewell.serving.grpc_options import connection_limits
from featurewell.settings import Settings
from featurewell.v1 import feature_service_pb2 as pb
from tests.tools import ServerThread, make_settings, wait_until

LIST = "/featurewell.v1.FeatureService/ListFeatures"


def _list_features(channel: grpc.Channel) -> None:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(LIST)
    call(pb.ListFeaturesRequest().SerializeToString(), timeout=5)


def _server(cluster: LocalCluster, registry: Registry, **changes: Any) -> ServerThread:
    return ServerThread(make_settings(cluster, **changes), registry)


def test_the_defaults_bound_every_connection() -> None:
    options = dict(connection_limits(Settings.load(environ={}).serving))
    assert options == {
        "grpc.max_receive_message_length": 16 * 1024 * 1024,
        "grpc.max_concurrent_streams": 256,
        "grpc.max_connection_idle_ms": 300_000,
        "grpc.http2.min_ping_interval_without_data_ms": 10_000,
        "grpc.keepalive_permit_without_calls": 0,
        "grpc.http2.max_ping_strikes": 2,
        "grpc.max_connection_age_ms": 1_800_000,
        "grpc.max_connection_age_grace_ms": 30_000,
    }


def test_a_request_over_max_request_mb_is_refused_unparsed(
    cluster: LocalCluster, registry: Registry
) -> None:
    server = _server(cluster, registry, max_request_mb=1)  # responses may still be 64 MiB
    try:
        with FeatureClient(server.address, timeout=5) as client:
            users = [f"user-{i:08d}-{'x' * 40}" for i in range(30_000)]  # ~1.6 MB of keys
            with pytest.raises(FeatureClientError) as refused:
                client.get_features(["profile:age"], entities={"user_id": users})
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert client.get_features(["profile:age"], entities={"user_id": users[:5]}).rows == 5
    finally:
        server.stop()


def test_open_calls_per_connection_are_capped(cluster: LocalCluster, registry: Registry) -> None:
    """One stream per connection: two calls sent at once on one channel run one after the
    other (each waits 300 ms in the server)."""
    server = _server(cluster, registry, max_concurrent_streams=1, fault_delay="single:300ms")
    try:
        with FeatureClient(server.address, timeout=5) as client:

            def call(_: int) -> float:
                client.get_features(["profile:age"], entities={"user_id": ["u"]})
                return time.monotonic()

            started = time.monotonic()
            with ThreadPoolExecutor(2) as pool:
                ended = sorted(pool.map(call, range(2)))
            assert ended[1] - started >= 0.55  # serialised: ~0.6 s, not ~0.3 s
    finally:
        server.stop()


def test_an_idle_connection_is_closed(cluster: LocalCluster, registry: Registry) -> None:
    server = _server(cluster, registry, max_connection_idle_s=0.3)
    states: list[grpc.ChannelConnectivity] = []
    try:
        with grpc.insecure_channel(server.address) as channel:
            _list_features(channel)
            channel.subscribe(states.append)
            wait_until(
                lambda: states and states[-1] == grpc.ChannelConnectivity.IDLE,
                30.0,
                "the server to close the idle connection (the channel goes IDLE)",
            )
    finally:
        server.stop()


def test_a_keepalive_ping_flood_is_disconnected(cluster: LocalCluster, registry: Registry) -> None:
    """A client pinging as fast as gRPC lets it (about once a second) on a connection with no
    call open, against a server that permits no pings without calls: after max_ping_strikes
    pings, GOAWAY (too_many_pings) closes the connection, long before its idle limit (300 s)."""
    server = _server(cluster, registry)
    flood = [
        ("grpc.keepalive_time_ms", 50),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    states: list[grpc.ChannelConnectivity] = []
    try:
        with grpc.insecure_channel(server.address, options=flood) as channel:
            _list_features(channel)
            channel.subscribe(states.append)
            wait_until(
                lambda: states and states[-1] != grpc.ChannelConnectivity.READY,
                15.0,
                "the server to close the connection flooding it with pings",
                interval=0.05,
            )
    finally:
        server.stop()
