"""Overload sheds calls with RESOURCE_EXHAUSTED; oversized messages are refused; a new feature
repo version swaps in atomically while calls are in flight, and a broken one changes nothing."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from featurewell.client import (
    ClientOptions,
    FeatureClient,
    FeatureClientError,
    ResourceExhausted,
    Status,
)
from featurewell.definitions import Registry, repo_fingerprint
from featurewell.devcluster import LocalCluster
from featurewell.store.keys import entity_tags, slot_of
from tests import defs
from tests.load import Load, median_ms
from tests.tools import (
    Ids,
    NodeSleep,
    ServerThread,
    make_settings,
    scrape,
    sleep_node,
    wait_until,
)


def test_calls_beyond_the_in_flight_limit_are_shed_at_once(
    cluster: LocalCluster, registry: Registry, ids: Ids
) -> None:
    server = ServerThread(
        make_settings(
            cluster, max_in_flight=2, store_timeout_ms=3000.0, cache_entries=0, metrics_port=0
        ),
        registry,
    )
    try:
        user = ids("busy")
        with FeatureClient(server.address, timeout=5) as client:
            defs.write_profiles(client, [user], ages=[7])
        port = cluster.owner(slot_of(entity_tags([[user]], 1)[0]))
        outcomes: list[tuple[float, str]] = []
        lock = threading.Lock()
        # Every caller connects first; the node goes to sleep once all have (the barrier's
        # action), and only then do they call: the 1.5 s sleep is spent on the calls alone,
        # not on starting threads and connections (0.6 s for all of it once let calls arrive
        # after the node woke, and be served).
        connected = threading.Barrier(8, action=lambda: sleepers.append(sleep_node(port, 1.5)))
        sleepers: list[NodeSleep] = []

        def call() -> None:
            # One attempt each: the client's retries of shed calls are test_client's subject.
            with FeatureClient(server.address, options=ClientOptions(5, read_attempts=1)) as own:
                grpc.channel_ready_future(own._channel).result(timeout=30)
                connected.wait(60)
                try:
                    own.get_features(["profile:age"], entities={"user_id": [user]})
                    outcome = "served"
                except ResourceExhausted as exc:
                    outcome = "shed" if "max_in_flight 2" in str(exc) else str(exc)
            with lock:
                outcomes.append((time.monotonic(), outcome))

        callers = [threading.Thread(target=call) for _ in range(8)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        for sleeper in sleepers:
            sleeper.join()
        assert len(sleepers) == 1  # every caller got through the barrier
        kinds = [kind for _, kind in sorted(outcomes)]
        assert kinds.count("served") == 2
        assert kinds.count("shed") == 6
        # The shed calls were answered while the two admitted ones still waited on Redis.
        assert kinds[:6] == ["shed"] * 6
        assert server.server.service.calls.shed == 6
        assert server.server.metrics_port is not None
        shed = scrape(server.server.metrics_port)[
            'featurewell_shed_calls_total{method="GetFeatures",reason="max_in_flight"}'
        ]
        assert shed == 6
        assert server.server.service.calls.in_flight == 0
    finally:
        server.stop()


def test_oversized_request_is_refused_with_resource_exhausted(
    cluster: LocalCluster, registry: Registry
) -> None:
    server = ServerThread(make_settings(cluster, max_message_mb=1), registry)
    try:
        with FeatureClient(server.address, timeout=5) as client:
            users = [f"user-{i:08d}-{'x' * 40}" for i in range(30_000)]  # ~1.6 MB of keys
            with pytest.raises(FeatureClientError) as refused:
                client.get_features(["profile:age"], entities={"user_id": users})
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            ok = client.get_features(["profile:age"], entities={"user_id": users[:10]})
            assert ok.rows == 10  # the server is fine afterwards
    finally:
        server.stop()


_REPO = """
from datetime import timedelta
from featurewell.definitions import Entity, Feature, FeatureView, Int64, String

user = Entity("user", join_keys={{"user_id": String}})
member = FeatureView("member", entity=user, max_age=timedelta(hours=1),
                     features=[Feature("age", Int64, default=-1)])
{extra}
"""
_EXTRA = """
level = FeatureView("level", entity=user, features=[Feature("rank", Int64, default={default})])
"""


def _write_repo(path: Path, extra: str) -> None:
    # Whole at once (a rename): the repo watcher polls every 50 ms, and a loaded machine can
    # let a poll fall between write_text's truncation and its write, reloading a partial file.
    staged = path.with_name(path.name + ".tmp")  # not *.py: the fingerprint ignores it
    staged.write_text(_REPO.format(extra=extra))
    os.replace(staged, path)


def test_reload_swaps_definitions_atomically_under_load(
    cluster: LocalCluster, tmp_path: Path, ids: Ids
) -> None:
    repo = tmp_path / "repo.py"
    _write_repo(repo, "")
    server = ServerThread(make_settings(cluster, repo=str(repo)), None)
    try:
        users = [ids(f"reload{i}") for i in range(20)]
        with FeatureClient(server.address, timeout=5) as client:
            client.write_features(
                "member",
                entities={"user_id": users},
                event_timestamps_us=[defs.now_us()] * 20,
                features={"age": np.arange(20)},
            )
            assert "level" not in {v.name for v in client.list_features().views}
            with Load(server.address, users, threads=2, feature="member:age") as load:
                load.wait_calls(30)  # steady before the reload
                _write_repo(repo, _EXTRA.format(default=-7))
                reload_started = time.monotonic()
                assert server.run(server.server.reload()) is True
                reloaded = time.monotonic()
                load.wait_calls(30, since=reloaded)  # served by the new definitions
                _write_repo(repo, "this is not python")
                broken = time.monotonic()
                assert server.run(server.server.reload()) is False
                load.wait_calls(30, since=broken)  # still served after the failed reload
            assert load.errors == []
            assert len(load.calls) > 20
            assert all(c.all_present and c.ages == list(range(20)) for c in load.calls)
            steady = load.between(0, reload_started)
            ended = {id(c): c.started + c.seconds for c in load.calls}
            swapping = [
                c for c in load.calls if c.started < reloaded and ended[id(c)] > reload_started
            ]
            print(
                f"\nreload took {(reloaded - reload_started) * 1000:.1f} ms; calls overlapping "
                f"it: {len(swapping)}, median {median_ms(swapping):.2f} ms, max "
                f"{max(c.seconds for c in swapping) * 1000:.2f} ms; before: median "
                f"{median_ms(steady):.2f} ms, max {max(c.seconds for c in steady) * 1000:.2f} ms"
            )
            # The new view serves; the broken version changed nothing.
            result = client.get_features(["level:rank"], entities={"user_id": users[:2]})
            assert result.values("level:rank").tolist() == [-7, -7]
            assert result.statuses("level:rank").tolist() == [Status.NOT_FOUND] * 2
        assert (server.server.reloads, server.server.reloads_failed) == (1, 1)
    finally:
        server.stop()


def test_watching_the_repo_reloads_when_its_files_change(
    cluster: LocalCluster, tmp_path: Path, ids: Ids
) -> None:
    repo = tmp_path / "repo.py"
    _write_repo(repo, _EXTRA.format(default=1))
    server = ServerThread(make_settings(cluster, repo=str(repo)), None)
    before = repo_fingerprint(str(repo))
    watcher = asyncio.run_coroutine_threadsafe(server.server.watch_repo(0.05), server.loop)
    # The loop runs callbacks in order: once this no-op has run, so has the watcher's first
    # step, which took its baseline fingerprint (a change made earlier would go unseen).
    server.run(asyncio.sleep(0))
    try:
        with FeatureClient(server.address, timeout=5) as client:
            user = ids("watched")
            client.write_features(
                "level",
                entities={"user_id": [user]},
                event_timestamps_us=[defs.now_us()],
                features={"rank": np.array([3])},
            )
            _write_repo(repo, _EXTRA.format(default=2))
            assert repo_fingerprint(str(repo)) != before  # same size: the mtime must tell
            wait_until(lambda: server.server.reloads > 0, 30, "the watcher to reload the repo")
            assert server.server.reloads == 1
            result = client.get_features(["level:rank"], entities={"user_id": [user, "nobody"]})
            assert result.values("level:rank").tolist() == [3, 2]  # stored row kept; new default
    finally:
        watcher.cancel()
        server.stop()
