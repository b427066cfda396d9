"""The served-feature log against a real server and cluster: sampled GetFeatures answers land in
the offline store's `_served` folder with the values, statuses, event times, versions and
transform outputs the caller got, under the request id the caller got in trailing metadata;
rates hold; a full queue drops and counts without blocking; a failing volume loses nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurewell.client import AsyncFeatureClient, ClientOptions, FeatureClient
from featurewell.devcluster import LocalCluster
from featurewell.errors import ConfigError
from featurewell.offline import served
from featurewell.settings_groups import rate_list
from featurewell.telemetry.served_log import Sampler, ServedLog
from featurewell.values import Status
from tests import defs
from tests.tools import Ids, ServerThread, make_settings, wait_until

PROFILE = ["profile:age", "profile:score", "profile:country", "profile:taste", "profile:recent"]
RANKING = [*PROFILE, "item_stats:popularity", "affinity:affinity"]


@pytest.fixture
def start(cluster: LocalCluster, tmp_path: Path) -> Iterator[Any]:
    running: list[ServerThread] = []

    def started(**changes: Any) -> ServerThread:
        settings = make_settings(cluster, offline_dir=str(tmp_path), **changes)
        running.append(ServerThread(settings, defs.registry()))
        return running[-1]

    yield started
    for server in running:
        server.stop()


def _items(n: int) -> list[int]:
    """Item ids no other test writes (the cluster is shared)."""
    base = int.from_bytes(os.urandom(4)) * 1000 + 10**12
    return [base + i for i in range(n)]


def _log(server: ServerThread) -> ServedLog:
    log = server.server.telemetry.served_log
    assert log is not None
    return log


def _client(server: ServerThread, caller: str = "ranker/1") -> FeatureClient:
    return FeatureClient(server.address, options=ClientOptions(caller=caller, timeout=5.0))


def _metric(server: ServerThread, name: str, **labels: str) -> float:
    value = server.server.telemetry.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_logged_answer_is_recorded_under_the_id_the_caller_got(
    start: Any, tmp_path: Path, ids: Ids
) -> None:
    server = start(served_log_rate=1.0, served_log_flush_s=0.1)
    client = _client(server)
    users = [ids("u1"), ids("u2")]
    written_at = defs.now_us() - 5_000_000
    defs.write_profiles(client, users, ages=[31, 47], at_us=written_at)
    items = _items(5)
    defs.write_items(client, items[:4], at_us=written_at)  # the last item is never written

    result = client.get_features(
        RANKING, entities={"user_id": [users[1]], "item_id": items}, include_event_timestamps=True
    )
    assert len(result.request_id) == 32
    assert int(result.request_id, 16) >= 0
    assert _log(server).flush()

    registry = defs.registry()
    profile = served.read(served.view_folder(tmp_path, registry.view("profile")))
    mine = profile.filter(np.asarray(profile.column("request_id").to_pylist()) == result.request_id)
    assert mine.num_rows == 1  # one user row for the whole ranking call
    record = mine.to_pylist()[0]
    assert record["user_id"] == users[1]
    assert record["age"] == 47
    assert record["country"] == "c47"
    assert record["recent"] == [2, 3]
    assert record["taste"] == [1.0, 0.0, 0.0, 0.0]
    assert record["event_time"] == written_at
    assert record["version"] == 2
    assert record["status"] == Status.PRESENT
    assert record["caller"] == "ranker/1"

    stats = served.read(served.view_folder(tmp_path, registry.view("item_stats")))
    rows = stats.filter(np.asarray(stats.column("request_id").to_pylist()) == result.request_id)
    assert rows.column("item_id").to_pylist() == items
    assert rows.column("row").to_pylist() == [0, 1, 2, 3, 4]
    statuses = rows.column("status").to_pylist()
    assert statuses == [Status.PRESENT] * 4 + [Status.NOT_FOUND]
    served_popularity = result.columns["item_stats:popularity"].values
    assert np.allclose(rows.column("popularity").to_numpy(), served_popularity)
    assert rows.column("event_time").to_pylist()[:4] == [written_at] * 4

    affinity = served.read(served.transform_folder(tmp_path, "affinity"))
    outputs = affinity.filter(
        np.asarray(affinity.column("request_id").to_pylist()) == result.request_id
    )
    assert np.allclose(
        outputs.column("affinity").to_numpy(), result.columns["affinity:affinity"].values
    )
    assert set(outputs.column("version").to_pylist()) == {0}


def test_rates_hold_per_view_and_caller(start: Any, tmp_path: Path, ids: Ids) -> None:
    server = start(
        served_log_rate=0.2,
        served_log_views="item_stats=0",
        served_log_callers="everything=1,nothing=0",
        served_log_flush_s=0.1,
    )
    user = ids("u")
    calls = 400
    sampled = [
        _client(server, "sampled")
        .get_features(
            ["profile:age", "item_stats:popularity"], entities={"user_id": [user], "item_id": [1]}
        )
        .request_id
        for _ in range(calls)
    ]
    everything = _client(server, "everything").get_features(
        ["profile:age", "item_stats:popularity"], entities={"user_id": [user], "item_id": [1]}
    )
    nothing = [
        _client(server, "nothing").get_features(["profile:age"], entities={"user_id": [user]})
        for _ in range(50)
    ]
    assert _log(server).flush()
    logged = [request_id for request_id in sampled if request_id]
    assert 0.12 * calls < len(logged) < 0.28 * calls, len(logged)
    assert all(int(request_id[:8], 16) / 2**32 < 0.2 for request_id in logged)
    assert all(result.request_id == "" for result in nothing)

    registry = defs.registry()
    profile = served.read(served.view_folder(tmp_path, registry.view("profile")))
    assert set(profile.column("request_id").to_pylist()) == {*logged, everything.request_id}
    stats = served.read(served.view_folder(tmp_path, registry.view("item_stats")))
    # item_stats is listed at 0: only the caller whose own rate replaces it logs it.
    assert stats.column("request_id").to_pylist() == [everything.request_id]


def test_a_logged_calls_id_starts_with_its_draw_and_draws_are_uniform() -> None:
    fractions = [Sampler.fraction() for _ in range(20_000)]
    assert all(0.0 <= f < 1.0 for f in fractions)
    assert 0.23 < sum(f < 0.25 for f in fractions) / len(fractions) < 0.27
    assert 0.73 < sum(f < 0.75 for f in fractions) / len(fractions) < 0.77
    ids = [Sampler.request_id(f) for f in fractions[:2000]]
    for fraction, request_id in zip(fractions, ids, strict=False):
        assert len(request_id) == 32
        assert set(request_id) <= set("0123456789abcdef")
        assert int(request_id[:8], 16) / 2**32 == fraction  # what a reader recomputes
    assert len(set(ids)) == len(ids)
    # The extremes of a draw keep their 8 digits.
    assert Sampler.request_id(0.0)[:8] == "00000000"
    assert Sampler.request_id((2**32 - 1) / 2**32)[:8] == "ffffffff"


def test_a_full_queue_drops_and_counts_without_blocking(start: Any, ids: Ids) -> None:
    server = start(served_log_rate=1.0, served_log_queue_rows=100, served_log_flush_s=3600)
    client = _client(server)
    items = _items(60)
    started = time.perf_counter()
    for _ in range(20):
        result = client.get_features(
            ["item_stats:popularity"], entities={"item_id": items}, timeout=1.0
        )
        assert result.request_id  # still answered and sampled
    assert time.perf_counter() - started < 10
    # 60 rows a call, 100 rows of room and no flush for an hour: the first call fits.
    wait_until(
        lambda: (
            _metric(server, "featurewell_served_log_dropped_total", reason="queue_full") == 19 * 60
        ),
        30,
        "the dropped rows counted",
    )
    assert _log(server).queued_rows == 60


def test_a_failing_volume_loses_nothing_and_duplicates_drop_on_read(
    start: Any, tmp_path: Path, ids: Ids
) -> None:
    blocker = tmp_path / served.SERVED
    blocker.write_text("not a folder: every write fails")
    server = start(served_log_rate=1.0, served_log_flush_s=0.05)
    client = _client(server)
    users = [ids(f"u{n}") for n in range(3)]
    got = [
        client.get_features(["profile:age"], entities={"user_id": users}).request_id
        for _ in range(10)
    ]
    wait_until(
        lambda: _metric(server, "featurewell_served_log_write_failures_total") >= 1,
        30,
        "the writer failing",
    )
    blocker.unlink()
    assert _log(server).flush()
    folder = served.view_folder(tmp_path, defs.registry().view("profile"))
    records = served.read(folder)
    assert sorted(set(records.column("request_id").to_pylist())) == sorted(got)
    assert records.num_rows == 30

    # At least once: a file written twice (a retry after a lost acknowledgement) reads once.
    first = sorted(folder.glob("date=*/*.parquet"))[0]
    shutil.copy(first, first.with_name("9" * 16 + "-copy.parquet"))
    assert served.read(folder).num_rows == 30
    assert _metric(server, "featurewell_served_log_dropped_total", reason="queue_full") == 0


def test_logging_needs_an_offline_store(cluster: LocalCluster) -> None:
    with pytest.raises(ConfigError, match="offline_dir"):
        ServerThread(make_settings(cluster, served_log_rate=0.01), defs.registry())
    with pytest.raises(ConfigError, match="served_log_callers"):
        rate_list("ranker=2", "served_log_callers")


def test_the_async_client_gets_the_request_id_too(start: Any, tmp_path: Path, ids: Ids) -> None:
    server = start(served_log_rate=1.0, served_log_flush_s=0.1)

    async def call() -> str:
        async with AsyncFeatureClient(server.address) as client:
            result = await client.get_features(["profile:age"], entities={"user_id": [ids("u")]})
            return result.request_id

    request_id = asyncio.run(call())
    assert len(request_id) == 32
    assert _log(server).flush()
    records = served.read(served.view_folder(tmp_path, defs.registry().view("profile")))
    assert records.column("request_id").to_pylist() == [request_id]
    assert records.column("status").to_pylist() == [Status.NOT_FOUND]
    assert records.column("caller").to_pylist() == [""]  # no x-featurewell-model


def test_an_id_means_rows_were_logged(start: Any, tmp_path: Path, ids: Ids) -> None:
    server = start(served_log_views="item_stats=1,birth=1", served_log_flush_s=0.1)
    client = _client(server)
    user, item = ids("u"), _items(1)
    unlogged = client.get_features(["profile:age"], entities={"user_id": [user]})
    assert unlogged.request_id == ""  # item_stats is the only view logged: not read here
    logged = client.get_features(["item_stats:popularity"], entities={"item_id": item})
    transform = client.get_features(
        ["birth:adult"], entities={"user_id": [user]}, context={"year": [2026]}
    )
    assert len(logged.request_id) == len(transform.request_id) == 32
    assert _log(server).flush()
    registry = defs.registry()
    stats = served.read(served.view_folder(tmp_path, registry.view("item_stats")))
    assert stats.column("request_id").to_pylist() == [logged.request_id]
    adult = served.read(served.transform_folder(tmp_path, "birth"))
    assert adult.column("request_id").to_pylist() == [transform.request_id]
    assert not served.view_folder(tmp_path, registry.view("profile")).exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
@pytest.mark.parametrize(("nice", "added"), [(None, 19), (5, 5), (0, 0)])
def test_the_writer_thread_alone_runs_at_a_lower_priority(
    start: Any, ids: Ids, nice: int | None, added: int
) -> None:
    """Its batches share the serving loop's core: the writer yields it (served_log_nice, 19 by
    default), and no other thread of the server is touched."""
    before = os.getpriority(os.PRIO_PROCESS, 0)  # this thread's (Linux: PRIO_PROCESS 0)
    server = start(
        served_log_rate=1.0,
        served_log_flush_s=0.1,
        **({} if nice is None else {"served_log_nice": nice}),
    )
    writer = _log(server)._thread.native_id
    assert writer is not None
    expected = min(before + added, 19)
    wait_until(
        lambda: os.getpriority(os.PRIO_PROCESS, writer) == expected,
        5,
        f"the writer at niceness {expected}",
    )
    loop_thread = server._thread.native_id
    assert loop_thread is not None
    assert os.getpriority(os.PRIO_PROCESS, loop_thread) == before
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
    # It still writes: a logged call's rows land (at a lower priority, not never).
    result = _client(server).get_features(PROFILE, entities={"user_id": [ids("u")]})
    assert result.request_id
    assert _log(server).flush()
    assert _metric(server, "featurewell_served_log_rows_total", kind="served") == 1
