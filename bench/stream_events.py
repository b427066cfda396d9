"""The streaming benchmark's data: its feature repo, its watch events and how they get appended.

The repo (user, item and user-item views over one 4-partition source) is written out by
bench/stream.py; `events` makes random watch events (Zipf-popular items); `append_backlog`
appends a week of history in time order; `produce` appends at a fixed rate, in a process of its
own (`bench/stream.py --produce`, so the appending does not share the consumer's CPU).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from featurewell.compute.redis_streams import append
from featurewell.definitions import EventSource, load_repo
from featurewell.store.cluster import ClusterClient

REPO_HEAD = """
from datetime import timedelta
import numpy as np
import pyarrow as pa
from featurewell.definitions import (Count, DecayedSum, Embedding, Entity, EventSource, Feature,
    FeatureView, Float32, Float64, Int64, Last, Mean, Mode, String)

GENRES = np.random.default_rng(0).normal(size=(12, 16))
user = Entity("user", join_keys={"user_id": String})
item = Entity("item", join_keys={"item_id": String})
user_item = Entity.composite("user_item", user, item)
watches = EventSource("bench_watches", keys={"user_id": String, "item_id": String},
    fields={"duration_min": Float64, "hour": Int64, "genre_id": Int64, "progress": Float64},
    partitions=4)
user_activity = FeatureView("bench_user_activity", entity=user, events=watches,
    tile=timedelta(hours=1), features=[
    Feature("watch_count_7d", Int64, computed=Count(window=timedelta(days=7))),
    Feature("avg_watch_min_30d", Float32, computed=Mean("duration_min", window=timedelta(days=30))),
    Feature("preferred_hour", Int64, default=20,
            computed=Mode("hour", categories=24, window=timedelta(days=30))),
    Feature("genre_preference", Embedding(16), computed=Mean(
        lambda e: GENRES[e["genre_id"]], weight="duration_min", window=timedelta(days=30))),
    Feature("last_item", String, computed=Last("item_id")),
])
"""
ITEM_VIEW = """
item_stats = FeatureView("bench_item_stats", entity=item, events=watches,
    tile=timedelta(hours=1), features=[
    Feature("popularity", Float64, computed=DecayedSum(half_life=timedelta(days=1),
                                                       window=timedelta(days=14))),
    Feature("watch_count_24h", Int64, computed=Count(window=timedelta(hours=24))),
])
"""
PROGRESS_VIEW = """
progress = FeatureView("bench_progress", entity=user_item, events=watches,
    features=[Feature("progress", Float32, computed=Last("progress"))])
"""
REPO = REPO_HEAD + ITEM_VIEW + PROGRESS_VIEW
USERS, ITEMS = 20_000, 5_000
WEEK_US = 7 * 86_400_000_000


def events(rng: np.random.Generator, count: int, start_id: int, times: Any) -> list[dict[str, Any]]:
    users = rng.integers(0, USERS, count)
    items = rng.zipf(1.3, count) % ITEMS
    return [
        {
            "event_id": f"e{start_id + n}",
            "event_time": int(times[n]),
            "user_id": f"u{u}",
            "item_id": f"i{i}",
            "duration_min": float(d),
            "hour": int(h),
            "genre_id": int(g),
            "progress": float(p),
        }
        for n, (u, i, d, h, g, p) in enumerate(
            zip(
                users,
                items,
                rng.gamma(2.0, 20.0, count).round(1),
                rng.integers(0, 24, count),
                rng.integers(0, 12, count),
                rng.random(count).round(3),
                strict=True,
            )
        )
    ]


def source(repo: Path) -> EventSource:
    """The repo's event source (every view reads the same one)."""
    registry = load_repo(str(repo))
    return next(v.events for v in registry.views.values() if v.events is not None)


async def append_backlog(seeds: list[tuple[str, int]], to: EventSource, backlog: int) -> None:
    """Append `backlog` events spread over the past week, in time order, 5,000 per append."""
    cluster = ClusterClient(seeds, connections_per_node=1)
    await cluster.start()
    rng = np.random.default_rng(1)
    now_us = time.time_ns() // 1000
    times = np.sort(rng.integers(now_us - WEEK_US, now_us, backlog))
    for start in range(0, backlog, 5000):
        chunk = times[start : start + 5000]
        await append(cluster, to, events(rng, len(chunk), start, chunk))
    await cluster.close()


async def produce(seeds: list[tuple[str, int]], repo: Path, rate: float, seconds: float) -> None:
    """Append `rate` events a second for `seconds`, in 10 ms slices (its own process)."""
    to = source(repo)
    cluster = ClusterClient(seeds, connections_per_node=1)
    await cluster.start()
    rng = np.random.default_rng(int(time.time()))
    per_slice = max(1, int(rate / 100))
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        now_us = time.time_ns() // 1000
        await append(cluster, to, events(rng, per_slice, sent + 10**9, [now_us] * per_slice))
        sent += per_slice
        ahead = sent / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
    await cluster.close()
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - started}), flush=True)
