"""The feature definitions the tests serve: every value type, a composite entity, two versions of
one view, max ages, retention and on-demand transforms."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.client import FeatureClient, WriteResult
from featurewell.definitions import (
    Bool,
    Embedding,
    Entity,
    Feature,
    FeatureView,
    Float32,
    Float64,
    Int64,
    ListOf,
    Registry,
    String,
    on_demand,
)

Columns = Mapping[str, npt.NDArray[Any]]

user = Entity("user", join_keys={"user_id": String})
item = Entity("item", join_keys={"item_id": Int64})
user_item = Entity.composite("user_item", user, item)

profile_v1 = FeatureView(
    "profile",
    entity=user,
    version=1,
    features=[Feature("age", Int64, default=-1), Feature("score", Float32)],
)
profile = FeatureView(
    "profile",
    entity=user,
    version=2,
    max_age=timedelta(hours=1),
    features=[
        Feature("age", Int64, default=-1),
        Feature("score", Float64, default=0.5),
        Feature("premium", Bool),
        Feature("country", String, default="zz"),
        Feature("taste", Embedding(4), default=[0.0, 0.0, 0.0, 1.0]),
        Feature("recent", ListOf(Int64)),
        Feature("weights", ListOf(Float64), default=[1.0]),
    ],
)
item_stats = FeatureView(
    "item_stats",
    entity=item,
    max_age=timedelta(days=1),
    features=[Feature("popularity", Float32), Feature("vec", Embedding(4))],
)
pair = FeatureView(
    "pair",
    entity=user_item,
    retention=timedelta(days=1),
    features=[Feature("progress", Float32, default=0.0)],
)


@on_demand(
    inputs={"taste": "profile:taste", "vec": "item_stats:vec"},
    outputs=[Feature("affinity", Float32)],
)
def affinity(x: Columns) -> Columns:
    return {"affinity": (x["taste"] * x["vec"]).sum(axis=1)}


@on_demand(
    inputs={"age": "profile:age"},
    context={"year": Int64},
    outputs=[Feature("birth_year", Int64), Feature("adult", Bool)],
)
def birth(x: Columns) -> Columns:
    return {"birth_year": x["year"] - x["age"], "adult": x["age"] >= 18}


def registry() -> Registry:
    return Registry.build(
        [user, item, user_item, profile_v1, profile, item_stats, pair, affinity, birth]
    )


def now_us() -> int:
    return time.time_ns() // 1000


def write_profiles(
    client: FeatureClient,
    user_ids: Sequence[str],
    *,
    ages: Sequence[int],
    at_us: int | None = None,
    taste: npt.NDArray[Any] | None = None,
) -> WriteResult:
    n = len(user_ids)
    taste = taste if taste is not None else np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1))
    recent_flat = np.arange(n * 2, dtype=np.int64)
    return client.write_features(
        "profile",
        entities={"user_id": list(user_ids)},
        event_timestamps_us=[at_us or now_us()] * n,
        features={  # every type, inferred from the dtypes
            "age": np.asarray(ages, dtype=np.int64),
            "score": np.asarray(ages, dtype=np.float64) / 100,
            "premium": np.asarray(ages, dtype=np.int64) % 2 == 0,
            "country": [f"c{a}" for a in ages],
            "taste": taste,  # 2-D float32: an embedding
            "recent": (recent_flat, np.arange(0, 2 * n + 1, 2)),  # (flat, offsets): int64 lists
            "weights": [np.ones(1, np.float64) for _ in range(n)],  # one row each: float64 lists
        },
    )


def write_items(
    client: FeatureClient, item_ids: Sequence[int], *, at_us: int | None = None
) -> WriteResult:
    n = len(item_ids)
    ids = np.asarray(item_ids, dtype=np.int64)
    vectors = np.zeros((n, 4), dtype=np.float32)
    vectors[:, 0] = ids % 7
    return client.write_features(
        "item_stats",
        entities={"item_id": ids.tolist()},
        event_timestamps_us=[at_us or now_us()] * n,
        features={
            "popularity": (ids % 100).astype(np.float32) / 100,
            "vec": vectors,
        },
    )
