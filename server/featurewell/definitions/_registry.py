"""The registry: every definition of a feature repo, checked as a whole."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from featurewell.definitions._access import OPEN, Access, DefaultAccess, Team
from featurewell.definitions._entity import Entity
from featurewell.definitions._on_demand import OnDemandTransform
from featurewell.definitions._refs import FeatureRef, parse_view_ref
from featurewell.definitions._types import FeatureType
from featurewell.definitions._view import Feature, FeatureView
from featurewell.errors import DefinitionError, InvalidRequest, UnknownFeature

Definition = Entity | FeatureView | OnDemandTransform | Team | DefaultAccess
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, eq=False)
class Registry:
    """Entities, feature views (every version) and on-demand transforms, validated together.

    "view:feature" resolves to the view's default version: the highest one defined, unless
    `with_defaults` (a promote) chose another.
    """

    entities: dict[str, Entity]
    views: dict[tuple[str, int], FeatureView]
    transforms: dict[str, OnDemandTransform]
    default_versions: dict[str, int]
    join_keys: dict[str, FeatureType]
    root: Path | None = None
    teams: dict[str, Team] = dataclasses.field(default_factory=dict)
    default_access: Access = OPEN  # for views without access= (a DefaultAccess in the repo)

    def access(self, view: FeatureView) -> Access:
        """The policy in force for `view`: its own, else the repo's default."""
        return view.access if view.access is not None else self.default_access

    @classmethod
    def build(cls, definitions: Iterable[Definition], root: Path | None = None) -> Registry:
        entities: dict[str, Entity] = {}
        views: dict[tuple[str, int], FeatureView] = {}
        transforms: dict[str, OnDemandTransform] = {}
        teams: dict[str, Team] = {}
        defaults_access: list[DefaultAccess] = []
        for item in definitions:
            if isinstance(item, Entity):
                _add_unique(entities, item.name, item, f"entity {item.name!r}")
            elif isinstance(item, FeatureView):
                _add_unique(views, (item.name, item.version), item, f"feature view {item.ref!r}")
            elif isinstance(item, OnDemandTransform):
                _add_unique(transforms, item.name, item, f"on-demand transform {item.name!r}")
            elif isinstance(item, Team):
                _add_unique(teams, item.name, item, f"team {item.name!r}")
            elif isinstance(item, DefaultAccess):
                if defaults_access and defaults_access[0] is not item:
                    raise DefinitionError("the repo declares DefaultAccess twice; keep one")
                defaults_access.append(item)
            else:
                raise DefinitionError(
                    f"{item!r} is not an Entity, FeatureView or on-demand transform"
                )
        for view in views.values():  # views may name entities the repo never listed itself
            if entities.setdefault(view.entity.name, view.entity) is not view.entity:
                raise DefinitionError(
                    f"feature view {view.ref!r} uses another entity named {view.entity.name!r}"
                )
        join_keys: dict[str, FeatureType] = {}
        key_sets: dict[frozenset[str], Entity] = {}
        for entity in entities.values():
            for key, key_type in entity.join_keys.items():
                if join_keys.setdefault(key, key_type) != key_type:
                    raise DefinitionError(
                        f"join key {key!r} is {join_keys[key]} in one entity and {key_type} in "
                        f"entity {entity.name!r}: one key name, one type"
                    )
            previous = key_sets.setdefault(frozenset(entity.key_names), entity)
            if previous is not entity:
                raise DefinitionError(
                    f"entities {previous.name!r} and {entity.name!r} have the same join keys"
                )
        view_names = {name for name, _ in views}
        for name in transforms:
            if name in view_names:
                raise DefinitionError(f"{name!r} names both a feature view and a transform")
        defaults = {name: max(v for n, v in views if n == name) for name in view_names}
        default_access = defaults_access[0] if defaults_access else OPEN
        _check_teams(views.values(), default_access, teams)
        registry = cls(
            entities, views, transforms, defaults, join_keys, root, teams, default_access
        )
        for view in views.values():
            _check_replacement(registry, view)
        for transform in transforms.values():
            for alias, ref in transform.inputs.items():
                try:
                    registry.feature(FeatureRef.parse(ref))
                except (UnknownFeature, InvalidRequest) as exc:
                    raise DefinitionError(
                        f"on-demand transform {transform.name!r} input {alias!r}: {exc}"
                    ) from None
            for key in transform.context:
                if key in join_keys:
                    raise DefinitionError(
                        f"on-demand transform {transform.name!r}: context {key!r} is a join key"
                    )
        return registry

    def with_defaults(self, overrides: Mapping[str, int]) -> Registry:
        """This registry with `overrides` (view name -> version) as default versions, as
        `featurewell promote` sets them; other views (and versions not defined here) keep the
        highest version."""
        chosen = {
            name: max(v for n, v in self.views if n == name) for name in self.default_versions
        }
        chosen.update({n: v for n, v in overrides.items() if (n, v) in self.views})
        return dataclasses.replace(self, default_versions=chosen)

    def view(self, name: str, version: int | None = None) -> FeatureView:
        """The view `name` at `version` (default version when None)."""
        if name not in self.default_versions:
            raise UnknownFeature(f"no feature view {name!r}; known views: {self._known_views()}")
        resolved = self.default_versions[name] if version is None else version
        found = self.views.get((name, resolved))
        if found is None:
            versions = sorted(v for n, v in self.views if n == name)
            raise UnknownFeature(
                f"feature view {name!r} has no version {resolved}; it has {versions}"
            )
        return found

    def feature(self, ref: FeatureRef) -> tuple[FeatureView, Feature]:
        """The view and feature a single-feature reference names."""
        view = self.view(ref.table, ref.version)
        position = view.feature_index.get(ref.field)
        if position is None:
            raise UnknownFeature(
                f"feature view {view.ref!r} has no feature {ref.field!r}; "
                f"it has {list(view.feature_index)}"
            )
        return view, view.features[position]

    def transform(self, name: str) -> OnDemandTransform | None:
        return self.transforms.get(name)

    def _known_views(self) -> list[str]:
        return sorted(self.default_versions) + sorted(self.transforms)


def _check_teams(
    views: Iterable[FeatureView], default_access: Access, teams: Mapping[str, Team]
) -> None:
    """Every `team:<name>` a policy names is declared: a typo must not silently deny."""
    policies: list[tuple[str, Access]] = [("DefaultAccess", default_access)]
    policies += [(f"feature view {v.ref!r}", v.access) for v in views if v.access is not None]
    for where, access in policies:
        missing = sorted(access.teams() - set(teams))
        if missing:
            raise DefinitionError(
                f"{where}: access names teams {missing} that the repo does not declare; add "
                f"Team(name, members=[...]) for each (declared: {sorted(teams)})"
            )


def _check_replacement(registry: Registry, view: FeatureView) -> None:
    """A deprecated view's replacement must be a view version the repo defines."""
    if view.deprecated is None or not view.deprecated.replacement:
        return
    replacement = view.deprecated.replacement
    try:
        name, version = parse_view_ref(replacement)
        registry.view(name, version)
    except (UnknownFeature, InvalidRequest) as exc:
        raise DefinitionError(
            f"feature view {view.ref!r} is deprecated for {replacement!r}, which is not a view "
            f"the repo defines ({exc}); name it 'view' or 'view@vN'"
        ) from None
    if (name, version or registry.default_versions[name]) == (view.name, view.version):
        raise DefinitionError(f"feature view {view.ref!r} is deprecated for itself")


def _add_unique(table: dict[K, V], key: K, item: V, what: str) -> None:
    if table.setdefault(key, item) is not item:
        raise DefinitionError(f"{what} is defined twice")
