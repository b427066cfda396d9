"""Rows pushed with WriteFeatures reach the offline history (created: when the server wrote
them), so a pushed view trains point in time: a real server and cluster, rows pushed over gRPC,
a training set built from the history the server wrote."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from featurewell.devcluster import LocalCluster
from featurewell.offline import OfflineStore, get_historical_features
from featurewell.values import NOT_FOUND, PRESENT
from tests import defs
from tests.tools import Ids, ServerThread, make_settings

MINUTE_US = 60_000_000


@pytest.fixture(params=["parquet", "delta"])
def pushed(
    request: pytest.FixtureRequest, cluster: LocalCluster, tmp_path: Path
) -> Iterator[tuple[ServerThread, OfflineStore]]:
    settings = make_settings(cluster, offline_dir=str(tmp_path), offline_format=request.param)
    server = ServerThread(settings, defs.registry())
    yield server, OfflineStore(tmp_path, request.param)
    server.stop()


def test_pushed_rows_train_point_in_time(
    pushed: tuple[ServerThread, OfflineStore], ids: Ids
) -> None:
    server, store = pushed
    from featurewell.client import FeatureClient

    client = FeatureClient(server.address)
    users = [ids(f"u{n}") for n in range(4)]
    now = defs.now_us()
    first, second = now - 40 * MINUTE_US, now - 20 * MINUTE_US
    defs.write_profiles(client, users, ages=[20, 21, 22, 23], at_us=first)
    defs.write_profiles(client, users[:2], ages=[30, 31], at_us=second)
    written = defs.now_us()
    log = server.server.telemetry.served_log
    assert log is not None
    assert log.flush()
    served = client.get_features(["profile:age", "profile:recent"], entities={"user_id": users})

    later = written + 1_000_000
    labels = pa.table(
        {
            "user_id": [*users, users[0]],
            # The last label is after both event times but before the server got the rows:
            # the history must not know them yet (created is the write time, not the event's).
            "event_timestamp": pa.array([later] * 4 + [second + MINUTE_US], pa.int64()),
        }
    )
    got = get_historical_features(
        defs.registry(), labels, ["profile:age", "profile:recent", "profile:country"], store
    )
    assert got.column("profile:age").to_pylist()[:4] == [30, 31, 22, 23]
    assert got.column("profile:age").to_pylist()[:4] == list(served.columns["profile:age"].values)
    assert got.column("profile:country").to_pylist()[:4] == ["c30", "c31", "c22", "c23"]
    recent = got.column("profile:recent").to_pylist()
    assert [list(np.asarray(v)) for v in recent[:2]] == [[0, 1], [2, 3]]
    assert got.column("profile:__status").to_pylist() == [PRESENT] * 4 + [NOT_FOUND]
    assert (
        server.server.telemetry.metrics.registry.get_sample_value(
            "featurewell_served_log_rows_total", {"kind": "pushed"}
        )
        == 6
    )
