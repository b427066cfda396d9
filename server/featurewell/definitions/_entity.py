"""Entities: what features describe, identified by one or more join keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from featurewell.definitions._names import check_name
from featurewell.definitions._types import KEY_TYPES, FeatureType
from featurewell.errors import DefinitionError


@dataclass(frozen=True, eq=False)
class Entity:
    """An entity such as a user or an item.

    `join_keys` maps each key column name to its type (Int64 or String). Several keys make a
    composite entity (`user_item` keyed by `user_id` and `item_id`); `Entity.composite` builds one
    from existing entities.
    """

    name: str
    join_keys: Mapping[str, FeatureType]
    description: str = ""
    key_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        check_name(self.name, "entity")
        if not isinstance(self.join_keys, Mapping) or not self.join_keys:
            raise DefinitionError(
                f"entity {self.name!r} needs join_keys, e.g. {{'{self.name}_id': String}}"
            )
        for key, key_type in self.join_keys.items():
            check_name(key, f"entity {self.name!r} join key")
            if key_type not in KEY_TYPES:
                raise DefinitionError(
                    f"entity {self.name!r} join key {key!r} has type {key_type}: "
                    "keys must be Int64 or String"
                )
        object.__setattr__(self, "join_keys", dict(self.join_keys))
        object.__setattr__(self, "key_names", tuple(self.join_keys))

    @classmethod
    def composite(cls, name: str, *parts: Entity, description: str = "") -> Entity:
        """An entity keyed by the join keys of `parts`, in order (e.g. user_item)."""
        if len(parts) < 2:
            raise DefinitionError(f"composite entity {name!r} needs at least two entities")
        keys: dict[str, FeatureType] = {}
        for part in parts:
            for key, key_type in part.join_keys.items():
                if key in keys:
                    raise DefinitionError(f"composite entity {name!r} repeats join key {key!r}")
                keys[key] = key_type
        return cls(name, keys, description)

    @property
    def is_composite(self) -> bool:
        return len(self.key_names) > 1
