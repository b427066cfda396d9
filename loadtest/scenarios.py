"""What the load users and the probes ask for, and when: the example repo's features, skewed ids,
the moments calls are due."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterator

import numpy as np

SINGLE = ["user_activity:*", "user_genre_preferences:*"]
RANKING = [
    "user_activity:watch_count_7d",
    "user_activity:avg_watch_duration_min",
    "user_activity:preferred_hour",
    "user_genre_preferences:genre_vector",
    "item_stats:popularity_score",
    "item_stats:watch_count_24h",
    "item_stats:duration_min",
    "item_genre:genre_embedding",
    "user_item_affinity:genre_affinity",
]


MIN_GAP = 0.25  # of the mean gap between two calls: the floor of a random gap
BLOCK = 50  # a load user's random gaps are scaled together to their mean: its rate holds exactly


def random_gaps(rng: np.random.Generator, mean: float, count: int) -> np.ndarray:
    """`count` gaps between calls averaging `mean` s: MIN_GAP of the mean plus an exponential
    rest. Not a lattice, so calls drawn this way meet every phase of any periodic load alike;
    the floor keeps one caller, one call at a time, from queueing behind itself."""
    return mean * MIN_GAP + rng.exponential(mean * (1 - MIN_GAP), count)


def zipf_ids(prefix: str, population: int, s: float = 1.1, seed: int = 0) -> Callable[[], str]:
    """Ids like the example data's (`u000042`), popular ones far more often (Zipf)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, population + 1) ** s
    cumulative = np.cumsum(weights / weights.sum())
    return lambda: f"{prefix}{int(np.searchsorted(cumulative, rng.random())):06d}"


def items_for(rng: np.random.Generator, items: int, count: int = 500) -> list[str]:
    """A ranker's candidates: `count` distinct items."""
    return [f"i{i:06d}" for i in rng.choice(items, size=count, replace=False).tolist()]


def schedule(
    kind: str, index: int, users: int, rate: float, arrivals: str, now: float
) -> tuple[float, Iterator[float]]:
    """When load user `index` of `users` of `kind` (each calling `rate` times a second) makes
    its first call, after `now`, and its gaps after that (loadtest/locustfile.py).

    `poisson`: a random moment of the first period, then `random_gaps` scaled in blocks of
    BLOCK to their mean, seeded by kind and index. `grid`: user k of N at k/N of the period on a
    grid anchored at 0, every kind's alike (so kinds keep a phase with one another)."""
    period = 1 / rate
    if arrivals == "grid":
        offset = index % max(1, users) * period / max(1, users)
        return now + (offset - now) % period, itertools.repeat(period)
    rng = np.random.default_rng(zlib.crc32(f"{kind}/{index}".encode()))
    return now + rng.uniform(0, period), _random(rng, period)


def _random(rng: np.random.Generator, period: float) -> Iterator[float]:
    while True:
        gaps = random_gaps(rng, period, BLOCK)
        yield from (gaps * (BLOCK * period / gaps.sum())).tolist()
