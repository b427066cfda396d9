"""What the chart's stream.terminationGracePeriodSeconds must cover, measured on a real
`featurewell stream` process: SIGTERM mid-backlog, and it exits 0 well within the grace period,
having acknowledged everything it read (its last checkpoint) and flushed its history. Its
/metrics, scraped from outside as Prometheus does, reports the backlog going down."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from featurewell.compute.redis_streams import append
from featurewell.definitions import load_repo
from featurewell.devcluster import LocalCluster
from featurewell.store import streams
from featurewell.store.cluster import ClusterClient
from featurewell.store.keys import stream_keys
from featurewell.store.online import OnlineStore
from tests.tools import free_port, scrape, wait_until

pytestmark = pytest.mark.redis

VALUES = Path(__file__).resolve().parents[1] / "helm" / "featurewell" / "values.yaml"
REPO = """
from datetime import timedelta
from featurewell.definitions import Count, Entity, EventSource, Feature, FeatureView, Int64, String
member = Entity("member", join_keys={"member_id": String})
visits = EventSource("NAME", keys={"member_id": String}, partitions=2)
visit_stats = FeatureView("NAME_stats", entity=member, events=visits, max_age=timedelta(hours=1),
                          tile=timedelta(minutes=1),
                          features=[Feature("visits_1h", Int64,
                                            computed=Count(window=timedelta(hours=1)))])
"""
EVENTS = 30_000


def _unread(metrics: dict[str, float], name: str) -> float:
    return sum(
        metrics.get(f'featurewell_stream_unread_entries{{partition="{p}",source="{name}"}}', 0)
        for p in (0, 1)
    )


def test_sigterm_mid_backlog_checkpoints_and_exits_within_the_chart_grace(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    grace = yaml.safe_load(VALUES.read_text())["stream"]["terminationGracePeriodSeconds"]
    name = f"visits_{uuid.uuid4().hex[:6]}"
    (tmp_path / "repo.py").write_text(REPO.replace("NAME", name))
    source = load_repo(str(tmp_path / "repo.py")).view(f"{name}_stats").events
    assert source is not None
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(
        OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
    )
    now_us = time.time_ns() // 1000
    events = [
        {"event_id": uuid.uuid4().hex, "event_time": now_us - i, "member_id": f"m{i % 5000}"}
        for i in range(EVENTS)
    ]
    for start in range(0, EVENTS, 5000):
        loop.run_until_complete(append(store.cluster, source, events[start : start + 5000]))
    metrics_port = free_port()
    environ = dict(os.environ, FEATUREWELL_OFFLINE_DIR=str(tmp_path / "offline"))
    process = subprocess.Popen(
        [sys.executable, "-m", "featurewell.cli", "stream", "--repo", str(tmp_path / "repo.py"),
         "--source", name, "--redis", ",".join(f"{h}:{p}" for h, p in cluster.seeds),
         "--metrics-port", str(metrics_port), "--batch-size", "500"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environ,
    )  # fmt: skip
    try:
        applied = f'featurewell_stream_events_total{{outcome="applied",source="{name}"}}'

        def reading(at_least: float) -> Callable[[], dict[str, float] | None]:
            def check() -> dict[str, float] | None:
                metrics = scrape(metrics_port)
                return metrics if metrics.get(applied, 0) >= at_least else None

            return check

        first = wait_until(reading(1), 60, "the worker reading", retry_on=(OSError,))
        later = wait_until(reading(5000), 60, "5,000 events read")
        assert first is not None  # wait_until returns what held
        assert later is not None
        # The backlog Redis reports, as the worker's /metrics shows it, goes down as it reads.
        assert 0 < _unread(later, name) < _unread(first, name) <= EVENTS
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=grace)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, errors.decode()[-2000:]
    print(f"\nSIGTERM to exit: {took:.2f} s (grace {grace} s)")
    assert took < grace / 2  # the chart's grace, with room for a slower cluster
    # The last checkpoint acknowledged everything read: nothing pending for the group, and the
    # rest of the backlog is still there for the next worker.
    cluster_client: ClusterClient = store.cluster
    keys = stream_keys(source)
    pending = [
        loop.run_until_complete(streams.pending(cluster_client, k, "featurewell", 5.0))
        for k in keys
    ]
    unread = [
        loop.run_until_complete(streams.lag(cluster_client, k, "featurewell", 5.0)) for k in keys
    ]
    loop.run_until_complete(store.close())
    loop.close()
    assert pending == [0, 0]
    assert 0 < sum(unread) < EVENTS
    # ...and flushed the feature history it buffered.
    assert list((tmp_path / "offline").rglob("*.parquet"))
