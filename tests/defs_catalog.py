"""Definitions for the catalog, deprecation and impact tests: the shared test views plus views
with owners, tags and SLAs, and a deprecated version with its replacement. View names are
unique to these tests (the consumer counts in the shared cluster are global)."""

from __future__ import annotations

from datetime import date, timedelta

from featurewell.definitions import Deprecated, Feature, FeatureView, Float32, Int64, Registry
from tests import defs

REMOVAL = date(2027, 1, 31)

ranking_old = FeatureView(
    "cat_ranking",
    entity=defs.user,
    version=1,
    owner="team-rank",
    tags={"tier": "gold"},
    description="clicks, the old way",
    features=[Feature("clicks", Int64)],
    deprecated=Deprecated(replacement="cat_ranking@v2", removal_date=REMOVAL, reason="recount"),
)
ranking = FeatureView(
    "cat_ranking",
    entity=defs.user,
    version=2,
    owner="team-rank",
    tags={"tier": "gold", "pii": "no"},
    max_age=timedelta(hours=2),
    freshness_sla=timedelta(minutes=10),
    description="clicks, recounted",
    features=[Feature("clicks", Int64), Feature("ctr", Float32)],
)
items_side = FeatureView(
    "cat_items",
    entity=defs.item,
    owner="team-items",
    tags={"tier": "silver"},
    max_age=timedelta(days=1),
    features=[Feature("stock", Int64)],
)
never_read = FeatureView(
    "cat_forgotten",
    entity=defs.user,
    owner="team-rank",
    features=[Feature("x", Int64)],
)

VIEWS = [ranking_old, ranking, items_side, never_read]


def registry() -> Registry:
    base = defs.registry()
    return Registry.build(
        [*base.entities.values(), *base.views.values(), *base.transforms.values(), *VIEWS]
    )
