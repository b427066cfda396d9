"""Shared fixtures: a real Redis Cluster (3 masters + 3 replicas, `redis-server` processes on free
ports, torn down by pid) and a real featurewell gRPC server on port 0. Helpers live in tools.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from featurewell.client import FeatureClient
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster, start_local_cluster
from tests import defs
from tests.tools import Ids, ServerThread, make_settings

# Fixtures that start redis-server processes: a test using any of them, directly or through
# other fixtures, is marked `redis`. Tests starting nodes themselves carry the mark explicitly.
REDIS_FIXTURES = frozenset({"cluster", "own_cluster", "tls_cluster", "standalone_redis"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REDIS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    # A node timeout well above the longest DEBUG SLEEP any test uses (2 s): the shared cluster
    # must never fail over under the tests (test_resilience kills nodes on clusters of its own).
    with start_local_cluster(masters=3, replicas_per_master=1, node_timeout_ms=5000) as running:
        yield running


@pytest.fixture(scope="session")
def registry() -> Registry:
    return defs.registry()


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
def ids() -> Ids:
    """A function making entity ids unique to this test (the cluster is shared)."""
    run = uuid.uuid4().hex[:8]
    return lambda name: f"{name}-{run}"
