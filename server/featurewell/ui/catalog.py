"""What the UI's catalog and view pages show, from the definitions and what Redis records
(promoted defaults and their history, callers): plain data for the templates, no HTTP.

A view's status: `active` when it is the version `view:feature` serves (declared or promoted),
`staging` when it is a newer version not promoted yet, `superseded` when an older one, and
`deprecated` when it is marked so (`deprecated=Deprecated(...)`, or the tag `status=deprecated`),
whatever its version.
Its team is `tags["team"]`, else the teams its read policy names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from featurewell.definitions import FeatureView, Registry
from featurewell.definitions._access import TEAM_PREFIX
from featurewell.lifecycle.lineage import aggregation, describe
from featurewell.store.versions import Change
from featurewell.telemetry.consumers import Consumer

STATUSES = ("active", "staging", "superseded", "deprecated")
FILTERS = ("q", "owner", "team", "tag", "entity", "status")
MAX_SHOWN_ITEMS = 8  # an embedding's default shows its first values, then how many more

# May `principal` read feature `name` of `view`? None: everything is readable (auth off).
CanRead = Callable[[FeatureView, str], bool]


@dataclass(frozen=True)
class FeatureRow:
    name: str
    dtype: str
    default: str
    description: str
    computed: str


@dataclass(frozen=True)
class Entry:
    """One view version in the catalog."""

    name: str
    version: int
    ref: str
    status: str
    owner: str
    team: str
    tags: dict[str, str]
    entity: str
    description: str
    freshness_sla_s: float | None
    features: list[FeatureRow]

    def matches(self, chosen: Mapping[str, str]) -> bool:
        """Whether the entry passes every filter given (empty values are no filter)."""
        query = chosen.get("q", "").strip().lower()
        if query and not any(
            query in text.lower()
            for text in (self.ref, self.description, *(f.name for f in self.features))
        ):
            return False
        tag = chosen.get("tag", "")
        if tag:
            key, _, value = tag.partition("=")
            if key not in self.tags or (value and self.tags[key] != value):
                return False
        return all(
            not chosen.get(name) or chosen[name] == getattr(self, name)
            for name in ("owner", "team", "entity", "status")
        )


@dataclass(frozen=True)
class ViewPage:
    entry: Entry
    keys: list[str]
    source: str
    definition: str
    transforms: list[str]
    versions: list[Entry]
    history: list[dict[str, str]]
    callers: list[dict[str, Any]] = field(default_factory=list)


def entries(
    registry: Registry, promoted: Mapping[str, int], can_read: CanRead | None
) -> list[Entry]:
    """Every view version `can_read` lets the principal see (with the features it may read),
    by name then version."""
    serving = registry.with_defaults(promoted)
    out = []
    for (name, _version), view in sorted(registry.views.items()):
        features = [f for f in view.features if can_read is None or can_read(view, f.name)]
        if not features:
            continue  # nothing of it is readable: the API would refuse every reference
        out.append(_entry(registry, view, serving.default_versions[name], features))
    return out


def choices(found: Iterable[Entry]) -> dict[str, list[str]]:
    """The values each filter can take, for the filter form's lists."""
    found = list(found)
    tags = {f"{k}={v}" for e in found for k, v in e.tags.items()}
    return {
        "owner": sorted({e.owner for e in found if e.owner}),
        "team": sorted({e.team for e in found if e.team}),
        "tag": sorted(tags),
        "entity": sorted({e.entity for e in found}),
        "status": [s for s in STATUSES if any(e.status == s for e in found)],
    }


def view_page(
    registry: Registry,
    visible: list[Entry],
    ref: str,
    promoted: Mapping[str, int],
    changes: list[Change],
    consumers: list[Consumer],
) -> ViewPage | None:
    """One view version's page (lineage as `featurewell lineage` describes it), or None when
    it is not among the `visible` entries."""
    entry = next((e for e in visible if e.ref == ref), None)
    if entry is None:
        return None
    mine = [c for c in consumers if c.view == ref]
    lineage = next(item for item in describe(registry, dict(promoted), mine) if item.view == ref)
    return ViewPage(
        entry=entry,
        keys=lineage.keys,
        source=lineage.source,
        definition=lineage.definition,
        transforms=lineage.transforms,
        versions=[e for e in visible if e.name == entry.name],
        history=[
            {
                "at": _when(c.at_us / 1e6),
                "action": c.action,
                "change": f"v{c.previous} -> v{c.current}",
            }
            for c in changes
            if c.view == entry.name
        ],
        callers=[
            {"caller": c.caller, "calls": c.calls, "last": _when(c.last_seen_s)} for c in mine
        ],
    )


def readable(value: Any) -> str:
    """A default as people write it: `0.0`, `'unknown'`, `[0.0, 0.0, ... 16 values]`; never
    `np.float32(0.0)` or `array([...], dtype=float32)`."""
    if isinstance(value, np.ndarray):
        items = value.tolist()
        if len(items) > MAX_SHOWN_ITEMS:
            shown = ", ".join(readable(v) for v in items[:MAX_SHOWN_ITEMS])
            return f"[{shown}, ... {len(items)} values]"
        return "[" + ", ".join(readable(v) for v in items) + "]"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(readable(v) for v in value) + "]"
    return repr(value)


def span(value: timedelta | None) -> str:
    if value is None:
        return "none"
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _entry(registry: Registry, view: FeatureView, default: int, features: list[Any]) -> Entry:
    tags = {str(k): str(v) for k, v in view.tags.items()}
    if view.deprecated is not None or tags.get("status") == "deprecated":
        status = "deprecated"
    elif view.version == default:
        status = "active"
    else:
        status = "staging" if view.version > default else "superseded"
    team = tags.get("team", "")
    if not team:
        named = [
            e[len(TEAM_PREFIX) :] for e in registry.access(view).read if e.startswith(TEAM_PREFIX)
        ]
        team = ", ".join(sorted(named))
    sla = view.freshness_sla
    return Entry(
        name=view.name,
        version=view.version,
        ref=view.ref,
        status=status,
        owner=view.owner,
        team=team,
        tags=tags,
        entity=view.entity.name,
        description=view.description,
        freshness_sla_s=sla.total_seconds() if sla is not None else None,
        features=[
            FeatureRow(
                name=f.name,
                dtype=str(f.dtype),
                default=readable(f.default),
                description=f.description,
                computed=aggregation(f.computed) if f.computed is not None else "",
            )
            for f in features
        ],
    )


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
