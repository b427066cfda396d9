"""Promote and rollback: two real servers under load switch a view's default version live, with
no failed call; calls pinned to a version never move."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from featurewell.client import ClientOptions, FeatureClient
from featurewell.definitions import load_repo
from featurewell.devcluster import LocalCluster
from tests.tools import ServerThread, make_settings, wait_until

REPO = """
from featurewell.definitions import Entity, Feature, FeatureView, Float64, String
shop = Entity("shop", join_keys={"shop_id": String})
v1 = FeatureView("NAME", entity=shop, version=1, features=[Feature("x", Float64)])
v2 = FeatureView("NAME", entity=shop, version=2,
                 features=[Feature("x", Float64), Feature("y", Float64)])
"""


def featurewell(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurewell.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_promote_and_rollback_live_under_load(cluster: LocalCluster, tmp_path: Path) -> None:
    name = f"ver_{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo.py"
    repo.write_text(REPO.replace("NAME", name))
    registry = load_repo(str(repo))
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    settings = make_settings(cluster, versions_poll_s=0.2)
    servers = [ServerThread(settings, registry), ServerThread(settings, registry)]
    stop = threading.Event()
    seen: dict[str, list[float]] = {}
    failures: list[str] = []

    def caller(label: str, address: str, ref: str) -> None:
        values = seen.setdefault(label, [])
        with FeatureClient(address, options=ClientOptions(read_attempts=1)) as client:
            while not stop.is_set():
                try:
                    got = client.get_features([ref], entities={"shop_id": ["s1"]})
                    values.append(float(got[ref].values[0]))
                except Exception as exc:  # any failed call fails the test
                    failures.append(f"{label}: {exc!r}")

    try:
        with FeatureClient(servers[0].address) as client:
            for version, x in ((1, 1.0), (2, 2.0)):
                features = {"x": [x]}
                if version == 2:
                    features["y"] = [0.0]
                client.write_features(
                    f"{name}@v{version}", {"shop_id": ["s1"]}, [time.time_ns() // 1000], features
                )
        threads = [
            threading.Thread(target=caller, args=(f"default-{n}", s.address, f"{name}:x"))
            for n, s in enumerate(servers)
        ] + [threading.Thread(target=caller, args=("pinned", servers[1].address, f"{name}@v2:x"))]
        for thread in threads:
            thread.start()
        labels = ["default-0", "default-1", "pinned"]

        def answered(count: int, since: dict[str, int] | None = None) -> None:
            """Until each caller has `count` more answers than at `since` (its value counts)."""
            start = since or dict.fromkeys(labels, 0)
            wait_until(
                lambda: all(len(seen.get(x, [])) >= start[x] + count for x in labels),
                30,
                f"{count} answers for every caller",
            )

        answered(20)  # every caller has seen v2 before the promote

        def switch(*command: str, expect: float) -> None:
            done = featurewell(*command, "--repo", str(repo), "--redis", seeds, "--view", name)
            assert done.returncode == 0, done.stderr
            # Each server follows within its poll (0.2 s): then its calls all answer `expect`.
            wait_until(
                lambda: all(seen[f"default-{n}"][-10:] == [expect] * 10 for n in range(2)),
                30,
                f"both servers to serve {expect}",
            )

        switch("promote", "--version", "1", expect=1.0)
        listed = featurewell("versions", "--repo", str(repo), "--redis", seeds)
        assert f"{name}: versions [1, 2], default v1 (promoted)" in listed.stdout
        assert "promote v2 -> v1" in listed.stdout
        switch("rollback", expect=2.0)
        answered(20, {x: len(seen[x]) for x in labels})  # and they stay there
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        for server in servers:
            server.stop()
    assert failures == []
    for n in range(2):
        values = seen[f"default-{n}"]
        assert len(values) > 50
        # 2.0 until the promote, then 1.0, then 2.0 again: never anything else, never back.
        changes = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
        assert changes == [2.0, 1.0, 2.0], changes
    assert set(seen["pinned"]) == {2.0}  # pinned to v2 through it all


def test_promote_refuses_what_cannot_be_served(cluster: LocalCluster, tmp_path: Path) -> None:
    name = f"ver_{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo.py"
    repo.write_text(REPO.replace("NAME", name))
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    base = ["--repo", str(repo), "--redis", seeds]
    missing = featurewell("promote", *base, "--view", name, "--version", "7")
    assert missing.returncode == 2
    assert f"feature view {name!r} has no version 7; it has [1, 2]" in missing.stderr
    unknown = featurewell("promote", *base, "--view", "nope", "--version", "1")
    assert unknown.returncode == 2
    assert "no feature view 'nope'" in unknown.stderr
    never = featurewell("rollback", *base, "--view", name)
    assert never.returncode == 2
    assert "was never promoted: nothing to roll back" in never.stderr


LINEAGE_REPO = """
from datetime import timedelta
from featurewell.definitions import (Count, Entity, EventSource, Feature, FeatureView, Float64,
    Int64, String, on_demand)
shop = Entity("shop", join_keys={"shop_id": String})
orders = EventSource("NAME_orders", keys={"shop_id": String}, fields={"total": Float64},
                     parquet="orders.parquet")
stats = FeatureView("NAME", entity=shop, events=orders, features=[
    Feature("orders_1d", Int64, computed=Count(window=timedelta(days=WINDOW),
                                                where=lambda e: e["total"] > 10))])
pushed = FeatureView("NAME_pushed", entity=shop, features=[Feature("open", Float64)])

@on_demand(inputs={"n": "NAME:orders_1d"}, outputs=[Feature("busy", Float64)], name="NAME_busy")
def busy(x):
    return {"busy": x["n"] > 3}
"""


def test_lineage_names_sources_definitions_and_callers(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    import json

    name = f"lin_{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo.py"
    repo.write_text(LINEAGE_REPO.replace("NAME", name).replace("WINDOW", "1"))
    registry = load_repo(str(repo))
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    server = ServerThread(make_settings(cluster, consumers_flush_s=0.2), registry)
    caller = f"ranker/{uuid.uuid4().hex[:4]}"
    try:
        named = FeatureClient(server.address, options=ClientOptions(caller=caller))
        unnamed = FeatureClient(server.address)
        for _ in range(7):
            named.get_features([f"{name}:*", f"{name}_pushed:open"], entities={"shop_id": ["s"]})
        for _ in range(3):
            unnamed.get_features([f"{name}_busy:busy"], entities={"shop_id": ["s"]})
        named.close()
        unnamed.close()
    finally:
        server.stop()  # flushes the last counts
    done = featurewell("lineage", "--repo", str(repo), "--redis", seeds, "--json")
    assert done.returncode == 0, done.stderr
    views = {item["view"]: item for item in json.loads(done.stdout)}
    stats, pushed = views[f"{name}@v1"], views[f"{name}_pushed@v1"]
    assert stats["source"].startswith(f"computed from event source '{name}_orders'")
    assert "log orders.parquet" in stats["source"]
    assert pushed["source"] == "pushed with WriteFeatures"
    assert stats["transforms"] == [f"{name}_busy"]
    assert "Count(window 1d, where" in stats["features"][0]
    calls = {c["caller"]: c["calls"] for c in stats["consumers"]}
    assert calls[caller] == 7
    assert calls["(unnamed)"] == 3  # the transform read the view for unnamed callers
    assert {c["caller"]: c["calls"] for c in pushed["consumers"]} == {caller: 7}
    text = featurewell("lineage", "--repo", str(repo), "--redis", seeds).stdout
    assert f"read by {caller}: 7 calls" in text
    # The fingerprint follows the definition: another window, another definition.
    before = stats["definition"]
    repo.write_text(LINEAGE_REPO.replace("NAME", name).replace("WINDOW", "2"))
    again = json.loads(
        featurewell("lineage", "--repo", str(repo), "--redis", seeds, "--json").stdout
    )
    changed = {item["view"]: item["definition"] for item in again}
    assert changed[f"{name}@v1"] != before
    assert changed[f"{name}_pushed@v1"] == pushed["definition"]


VALIDATE_REPO = """
from featurewell.definitions import Embedding, Entity, Feature, FeatureView, Float64, Int64, String
shop = Entity("shop", join_keys={"shop_id": String, "region": Int64})
v1 = FeatureView("NAME", entity=shop, version=1, features=[
    Feature("score", Float64), Feature("tier", String), Feature("taste", Embedding(2)),
    Feature("legacy", Float64)])
v2 = FeatureView("NAME", entity=shop, version=2, features=[
    Feature("score", Float64), Feature("tier", String), Feature("taste", Embedding(3)),
    Feature("fresh", Float64)])
"""


def test_validate_compares_versions_before_a_promote(cluster: LocalCluster, tmp_path: Path) -> None:
    name = f"val_{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo.py"
    repo.write_text(VALIDATE_REPO.replace("NAME", name))
    registry = load_repo(str(repo))
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    rng = np.random.default_rng(1)
    shops: dict[str, list[Any]] = {
        "shop_id": [f"s|{n}%" for n in range(400)],
        "region": [n % 3 for n in range(400)],
    }
    score = rng.normal(10, 2, 400)
    tier = rng.choice(["gold", "silver", "bronze"], 400).astype(object)
    now = [time.time_ns() // 1000] * 400
    server = ServerThread(make_settings(cluster), registry)

    def write(version: int, scores: Any, extra: str, dim: int) -> None:
        with FeatureClient(server.address) as client:
            client.write_features(
                f"{name}@v{version}",
                shops,
                now,
                {
                    "score": scores,
                    "tier": tier,
                    "taste": np.ones((400, dim), np.float32),
                    extra: np.zeros(400),
                },
            )

    def check() -> subprocess.CompletedProcess[str]:
        return featurewell(
            "validate",
            "--repo",
            str(repo),
            "--redis",
            seeds,
            "--view",
            name,
            "--from",
            "1",
            "--to",
            "2",
            "--sample",
            "300",
        )

    try:
        write(1, score, "legacy", 2)
        write(2, score, "fresh", 3)  # the same numbers: a safe promote
        same = check()
        write(2, score + 6.0, "fresh", 3)  # three standard deviations up: not safe
        shifted = check()
    finally:
        server.stop()
    assert same.returncode == 0, same.stdout + same.stderr
    assert f"{name}@v1 -> {name}@v2: 300 entities; with a row: 100.0% -> 100.0%" in same.stdout
    rows = {line.split()[0]: line for line in same.stdout.splitlines()[2:]}
    assert rows["score"].split()[1:3] == ["300", "0.000"]  # compared, PSI
    assert "100.0%" in rows["score"]  # unchanged
    assert "not comparable: 2 vs 3 dims" in rows["taste"]
    assert f"only in {name}@v1" in rows["legacy"]
    assert f"only in {name}@v2" in rows["fresh"]
    assert "ready to promote" in same.stdout
    assert shifted.returncode == 1
    score_line = next(ln for ln in shifted.stdout.splitlines() if ln.startswith("score"))
    assert float(score_line.split()[2]) > 0.25  # PSI
    assert float(score_line.split()[3]) > 2.5  # mean shift, in old standard deviations
    assert "NOT READY" in shifted.stdout
