"""`featurewell backfill`: the batch engine writes current values online, history to Parquet, and
seeds the streaming state so the live stream continues the windows."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurewell.client import FeatureClient
from featurewell.compute import batch
from featurewell.compute.backfill import backfill
from featurewell.compute.parity import parity
from featurewell.compute.program import compile_view, write_request
from featurewell.compute.redis_streams import append
from featurewell.compute.runner import StreamRunner
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster
from featurewell.engine.engine import FeatureEngine
from featurewell.offline import OfflineStore
from featurewell.settings import Settings
from featurewell.store.online import OnlineStore
from tests.test_stream import check_served, definitions, make_events, member
from tests.tools import ServerThread, make_settings


def test_backfill_online_history_and_the_stream_after_it(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    source, view = definitions(f"clicks_{uuid.uuid4().hex[:6]}")
    registry = Registry.build([member, view])
    members = [f"b{n}-{uuid.uuid4().hex[:4]}" for n in range(20)]
    events, _ = make_events(members, 1000, seed=11)
    log = pa.table({k: [e[k] for e in events] for k in events[0]})
    loop = asyncio.new_event_loop()
    settings = Settings.load(environ={}).with_changes(redis=tuple(cluster.seeds))
    group = f"g-{uuid.uuid4().hex[:6]}"
    try:
        store = loop.run_until_complete(
            OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
        )
        writer = FeatureEngine(registry, store, settings.serving)
        as_of = time.time_ns() // 1000
        done = loop.run_until_complete(
            backfill(
                registry,
                source,
                writer,
                log,
                as_of_us=as_of,
                history_dir=tmp_path,
                history_step=timedelta(hours=6),
                seed_group=group,
                max_rows_per_second=5000,
            )
        )
        (result,) = done
        assert result.entities == len(members)
        assert result.history_rows > 0
        server = ServerThread(make_settings(cluster), registry)
        try:
            check_served(server, view, log, members)  # online: the batch values as of the run
            # History: each snapshot holds the batch values as of its time.
            history = pq.read_table(OfflineStore(tmp_path).folder(view)).to_pylist()
            snapshots = sorted({row["event_time"] for row in history})
            assert len(snapshots) >= 4  # 30 hours of events, a snapshot every 6 hours
            assert all(row["created"] == row["event_time"] for row in history)
            program = compile_view(view)
            accepted = batch.accepted_events(log, 3600 * 1_000_000)
            for row in (r for r in history if r["event_time"] == snapshots[-2]):
                want = batch.compute(program, accepted, row["event_time"])[(row["member_id"],)]
                assert row["clicks_1d"] == want[0]
                assert row["amount_1d"] == pytest.approx(want[1])
                assert row["last_page"] == want[2]
            # Parity: the live rows agree with the batch engine on the log...
            results = loop.run_until_complete(parity(registry, source, writer, log, sample=10))
            assert sum(r.compared for r in results) == 10 * len(view.features)
            assert [r.mismatched for r in results] == [0] * len(view.features)
            # ...until a row is wrong: a writer outside the definitions double-counted one.
            key = (members[1],)
            wrong = batch.compute(program, accepted, as_of)[key]
            wrong[0] += 1
            loop.run_until_complete(writer.write(write_request(program, [(key, wrong)], as_of + 1)))
            results = loop.run_until_complete(parity(registry, source, writer, log, sample=20))
            by_feature = {r.feature: r for r in results}
            assert by_feature["clicks_1d"].mismatched == 1
            assert by_feature["clicks_1d"].examples[0][0] == key
            assert by_feature["amount_1d"].mismatched == 0
            # The live stream continues from the seeded state: one more click counts once more.
            before = clicks(server, view, members[0])
            runner = StreamRunner(registry, source, writer, group=group)
            loop.run_until_complete(runner.start())
            event = {
                "event_id": "live-1",
                "event_time": time.time_ns() // 1000,
                "member_id": members[0],
                "amount": 1.0,
                "page": "p9",
            }
            loop.run_until_complete(append(store.cluster, source, [event]))
            loop.run_until_complete(_drain(runner))
            assert clicks(server, view, members[0]) == before + 1
        finally:
            server.stop()
        loop.run_until_complete(store.close())
    finally:
        loop.close()


async def _drain(runner: StreamRunner) -> None:
    while await runner.step():
        pass
    await runner.flush()


def clicks(server: ServerThread, view: Any, member_id: str) -> int:
    feature = f"{view.name}:clicks_1d"
    with FeatureClient(server.address, timeout=5.0) as client:
        result = client.get_features([feature], entities={"member_id": [member_id]})
    return int(result.values(feature)[0])


def test_featurewell_backfill_command(cluster: LocalCluster, tmp_path: Path) -> None:
    from tests.test_stream import REPO

    name = f"visits_{uuid.uuid4().hex[:6]}"
    (tmp_path / "repo.py").write_text(REPO.replace("NAME", name))
    now = time.time_ns() // 1000
    pq.write_table(
        pa.table(
            {
                "event_id": [f"e{n}" for n in range(300)],
                "event_time": [now - n * 20_000_000 for n in range(300)],  # the last 100 minutes
                "member_id": [f"m{n % 7}" for n in range(300)],
            }
        ),
        tmp_path / "visits.parquet",
    )
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    done = _command(
        "backfill",
        tmp_path / "visits.parquet",
        name,
        seeds,
        ["--history-out", str(tmp_path / "history"), "--history-step-h", "0.5"],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{name}_stats@v1: 7 entities online" in done.stdout
    assert list((tmp_path / "history" / f"{name}_stats" / "v1").glob("date=*/*.parquet"))
    checked = _command("parity", tmp_path / "visits.parquet", name, seeds)
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    assert f"{name}_stats@v1:visits_1h" in checked.stdout
    assert "0.00%" in checked.stdout
    missing = _command("backfill", tmp_path / "nope.parquet", name, seeds)
    assert missing.returncode == 2
    assert "nope.parquet does not exist" in missing.stderr


def _command(
    verb: str, log: Path, source: str, seeds: str, extra: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`featurewell <verb>` of the test repo's source over `log`, against the cluster."""
    repo = str(log.parent / "repo.py")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "featurewell.cli",
            verb,
            "--repo",
            repo,
            "--source",
            source,
            "--log",
            str(log),
            "--redis",
            seeds,
            *(extra or []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
