"""Stream scale-out against real processes: two `featurewell stream` workers share a source's
partitions by lease (the second to start takes half from the first, which checkpoints and
releases them); one is SIGKILLed mid-run and the other takes its partitions over once its leases
run out. Every event is then counted once: the served values equal the batch engine's, and the
offline history both wrote has no row lost or twice."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurewell.compute.redis_streams import append
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
    load_repo,
)
from featurewell.devcluster import LocalCluster
from featurewell.engine.engine import FeatureEngine
from featurewell.store import streams
from featurewell.store.keys import stream_keys, stream_lease_key
from featurewell.store.online import OnlineStore
from tests.test_history_crash import check_history
from tests.test_stream import check_served, log_of, member
from tests.tools import ServerThread, make_settings, wait_until

MINUTE_US = 60_000_000
REPO = """
from datetime import timedelta
from featurewell.definitions import (
    Count, Entity, EventSource, Feature, FeatureView, Float64, Int64, Last, String, Sum,
)
member = Entity("member", join_keys={"member_id": String})
visits = EventSource("NAME", keys={"member_id": String}, fields={"amount": Float64, "page": String},
                     partitions=4)
visit_stats = FeatureView("NAME_stats", entity=member, events=visits, tile=timedelta(minutes=1),
    features=[Feature("visits_1h", Int64, computed=Count(window=timedelta(hours=1))),
              Feature("amount_1h", Float64, computed=Sum("amount", window=timedelta(hours=1))),
              Feature("last_page", String, default="-", computed=Last("page"))])
"""


def _events(name: str, count: int) -> tuple[list[str], list[dict[str, Any]]]:
    """Events of the last 20 minutes, roughly in time order, 2% sent twice."""
    rng = np.random.default_rng(4)
    now = time.time_ns() // 1000
    members = [f"m{n}-{name}" for n in range(60)]
    out: list[dict[str, Any]] = []
    for n, t in enumerate(np.sort(now - rng.integers(0, 20 * MINUTE_US, count)).tolist()):
        event = {
            "event_id": f"e{n}",
            "event_time": int(t),
            "member_id": members[int(rng.integers(0, len(members)))],
            "amount": float(rng.integers(1, 100)),
            "page": f"p{int(rng.integers(0, 5))}",
        }
        out.append(event)
        if rng.random() < 0.02:
            out.append(dict(event))
    return members, out


def _worker(repo: Path, name: str, seeds: str, consumer: str, log: IO[bytes]) -> Any:
    command = [sys.executable, "-m", "featurewell.cli", "stream", "--repo", str(repo)]
    command += ["--offline-dir", str(repo.parent / "offline")]
    command += ["--source", name, "--redis", seeds, "--metrics-port", "-1"]
    command += ["--consumer", consumer, "--lease-s", "1.5", "--checkpoint-s", "0.5"]
    command += ["--batch-size", "20", "--refresh-s", "3600", "--log-level", "INFO"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)


def _held(holders: Callable[[], list[str]], *expected: str) -> Callable[[], bool]:
    """True once the partitions are held by exactly `expected`, evenly."""

    def check() -> bool:
        now = holders()
        return sorted(set(now)) == sorted(expected) and all(
            now.count(e) == len(now) // len(expected) for e in expected
        )

    return check


def test_workers_share_partitions_and_survive_a_sigkill(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    name = f"share_{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo.py"
    repo.write_text(REPO.replace("NAME", name))
    registry = load_repo(str(repo))
    view = registry.view(f"{name}_stats")
    source = view.events
    assert source is not None
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(
        OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
    )
    leases = [stream_lease_key(source, "featurewell", p) for p in range(4)]

    def holders() -> list[str]:
        return loop.run_until_complete(streams.holders(store.cluster, leases, 5.0))

    def outstanding() -> int:  # entries not delivered yet, or delivered and not acknowledged
        total = 0
        for key in stream_keys(source):
            total += loop.run_until_complete(streams.lag(store.cluster, key, "featurewell", 5.0))
            total += loop.run_until_complete(
                streams.pending(store.cluster, key, "featurewell", 5.0)
            )
        return total

    members, events = _events(name, 9000)
    ids: list[str] = []
    killed = threading.Event()
    split = 2 * len(events) // 3 // 45 * 45

    async def produce() -> None:  # ~1,500 events/s for ~6 s
        producer = await OnlineStore.connect(
            cluster.seeds, connect_timeout=2, connections_per_node=1
        )
        try:
            for start in range(0, len(events), 45):
                if start == split:  # the last third waits for a's SIGKILL, however slow b's
                    await asyncio.to_thread(killed.wait, 120)  # start and the hand-over were
                ids.extend(await append(producer.cluster, source, events[start : start + 45]))
                await asyncio.sleep(0.03)
        finally:
            await producer.close()

    logs = {c: (tmp_path / f"{c}.log").open("wb") for c in ("a", "b")}
    workers = {"a": _worker(repo, name, seeds, "a", logs["a"])}
    producer = threading.Thread(target=lambda: asyncio.run(produce()))
    try:
        wait_until(_held(holders, "a"), 30, "a to lease every partition")
        producer.start()
        workers["b"] = _worker(repo, name, seeds, "b", logs["b"])
        wait_until(_held(holders, "a", "b"), 30, "a to hand b half the partitions")
        time.sleep(1.0)
        assert producer.is_alive()  # killed mid-run
        workers["a"].send_signal(signal.SIGKILL)
        workers["a"].wait(10)
        killed.set()
        wait_until(_held(holders, "b"), 30, "b to take a's partitions over")
        producer.join(60)
        wait_until(lambda: outstanding() == 0, 60, "every event acknowledged")
        workers["b"].send_signal(signal.SIGTERM)
        assert workers["b"].wait(30) == 0
    finally:
        killed.set()
        if producer.ident is not None:
            producer.join(60)
        for worker in workers.values():
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        for log in logs.values():
            log.close()
        loop.run_until_complete(store.close())
        loop.close()
    b_log = (tmp_path / "b.log").read_text()
    assert "gained [" in b_log, b_log[-2000:]
    assert len(ids) == len(events)
    server = ServerThread(make_settings(cluster), registry)
    try:
        check_served(server, view, log_of(events, ids, source), members)
    finally:
        server.stop()
    # The history both wrote: nothing lost or twice across the hand-over and the takeover.
    files = sorted((tmp_path / "offline" / view.name / "v1").glob("date=*/*.parquet"))
    check_history(pa.concat_tables(pq.read_table(f) for f in files), view, events, ids)


def mixed_keys(name: str) -> tuple[EventSource, list[FeatureView]]:
    """A source partitioned by member, with a member view and a page view: the page view hears
    from every partition, so workers sharing them may not compute it."""
    source = EventSource(name, keys={"member_id": String, "page": String}, partitions=4)
    page = Entity("page", join_keys={"page": String})
    views = [
        FeatureView(
            f"{name}_{entity.name}s",
            entity=entity,
            events=source,
            tile=timedelta(minutes=1),
            features=[Feature("views_1h", Int64, computed=Count(window=timedelta(hours=1)))],
        )
        for entity in (member, page)
    ]
    return source, views


def test_sharing_refuses_a_view_keyed_by_another_key(cluster: LocalCluster) -> None:
    """A page view over events partitioned by member hears from every partition: workers
    sharing the partitions would each count part of a page's events."""
    name = f"mixed_{uuid.uuid4().hex[:6]}"
    source, views = mixed_keys(name)
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(
        OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
    )
    try:
        shared = Registry.build([member, views[0]])
        StreamRunner(shared, source, FeatureEngine(shared, store), lease_s=2.0)  # member: fine
        mixed = Registry.build([member, views[1].entity, *views])
        with pytest.raises(ValueError, match="partitioned by 'member_id'"):
            StreamRunner(mixed, source, FeatureEngine(mixed, store), lease_s=2.0)
        StreamRunner(mixed, source, FeatureEngine(mixed, store))  # one worker: fine
    finally:
        loop.run_until_complete(store.close())
        loop.close()
