"""Feature definitions as code: entities, versioned feature views, on-demand transforms.

A feature repo is a Python module built from these objects; the server, the writers and training
all load the same module, so there is one definition of every feature::

    from datetime import timedelta
    from featurewell.definitions import Entity, Feature, FeatureView, Float32, Int64, String

    user = Entity("user", join_keys={"user_id": String})
    user_stats = FeatureView(
        "user_stats", entity=user, version=2, max_age=timedelta(days=2),
        features=[Feature("watch_count_7d", Int64, default=0)],
    )
"""

from featurewell.definitions._access import Access, DefaultAccess, Team
from featurewell.definitions._computed import (
    Aggregation,
    Count,
    DecayedSum,
    EventSource,
    Last,
    Max,
    Mean,
    Min,
    Mode,
    Sum,
)
from featurewell.definitions._entity import Entity
from featurewell.definitions._loader import load_repo, repo_fingerprint
from featurewell.definitions._on_demand import OnDemandTransform, on_demand
from featurewell.definitions._refs import FeatureRef, parse_view_ref
from featurewell.definitions._registry import Registry
from featurewell.definitions._types import (
    Bool,
    Embedding,
    FeatureType,
    Float32,
    Float64,
    Int64,
    Kind,
    ListOf,
    String,
)
from featurewell.definitions._view import (
    Deprecated,
    Feature,
    FeatureView,
    ParquetSource,
    Stats,
)

__all__ = [
    "Access",
    "DefaultAccess",
    "Team",
    "Aggregation",
    "Bool",
    "Count",
    "DecayedSum",
    "Deprecated",
    "EventSource",
    "Last",
    "Max",
    "Mean",
    "Min",
    "Mode",
    "Sum",
    "Embedding",
    "Entity",
    "Feature",
    "FeatureRef",
    "FeatureType",
    "FeatureView",
    "Float32",
    "Float64",
    "Int64",
    "Kind",
    "ListOf",
    "OnDemandTransform",
    "ParquetSource",
    "Registry",
    "Stats",
    "String",
    "load_repo",
    "repo_fingerprint",
    "on_demand",
    "parse_view_ref",
]
