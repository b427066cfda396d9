"""The streaming engine against a real Redis Cluster: events appended to Redis Streams, consumed
by a consumer group, rows served over gRPC, equal to the batch engine's values; a consumer that
dies mid-way is replaced without losing or double-counting an event."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from featurewell.client import FeatureClient
from featurewell.compute import batch
from featurewell.compute.program import compile_view
from featurewell.compute.redis_streams import RedisStreamSource, append
from featurewell.compute.runner import StreamRunner
from featurewell.definitions import (
    Count,
    DecayedSum,
    Entity,
    EventSource,
    Feature,
    FeatureView,
    Float64,
    Int64,
    Last,
    Registry,
    String,
    Sum,
)
from featurewell.devcluster import LocalCluster
from featurewell.engine.engine import FeatureEngine
from featurewell.settings import Settings
from featurewell.store import streams
from featurewell.store.keys import stream_keys
from featurewell.store.online import OnlineStore
from tests.tools import ServerThread, make_settings

HOUR_US = 3_600_000_000
member = Entity("member", join_keys={"member_id": String})


def definitions(name: str) -> tuple[EventSource, FeatureView]:
    clicks = EventSource(
        name, keys={"member_id": String}, fields={"amount": Float64, "page": String}, partitions=2
    )
    view = FeatureView(
        f"{name}_stats",
        entity=member,
        events=clicks,
        tile=timedelta(minutes=10),
        features=[
            Feature("clicks_1d", Int64, computed=Count(window=timedelta(days=1))),
            Feature("amount_1d", Float64, computed=Sum("amount", window=timedelta(days=1))),
            Feature("last_page", String, default="-", computed=Last("page")),
            Feature(
                "heat",
                Float64,
                computed=DecayedSum(half_life=timedelta(hours=1), window=timedelta(hours=6)),
            ),
        ],
    )
    return clicks, view


def make_events(members: list[str], count: int, seed: int) -> tuple[list[dict[str, Any]], int]:
    """Events over the last 30 hours, delivered in time order with up to 20 minutes of jitter;
    2% arrive 3 hours late (past the 1 h allowed lateness) and 3% are sent twice in a row.
    Returns the events and how many duplicates were sent."""
    rng = np.random.default_rng(seed)
    now = time.time_ns() // 1000
    times = np.sort(now - rng.integers(0, 30 * HOUR_US, count))
    arrival = times + rng.integers(0, HOUR_US // 3, count)
    late = rng.random(count) < 0.02
    arrival[late] += 3 * HOUR_US
    events = [
        {
            "event_id": f"e{n}",
            "event_time": int(t),
            "member_id": members[int(m)],
            "amount": float(round(a, 2)),
            "page": f"p{int(p)}",
        }
        for n, (t, m, a, p) in enumerate(
            zip(
                times,
                rng.integers(0, len(members), count),
                rng.gamma(2, 10, count),
                rng.integers(0, 5, count),
                strict=True,
            )
        )
    ]
    ordered = [events[i] for i in np.argsort(arrival, kind="stable")]
    out: list[dict[str, Any]] = []
    duplicates = 0
    for event in ordered:
        out.append(event)
        if rng.random() < 0.03:
            out.append(dict(event))
            duplicates += 1
    return out, duplicates


def log_of(events: list[dict[str, Any]], ids: list[str], source: EventSource) -> pa.Table:
    """The events as the batch engine reads them: with their delivery order."""
    from featurewell.compute.redis_streams import partition_of

    table: dict[str, list[Any]] = {k: [e[k] for e in events] for k in events[0]}
    table["_partition"] = [partition_of(source, e) for e in events]
    table["_pos_major"] = [int(i.split("-")[0]) for i in ids]
    table["_pos_minor"] = [int(i.split("-")[1]) for i in ids]
    return pa.table(table)


@pytest.fixture
def writer(cluster: LocalCluster) -> Iterator[Any]:
    """A FeatureEngine to write rows with, on its own event loop."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


async def _runner(
    cluster: LocalCluster, registry: Registry, source: EventSource, **options: Any
) -> StreamRunner:
    settings = Settings.load(environ={}).with_changes(redis=tuple(cluster.seeds))
    store = await OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
    runner = StreamRunner(
        registry, source, FeatureEngine(registry, store, settings.serving), **options
    )
    await runner.start()
    return runner


def close(loop: asyncio.AbstractEventLoop, *runners: StreamRunner | None) -> None:
    """Close the runners' Redis connections, then their event loop."""
    for runner in runners:
        if runner is not None:
            loop.run_until_complete(runner.writer.store.close())
    loop.close()


async def _drain(runner: StreamRunner, steps: int | None = None) -> None:
    taken = 0
    while (steps is None or taken < steps) and await runner.step():
        taken += 1


def served(
    server: ServerThread, view: FeatureView, members: list[str]
) -> tuple[dict[str, list[Any]], list[int]]:
    names = [f"{view.name}:{f.name}" for f in view.features]
    with FeatureClient(server.address, timeout=5.0) as client:
        result = client.get_features(
            names, entities={"member_id": members}, include_event_timestamps=True
        )
    values = {name: result.values(name).tolist() for name in names}
    stamps = result.columns[names[0]].event_time_us
    assert stamps is not None
    times = stamps.tolist()
    return values, times


def expected(view: FeatureView, log: pa.Table, member_id: str, as_of: int) -> list[Any]:
    program = compile_view(view)
    got = batch.compute(program, batch.accepted_events(log, 3600 * 1_000_000), as_of)
    return got.get((member_id,)) or [
        0 if f.kind in ("count", "sum", "decayed sum") else f.feature.default
        for f in program.features
    ]


def check_served(
    server: ServerThread, view: FeatureView, log: pa.Table, members: list[str]
) -> None:
    values, times = served(server, view, members)
    for n, member_id in enumerate(members):
        want = expected(view, log, member_id, times[n])
        for feature, wanted in zip(view.features, want, strict=True):
            got = values[f"{view.name}:{feature.name}"][n]
            if isinstance(wanted, float):
                assert got == pytest.approx(wanted, rel=1e-9, abs=1e-9), (member_id, feature.name)
            else:
                assert got == wanted, (member_id, feature.name, got, wanted)


def test_events_on_redis_streams_become_served_rows(cluster: LocalCluster) -> None:
    source, view = definitions(f"clicks_{uuid.uuid4().hex[:6]}")
    registry = Registry.build([member, view])
    members = [f"m{n}-{uuid.uuid4().hex[:4]}" for n in range(25)]
    events, duplicates = make_events(members, 1500, seed=5)
    loop = asyncio.new_event_loop()
    runner = None
    try:
        runner = loop.run_until_complete(_runner(cluster, registry, source, batch_size=200))
        ids = loop.run_until_complete(append(runner.cluster, source, events))
        loop.run_until_complete(_drain(runner))
        loop.run_until_complete(runner.checkpoint())
        counters = runner.engine.counters
        assert counters.applied + counters.duplicates + counters.late == len(events)
        assert counters.late > 0  # the 3-hours-late ones (and their copies)
        # Every copy was skipped: as a duplicate, or as late when its original was late too.
        assert duplicates - counters.late <= counters.duplicates <= duplicates
        assert runner.stats.rows_written >= len(members)
        server = ServerThread(make_settings(cluster), registry)
        try:
            check_served(server, view, log_of(events, ids, source), members)
        finally:
            server.stop()
    finally:
        close(loop, runner)


def test_a_dead_consumer_is_replaced_without_loss_or_double_counting(
    cluster: LocalCluster,
) -> None:
    source, view = definitions(f"clicks_{uuid.uuid4().hex[:6]}")
    registry = Registry.build([member, view])
    members = [f"m{n}-{uuid.uuid4().hex[:4]}" for n in range(20)]
    events, _ = make_events(members, 1200, seed=6)
    loop = asyncio.new_event_loop()
    first = second = None
    try:
        first = loop.run_until_complete(
            _runner(cluster, registry, source, consumer="a", batch_size=100, checkpoint_s=1e9)
        )
        ids = loop.run_until_complete(append(first.cluster, source, events))
        loop.run_until_complete(_drain(first, steps=3))
        # State checkpointed, but the process dies before acknowledging those entries...
        loop.run_until_complete(first.checkpoint(ack=False))
        loop.run_until_complete(_drain(first, steps=2))  # ...and after applying a few more.
        # A replacement under another name claims what "a" left pending and carries on.
        second = loop.run_until_complete(
            _runner(cluster, registry, source, consumer="b", batch_size=100, claim_idle_ms=0)
        )
        assert isinstance(second.events, RedisStreamSource)
        assert second.events.claimed > 0
        loop.run_until_complete(_drain(second))
        loop.run_until_complete(second.checkpoint())
        assert second.engine.counters.replayed > 0  # redelivered entries its state already held
        pending = [
            loop.run_until_complete(streams.pending(second.cluster, key, "featurewell", 5.0))
            for key in stream_keys(source)
        ]
        assert pending == [0, 0]  # everything acknowledged
        server = ServerThread(make_settings(cluster), registry)
        try:
            check_served(server, view, log_of(events, ids, source), members)
        finally:
            server.stop()
    finally:
        close(loop, first, second)


REPO = """
from datetime import timedelta
from featurewell.definitions import Count, Entity, EventSource, Feature, FeatureView, Int64, String
member = Entity("member", join_keys={"member_id": String})
visits = EventSource("NAME", keys={"member_id": String})
visit_stats = FeatureView("NAME_stats", entity=member, events=visits,
                          tile=timedelta(minutes=1),
                          features=[Feature("visits_1h", Int64,
                                            computed=Count(window=timedelta(hours=1)))])
"""


def test_featurewell_stream_serves_an_appended_event_within_seconds(
    cluster: LocalCluster, tmp_path: Any
) -> None:
    import signal
    import subprocess
    import sys

    from featurewell.definitions import load_repo
    from tests.tools import free_port, scrape_until, wait_until

    name = f"visits_{uuid.uuid4().hex[:6]}"
    (tmp_path / "repo.py").write_text(REPO.replace("NAME", name))
    registry = load_repo(str(tmp_path / "repo.py"))
    view = registry.view(f"{name}_stats")
    assert view.events is not None
    metrics = free_port()
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "featurewell.cli",
            "stream",
            "--repo",
            str(tmp_path / "repo.py"),
            "--source",
            name,
            "--redis",
            seeds,
            "--metrics-port",
            str(metrics),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = ServerThread(make_settings(cluster), registry)
    loop = asyncio.new_event_loop()
    try:
        store = loop.run_until_complete(
            OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
        )
        member_id = f"m-{uuid.uuid4().hex[:6]}"
        feature = f"{name}_stats:visits_1h"

        def visits() -> int:
            with FeatureClient(server.address, timeout=5.0) as client:
                result = client.get_features([feature], entities={"member_id": [member_id]})
            return int(result.values(feature)[0])

        def servable(count: int) -> Callable[[], bool]:
            return lambda: visits() == count

        for expected_count in (1, 2, 3):
            event = {
                "event_id": uuid.uuid4().hex,
                "event_time": time.time_ns() // 1000,
                "member_id": member_id,
            }
            loop.run_until_complete(append(store.cluster, view.events, [event]))
            wait_until(
                servable(expected_count),
                30,
                f"event {expected_count} to become servable",
                interval=0.02,
            )
        got = scrape_until(
            metrics,
            lambda m: (
                m.get(f'featurewell_stream_events_total{{outcome="applied",source="{name}"}}', 0)
                >= 3
            ),
        )
        assert got[f'featurewell_stream_events_total{{outcome="applied",source="{name}"}}'] == 3
        # Each event's appended-to-servable time is in the histogram, under 10 s.
        visible = f'featurewell_stream_visible_seconds_%s{{source="{name}"}}'
        assert got[visible % "count"] == 3
        assert got[f'featurewell_stream_visible_seconds_bucket{{le="10.0",source="{name}"}}'] == 3
        loop.run_until_complete(store.close())
    finally:
        loop.close()
        server.stop()
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors.decode()[-2000:]


def test_refresh_rewrites_only_what_time_changed(cluster: LocalCluster) -> None:
    """A window moves when its tile does, and a decayed sum fades continuously; a refresh
    rewrites those rows, and nothing while the tile stands still."""
    name = f"visits_{uuid.uuid4().hex[:6]}"
    visits = EventSource(name, keys={"member_id": String}, fields={"page": String})
    tile = 10 * 60_000_000
    counted = FeatureView(
        f"{name}_counts",
        entity=member,
        events=visits,
        tile=timedelta(minutes=10),
        features=[
            Feature("visits_1d", Int64, computed=Count(window=timedelta(days=1))),
            Feature("last_page", String, default="-", computed=Last("page")),
        ],
    )
    faded = FeatureView(
        f"{name}_heat",
        entity=member,
        events=visits,
        tile=timedelta(minutes=10),
        features=[
            Feature(
                "heat",
                Float64,
                computed=DecayedSum(half_life=timedelta(hours=1), window=timedelta(days=1)),
            )
        ],
    )
    registry = Registry.build([member, counted, faded])
    # 1 min into a tile, half an hour ago: the clock moves 15 minutes on below, and a row
    # written ahead of the real clock by more than max_future_skew_s is refused.
    now = [(time.time_ns() // 1000 - 30 * 60_000_000) // tile * tile + 60_000_000]
    members = [f"m{n}-{uuid.uuid4().hex[:4]}" for n in range(3)]
    # In the window's oldest tile: counted now, out of the window once the tile moves.
    old = now[0] - 86_400_000_000 + tile
    events = [
        {"event_id": f"e{n}", "event_time": old, "member_id": m, "page": "home"}
        for n, m in enumerate(members)
    ]
    loop = asyncio.new_event_loop()
    server = ServerThread(make_settings(cluster), registry)
    runner = None
    try:
        runner = loop.run_until_complete(
            _runner(cluster, registry, visits, refresh_s=1e9, clock_us=lambda: now[0])
        )
        loop.run_until_complete(append(runner.cluster, visits, events))
        loop.run_until_complete(_drain(runner))
        loop.run_until_complete(runner.flush())
        counts, _ = served(server, counted, members)
        heat, _ = served(server, faded, members)
        assert counts[f"{counted.name}:visits_1d"] == [1, 1, 1]
        first_heat = heat[f"{faded.name}:heat"]

        loop.run_until_complete(runner.refresh())  # same instant: nothing changed
        assert runner.stats.refreshed == 0

        now[0] += 5 * 60_000_000  # same tile, 5 minutes on: only the decayed sum moved
        loop.run_until_complete(runner.refresh())
        assert runner.stats.refreshed == len(members)
        heat, _ = served(server, faded, members)
        assert heat[f"{faded.name}:heat"] == pytest.approx(
            [h * 2 ** (-5 / 60) for h in first_heat], rel=1e-9
        )
        counts, _ = served(server, counted, members)
        assert counts[f"{counted.name}:visits_1d"] == [1, 1, 1]

        now[0] += tile  # the next tile: the old events leave the 1-day window
        loop.run_until_complete(runner.refresh())
        assert runner.stats.refreshed == 3 * len(members)
        counts, times = served(server, counted, members)
        assert counts[f"{counted.name}:visits_1d"] == [0, 0, 0]
        assert counts[f"{counted.name}:last_page"] == ["home"] * 3  # last values stay
        assert times == [now[0]] * 3  # rewritten as of the refresh
    finally:
        server.stop()
        close(loop, runner)
