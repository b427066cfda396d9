"""`featurewell repair`: a row poisoned by a future event time (written raw, as the code before
write validation allowed) makes every later write of its entity skip as older; repair deletes it
(and resets the view's write marker), after which the next write lands. A sound row is never
touched (real Redis Cluster, real gRPC, the real command)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from featurewell.client import FeatureClient, Status
from featurewell.definitions import FeatureView, Registry, load_repo
from featurewell.devcluster import LocalCluster, call
from featurewell.store.codec import RowCodec
from featurewell.store.keys import META_SLOT, entity_tags, freshness_key, key_prefix, slot_of
from tests.tools import ServerThread, make_settings

DAY_US = 86_400 * 1_000_000
REPO = """
from featurewell.definitions import Entity, Feature, FeatureView, Float64, String

user = Entity("user", join_keys={"user_id": String})
sessions = FeatureView("NAME", entity=user, features=[Feature("minutes", Float64)])
"""


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repair") / "repo.py"
    path.write_text(REPO.replace("NAME", f"sess_{uuid.uuid4().hex[:8]}"))
    return path


@pytest.fixture(scope="module")
def registry(repo: Path) -> Registry:
    return load_repo(str(repo))


@pytest.fixture(scope="module")
def view(registry: Registry) -> FeatureView:
    (only,) = registry.views.values()
    return only


@pytest.fixture(scope="module")
def rclient(cluster: LocalCluster, registry: Registry) -> Iterator[FeatureClient]:
    running = ServerThread(make_settings(cluster, cache_entries=0), registry)
    try:
        with FeatureClient(running.address, timeout=5.0) as connected:
            yield connected
    finally:
        running.stop()


def poison(cluster: LocalCluster, view: FeatureView, user: str, at_us: int) -> None:
    """Store a row of `user` with event time `at_us` straight into Redis, and move the view's
    write marker there, as an unvalidated write would have."""
    (tag,) = entity_tags([[user]], 1)
    row = RowCodec(view).encode(np.array([at_us], np.int64), {"minutes": np.array([666.0])})
    key = key_prefix(view) + tag + b"}"
    assert call(cluster.owner(slot_of(tag)), "SET", key, row[0]) == b"OK"
    marker = freshness_key(view)
    call(cluster.owner(META_SLOT), "HSET", marker, "newest_event_us", at_us)


def write(client: FeatureClient, view: FeatureView, user: str, minutes: float) -> tuple[int, int]:
    done = client.write_features(
        view.name, {"user_id": [user]}, [now_us()], {"minutes": np.array([minutes])}
    )
    return done.written, done.skipped_older


def minutes(client: FeatureClient, view: FeatureView, users: list[str]) -> list[float]:
    result = client.get_features([f"{view.name}:minutes"], entities={"user_id": users})
    assert result.count(Status.NOT_FOUND) == 0
    return [float(v) for v in result.values(f"{view.name}:minutes")]


def repair(cluster: LocalCluster, repo: Path, view: FeatureView, *args: str) -> str:
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    command = [sys.executable, "-m", "featurewell.cli", "repair", "--repo", str(repo)]
    done = subprocess.run(
        [*command, "--redis", seeds, "--view", view.name, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_repair_of_one_entity_lets_the_next_write_land(
    cluster: LocalCluster, repo: Path, view: FeatureView, rclient: FeatureClient
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    poison(cluster, view, user, now_us() + DAY_US)
    assert write(rclient, view, user, 1.0) == (0, 1)  # shadowed: skipped as older

    dry = repair(cluster, repo, view, "--entity", f"user_id={user}", "--dry-run")

    assert f"would delete {view.ref} entity ('{user}',): stored event time" in dry
    assert "write marker: newest event time" in dry
    assert "would reset" in dry
    assert write(rclient, view, user, 2.0) == (0, 1)  # a dry run changes nothing

    done = repair(cluster, repo, view, "--entity", f"user_id={user}")

    assert f"deleted {view.ref} entity ('{user}',)" in done
    assert f"{view.ref}: 1 rows deleted" in done
    assert ", reset" in done
    assert write(rclient, view, user, 3.0) == (1, 0)
    assert minutes(rclient, view, [user]) == [3.0]
    again = repair(cluster, repo, view, "--entity", f"user_id={user}")
    assert f"{view.ref}: 0 rows deleted" in again  # the sound row is left alone


def test_repair_all_future_scans_the_view_and_keeps_sound_rows(
    cluster: LocalCluster, repo: Path, view: FeatureView, rclient: FeatureClient
) -> None:
    poisoned = [f"p{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    sound = f"s-{uuid.uuid4().hex[:8]}"
    assert write(rclient, view, sound, 5.0) == (1, 0)
    for n, user in enumerate(poisoned):
        poison(cluster, view, user, now_us() + (n + 1) * DAY_US)
    near = f"n-{uuid.uuid4().hex[:8]}"
    poison(cluster, view, near, now_us() + 60 * 1_000_000)  # a minute ahead: inside the skew

    done = repair(cluster, repo, view, "--all-future")

    for user in poisoned:
        assert f"deleted {view.ref} entity ('{user}',)" in done
    assert near not in done
    assert sound not in done
    assert f"{view.ref}: 3 rows deleted" in done
    assert [write(rclient, view, user, 7.0) for user in poisoned] == [(1, 0)] * 3
    assert minutes(rclient, view, [*poisoned, sound, near]) == [7.0, 7.0, 7.0, 5.0, 666.0]


def test_repair_checks_its_arguments(cluster: LocalCluster, repo: Path, view: FeatureView) -> None:
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    command = [sys.executable, "-m", "featurewell.cli", "repair", "--repo", str(repo)]
    done = subprocess.run(
        [*command, "--redis", seeds, "--view", view.name, "--entity", "item_id=3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "is keyed by ['user_id']: give --entity KEY=VALUE for each" in done.stderr
