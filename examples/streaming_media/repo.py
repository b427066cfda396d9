"""Example feature repo: a video streaming platform's recommendation features.

One definition of every feature, used by the server (`featurewell serve --repo
examples/streaming_media`), by `featurewell materialize`, and offline by training code.
"""

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.definitions import (
    Bool,
    Embedding,
    Entity,
    Feature,
    FeatureView,
    Float32,
    Int64,
    ListOf,
    ParquetSource,
    Stats,
    String,
    on_demand,
)

GENRE_DIM = 32
Columns = Mapping[str, npt.NDArray[Any]]

user = Entity("user", join_keys={"user_id": String}, description="A viewer account")
item = Entity("item", join_keys={"item_id": String}, description="A title in the catalog")
user_item = Entity.composite("user_item", user, item, description="A viewer and a title")

user_activity = FeatureView(
    "user_activity",
    entity=user,
    version=1,
    max_age=timedelta(days=2),
    features=[
        Feature(
            "watch_count_7d",
            Int64,
            default=0,
            description="Titles watched in the last 7 days",
            expected=Stats(mean=10.0, std=3.0, min=1),
        ),
        Feature(
            "avg_watch_duration_min",
            Float32,
            default=0.0,
            description="Mean minutes per session over 30 days",
            expected=Stats(mean=40.0, std=9.5),
        ),
        Feature("preferred_hour", Int64, default=20, description="Hour of day with most watching"),
        Feature("last_watch_ts", Int64, default=0, description="Unix seconds of the last watch"),
        Feature("recent_genre_ids", ListOf(Int64), description="Genres of the last 5 titles"),
    ],
    source=ParquetSource("data/user_activity.parquet"),
    owner="recs-features@streaming.example",
    description="Viewing behaviour aggregates per user",
    tags={"team": "recommendations"},
)

# v1 (16-dim) is kept serving next to v2 (32-dim) for models trained on it: `@v1` pins it.
user_genre_preferences_v1 = FeatureView(
    "user_genre_preferences",
    entity=user,
    version=1,
    max_age=timedelta(days=7),
    features=[Feature("genre_vector", Embedding(16), description="Genre taste, 16-dim (legacy)")],
    source=ParquetSource("data/user_genre_preferences_v1.parquet"),
)
user_genre_preferences = FeatureView(
    "user_genre_preferences",
    entity=user,
    version=2,
    max_age=timedelta(days=7),
    features=[
        Feature(
            "genre_vector",
            Embedding(GENRE_DIM),
            description="Duration-weighted mean of watched titles' genre embeddings",
        ),
    ],
    source=ParquetSource("data/user_genre_preferences.parquet"),
)

item_stats = FeatureView(
    "item_stats",
    entity=item,
    max_age=timedelta(days=1),
    features=[
        # Heavy-tailed (Zipf): a normal approximation would read as drift. Its baseline comes
        # from training data instead: `featurewell baseline --repo examples/streaming_media`.
        Feature("popularity_score", Float32, description="Exponentially decayed view count"),
        Feature("watch_count_24h", Int64),
        Feature("duration_min", Float32, default=45.0),
    ],
    source=ParquetSource("data/item_stats.parquet"),
)

item_genre = FeatureView(
    "item_genre",
    entity=item,
    features=[
        Feature(
            "primary_genre",
            String,
            default="unknown",
            expected=Stats(categories={"drama": 0.25, "comedy": 0.16, "action": 0.11}),
        ),
        Feature("genre_embedding", Embedding(GENRE_DIM)),
    ],
    source=ParquetSource("data/item_genre.parquet"),
)

user_item_watch_progress = FeatureView(
    "user_item_watch_progress",
    entity=user_item,
    max_age=timedelta(days=30),
    retention=timedelta(days=90),
    features=[
        Feature("progress", Float32, default=0.0, description="Fraction of the title watched"),
        Feature("watched_minutes", Float32, default=0.0),
    ],
    source=ParquetSource("data/user_item_watch_progress.parquet"),
)


@on_demand(
    inputs={"pref": "user_genre_preferences:genre_vector", "genre": "item_genre:genre_embedding"},
    outputs=[Feature("genre_affinity", Float32)],
)
def user_item_affinity(x: Columns) -> Columns:
    """Cosine similarity of the user's taste and the title's genre embedding."""
    dot = (x["pref"] * x["genre"]).sum(axis=1)
    norms = np.linalg.norm(x["pref"], axis=1) * np.linalg.norm(x["genre"], axis=1)
    return {"genre_affinity": np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)}


@on_demand(
    inputs={"last_watch": "user_activity:last_watch_ts"},
    context={"request_ts": Int64},
    outputs=[Feature("hours_since_last_watch", Float32, default=-1.0)],
)
def recency(x: Columns) -> Columns:
    """Hours between the request time (Unix seconds) and the last watch; -1 if never."""
    hours = (x["request_ts"] - x["last_watch"]) / 3600.0
    return {"hours_since_last_watch": np.where(x["last_watch"] > 0, hours, -1.0)}


@on_demand(
    inputs={"preferred": "user_activity:preferred_hour"},
    context={"hour": Int64},
    outputs=[Feature("is_preferred_hour", Bool)],
)
def timing(x: Columns) -> Columns:
    """Whether the request's hour is within one hour of the user's preferred hour."""
    distance = np.abs(x["hour"] - x["preferred"]) % 24
    return {"is_preferred_hour": np.minimum(distance, 24 - distance) <= 1}
