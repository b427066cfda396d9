"""Example feature repo: a video streaming platform's recommendation features.

One definition of every feature, used by the server (`featurewell serve --repo
examples/streaming_media`), the streaming engine (`featurewell stream --source watches`), the
batch engine (`featurewell backfill`, `featurewell materialize`) and training code.

Behaviour is computed from one event log, `watches`: every view below with `events=watches` is
an aggregation over it, never a hand-written table. The catalog (`item_genre`) is reference data
loaded from Parquet, and `user_session` is pushed by the player service (`WriteFeatures`).
"""

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.definitions import (
    Bool,
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
    Mean,
    Mode,
    ParquetSource,
    Stats,
    String,
    Sum,
    on_demand,
)

GENRES = (
    "drama",
    "comedy",
    "action",
    "thriller",
    "documentary",
    "animation",
    "horror",
    "romance",
    "sci_fi",
    "crime",
    "family",
    "reality",
)
GENRE_DIM = 32
# Each genre's direction in taste space (fixed: models are trained on these axes).
_axes = np.random.default_rng(2024).normal(size=(len(GENRES), GENRE_DIM))
GENRE_VECTORS = _axes / np.linalg.norm(_axes, axis=1, keepdims=True)
Columns = Mapping[str, npt.NDArray[Any]]
HOUR_US = 3_600_000_000

user = Entity("user", join_keys={"user_id": String}, description="A viewer account")
item = Entity("item", join_keys={"item_id": String}, description="A title in the catalog")
user_item = Entity.composite("user_item", user, item, description="A viewer and a title")

watches = EventSource(
    "watches",
    keys={"user_id": String, "item_id": String},
    fields={
        "minutes": Float64,  # watched in this session
        "title_min": Float64,  # the title's length, as the player reports it
        "genre": Int64,  # the title's primary genre: an index into GENRES
    },
    partitions=4,  # Redis Streams fw:events:watches:0..3, by user
    parquet="data/watches.parquet",
    description="One event per viewing session, sent by the player when it ends",
)


def _hour_of_day(e: Columns) -> Any:
    return (e["event_time"] // HOUR_US) % 24


def _genre_vector(e: Columns) -> Any:
    return GENRE_VECTORS[e["genre"]]


user_activity = FeatureView(
    "user_activity",
    entity=user,
    version=1,
    max_age=timedelta(days=2),
    events=watches,
    tile=timedelta(hours=1),
    features=[
        Feature(
            "watch_count_7d",
            Int64,
            default=0,
            description="Sessions in the last 7 days",
            expected=Stats(mean=3.3, std=2.8, min=0),
            computed=Count(window=timedelta(days=7)),
        ),
        Feature(
            "avg_watch_duration_min",
            Float32,
            default=0.0,
            description="Mean minutes per session over 30 days",
            expected=Stats(mean=29.0, std=7.4),
            computed=Mean("minutes", window=timedelta(days=30)),
        ),
        Feature(
            "preferred_hour",
            Int64,
            default=20,
            description="Hour of day (UTC) with most sessions over 30 days",
            computed=Mode(_hour_of_day, categories=24, window=timedelta(days=30)),
        ),
        Feature(
            "last_watch_ts",
            Int64,
            default=0,
            description="Unix seconds of the last session",
            computed=Last(lambda e: e["event_time"] // 1_000_000),
        ),
        Feature(
            "last_genre",
            Int64,
            default=-1,
            description="Genre of the last title watched",
            computed=Last("genre"),
        ),
    ],
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
    events=watches,
    tile=timedelta(days=1),
    features=[
        Feature(
            "genre_vector",
            Embedding(16),
            description="Genre taste, 16-dim (legacy)",
            computed=Mean(
                lambda e: GENRE_VECTORS[e["genre"], :16],
                weight="minutes",
                window=timedelta(days=30),
            ),
        )
    ],
)
user_genre_preferences = FeatureView(
    "user_genre_preferences",
    entity=user,
    version=2,
    max_age=timedelta(days=7),
    events=watches,
    tile=timedelta(days=1),
    features=[
        Feature(
            "genre_vector",
            Embedding(GENRE_DIM),
            description="Minutes-weighted mean of watched titles' genre vectors over 30 days",
            computed=Mean(_genre_vector, weight="minutes", window=timedelta(days=30)),
        ),
    ],
)

item_stats = FeatureView(
    "item_stats",
    entity=item,
    max_age=timedelta(days=1),
    events=watches,
    tile=timedelta(hours=1),
    features=[
        # Heavy-tailed (Zipf): a normal approximation would read as drift. Its baseline comes
        # from training data instead: `featurewell baseline --repo examples/streaming_media`.
        Feature(
            "popularity_score",
            Float32,
            description="Sessions decayed by age (half-life 1 day) over 7 days",
            computed=DecayedSum(half_life=timedelta(days=1), window=timedelta(days=7)),
        ),
        Feature("watch_count_24h", Int64, computed=Count(window=timedelta(days=1))),
        Feature(
            "duration_min",
            Float32,
            default=45.0,
            description="The title's length, as last reported by a player",
            computed=Last("title_min"),
        ),
    ],
)

user_item_watch_progress = FeatureView(
    "user_item_watch_progress",
    entity=user_item,
    max_age=timedelta(days=30),
    retention=timedelta(days=90),
    events=watches,
    tile=timedelta(days=1),
    features=[
        Feature(
            "progress",
            Float32,
            default=0.0,
            description="Fraction of the title watched in the last session",
            computed=Last(lambda e: np.minimum(e["minutes"] / e["title_min"], 1.0)),
        ),
        Feature(
            "watched_minutes",
            Float32,
            default=0.0,
            description="Minutes watched over 30 days",
            computed=Sum("minutes", window=timedelta(days=30)),
        ),
    ],
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
    description="Catalog data: loaded from Parquet by `featurewell materialize`",
)

user_session = FeatureView(
    "user_session",
    entity=user,
    max_age=timedelta(hours=1),
    features=[
        Feature("device", String, default="unknown", description="tv, phone, tablet or web"),
        Feature("session_minutes", Float32, default=0.0, description="Minutes in this session"),
    ],
    description="Pushed by the player service with WriteFeatures while a session runs",
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
