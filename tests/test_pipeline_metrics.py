"""The stream metrics the pipeline alerts need (compute/metrics.py), read from a real runner on a
real Redis Cluster the way Prometheus reads them: from another thread, while the runner's loop
runs. The backlog (`featurewell_stream_unread_entries`) is what Redis says is not yet delivered,
and the SLA gauge is the tightest of the source's views."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from featurewell.compute.metrics import stream_registry
from featurewell.compute.redis_streams import append, partition_of
from featurewell.compute.runner import StreamRunner
from featurewell.definitions import (
    Count,
    Entity,
    EventSource,
    Feature,
    FeatureView,
    Int64,
    Registry,
    String,
)
from featurewell.devcluster import LocalCluster
from tests.test_stream import _runner

pytestmark = pytest.mark.redis

member = Entity("member", join_keys={"member_id": String})
T = TypeVar("T")


def _definitions(name: str) -> tuple[EventSource, list[FeatureView]]:
    source = EventSource(name, keys={"member_id": String}, fields={"hour": Int64}, partitions=2)
    count = Feature("n_1d", Int64, computed=Count(window=timedelta(days=1)))
    views = [
        FeatureView(f"{name}_a", entity=member, events=source, features=[count],
                    max_age=timedelta(hours=2)),
        FeatureView(f"{name}_b", entity=member, events=source, features=[count],
                    max_age=timedelta(days=1), freshness_sla=timedelta(minutes=30)),
    ]  # fmt: skip
    return source, views


class _Loop:
    """An event loop in a thread of its own, as `featurewell stream` runs its runner while the
    metrics endpoint answers from another thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def running(cluster: LocalCluster) -> Iterator[tuple[_Loop, StreamRunner, EventSource]]:
    source, views = _definitions(f"pm_{uuid.uuid4().hex[:8]}")
    on = _Loop()
    runner = on.run(_runner(cluster, Registry.build([member, *views]), source))
    try:
        yield on, runner, source
    finally:
        on.run(runner.writer.store.close())
        on.stop()


async def _registry(runner: StreamRunner) -> CollectorRegistry:
    return stream_registry(runner)  # made on the loop, as `featurewell stream` makes it


def test_unread_entries_are_the_backlog_redis_reports(
    running: tuple[_Loop, StreamRunner, EventSource],
) -> None:
    on, runner, source = running
    metrics = on.run(_registry(runner))
    now_us = time.time_ns() // 1000
    events = [
        {"event_id": uuid.uuid4().hex, "event_time": now_us, "member_id": f"m{i}", "hour": 3}
        for i in range(30)
    ]
    on.run(append(runner.cluster, source, events))
    per_partition = [0, 0]
    for event in events:
        per_partition[partition_of(source, event)] += 1
    assert all(per_partition)  # both partitions have a backlog

    def unread(partition: int) -> float | None:
        labels = {"source": source.name, "partition": str(partition)}
        return metrics.get_sample_value("featurewell_stream_unread_entries", labels)

    # Scraped from this thread (not the loop's), as Prometheus's scrape is.
    assert [unread(0), unread(1)] == per_partition
    assert on.run(runner.step()) == len(events)  # read: the backlog is gone
    assert [unread(0), unread(1)] == [0, 0]
    # The SLA the watermark lag is held to: the tightest view's (freshness_sla over max_age).
    sla = metrics.get_sample_value(
        "featurewell_stream_freshness_sla_seconds", {"source": source.name}
    )
    assert sla == 30 * 60


def test_made_off_the_loop_the_backlog_is_declared_without_samples(
    running: tuple[_Loop, StreamRunner, EventSource],
) -> None:
    _, runner, _ = running
    metrics = stream_registry(runner)  # no running loop here: Redis cannot be asked
    families = {f.name: f for f in metrics.collect()}
    assert families["featurewell_stream_unread_entries"].samples == []
    assert families["featurewell_stream_freshness_sla_seconds"].samples[0].value == 1800
