"""Shared fixtures: a real Redis Cluster (3 masters + 3 replicas, `redis-server` processes on free
ports, torn down by pid) and a real featurewell gRPC server on port 0."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from featurewell.app import start_server
from featurewell.client import FeatureClient
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster, start_local_cluster
from featurewell.serving.server import Server
from featurewell.settings import Settings
from featurewell.telemetry.tracing import Tracing
from tests import defs


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    # A node timeout well above the longest DEBUG SLEEP any test uses (1 s): the shared cluster
    # must never fail over under the tests (test_resilience kills nodes on clusters of its own).
    with start_local_cluster(masters=3, replicas_per_master=1, node_timeout_ms=5000) as running:
        yield running


@pytest.fixture(scope="session")
def registry() -> Registry:
    return defs.registry()


def make_settings(cluster: LocalCluster, **changes: Any) -> Settings:
    base = Settings.load(environ={}).with_changes(
        redis=tuple(cluster.seeds), port=0, metrics_port=-1, max_rows=2000, grace_period_s=1.0
    )
    return base.with_changes(**changes)


class ServerThread:
    """A featurewell server running on its own event loop in a background thread, so tests can
    call it with blocking clients."""

    def __init__(
        self, settings: Settings, registry: Registry | None, tracing: Tracing | None = None
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: Server = self.run(start_server(settings, registry, tracing))
        self.address = f"127.0.0.1:{self.server.port}"

    def run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=30)

    def stop(self) -> None:
        self.run(self.server.stop(grace=0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="session")
def server(cluster: LocalCluster, registry: Registry) -> Iterator[ServerThread]:
    running = ServerThread(make_settings(cluster), registry)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(server: ServerThread) -> Iterator[FeatureClient]:
    with FeatureClient(server.address, timeout=5.0) as connected:
        yield connected


@pytest.fixture
def ids() -> Any:
    """A function making entity ids unique to this test (the cluster is shared)."""
    run = uuid.uuid4().hex[:8]
    return lambda name: f"{name}-{run}"
