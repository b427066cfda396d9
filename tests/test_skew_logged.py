"""Skew and training on what was served, with the server's own served-feature logger (and the
history it records for WriteFeatures rows) instead of test-written log files: the whole loop
through a real server and cluster. Skipped while the logger is not on this branch (it is
written in parallel); it runs as soon as the `served_log_rate` setting exists."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from featurewell.client import FeatureClient
from featurewell.definitions import load_repo
from featurewell.devcluster import LocalCluster
from featurewell.offline import OfflineStore
from featurewell.offline.served_training import from_served_log
from featurewell.offline.skew import measure
from tests.test_skew import MINUTE_US, by_name, write_repo
from tests.tools import ServerThread, make_settings


def test_logged_answers_measure_skew_and_train(cluster: LocalCluster, tmp_path: Path) -> None:
    name = f"lg_{uuid.uuid4().hex[:6]}"
    repo = write_repo(tmp_path / "repo.py", name, 1.0)
    registry = load_repo(str(repo))
    server_registry = load_repo(str(write_repo(tmp_path / "server_repo.py", name, 1.1)))
    root = tmp_path / "offline"
    root.mkdir()
    settings = make_settings(
        cluster, offline_dir=str(root), served_log_rate=1.0, served_log_flush_s=0.1
    )
    server = ServerThread(settings, server_registry)
    riders = [f"r{n}" for n in range(6)]
    written = riders[:5]
    now = time.time_ns() // 1000
    answers: list[Any] = []
    try:
        with FeatureClient(server.address) as client:
            client.write_features(
                name,
                {"rider_id": written},
                [now - (10 - n) * MINUTE_US for n in range(5)],
                {
                    "score": np.array([0.5 * n + 1 for n in range(5)]),
                    "clicks": np.arange(5, dtype=np.int64) * 10,
                    "tier": [f"t{n}" for n in range(5)],
                    "taste": np.array([[n, 1.0] for n in range(5)], np.float32),
                },
            )
            log = server.server.telemetry.served_log
            assert log is not None  # logging is on
            assert log.flush()  # the history of the pushed rows lands before they are served
            for _ in range(3):
                answers.append(
                    client.get_features(
                        [f"{name}:*", f"{name}_doubled:doubled", f"{name}_scaled:scaled"],
                        entities={"rider_id": riders},
                        include_event_timestamps=True,
                    )
                )
            assert log.flush()
    finally:
        server.stop()
    results = by_name(measure(registry, OfflineStore(root), None, None))
    for feature in ("score", "clicks", "tier", "taste"):
        clean = results[f"{name}@v1:{feature}/offline"]
        assert (clean.compared, clean.mismatched) == (18, 0), clean
    assert results[f"{name}_doubled:doubled/offline"].mismatched == 0
    scaled = results[f"{name}_scaled:scaled/offline"]
    assert (scaled.compared, scaled.mismatched) == (18, 15)

    request_id = answers[1].request_id
    labels = pa.table({"request_id": [request_id] * 6, "row": pa.array(range(6), pa.int32())})
    got = from_served_log(registry, labels, [f"{name}:score", f"{name}_scaled:scaled"], root)
    assert got.column(f"{name}:score").to_pylist() == list(answers[1][f"{name}:score"].values)
    served_scaled = list(answers[1][f"{name}_scaled:scaled"].values)
    assert got.column(f"{name}_scaled:scaled").to_pylist() == pytest.approx(served_scaled)
