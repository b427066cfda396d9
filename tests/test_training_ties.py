"""The training rule's tie-breaks, on Parquet and Delta: among the rows known at a label's time,
the greatest event time wins, then the greatest `created`, then the latest write (file write
order, then row order), whatever order the files sort or scan in; and a brute-force replay of
the rule over random histories full of ties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from featurewell.definitions import Entity, Feature, FeatureView, Float64, Registry, String
from featurewell.offline import OfflineStore, get_historical_features
from featurewell.values import NOT_FOUND, PRESENT

DAY_US = 86_400_000_000
T0 = 1_790_000_000_000_000  # 2026-09-21, in µs
rider = Entity("rider", join_keys={"rider_id": String})
view = FeatureView("ties", entity=rider, features=[Feature("score", Float64, default=-1.0)])
REGISTRY = Registry.build([rider, view])
FORMATS = ["parquet", "delta"]
ENGINES = ["duckdb", pytest.param("spark", marks=pytest.mark.spark)]


def _rows(rows: list[tuple[str, int, int, float]]) -> pa.Table:
    """(rider, event time, created, score) history rows."""
    return pa.table(
        {
            "rider_id": [r[0] for r in rows],
            "event_time": pa.array([r[1] for r in rows], pa.int64()),
            "created": pa.array([r[2] for r in rows], pa.int64()),
            "score": [r[3] for r in rows],
        }
    )


def _train(
    store: OfflineStore, asked: list[tuple[str, int]], engine: str
) -> tuple[list[float], list[int]]:
    labels = pa.table(
        {
            "rider_id": [a[0] for a in asked],
            "event_timestamp": pa.array([a[1] for a in asked], pa.int64()),
        }
    )
    got = get_historical_features(REGISTRY, labels, ["ties:score"], store, engine=engine)
    if engine != "duckdb":  # both engines agree cell for cell
        assert got.equals(get_historical_features(REGISTRY, labels, ["ties:score"], store))
    return got.column("ties:score").to_pylist(), got.column("ties:__status").to_pylist()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("table_format", FORMATS)
def test_equal_instant_ties_follow_created_then_write_order(
    tmp_path: Path, table_format: str, engine: str
) -> None:
    store = OfflineStore(tmp_path, table_format)
    e = T0 + 1_000  # every tied row is about e and written before it: all known at exactly e
    # Different created, written in the order opposite to created: the greater created wins.
    store.write(view, _rows([("a", e, e - 10, 2.0)]))
    store.write(view, _rows([("a", e, e - 20, 1.0)]))
    # Equal created: the later write wins. The first file also holds a row created late, so
    # naming files by their newest `created` (as files once were) would sort it last.
    store.write(view, _rows([("b", e, e - 50, 3.0), ("z", T0, e + 5_000, 0.0)]))
    store.write(view, _rows([("b", e, e - 50, 4.0)]))
    # Equal created in one write: the later row wins.
    store.write(view, _rows([("c", e, e - 50, 5.0), ("c", e, e - 50, 6.0)]))
    # Known at one instant (created e + 70), the greater event time wins over a later write.
    store.write(view, _rows([("d", e, e + 70, 7.0)]))
    store.write(view, _rows([("d", e - 5, e + 70, 8.0)]))
    # A later created with an older event time never wins (the compare-and-set).
    store.write(view, _rows([("f", e, e - 30, 9.0), ("f", e - 1, e - 1, 10.0)]))
    scores, statuses = _train(
        store,
        [("a", e - 1), ("a", e), ("b", e), ("c", e), ("d", e + 69), ("d", e + 70), ("f", e)],
        engine,
    )
    assert scores == [-1.0, 2.0, 4.0, 6.0, -1.0, 7.0, 9.0]
    assert statuses == [NOT_FOUND, PRESENT, PRESENT, PRESENT, NOT_FOUND, PRESENT, PRESENT]


def _expected(history: list[tuple[str, int, int, float, int]], rider_id: str, at: int) -> float:
    """The rule itself, by brute force: known rows, then the greatest (event time, created,
    write order)."""
    known = [h for h in history if h[0] == rider_id and max(h[1], h[2]) <= at]
    return max(known, key=lambda h: (h[1], h[2], h[4]))[3] if known else -1.0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("table_format", FORMATS)
def test_random_histories_full_of_ties_follow_the_rule(
    tmp_path: Path, table_format: str, engine: str
) -> None:
    rng = np.random.default_rng(16)
    store = OfflineStore(tmp_path, table_format)
    riders = [f"r{n}" for n in range(6)]
    history: list[tuple[str, int, int, float, int]] = []  # + write order
    for _ in range(25):  # writes of a few rows each, times from a tiny range: ties everywhere
        batch = []
        for _ in range(int(rng.integers(1, 8))):
            event = T0 + int(rng.integers(0, 6)) * 10
            created = T0 + int(rng.integers(0, 8)) * 10
            batch.append(
                (riders[int(rng.integers(len(riders)))], event, created, float(len(history)))
            )
            history.append((*batch[-1], len(history)))
        store.write(view, _rows(batch))
    asked = [(r, T0 + t * 5) for r in riders for t in range(-1, 18)]
    scores, _ = _train(store, asked, engine)
    assert scores == [_expected(history, r, at) for r, at in asked]
    assert len({s for s in scores if s >= 0}) > 10  # many different rows were chosen
