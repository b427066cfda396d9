"""Calls answered alike (kept answers) are recorded in groups (telemetry/alike.py), and what a
server exports for them must be what it exports when every call is recorded on its own: two
real servers on the real cluster, one serving kept answers, one without a cache, asked the
same calls by the same two callers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from featurewell.client import ClientOptions, FeatureClient
from featurewell.devcluster import LocalCluster
from featurewell.engine.calls import FeatureResult, ServedView
from featurewell.serving import service
from featurewell.store import consumers as stored
from featurewell.store.codec import RowCodec
from featurewell.telemetry import alike, hub
from featurewell.telemetry.alike import AlikeCalls
from featurewell.telemetry.consumers import (
    CALLER_HEADER,
    Consumers,
    as_principal,
    caller_header,
)
from tests import defs
from tests.tools import Ids, ServerThread, make_settings, wait_until

FEATURES = ["profile:age", "profile:taste"]
VIEW = "profile@v2"
CALLS = {"a": 7, "b": 5}


@pytest.fixture(scope="module")
def servers(cluster: LocalCluster) -> Iterator[tuple[ServerThread, ServerThread]]:
    registry = defs.registry()
    kept = ServerThread(make_settings(cluster, cache_ttl_s=60.0, cache_admit_after=1), registry)
    fetched = ServerThread(make_settings(cluster, cache_entries=0), registry)
    yield kept, fetched
    kept.stop()
    fetched.stop()


def _exported(server: ServerThread) -> dict[str, float]:
    """The read series both servers export alike (not the cache's), from their registry."""
    registry = server.server.telemetry.metrics.registry
    names = {
        "ok": ("featurewell_requests_total", {"method": "GetFeatures", "code": "OK"}),
        "timed": (
            "featurewell_request_duration_seconds_count",
            {"method": "GetFeatures", "shape": "single"},
        ),
        "present": ("featurewell_served_rows_total", {"view": VIEW, "status": "present"}),
        "aged": ("featurewell_served_value_age_seconds_count", {"view": VIEW}),
        "age_sum": ("featurewell_served_value_age_seconds_sum", {"view": VIEW}),
        "one_row": ("featurewell_request_rows_count", {"method": "GetFeatures"}),
    }
    return {key: registry.get_sample_value(n, labels) or 0.0 for key, (n, labels) in names.items()}


def test_calls_answered_alike_are_exported_as_calls_recorded_one_by_one(
    servers: tuple[ServerThread, ServerThread], ids: Ids, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, fetched = servers
    user = ids("alike")
    with FeatureClient(kept.address) as client:
        defs.write_profiles(client, [user], ages=[44])
    written_s = time.time()
    callers = {s: {c: ids(f"model-{c}-{n}") for c in CALLS} for n, s in enumerate(servers)}
    before = {server: _exported(server) for server in servers}
    served_before = kept.server.service.single.served
    grouped: list[object] = []
    add = AlikeCalls.add

    def counted(self: AlikeCalls, *args: Any) -> bool:
        grouped.append(args[0])
        return add(self, *args)

    monkeypatch.setattr(AlikeCalls, "add", counted)
    for server in servers:
        for caller, count in CALLS.items():
            options = ClientOptions(caller=callers[server][caller])
            with FeatureClient(server.address, options=options) as c:
                for _ in range(count):
                    c.get_features(FEATURES, {"user_id": [user]})
    asked_s = time.time()
    total = sum(CALLS.values())

    def delta(server: ServerThread) -> dict[str, float]:
        now = _exported(server)
        return {key: now[key] - before[server][key] for key in now}

    wait_until(lambda: all(delta(s)["ok"] == total for s in servers), 30, "the calls recorded")
    # The first call or two are fetched and learned; the rest are kept answers, recorded alike.
    assert kept.server.service.single.served >= served_before + total - 3
    assert len(grouped) >= total - 3  # and counted in groups, not one by one
    got = {server: delta(server) for server in servers}
    for server in servers:
        assert got[server]["timed"] == got[server]["present"] == got[server]["aged"] == total
        assert got[server]["one_row"] == total
        # Every value age lies between the write (the row's event time) and the last call.
        mean_age = got[server]["age_sum"] / total
        assert 0.0 <= mean_age <= asked_s - written_s + 1.0
    assert {k: v for k, v in got[kept].items() if k != "age_sum"} == {
        k: v for k, v in got[fetched].items() if k != "age_sum"
    }
    # Who read what (lineage): each caller's reads, counted per call on both servers.
    for server in servers:
        server.run(server.server.telemetry.consumers.flush(server.server.store, timeout=5.0))
    recorded = kept.run(stored.read(kept.server.store.cluster, timeout=5.0))
    for server in servers:
        for caller, count in CALLS.items():
            assert recorded[(callers[server][caller], VIEW)][0] == count


def _result() -> FeatureResult:
    return FeatureResult(1, [])


def test_groups_are_one_per_answer_caller_and_principal_with_their_mean_time() -> None:
    alike = AlikeCalls()
    first, second = _result(), _result()
    alike.add(first, "ranker/1", None, 1_000)
    alike.add(first, "ranker/1", None, 3_000)
    alike.add(first, b"ranker/1", None, 5_000)  # a header's bytes are a caller of their own
    alike.add(first, "ranker/1", "spiffe://prod/ranker", 7_000)
    alike.add(second, "ranker/1", None, 9_000)
    alike.add(first, None, None, 11_000)
    assert len(alike) == 5
    groups = alike.drain()
    assert [(g.result is first, g.caller, g.principal, g.calls, g.at_us) for g in groups] == [
        (True, "ranker/1", None, 2, 2_000),
        (True, b"ranker/1", None, 1, 5_000),
        (True, "ranker/1", "spiffe://prod/ranker", 1, 7_000),
        (False, "ranker/1", None, 1, 9_000),
        (True, None, None, 1, 11_000),
    ]
    assert len(alike) == 0
    assert alike.drain() == []


def test_a_stopping_server_records_its_last_groups_callers(
    servers: tuple[ServerThread, ServerThread],
    cluster: LocalCluster,
    ids: Ids,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Groups wait for the next flush; a server stopping before it must still count their
    # callers' reads (lineage), as it did when every call was recorded 2 ms after its answer.
    monkeypatch.setattr(service, "FLUSH_EVERY_S", 30.0)
    monkeypatch.setattr(hub, "SYNC_INTERVAL_S", 3600.0)  # nor the telemetry loop's flush
    settings = make_settings(cluster, cache_ttl_s=60.0, cache_admit_after=1)
    server = ServerThread(settings.with_changes(consumers_flush_s=3600.0), defs.registry())
    user, caller = ids("stopping"), ids("model-stopping")
    try:
        with FeatureClient(server.address, options=ClientOptions(caller=caller)) as client:
            defs.write_profiles(client, [user], ages=[45])
            for _ in range(6):
                client.get_features(FEATURES, {"user_id": [user]})
        assert server.server.service.single.served >= 3  # kept answers, in a group
    finally:
        server.stop()
    reader = servers[0]  # another server, to read what Redis holds
    recorded = reader.run(stored.read(reader.server.store.cluster, timeout=5.0))
    assert recorded[(caller, VIEW)][0] == 6


def test_a_failing_group_record_never_fails_the_answered_call(
    servers: tuple[ServerThread, ServerThread], ids: Ids, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, _ = servers
    user = ids("unrecorded")

    failed: list[object] = []

    def broken(*args: object) -> None:
        failed.append(args)
        raise RuntimeError("a telemetry bug")

    monkeypatch.setattr(kept.server.telemetry, "read_alike", broken)
    served = kept.server.service.single.served
    with FeatureClient(kept.address) as client:
        defs.write_profiles(client, [user], ages=[46])
        ages = [client.get_features(FEATURES, {"user_id": [user]}) for _ in range(5)]
    assert kept.server.service.single.served >= served + 2
    assert len(failed) >= 2  # the kept answers' calls took the broken path, and were answered
    assert [result["profile:age"].values.tolist() for result in ages] == [[46]] * 5


def test_groups_are_recorded_every_batch_not_only_at_the_flush(
    cluster: LocalCluster, ids: Ids, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many hot entities make nearly a group per call: every BATCH of them is recorded a moment
    # after the answer that made it, so no flush stops the loop for all of them at once.
    monkeypatch.setattr(service, "FLUSH_EVERY_S", 30.0)
    monkeypatch.setattr(hub, "SYNC_INTERVAL_S", 3600.0)
    settings = make_settings(cluster, cache_ttl_s=60.0, cache_admit_after=1)
    server = ServerThread(settings.with_changes(consumers_flush_s=3600.0), defs.registry())
    users = [ids(f"hot-{n}") for n in range(alike.BATCH + 8)]
    caller = ids("model-batch")
    telemetry = server.server.telemetry
    try:
        with FeatureClient(server.address, options=ClientOptions(caller=caller)) as client:
            defs.write_profiles(client, users, ages=[30] * len(users))
            for user in users:
                for _ in range(4):  # fetched, learned, then kept answers
                    client.get_features(FEATURES, {"user_id": [user]})
        wait_until(lambda: len(telemetry.alike) < alike.BATCH, 10, "a batch recorded")
        counted = server.run(_pending(telemetry.consumers))
        assert counted.get((caller, VIEW), 0) >= 4 * alike.BATCH
    finally:
        server.stop()


async def _pending(consumers: Consumers) -> dict[tuple[str, str], int]:
    return dict(consumers._calls)  # on the server's loop, which counts them


def test_batches_are_called_once_per_batch_of_new_groups() -> None:
    table = AlikeCalls()
    results = [_result() for _ in range(alike.BATCH + 1)]
    due = [table.add(r, None, None, 0) for r in results[: alike.BATCH - 1]]
    assert not any(due)
    assert table.add(results[0], None, None, 0) is False  # an old group: no new batch
    assert table.add(results[alike.BATCH - 1], None, None, 0) is True  # the BATCH-th group
    assert table.add(results[alike.BATCH], None, None, 0) is False  # past it: already due
    assert len(table.drain()) == alike.BATCH + 1


@pytest.mark.parametrize(
    ("metadata", "principal"),
    [
        ([], None),
        ([], "spiffe://prod/ranker"),
        ([(CALLER_HEADER, "ranker/1")], None),
        ([(CALLER_HEADER, "ranker/1")], "spiffe://prod/ranker"),
        ([(CALLER_HEADER, ""), (CALLER_HEADER, "ranker/2")], None),
        ([(CALLER_HEADER, ""), (CALLER_HEADER, "ranker/2")], "spiffe://prod/ranker"),
        ([("user-agent", "x"), (CALLER_HEADER, b"ranker/3")], "spiffe://prod/ranker"),
        ([(CALLER_HEADER, "r" * 190)], "spiffe://prod/ranker"),  # too long beside it
        ([(CALLER_HEADER, "r" * 5000)], None),
        ([(CALLER_HEADER, "r" * 5000)], "spiffe://prod/ranker"),
        ([(CALLER_HEADER, "a|b")], None),
    ],
)
def test_a_group_counts_its_caller_as_each_call_would_be(
    metadata: list[tuple[str, str | bytes]], principal: str | None
) -> None:
    decoded = RowCodec(defs.pair).decode([None])
    result = FeatureResult(1, [], served=[ServedView(defs.pair, decoded, np.ones(1, np.uint8))])
    one_by_one, grouped = Consumers(), Consumers()
    for _ in range(3):
        one_by_one.observe(as_principal(metadata, principal), result)
    header = caller_header(metadata, principal)
    assert header is None or len(header) <= 200  # kept small while it waits
    kept: list[tuple[str, str | bytes]] = [] if header is None else [(CALLER_HEADER, header)]
    grouped.observe(as_principal(kept, principal), result, calls=3)
    assert grouped._calls == one_by_one._calls
