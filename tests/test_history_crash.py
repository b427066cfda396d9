"""History that survives a crash: a real `featurewell stream` process, SIGKILLed twice mid-run and
restarted, leaves an offline store with every row it wrote and none twice, each row equal to the
batch engine's values for the same events as of the row's time."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurewell.compute import batch
from featurewell.compute.program import compile_view
from featurewell.compute.redis_streams import append
from featurewell.definitions import FeatureView, load_repo
from featurewell.devcluster import LocalCluster
from featurewell.offline.store import OfflineStore
from featurewell.store import streams
from featurewell.store.keys import stream_keys
from featurewell.store.online import OnlineStore
from featurewell.store.state import load_progress
from tests.test_stream import log_of
from tests.tools import wait_until

MINUTE_US = 60_000_000
REPO = """
from datetime import timedelta
from featurewell.definitions import (
    Count, Entity, EventSource, Feature, FeatureView, Float64, Int64, String, Sum,
)
member = Entity("member", join_keys={"member_id": String})
visits = EventSource("NAME", keys={"member_id": String}, fields={"amount": Float64}, partitions=2)
visit_stats = FeatureView("NAME_stats", entity=member, events=visits, tile=timedelta(minutes=1),
    features=[Feature("visits_1h", Int64, computed=Count(window=timedelta(hours=1))),
              Feature("amount_1h", Float64, computed=Sum("amount", window=timedelta(hours=1)))])
"""


def _events(name: str, count: int) -> list[dict[str, Any]]:
    """Events of the last 20 minutes (inside every window until the test ends), 2% sent twice."""
    rng = np.random.default_rng(18)
    now = time.time_ns() // 1000
    members = [f"m{n}-{name}" for n in range(80)]
    out: list[dict[str, Any]] = []
    for n, t in enumerate(np.sort(now - rng.integers(0, 20 * MINUTE_US, count)).tolist()):
        event = {
            "event_id": f"e{n}",
            "event_time": int(t),
            "member_id": members[int(rng.integers(0, len(members)))],
            "amount": float(rng.integers(1, 100)),
        }
        out.append(event)
        if rng.random() < 0.02:
            out.append(dict(event))
    return out


def _stream(repo: Path, name: str, seeds: str, offline: Path, log: Any) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "featurewell.cli", "stream", "--repo", str(repo)]
    command += ["--source", name, "--redis", seeds, "--metrics-port", "-1"]
    command += ["--offline-dir", str(offline), "--batch-size", "10", "--checkpoint-s", "0.2"]
    command += ["--refresh-s", "3600"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)


def _past(progress: Callable[[], int], target: int) -> Callable[[], bool]:
    return lambda: progress() >= target


def _history(offline: Path, view: FeatureView) -> pa.Table:
    files = sorted((offline / view.name / "v1").glob("date=*/*.parquet"))
    assert files, "no history written"
    return pa.concat_tables(pq.read_table(f) for f in files)


def test_sigkilled_stream_loses_and_duplicates_no_history_row(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    name = f"crash_{uuid.uuid4().hex[:6]}"
    repo, offline = tmp_path / "repo.py", tmp_path / "offline"
    repo.write_text(REPO.replace("NAME", name))
    view = load_repo(str(repo)).view(f"{name}_stats")
    source = view.events
    assert source is not None
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(
        OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
    )

    def progress() -> int:
        _, number = loop.run_until_complete(
            load_progress(store.cluster, source, "featurewell", "stream-0", 5.0)
        )
        return number

    def outstanding() -> int:  # entries not delivered yet, or delivered and not acknowledged
        total = 0
        for key in stream_keys(source):
            total += loop.run_until_complete(streams.lag(store.cluster, key, "featurewell", 5.0))
            total += loop.run_until_complete(
                streams.pending(store.cluster, key, "featurewell", 5.0)
            )
        return total

    # A pool of events: the producer sends 9,000 and goes on until both kills are done (up to
    # 30,000), so the stream is mid-run at each kill however slowly the workers started.
    events = _events(name, 30_000)
    ids: list[str] = []
    kills_done = threading.Event()

    async def produce() -> None:  # 2,000 events/s: the stream is mid-run whenever it is killed
        producer = await OnlineStore.connect(
            cluster.seeds, connect_timeout=2, connections_per_node=1
        )
        try:
            for start in range(0, len(events), 60):
                if start >= 9000 and kills_done.is_set():
                    break
                ids.extend(await append(producer.cluster, source, events[start : start + 60]))
                await asyncio.sleep(0.03)
        finally:
            await producer.close()

    producer = threading.Thread(target=lambda: asyncio.run(produce()))
    producer.start()
    try:
        killed_with = []
        for run in range(3):
            log = (tmp_path / f"stream-{run}.log").open("wb")
            process = _stream(repo, name, seeds, offline, log)
            try:
                if run < 2:  # killed once two more history batches are written
                    wait_until(_past(progress, progress() + 2), 60, "two history batches")
                    process.send_signal(signal.SIGKILL)
                    process.wait(10)
                    killed_with.append(outstanding())
                    if run == 1:
                        kills_done.set()
                else:
                    producer.join(60)
                    wait_until(lambda: outstanding() == 0, 60, "every event acknowledged")
                    process.send_signal(signal.SIGTERM)
                    assert process.wait(30) == 0, (tmp_path / f"stream-{run}.log").read_text()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
                log.close()
        assert all(left > 0 for left in killed_with), killed_with  # killed mid-run, both times
        assert len(ids) >= 9000
        sent = events[: len(ids)]
        history = _history(offline, view)
    finally:
        kills_done.set()
        producer.join(60)
        loop.run_until_complete(store.close())
        loop.close()

    check_history(history, view, sent, ids)


def check_history(
    history: pa.Table, view: FeatureView, events: list[dict[str, Any]], ids: list[str]
) -> None:
    """The history of a view with `visits_1h` (a count) and `amount_1h` (a sum) per member,
    every event inside the windows: nothing twice, nothing lost, each row exact."""
    source = view.events
    assert source is not None
    members = history.column("member_id").to_pylist()
    times = history.column("event_time").to_pylist()
    visits = history.column("visits_1h").to_pylist()
    amounts = history.column("amount_1h").to_pylist()
    # Nothing twice: one row per entity and time, and each row of an entity holds new events.
    assert len(set(zip(members, times, strict=True))) == len(members)
    rows: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for member, at, count in zip(members, times, visits, strict=True):
        rows[member].append((at, count))
    for member, member_rows in rows.items():
        counts = [count for _, count in sorted(member_rows)]
        assert all(a < b for a, b in itertools.pairwise(counts)), (member, counts)
    # Each row holds a prefix of its entity's events in delivery order (rows are written as
    # events arrive, so as of its time a row lacks the events still on their way).
    program = compile_view(view)
    accepted = batch.accepted_events(log_of(events, ids, source), 3600 * 1_000_000)
    prefix: dict[str, list[float]] = defaultdict(lambda: [0.0])
    counted: set[str] = set()
    for event_id, member, amount in zip(
        accepted.column("event_id").to_pylist(),
        accepted.column("member_id").to_pylist(),
        accepted.column("amount").to_pylist(),
        strict=True,
    ):
        if event_id not in counted:
            counted.add(event_id)
            prefix[member].append(prefix[member][-1] + amount)
    for member, count, amount in zip(members, visits, amounts, strict=True):
        assert amount == prefix[member][count], (member, count, amount)
    # Nothing lost: each member's newest row is the batch engine's value for all its events.
    newest = max(times)
    final = batch.compute(program, accepted, newest)
    assert set(rows) == {key[0] for key in final}
    for member, seen_rows in rows.items():
        _, count = max(seen_rows)
        assert count == final[(member,)][0], member
    for row, (member, at) in enumerate(zip(members, times, strict=True)):
        if at == max(t for t, _ in rows[member]):
            assert [visits[row], amounts[row]] == final[(member,)][:2], member


def test_a_history_batch_written_again_replaces_its_files(tmp_path: Path) -> None:
    """A batch written again (a restart re-deriving it after a crash between writing it and
    recording it) leaves one copy, in every day it touched, and the newest write order."""
    repo = tmp_path / "repo.py"
    repo.write_text(REPO.replace("NAME", "batches"))
    view = load_repo(str(repo)).view("batches_stats")
    store = OfflineStore(tmp_path / "offline")
    day = 86_400_000_000
    first = _rows([19_000 * day + 5, 19_001 * day + 5], [1, 2])
    again = _rows([19_001 * day + 7], [3])
    store.write_batch(view, first, "stream_w0_abc_0000000001")
    store.write_batch(view, _rows([19_001 * day + 9], [9]), "stream_w0_abc_0000000002")
    store.write_batch(view, again, "stream_w0_abc_0000000001")
    files = sorted((tmp_path / "offline" / "batches_stats" / "v1").glob("date=*/*.parquet"))
    names = [f.name.split("-", 1)[1] for f in files]
    assert sorted(names) == ["stream_w0_abc_0000000001.parquet", "stream_w0_abc_0000000002.parquet"]
    history = _history(tmp_path / "offline", view)
    assert sorted(history.column("visits_1h").to_pylist()) == [3, 9]
    # The rewrite is the newest write: its file name sorts last (offline/store.py write order).
    assert max(files, key=lambda f: f.name).name.endswith("_0000000001.parquet")


def _rows(times: list[int], visits: list[int]) -> pa.Table:
    return pa.table(
        {
            "member_id": [f"m{n}" for n in range(len(times))],
            "event_time": pa.array(times, pa.int64()),
            "created": pa.array(times, pa.int64()),
            "visits_1h": pa.array(visits, pa.int64()),
            "amount_1h": pa.array([1.0] * len(times)),
        }
    )
