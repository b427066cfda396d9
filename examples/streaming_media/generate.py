"""Realistic sample data for the streaming-media repo, written as Parquet sources.

Item popularity follows a Zipf law (a few titles get most views), users' taste vectors are
duration-weighted means of the genre embeddings of what they watched, and 2% of users have not
been seen for a week (so the demo shows STALE values). Deterministic for a given seed.

    python examples/streaming_media/generate.py --users 5000 --items 2000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

GENRES = ("drama", "comedy", "action", "thriller", "documentary", "animation", "horror",
          "romance", "sci_fi", "crime", "family", "reality")  # fmt: skip
GENRE_DIM = 32
DEFAULT_OUT = Path(__file__).resolve().parent / "data"


def user_id(n: int) -> str:
    return f"u{n:06d}"


def item_id(n: int) -> str:
    return f"i{n:06d}"


def generate(users: int, items: int, out: Path = DEFAULT_OUT, seed: int = 7) -> dict[str, int]:
    """Write every source file; returns rows per file."""
    rng = np.random.default_rng(seed)
    now_us = time.time_ns() // 1000
    hour_us = 3_600_000_000
    out.mkdir(parents=True, exist_ok=True)

    genre_vectors = _unit(rng.normal(size=(len(GENRES), GENRE_DIM)))
    item_genres = rng.choice(len(GENRES), size=items, p=_zipf(len(GENRES), 0.8))
    item_embedding = _unit(genre_vectors[item_genres] + 0.3 * rng.normal(size=(items, GENRE_DIM)))
    popularity = _zipf(items, 1.1)
    rng.shuffle(popularity)

    # Each user watches a Zipf-skewed sample of titles.
    watches = rng.poisson(9, size=users) + 1
    watched = [
        rng.choice(items, size=min(int(n), items), replace=False, p=popularity) for n in watches
    ]
    minutes = [rng.gamma(2.0, 20.0, size=len(w)).astype(np.float32) for w in watched]
    preference = np.stack(
        [
            (item_embedding[w] * m[:, None]).sum(axis=0) / m.sum()
            for w, m in zip(watched, minutes, strict=True)
        ]
    )
    seen_us = now_us - rng.integers(0, 20 * hour_us, size=users)
    away = rng.random(users) < 0.02  # not seen for a week: their activity is past max age
    seen_us[away] = now_us - 8 * 24 * hour_us
    user_ids = [user_id(n) for n in range(users)]
    item_ids = [item_id(n) for n in range(items)]

    tables: dict[str, pa.Table] = {
        "user_activity": pa.table(
            {
                "user_id": user_ids,
                "event_time": _ts(seen_us),
                "watch_count_7d": watches.astype(np.int64),
                "avg_watch_duration_min": np.array([m.mean() for m in minutes], dtype=np.float32),
                "preferred_hour": rng.choice(24, size=users, p=_evening()).astype(np.int64),
                "last_watch_ts": (seen_us // 1_000_000).astype(np.int64),
                "recent_genre_ids": [
                    item_genres[w[-5:]].astype(np.int64).tolist() for w in watched
                ],
            }
        ),
        "user_genre_preferences": pa.table(
            {
                "user_id": user_ids,
                "event_time": _ts(seen_us),
                "genre_vector": _vectors(_unit(preference)),
            }
        ),
        "user_genre_preferences_v1": pa.table(
            {
                "user_id": user_ids,
                "event_time": _ts(seen_us),
                "genre_vector": _vectors(_unit(preference[:, :16])),
            }
        ),
        "item_stats": pa.table(
            {
                "item_id": item_ids,
                "event_time": _ts(now_us - rng.integers(0, hour_us, size=items)),
                "popularity_score": (popularity / popularity.max()).astype(np.float32),
                "watch_count_24h": rng.poisson(popularity * 200_000).astype(np.int64),
                "duration_min": rng.choice([22.0, 45.0, 95.0, 120.0], size=items).astype(
                    np.float32
                ),
            }
        ),
        "item_genre": pa.table(
            {
                "item_id": item_ids,
                "event_time": _ts(np.full(items, now_us - 30 * 24 * hour_us)),
                "primary_genre": [GENRES[g] for g in item_genres],
                "genre_embedding": _vectors(item_embedding),
            }
        ),
    }
    pairs_user = np.repeat(np.arange(users), [len(w) for w in watched])
    pairs_item = np.concatenate(watched)
    tables["user_item_watch_progress"] = pa.table({
        "user_id": [user_ids[u] for u in pairs_user],
        "item_id": [item_ids[i] for i in pairs_item],
        "event_time": _ts(seen_us[pairs_user]),
        "progress": rng.beta(2, 1.5, size=len(pairs_user)).astype(np.float32),
        "watched_minutes": np.concatenate(minutes),
    })  # fmt: skip
    for name, table in tables.items():
        pq.write_table(table, out / f"{name}.parquet")
    return {name: table.num_rows for name, table in tables.items()}


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
