"""What the load users and the probe ask for: the example repo's features and skewed ids."""

from __future__ import annotations

from collections.abc import Callable

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


def zipf_ids(prefix: str, population: int, s: float = 1.1, seed: int = 0) -> Callable[[], str]:
    """Ids like the example data's (`u000042`), popular ones far more often (Zipf)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, population + 1) ** s
    cumulative = np.cumsum(weights / weights.sum())
    return lambda: f"{prefix}{int(np.searchsorted(cumulative, rng.random())):06d}"


def items_for(rng: np.random.Generator, items: int, count: int = 500) -> list[str]:
    """A ranker's candidates: `count` distinct items."""
    return [f"i{i:06d}" for i in rng.choice(items, size=count, replace=False).tolist()]
