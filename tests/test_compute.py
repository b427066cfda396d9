"""Computed features: the definitions' checks, and parity between the streaming engine (tiles,
incremental) and the batch engine (DuckDB over the whole log) on one event log with
out-of-order, late and duplicate events, at many points in time."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from featurewell.compute import batch, state
from featurewell.compute.program import compile_view
from featurewell.compute.stream import EventBatch, StreamEngine
from featurewell.definitions import (
    Count,
    DecayedSum,
    Embedding,
    Entity,
    EventSource,
    Feature,
    FeatureView,
    Float32,
    Float64,
    Int64,
    Last,
    Max,
    Mean,
    Min,
    Mode,
    String,
    Sum,
)
from featurewell.errors import DefinitionError

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
GENRES = np.eye(4)[[0, 1, 2, 3, 0, 1]]  # genre id -> a 4-dim vector

user = Entity("user", join_keys={"user_id": String})
item = Entity("item", join_keys={"item_id": String})
user_item = Entity.composite("user_item", user, item)
watches = EventSource(
    "watches",
    keys={"user_id": String, "item_id": String},
    fields={"duration_min": Float64, "hour": Int64, "genre_id": Int64, "progress": Float64},
    partitions=2,
)
user_activity = FeatureView(
    "user_activity",
    entity=user,
    events=watches,
    tile=timedelta(hours=1),
    features=[
        Feature("watch_count_7d", Int64, computed=Count(window=timedelta(days=7))),
        Feature(
            "long_watches_7d",
            Int64,
            computed=Count(window=timedelta(days=7), where=lambda e: e["duration_min"] > 30),
        ),
        Feature("minutes_7d", Float64, computed=Sum("duration_min", window=timedelta(days=7))),
        Feature(
            "avg_minutes_30d",
            Float64,
            default=-1.0,
            computed=Mean("duration_min", window=timedelta(days=30)),
        ),
        Feature("shortest_1d", Float64, computed=Min("duration_min", window=timedelta(days=1))),
        Feature("longest_1d", Float64, computed=Max("duration_min", window=timedelta(days=1))),
        Feature(
            "preferred_hour",
            Int64,
            default=20,
            computed=Mode("hour", categories=24, window=timedelta(days=30)),
        ),
        Feature(
            "genre_preference",
            Embedding(4),
            computed=Mean(
                lambda e: GENRES[e["genre_id"]], weight="duration_min", window=timedelta(days=30)
            ),
        ),
        Feature("last_item", String, computed=Last("item_id")),
        Feature("last_seen_s", Int64, computed=Last(lambda e: e["event_time"] // 1_000_000)),
    ],
)
item_popularity = FeatureView(
    "item_popularity",
    entity=item,
    events=watches,
    tile=timedelta(hours=1),
    features=[
        Feature(
            "popularity",
            Float64,
            computed=DecayedSum(half_life=timedelta(days=1), window=timedelta(days=14)),
        ),
        Feature("views_24h", Int64, computed=Count(window=timedelta(hours=24))),
    ],
)
watch_progress = FeatureView(
    "watch_progress",
    entity=user_item,
    events=watches,
    features=[Feature("progress", Float32, computed=Last("progress"))],
)
VIEWS = (user_activity, item_popularity, watch_progress)
LATENESS_US = 6 * HOUR_US


def event_log(seed: int, events: int = 6000) -> pa.Table:
    """Watches over 40 days by 60 users of 40 titles, delivered by two partitions (by user)
    mostly in order, with jitter of up to 3 h, 2% arriving 1-3 days late (past the allowed
    lateness: dropped by both engines alike) and 3% sent twice."""
    rng = np.random.default_rng(seed)
    start = 1_700_000_000_000_000
    times = np.sort(rng.integers(start, start + 40 * DAY_US, events))
    arrival = times + rng.integers(0, 3 * HOUR_US, events)
    late = rng.random(events) < 0.02
    arrival[late] += rng.integers(DAY_US, 3 * DAY_US, int(late.sum()))
    users = rng.integers(0, 60, events)
    table: dict[str, Any] = {
        "user_id": [f"u{u}" for u in users],
        "item_id": [f"i{i}" for i in rng.zipf(1.6, events) % 40],
        "duration_min": np.round(rng.gamma(2.0, 20.0, events), 1),
        "hour": rng.integers(0, 24, events),
        "genre_id": rng.integers(0, 6, events),
        "progress": np.round(rng.random(events), 3),
        "event_time": times,
        "event_id": [f"e{n}" for n in range(events)],
        "_arrival": arrival,
        "_partition": users % 2,
    }
    again = np.flatnonzero(rng.random(events) < 0.03)  # re-sent a little later
    for name, column in list(table.items()):
        column = np.asarray(column, dtype=object if name.endswith("_id") else None)
        extra = column[again]
        if name == "_arrival":
            extra = extra + rng.integers(0, 12 * HOUR_US, len(again))
        table[name] = np.concatenate([column, extra])
    order = np.lexsort((table["_arrival"],))
    log = {name: np.asarray(column)[order] for name, column in table.items()}
    positions = np.zeros(len(order), dtype=np.int64)
    for partition in (0, 1):
        mine = log["_partition"] == partition
        positions[mine] = np.arange(int(mine.sum()))
    log["_pos_major"] = positions
    log["_pos_minor"] = np.zeros(len(order), dtype=np.int64)
    del log["_arrival"]
    return pa.table({k: (v.tolist() if v.dtype == object else v) for k, v in log.items()})


def batches(log: pa.Table, size: int) -> list[EventBatch]:
    """The log as each partition delivers it, in pieces, partitions interleaved."""
    out = []
    for partition in (0, 1):
        part = log.filter(pc.equal(log.column("_partition"), partition))
        for start in range(0, part.num_rows, size):
            piece = part.slice(start, size)
            columns = {
                name: np.asarray(piece.column(name).to_pylist(), dtype=object)
                if pa.types.is_string(piece.column(name).type)
                else piece.column(name).to_numpy()
                for name in watches.columns
            }
            out.append(
                EventBatch(
                    partition,
                    columns,
                    piece.column("event_time").to_numpy(),
                    piece.column("event_id").to_pylist(),
                    list(
                        zip(
                            piece.column("_pos_major").to_pylist(),
                            piece.column("_pos_minor").to_pylist(),
                            strict=True,
                        )
                    ),
                )
            )
    # Interleave the partitions' pieces the way one consumer would see them.
    first = [b for b in out if b.partition == 0]
    second = [b for b in out if b.partition == 1]
    mixed: list[EventBatch] = []
    for pair in zip(first, second, strict=False):
        mixed.extend(pair)
    longer = first if len(first) > len(second) else second
    return mixed + longer[len(mixed) // 2 :]


def delivered(log: pa.Table, applied: list[EventBatch]) -> pa.Table:
    """The rows of `log` the stream has been given so far."""
    seen = {(b.partition, p) for b in applied for p in b.positions}
    rows = [
        i
        for i, (partition, major, minor) in enumerate(
            zip(
                log.column("_partition").to_pylist(),
                log.column("_pos_major").to_pylist(),
                log.column("_pos_minor").to_pylist(),
                strict=True,
            )
        )
        if (partition, (major, minor)) in seen
    ]
    return log.take(rows)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-9))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def compare(engine: StreamEngine, log: pa.Table, as_of_us: int) -> int:
    """Assert both engines agree on every entity and feature as of `as_of_us`; returns how
    many values were compared."""
    accepted = batch.accepted_events(log, LATENESS_US)
    compared = 0
    for view in VIEWS:
        program = compile_view(view)
        offline = batch.compute(program, accepted, as_of_us)
        entities = set(offline) | set(engine.views[view.ref].entities)
        for key in entities:
            online = engine.values(view.ref, key, as_of_us)
            expected = offline.get(key) or [
                0 if f.kind in ("count", "sum", "decayed sum") else f.feature.default
                for f in program.features
            ]
            for feature, got, want in zip(program.features, online, expected, strict=True):
                assert same(got, want), (view.ref, key, feature.feature.name, as_of_us, got, want)
                compared += 1
    return compared


def test_streaming_and_batch_agree_at_many_points_in_time() -> None:
    log = event_log(seed=1)
    engine = StreamEngine([compile_view(v) for v in VIEWS], LATENESS_US)
    pieces = batches(log, size=97)
    compared = 0
    checkpoints = set(np.linspace(0, len(pieces) - 1, 12).astype(int).tolist())
    for n, piece in enumerate(pieces):
        engine.apply(piece)
        if n not in checkpoints:
            continue
        engine.evict()
        so_far = delivered(log, pieces[: n + 1])
        now = max(engine.watermarks.values())
        for as_of in (now, now + 2 * HOUR_US, now + 2 * DAY_US, now + 8 * DAY_US):
            compared += compare(engine, so_far, as_of)
    counters = engine.counters
    assert counters.late > 50  # the log really has late events...
    assert counters.duplicates > 100  # ...and duplicates, which both engines dropped alike
    assert compared > 20_000


def test_a_restart_replays_without_double_counting() -> None:
    log = event_log(seed=2, events=3000)
    pieces = batches(log, size=50)
    whole = StreamEngine([compile_view(v) for v in VIEWS], LATENESS_US)
    for piece in pieces:
        whole.apply(piece)
    crashed = StreamEngine([compile_view(v) for v in VIEWS], LATENESS_US)
    for piece in pieces[:40]:
        crashed.apply(piece)
    saved = state.snapshot(crashed)
    for piece in pieces[40:55]:  # applied, and perhaps written, but never checkpointed
        crashed.apply(piece)
    restarted = StreamEngine([compile_view(v) for v in VIEWS], LATENESS_US)
    state.restore(restarted, saved)
    for piece in pieces[30:]:  # the source redelivers from before the checkpoint
        restarted.apply(piece)
    assert restarted.counters.replayed > 0
    now = max(whole.watermarks.values())
    for view in VIEWS:
        for key in whole.views[view.ref].entities:
            a, b = whole.values(view.ref, key, now), restarted.values(view.ref, key, now)
            assert all(same(x, y) for x, y in zip(a, b, strict=True)), (view.ref, key, a, b)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: FeatureView(
                "v",
                entity=user,
                features=[Feature("n", Int64, computed=Count(window=timedelta(days=1)))],
            ),
            "computed but the view has no events=",
        ),
        (
            lambda: FeatureView("v", entity=user, events=watches, features=[Feature("n", Int64)]),
            "computes every feature",
        ),
        (
            lambda: FeatureView(
                "v", entity=user, events=watches, features=[Feature("n", Int64, computed=Count())]
            ),
            "needs window=timedelta",
        ),
        (
            lambda: FeatureView(
                "v",
                entity=user,
                events=watches,
                tile=timedelta(hours=1),
                features=[Feature("n", Int64, computed=Count(window=timedelta(minutes=90)))],
            ),
            "not a whole number of the view's tiles",
        ),
        (
            lambda: FeatureView(
                "v",
                entity=user,
                events=watches,
                features=[Feature("n", Float64, computed=Sum("nope", window=timedelta(days=1)))],
            ),
            "has no column 'nope'",
        ),
        (
            lambda: FeatureView(
                "v",
                entity=user,
                events=watches,
                features=[Feature("n", Float64, computed=Sum("item_id", window=timedelta(days=1)))],
            ),
            "is a string, not a number",
        ),
        (
            lambda: FeatureView(
                "v",
                entity=user,
                events=watches,
                features=[Feature("n", Float64, computed=Count(window=timedelta(days=1)))],
            ),
            "a count is Int64",
        ),
        (
            lambda: FeatureView(
                "v",
                entity=user,
                events=watches,
                features=[Feature("n", Float64, computed=DecayedSum(window=timedelta(days=1)))],
            ),
            "needs half_life",
        ),
        (
            lambda: FeatureView(
                "v",
                entity=user,
                events=watches,
                features=[Feature("n", Int64, computed=Mode("hour", window=timedelta(days=1)))],
            ),
            "needs categories",
        ),
        (
            lambda: FeatureView(
                "v",
                entity=user,
                events=watches,
                features=[Feature("n", Int64, computed=Last("hour", window=timedelta(days=1)))],
            ),
            "takes no window",
        ),
        (
            lambda: FeatureView(
                "v",
                entity=Entity("shop", join_keys={"shop_id": String}),
                events=watches,
                features=[Feature("n", Int64, computed=Count(window=timedelta(days=1)))],
            ),
            "needs key column 'shop_id'",
        ),
        (
            lambda: EventSource("e", keys={"user_id": String}, fields={"event_time": Int64}),
            "'event_time' is implicit",
        ),
    ],
)
def test_definitions_that_cannot_be_computed(build: Any, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        build()
