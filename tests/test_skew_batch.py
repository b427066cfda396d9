"""Skew against the batch engine: a computed view whose online rows (written as the stream
writes them) disagree with the event log goes red; a clean one stays green."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from featurewell.client import FeatureClient
from featurewell.compute import batch
from featurewell.compute.program import compile_view
from featurewell.definitions import Kind, load_repo
from featurewell.devcluster import LocalCluster
from featurewell.engine.calls import InputColumn, WriteRequest
from featurewell.offline import OfflineStore
from featurewell.offline.skew import measure
from featurewell.values import PRESENT
from tests.test_skew import MINUTE_US, by_name, log_answer, write_repo
from tests.tools import ServerThread, make_settings


def test_a_stream_bug_disagrees_with_the_batch_engine(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A computed view whose online rows (and their history, written by the same stream) are
    wrong for one rider: the point-in-time join agrees with what was served (history has the
    same bug), the batch engine over the event log does not."""
    name = f"sb_{uuid.uuid4().hex[:6]}"
    registry = load_repo(str(write_repo(tmp_path / "repo.py", name, 1.0)))
    view = registry.views[(f"{name}_activity", 1)]
    store = OfflineStore(tmp_path / "offline")
    now = time.time_ns() // 1000
    riders = ["a", "b", "c"]
    events = pa.table(
        {
            "rider_id": ["a", "a", "b", "c", "c", "c"],
            "km": [1.0, 2.0, 5.0, 1.5, 1.5, 1.0],
            "event_time": pa.array([now - (20 - n) * MINUTE_US for n in range(6)], pa.int64()),
            "event_id": [f"e{n}" for n in range(6)],
        }
    )
    as_of = now - 10 * MINUTE_US
    truth = batch.compute(compile_view(view), batch.accepted_events(events, 3_600_000_000), as_of)
    counts = np.array([truth[(r,)][0] for r in riders], np.int64)
    km = np.array([truth[(r,)][1] for r in riders])
    counts_bug = counts.copy()
    counts_bug[2] += 1  # the stream counted one of c's trips twice
    results = {}
    for label, written in (("clean", counts), ("bug", counts_bug)):
        root = tmp_path / label
        store = OfflineStore(root)
        server = ServerThread(make_settings(cluster), registry)
        ids = [f"{label}-{r}" for r in riders]
        log = events.set_column(
            0, "rider_id", pa.array([f"{label}-{r}" for r in events.column(0).to_pylist()])
        )
        try:
            # Written as the stream writes (the engine's write, no WriteFeatures call), and
            # to history as `stream --history-out` records what it wrote.
            request = WriteRequest(
                view.ref,
                {"rider_id": InputColumn(Kind.STRING, ids)},
                np.full(3, as_of, np.int64),
                {"trips_1h": written, "km_1h": km},
            )
            server.run(server.server.service.engine.write(request))
            store.write(
                view,
                pa.table(
                    {
                        "rider_id": ids,
                        "event_time": [as_of] * 3,
                        "created": [time.time_ns() // 1000] * 3,
                        "trips_1h": written,
                        "km_1h": km,
                    }
                ),
            )
            with FeatureClient(server.address) as client:
                answer = client.get_features(
                    [f"{view.name}:*"], entities={"rider_id": ids}, include_event_timestamps=True
                )
                log_answer(root, registry, answer, {"rider_id": ids})
        finally:
            server.stop()
        results[label] = by_name(
            measure(registry, store, None, None, events={f"{name}_trips": log})
        )
    clean, bug = results["clean"], results["bug"]
    ref = f"{view.name}@v1"
    assert clean[f"{ref}:trips_1h/batch"].compared == 3
    assert clean[f"{ref}:trips_1h/batch"].mismatched == 0
    assert clean[f"{ref}:km_1h/batch"].mismatched == 0
    assert bug[f"{ref}:trips_1h/offline"].mismatched == 0  # history has the stream's bug too
    assert bug[f"{ref}:trips_1h/batch"].mismatched == 1
    assert bug[f"{ref}:trips_1h/batch"].examples[0]["served"] == int(counts[2]) + 1
    assert bug[f"{ref}:km_1h/batch"].mismatched == 0
    assert PRESENT in {int(s) for s in answer.statuses(f"{view.name}:trips_1h")}
