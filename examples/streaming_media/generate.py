"""Realistic sample data for the streaming-media repo: the `watches` event log and the catalog.

30 days of viewing sessions, one event each. Titles' popularity follows a Zipf law (a few get most
views); each user has a favourite hour (evenings, mostly) and a taste for a few genres; 2% of
users have not been seen for over a week; 0.5% of events were sent twice (the engines count them
once). Deterministic for a given seed and time.

    python examples/streaming_media/generate.py --users 5000 --items 2000
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data"
HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US


def _repo() -> Any:
    """The repo's own genre axes, so the catalog and the computed tastes share them."""
    spec = importlib.util.spec_from_file_location("featurewell_example_repo", HERE / "repo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def user_id(n: int) -> str:
    return f"u{n:06d}"


def item_id(n: int) -> str:
    return f"i{n:06d}"


def generate(
    users: int, items: int, out: Path = DEFAULT_OUT, seed: int = 7, now_us: int | None = None
) -> dict[str, int]:
    """Write every source file; returns rows per file."""
    repo = _repo()
    rng = np.random.default_rng(seed)
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    out.mkdir(parents=True, exist_ok=True)

    genres = len(repo.GENRES)
    item_genres = rng.choice(genres, size=items, p=_zipf(genres, 0.8))
    item_embedding = _unit(
        repo.GENRE_VECTORS[item_genres] + 0.3 * rng.normal(size=(items, repo.GENRE_DIM))
    )
    title_min = rng.choice([22.0, 45.0, 95.0, 120.0], size=items)
    popularity = _zipf(items, 1.1)
    rng.shuffle(popularity)

    # Sessions per user over 30 days: most watch a few a week, some binge.
    sessions = rng.poisson(rng.gamma(2.0, 6.0, size=users)) + 1
    who = np.repeat(np.arange(users), sessions)
    count = len(who)
    # A favourite genre per user: 60% of their sessions, the rest by popularity.
    favourite = rng.choice(genres, size=users)
    by_genre = [np.flatnonzero(item_genres == g) for g in range(genres)]
    what = rng.choice(items, size=count, p=popularity)
    loyal = rng.random(count) < 0.6
    for g in range(genres):
        pick = loyal & (favourite[who] == g)
        if len(by_genre[g]) and pick.any():
            weights = popularity[by_genre[g]] / popularity[by_genre[g]].sum()
            what[pick] = rng.choice(by_genre[g], size=int(pick.sum()), p=weights)
    # When: a day in the last 30, at the user's favourite hour (+/- 1.5 h) 70% of the time.
    hour = rng.choice(24, size=users, p=_evening())[who].astype(np.float64)
    other = rng.random(count) >= 0.7
    hour[other] = rng.uniform(0, 24, size=int(other.sum()))
    hour[~other] += rng.normal(0, 1.5, size=int((~other).sum()))
    day = now_us // DAY_US * DAY_US - rng.integers(0, 30, size=count) * DAY_US
    when = day + (np.mod(hour, 24) * HOUR_US).astype(np.int64)
    when = np.where(when > now_us, when - DAY_US, when)
    away = rng.random(users) < 0.02  # not seen for over a week
    when = np.where(away[who] & (when > now_us - 8 * DAY_US), when - 8 * DAY_US, when)
    minutes = np.round(np.minimum(rng.gamma(2.0, 18.0, size=count), title_min[what]), 1)

    order = np.argsort(when, kind="stable")
    resent = order[rng.random(count) < 0.005]  # a producer retried: same event id again
    order = np.sort(np.concatenate([order, resent]), kind="stable")
    order = order[np.argsort(when[order], kind="stable")]
    watches = pa.table(
        {
            "event_id": [f"w{n:08d}" for n in order.tolist()],
            "event_time": pa.array(when[order], pa.int64()),
            "user_id": [user_id(int(u)) for u in who[order]],
            "item_id": [item_id(int(i)) for i in what[order]],
            "minutes": minutes[order],
            "title_min": title_min[what[order]],
            "genre": item_genres[what[order]].astype(np.int64),
        }
    )
    catalog = pa.table(
        {
            "item_id": [item_id(n) for n in range(items)],
            "event_time": _ts(np.full(items, now_us - 30 * DAY_US)),
            "primary_genre": [repo.GENRES[g] for g in item_genres],
            "genre_embedding": _vectors(item_embedding),
        }
    )
    pq.write_table(watches, out / "watches.parquet")
    pq.write_table(catalog, out / "item_genre.parquet")
    return {"watches": watches.num_rows, "item_genre": catalog.num_rows}


def live_event(out: Path = DEFAULT_OUT) -> tuple[str, dict[str, list[str]], dict[str, Any]]:
    """What `featurewell demo` appends to show a computed feature moving: user u000042 watches
    their last title again. Returns the feature to watch, its entity and the event."""
    log = pq.read_table(out / "watches.parquet").to_pylist()
    last = next(e for e in reversed(log) if e["user_id"] == "u000042")
    event = {k: last[k] for k in ("user_id", "item_id", "title_min", "genre")}
    return "user_activity:watch_count_7d", {"user_id": ["u000042"]}, {**event, "minutes": 30.0}


def _zipf(n: int, s: float) -> np.ndarray[Any, np.dtype[np.float64]]:
    weights = 1.0 / np.arange(1, n + 1) ** s
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def _evening() -> np.ndarray[Any, np.dtype[np.float64]]:
    weights = np.exp(-0.5 * ((np.arange(24) - 20.5) / 2.5) ** 2) + 0.05
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def _unit(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def _ts(us: np.ndarray[Any, Any]) -> pa.Array:
    return pa.array(us.astype(np.int64), type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _vectors(matrix: np.ndarray[Any, Any]) -> pa.Array:
    flat = pa.array(matrix.astype(np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for name, rows in generate(args.users, args.items, args.out, args.seed).items():
        print(f"{name}: {rows} rows")


if __name__ == "__main__":
    main()
