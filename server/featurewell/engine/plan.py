"""Turning a list of feature references into a read plan, once per distinct list.

Model servers send the same reference list on every call, so plans are cached: the per-call cost
of resolving `user_stats:*` is a dict lookup.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from featurewell.definitions import (
    Entity,
    Feature,
    FeatureRef,
    FeatureType,
    FeatureView,
    OnDemandTransform,
    Registry,
)
from featurewell.errors import InvalidRequest, UnknownFeature
from featurewell.store.codec import RowCodec


@dataclass(frozen=True, eq=False)
class ViewRead:
    """One feature view version to fetch for every row of its entity."""

    view: FeatureView
    codec: RowCodec
    max_age_us: int  # 0: never stale
    cache_ttl_s: float  # how long a row may answer from the hot-key cache; 0: not cached


@dataclass(frozen=True, slots=True)
class Output:
    """A column of the response: `feature` of a view read, or `feature` of a transform."""

    name: str
    feature: Feature
    read: ViewRead | None = None
    transform: OnDemandTransform | None = None


@dataclass(frozen=True, slots=True)
class TransformStep:
    """An on-demand transform with its inputs resolved: (alias, view read, feature name)."""

    transform: OnDemandTransform
    inputs: tuple[tuple[str, ViewRead, str], ...]


@dataclass(frozen=True)
class EntityGroup:
    """The views read for one entity, fetched together (one MGET per entity row), and the
    features each of them must decode."""

    entity: Entity
    reads: tuple[ViewRead, ...]
    wanted: tuple[frozenset[str], ...]

    @functools.cached_property
    def views(self) -> tuple[FeatureView, ...]:
        return tuple(read.view for read in self.reads)

    @functools.cached_property
    def cache_ttl_s(self) -> float:
        """How long the group's rows (read together, cached together) may answer from the
        cache: the shortest of its views' TTLs; 0 if any view is not cached."""
        return min(read.cache_ttl_s for read in self.reads)


@dataclass(frozen=True, eq=False)
class Plan:
    groups: tuple[EntityGroup, ...]
    transforms: tuple[TransformStep, ...]
    outputs: tuple[Output, ...]
    context: dict[str, FeatureType]

    @functools.cached_property
    def entities(self) -> tuple[Entity, ...]:
        return tuple(group.entity for group in self.groups)


class Planner:
    """Resolves references against one registry; a registry reload builds a new planner."""

    def __init__(
        self,
        registry: Registry,
        *,
        cache_ttl_s: float = 0.0,
        cache_ttl_fraction: float = 0.1,
        max_cached: int = 4096,
    ) -> None:
        self.registry = registry
        self._cache_ttl_s = cache_ttl_s
        self._cache_ttl_fraction = cache_ttl_fraction
        self._reads: dict[tuple[str, int], ViewRead] = {}
        self._cache: dict[tuple[str, ...], Plan] = {}
        self._max_cached = max_cached

    def plan(self, references: Sequence[str]) -> Plan:
        key = tuple(references)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        plan = self._build(key)
        if len(self._cache) >= self._max_cached:
            self._cache.clear()  # a client generating endless distinct lists: keep memory bounded
        self._cache[key] = plan
        return plan

    def cached_references(self) -> list[tuple[str, ...]]:
        """The reference lists planned so far, to warm up the planner of a reloaded registry."""
        return list(self._cache)

    def read_of(self, view: FeatureView) -> ViewRead:
        key = (view.name, view.version)
        read = self._reads.get(key)
        if read is None:
            max_age_us = int(view.max_age.total_seconds() * 1e6) if view.max_age else 0
            ttl = self._cache_ttl_s
            if view.max_age:  # a cached row must never be the reason a value goes stale
                ttl = min(ttl, self._cache_ttl_fraction * view.max_age.total_seconds())
            read = ViewRead(view, RowCodec(view), max_age_us, ttl)
            self._reads[key] = read
        return read

    def _build(self, references: tuple[str, ...]) -> Plan:
        if not references:
            raise InvalidRequest("no features requested: list references such as 'view:feature'")
        outputs: dict[str, Output] = {}
        reads: dict[int, ViewRead] = {}
        transforms: dict[str, OnDemandTransform] = {}
        for text in references:
            ref = FeatureRef.parse(text)
            transform = self.registry.transform(ref.table)
            if transform is not None:
                if ref.version is not None:
                    raise InvalidRequest(f"{text!r}: on-demand transforms have no versions")
                transforms[transform.name] = transform
                for output in _select(transform.outputs, transform.output_index, ref, text):
                    name = f"{transform.name}:{output.name}"
                    outputs.setdefault(name, Output(name, output, transform=transform))
                continue
            view = self.registry.view(ref.table, ref.version)
            read = reads.setdefault(id(view), self.read_of(view))
            version = f"@v{ref.version}" if ref.version is not None else ""
            for feature in _select(view.features, view.feature_index, ref, text):
                name = f"{view.name}{version}:{feature.name}"
                outputs.setdefault(name, Output(name, feature, read=read))
        context: dict[str, FeatureType] = {}
        steps: list[TransformStep] = []
        for transform in transforms.values():
            inputs: list[tuple[str, ViewRead, str]] = []
            for alias, text in transform.inputs.items():
                view, feature = self.registry.feature(FeatureRef.parse(text))
                inputs.append((alias, reads.setdefault(id(view), self.read_of(view)), feature.name))
            steps.append(TransformStep(transform, tuple(inputs)))
            context.update(transform.context)
        wanted: dict[int, set[str]] = {id(read): set() for read in reads.values()}
        for column in outputs.values():
            if column.read is not None:
                wanted[id(column.read)].add(column.feature.name)
        for step in steps:
            for _, read, feature_name in step.inputs:
                wanted[id(read)].add(feature_name)
        by_entity: dict[int, list[ViewRead]] = {}
        for read in reads.values():
            by_entity.setdefault(id(read.view.entity), []).append(read)
        groups = tuple(
            EntityGroup(
                members[0].view.entity,
                tuple(members),
                tuple(frozenset(wanted[id(read)]) for read in members),
            )
            for members in by_entity.values()
        )
        return Plan(groups, tuple(steps), tuple(outputs.values()), context)


def _select(
    features: Sequence[Feature], index: Mapping[str, int], ref: FeatureRef, text: str
) -> Sequence[Feature]:
    if ref.field == "*":
        return features
    position = index.get(ref.field)
    if position is None:
        raise UnknownFeature(
            f"{text!r}: {ref.table!r} has no feature {ref.field!r}; it has {list(index)}"
        )
    return [features[position]]
