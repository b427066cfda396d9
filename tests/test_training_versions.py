"""Training sets read the version servers serve: docs/lifecycle.md's blue/green flow (pin v1 with
a promote, fill v2) against a real cluster and a real server, through the real commands."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurewell.client import FeatureClient
from featurewell.definitions import load_repo
from featurewell.devcluster import LocalCluster
from featurewell.errors import ConfigError
from featurewell.offline import OfflineStore, get_historical_features
from featurewell.offline import versions as served_versions
from tests.tools import ServerThread, make_settings

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


def test_training_reads_the_promoted_version_like_serving(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    name = f"bg_{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo.py"
    repo.write_text(REPO.replace("NAME", name))
    registry = load_repo(str(repo))
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    # 1. Pin the current version before v2 exists anywhere (docs/lifecycle.md, step 1).
    pinned = featurewell("promote", "--repo", str(repo), "--redis", seeds, "--view", name,
                         "--version", "1")  # fmt: skip
    assert pinned.returncode == 0, pinned.stderr
    # 2. Fill both versions, online and in history, as a backfill does: v1 x=1, v2 x=2.
    now = time.time_ns() // 1000
    offline = OfflineStore(tmp_path / "offline")
    server = ServerThread(make_settings(cluster), registry)
    try:
        with FeatureClient(server.address) as client:
            for version, x in ((1, 1.0), (2, 2.0)):
                view = registry.view(name, version)
                features = {f.name: [x] for f in view.features}
                client.write_features(f"{name}@v{version}", {"shop_id": ["s1"]}, [now], features)
                offline.write(
                    view,
                    pa.table(
                        {
                            "shop_id": ["s1"],
                            "event_time": pa.array([now], pa.int64()),
                            "created": pa.array([now], pa.int64()),
                            **{f: pa.array(v, pa.float64()) for f, v in features.items()},
                        }
                    ),
                )
            served = client.get_features([f"{name}:x"], entities={"shop_id": ["s1"]})
            assert float(served[f"{name}:x"].values[0]) == 1.0  # serving answers v1
    finally:
        server.stop()
    labels = tmp_path / "labels.parquet"
    pq.write_table(
        pa.table({"shop_id": ["s1"], "event_timestamp": pa.array([now + 1], pa.int64())}), labels
    )
    common = ["training-set", "--repo", str(repo), "--offline-dir", str(tmp_path / "offline"),
              "--labels", str(labels)]  # fmt: skip

    def train(out: str, *more: str, features: str = f"{name}:*") -> tuple[list[Any], Any]:
        done = featurewell(*common, "--features", features, "--out", str(tmp_path / out), *more)
        assert done.returncode == 0, done.stderr
        table = pq.read_table(tmp_path / out)
        column = next(c for c in table.column_names if c.endswith(":x"))
        return table.column(column).to_pylist(), {
            "stdout": done.stdout,
            "versions": served_versions.recorded(table.schema.metadata),
        }

    # 3. Given the cluster, training reads v1, as serving does, and says so.
    values, got = train("cluster.parquet", "--redis", seeds)
    assert values == [1.0]
    how = f"promoted, from the cluster at {seeds}"
    assert got["versions"] == {name: {"version": 1, "how": how}}
    assert f"  {name} v1 ({how}): present 1" in got["stdout"]
    assert "note:" not in got["stdout"]
    # 4. The same from an exported defaults file, away from the cluster.
    exported = tmp_path / "defaults.json"
    listed = featurewell("versions", "--repo", str(repo), "--redis", seeds, "--export",
                         str(exported))  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert json.loads(exported.read_text())["promoted"][name] == 1
    values, got = train("file.parquet", "--defaults", str(exported))
    assert values == [1.0]
    assert got["versions"][name] == {
        "version": 1,
        "how": f"promoted, from defaults file {exported}",
    }
    # 5. Pins mean their version whatever was promoted.
    values, got = train("pinned.parquet", "--redis", seeds, features=f"{name}@v2:x")
    assert values == [2.0]
    assert got["versions"] == {f"{name}@v2": {"version": 2, "how": "pinned"}}
    # 6. Neither: today's behaviour (the highest version), with a note saying so.
    values, got = train("highest.parquet")
    assert values == [2.0]
    assert got["versions"][name]["version"] == 2
    assert "note: no promoted defaults given" in got["stdout"]
    # 7. From Python, the same rule with the same file.
    table = pa.table({"shop_id": ["s1"], "event_timestamp": pa.array([now + 1], pa.int64())})
    defaults = served_versions.load(exported)
    python = get_historical_features(registry, table, [f"{name}:x"], offline, defaults=defaults)
    assert python.column(f"{name}:x").to_pylist() == [1.0]
    # Both sources at once is ambiguous: refused.
    both = featurewell(*common, "--features", f"{name}:x", "--out", str(tmp_path / "x.parquet"),
                       "--redis", seeds, "--defaults", str(exported))  # fmt: skip
    assert both.returncode == 2
    assert "not both" in both.stderr


def test_defaults_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist: write it with `featurewell versions"):
        served_versions.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": served_versions.FILE_FORMAT, "promoted": {"v": "1"}}))
    with pytest.raises(ConfigError, match="is not a defaults file"):
        served_versions.load(bad)
    good = tmp_path / "good.json"
    served_versions.export(good, {"v": 3}, "test")
    assert served_versions.load(good).promoted == {"v": 3}
