"""Features and feature views: typed columns stored together for one entity, versioned."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from featurewell.definitions._access import Access
from featurewell.definitions._computed import Aggregation, EventSource
from featurewell.definitions._entity import Entity
from featurewell.definitions._names import check_name
from featurewell.definitions._options import check_options
from featurewell.definitions._types import FeatureType, Kind
from featurewell.errors import DefinitionError


@dataclass(frozen=True, slots=True)
class Stats:
    """Expected statistics of a feature in training data: the drift baseline when no baseline
    file computed from a training set (`featurewell baseline`) is given.

    Numeric features take `mean` and `std` (drift compares the served distribution with a
    normal one of those moments, cut at `min`/`max`); string features take `categories`, the
    expected share of each category (the rest counts as "other"). `default_rate` is the
    expected share of rows served the default (entity unknown to the store).
    """

    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    categories: Mapping[str, float] = field(default_factory=dict)
    default_rate: float | None = None


@dataclass(frozen=True, eq=False)
class Feature:
    """One feature: a name, a type, and the default served when an entity has no value.

    Write options (docs/security/writes.md): `allow_non_finite` lets a float feature hold
    NaN and infinities (refused by default); `nulls` says what `featurewell materialize` does
    with a null in the source column: "reject" the file (default), write the "default", or
    "skip_row"; `max_length` bounds the items of a ListOf feature's rows.
    """

    name: str
    dtype: FeatureType
    default: Any = None
    description: str = ""
    expected: Stats | None = None
    computed: Aggregation | None = None  # how a view with events= computes it
    allow_non_finite: bool = False
    nulls: str = "reject"
    max_length: int | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "feature")
        if not isinstance(self.dtype, FeatureType):
            raise DefinitionError(
                f"feature {self.name!r} has dtype {self.dtype!r}: use Int64, Float32, Float64, "
                "Bool, String, Embedding(dim) or ListOf(...) from featurewell.definitions"
            )
        default = (
            self.dtype.zero()
            if self.default is None
            else self.dtype.coerce(self.default, f"default of feature {self.name!r}")
        )
        object.__setattr__(self, "default", default)
        check_options(self.name, self.dtype, self.allow_non_finite, self.nulls, self.max_length)
        if self.expected is not None:
            _check_stats(self.name, self.dtype, self.expected)


def _check_stats(name: str, dtype: FeatureType, stats: Stats) -> None:
    where = f"expected statistics of feature {name!r}"
    if not isinstance(stats, Stats):
        raise DefinitionError(f"{where} must be a Stats, got {stats!r}")
    numeric = (stats.mean, stats.std, stats.min, stats.max) != (None, None, None, None)
    if dtype.kind is Kind.STRING and numeric:
        raise DefinitionError(f"{where}: a string feature takes categories, not mean/std/min/max")
    if dtype.kind is not Kind.STRING and stats.categories:
        raise DefinitionError(f"{where}: categories are for string features; use mean/std")
    if (stats.mean is None) != (stats.std is None):
        raise DefinitionError(f"{where}: give mean and std together")
    if stats.std is not None and stats.std < 0:
        raise DefinitionError(f"{where}: std must not be negative")
    if None not in (stats.min, stats.max) and stats.min > stats.max:  # type: ignore[operator]
        raise DefinitionError(f"{where}: min is above max")
    shares = list(stats.categories.values())
    if any(not 0 <= share <= 1 for share in shares) or sum(shares) > 1 + 1e-6:
        raise DefinitionError(f"{where}: category shares must be in [0, 1] and sum to at most 1")
    if stats.default_rate is not None and not 0 <= stats.default_rate <= 1:
        raise DefinitionError(f"{where}: default_rate must be in [0, 1]")


def _check_computed(
    where: str,
    entity: Entity,
    features: tuple[Feature, ...],
    events: EventSource | None,
    source: ParquetSource | None,
    tile: timedelta,
) -> None:
    computed = [f.name for f in features if f.computed is not None]
    if events is None:
        if computed:
            raise DefinitionError(
                f"{where}: features {computed} are computed but the view has no events=; "
                "give it the EventSource they aggregate"
            )
        return
    if not isinstance(events, EventSource):
        raise DefinitionError(f"{where}: events must be an EventSource, got {events!r}")
    if source is not None:
        raise DefinitionError(f"{where}: rows come from events= or source=, not both")
    if not isinstance(tile, timedelta) or tile <= timedelta(0) or timedelta(days=1) % tile:
        raise DefinitionError(f"{where}: tile must divide a day (e.g. 1 minute, 1 hour)")
    plain = [f.name for f in features if f.computed is None]
    if plain:
        raise DefinitionError(
            f"{where}: a view computed from events computes every feature; {plain} have no "
            "computed=; move them to another view"
        )
    for key, key_type in entity.join_keys.items():
        if events.keys.get(key) != key_type:
            raise DefinitionError(
                f"{where}: event source {events.name!r} needs key column {key!r} ({key_type}) "
                f"for entity {entity.name!r}; its keys are {sorted(events.keys)}"
            )
    for feature in features:
        assert feature.computed is not None
        if not isinstance(feature.computed, Aggregation):
            raise DefinitionError(
                f"{where}: feature {feature.name!r}: computed= takes Count, Sum, Mean, Min, "
                "Max, Last, DecayedSum or Mode"
            )
        feature.computed.check(feature.name, feature.dtype, events, tile)


def _check_deprecated(where: str, deprecated: Deprecated | None) -> None:
    if deprecated is None:
        return
    if not isinstance(deprecated, Deprecated):
        raise DefinitionError(
            f"{where}: deprecated= takes Deprecated(replacement=..., removal_date=...), got "
            f"{deprecated!r}"
        )
    if not isinstance(deprecated.replacement, str) or not isinstance(deprecated.reason, str):
        raise DefinitionError(f"{where}: Deprecated replacement and reason must be strings")
    day = deprecated.removal_date
    if day is not None and not (isinstance(day, date) and not isinstance(day, datetime)):
        raise DefinitionError(
            f"{where}: Deprecated removal_date must be a datetime.date, e.g. date(2027, 1, 31)"
        )
    if any(c in deprecated.replacement + deprecated.reason for c in "\r\n"):
        raise DefinitionError(f"{where}: Deprecated texts must be one line (they go in metadata)")


@dataclass(frozen=True, slots=True)
class Deprecated:
    """Marks a view version deprecated: reads of it still work, but are counted
    (`featurewell_deprecated_reads_total`), flagged to the caller in the trailing metadata
    `x-featurewell-deprecated` (`result.deprecations` in the client) and listed by `featurewell
    impact`. `replacement` names what to read instead ("view@v2", or "view" for its default),
    `removal_date` the day it stops being served, `reason` why."""

    replacement: str = ""
    removal_date: date | None = None
    reason: str = ""

    def notice(self, ref: str) -> str:
        """`view@v1 -> view@v2 on 2027-01-31`, the text callers see."""
        text = ref
        if self.replacement:
            text += f" -> {self.replacement}"
        if self.removal_date is not None:
            text += f" on {self.removal_date.isoformat()}"
        return text


def _check_access(where: str, access: Access | None, index: Mapping[str, int]) -> None:
    if access is None:
        return
    if not isinstance(access, Access):
        raise DefinitionError(f"{where}: access must be an Access, got {access!r}")
    unknown = sorted(set(access.features) - set(index))
    if unknown:
        raise DefinitionError(
            f"{where}: access names features {unknown} the view does not have; it has {list(index)}"
        )


@dataclass(frozen=True, slots=True)
class ParquetSource:
    """Rows for `featurewell materialize`: join keys, a timestamp column and one column per
    feature. A relative path is resolved against the feature repo's folder."""

    path: str
    timestamp_field: str = "event_time"


@dataclass(frozen=True, eq=False)
class FeatureView:
    """Features of one entity stored and served together, under an integer version.

    `max_age`: values older than this are served flagged STALE (freshness).
    `retention`: keys expire this long after their event time (storage); separate on purpose.
    `freshness_sla`: the newest event written to the view must be younger than this, or the
    freshness alert fires (a writer stopped); defaults to `max_age`.
    A schema change must come with a new `version`; old versions keep serving side by side.
    """

    name: str
    entity: Entity
    features: Sequence[Feature]
    version: int = 1
    max_age: timedelta | None = None
    retention: timedelta | None = None
    freshness_sla: timedelta | None = None
    source: ParquetSource | None = None
    events: EventSource | None = None
    tile: timedelta = timedelta(hours=1)
    owner: str = ""
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    deprecated: Deprecated | None = None
    access: Access | None = None  # who may read/write it (definitions/_access.py); None: default
    feature_index: Mapping[str, int] = field(init=False)

    def __post_init__(self) -> None:
        check_name(self.name, "feature view")
        where = f"feature view {self.name!r} v{self.version}"
        if not isinstance(self.entity, Entity):
            raise DefinitionError(f"{where}: entity must be an Entity, got {self.entity!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise DefinitionError(f"{where}: version must be an int")
        if self.version < 1:
            raise DefinitionError(f"{where}: version must be 1 or more")
        features = tuple(self.features)
        if not features:
            raise DefinitionError(f"{where} has no features")
        index: dict[str, int] = {}
        for position, feature in enumerate(features):
            if not isinstance(feature, Feature):
                raise DefinitionError(f"{where}: {feature!r} is not a Feature")
            if feature.name in index:
                raise DefinitionError(f"{where} defines feature {feature.name!r} twice")
            if feature.name in self.entity.join_keys:
                raise DefinitionError(f"{where}: feature {feature.name!r} shadows a join key")
            index[feature.name] = position
        ages = (
            ("max_age", self.max_age),
            ("retention", self.retention),
            ("freshness_sla", self.freshness_sla),
        )
        for label, age in ages:
            if age is not None and (not isinstance(age, timedelta) or age <= timedelta(0)):
                raise DefinitionError(f"{where}: {label} must be a positive timedelta")
        _check_computed(where, self.entity, features, self.events, self.source, self.tile)
        _check_deprecated(where, self.deprecated)
        _check_access(where, self.access, index)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "feature_index", index)
        object.__setattr__(self, "tags", dict(self.tags))

    @property
    def sla(self) -> timedelta | None:
        """The freshness SLA in force: `freshness_sla`, else `max_age`, else none."""
        return self.freshness_sla or self.max_age

    @property
    def ref(self) -> str:
        """`name@vN`, the view's fully qualified name."""
        return f"{self.name}@v{self.version}"
