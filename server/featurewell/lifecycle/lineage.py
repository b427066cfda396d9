"""`featurewell lineage`: for an audit, every view version with where its rows come from, the
exact definition (a fingerprint that changes whenever a feature, window, filter or expression
does), the transforms built on it, whether it is the default, and which callers read it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from featurewell.definitions import Aggregation, FeatureRef, FeatureView, Registry
from featurewell.store.keys import stream_keys, stream_name
from featurewell.telemetry.consumers import Consumer


@dataclass(frozen=True)
class ViewLineage:
    view: str  # name@vN
    default: bool
    promoted: bool
    entity: str
    keys: list[str]
    source: str
    definition: str  # sha256 of the definition, first 16 hex digits
    features: list[str]
    transforms: list[str]
    consumers: list[dict[str, Any]] = field(default_factory=list)


def describe(
    registry: Registry, promoted: dict[str, int], consumers: list[Consumer]
) -> list[ViewLineage]:
    serving = registry.with_defaults(promoted)
    out = []
    for (name, version), view in sorted(registry.views.items()):
        used_by = sorted(
            t.name
            for t in registry.transforms.values()
            if any(_reads(serving, ref, view) for ref in t.inputs.values())
        )
        out.append(
            ViewLineage(
                view=view.ref,
                default=serving.default_versions[name] == version,
                promoted=promoted.get(name) == version,
                entity=view.entity.name,
                keys=[f"{k}: {t}" for k, t in view.entity.join_keys.items()],
                source=_source(view),
                definition=fingerprint(view),
                features=[_feature(f.name, f.dtype, f.default, f.computed) for f in view.features],
                transforms=used_by,
                consumers=[
                    {
                        "caller": c.caller,
                        "calls": c.calls,
                        "last_seen": datetime.fromtimestamp(c.last_seen_s, tz=UTC).isoformat(),
                    }
                    for c in consumers
                    if c.view == view.ref
                ],
            )
        )
    return out


def fingerprint(view: FeatureView) -> str:
    """A digest of everything that decides the view's values and layout."""
    parts = [view.ref, repr(view.entity.join_keys), repr(view.max_age), repr(view.tile)]
    if view.events is not None:
        parts += [view.events.name, repr(view.events.columns), view.events.timestamp_field]
    if view.source is not None:
        parts += [view.source.path, view.source.timestamp_field]
    for feature in view.features:
        parts += [feature.name, str(feature.dtype), repr(feature.default)]
        if feature.computed is not None:
            parts.append(aggregation(feature.computed, code=True))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def render(lineage: list[ViewLineage]) -> str:
    lines = []
    for item in lineage:
        default = " default" + (" (promoted)" if item.promoted else "") if item.default else ""
        lines.append(f"{item.view}{default}  definition {item.definition}")
        lines.append(f"  entity {item.entity} [{', '.join(item.keys)}]")
        lines.append(f"  source: {item.source}")
        lines += [f"  - {feature}" for feature in item.features]
        if item.transforms:
            lines.append(f"  feeds transforms: {', '.join(item.transforms)}")
        if item.consumers:
            for c in item.consumers:
                lines.append(
                    f"  read by {c['caller']}: {c['calls']:,} calls, last {c['last_seen']}"
                )
        else:
            lines.append("  read by: nobody recorded")
    return "\n".join(lines)


def as_json(lineage: list[ViewLineage]) -> str:
    return json.dumps([asdict(item) for item in lineage], indent=2)


def _reads(registry: Registry, ref: str, view: FeatureView) -> bool:
    parsed = FeatureRef.parse(ref)
    version = parsed.version or registry.default_versions.get(parsed.table)
    return (parsed.table, version) == (view.name, view.version)


def _source(view: FeatureView) -> str:
    if view.events is not None:
        events = view.events
        keys = stream_keys(events)
        streams = keys[0] if len(keys) == 1 else f"{stream_name(events)}:0..{len(keys) - 1}"
        log = f", log {events.parquet}" if events.parquet else ""
        return (
            f"computed from event source {events.name!r} (Redis Streams {streams}, Kafka "
            f"topic {events.kafka_topic}{log}), tiles of {_span(view.tile)}"
        )
    if view.source is not None:
        return f"Parquet {view.source.path} (featurewell materialize)"
    return "pushed with WriteFeatures"


def _feature(name: str, dtype: Any, default: Any, computed: Aggregation | None) -> str:
    how = f" = {aggregation(computed)}" if computed is not None else ""
    return f"{name}: {dtype} (default {_plain(default)}){how}"


def _plain(value: Any) -> str:
    """A default as a person reads it: `0.0`, `[0.0, 0.0]`, `'zz'`; not `np.float32(0.0)` nor
    `array([...], dtype=float32)` (numpy scalars and arrays become Python values first)."""
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    return repr(value)


def aggregation(agg: Aggregation, code: bool = False) -> str:
    """`Count(window 7d, where <fn>)`; with `code`, functions by their bytecode too (the
    definition fingerprint); the CLI and the web UI print it without."""
    parts = []
    for name, value in vars(agg).items():
        if value is None:
            continue
        if isinstance(value, timedelta):
            parts.append(f"{name} {_span(value)}")
        elif callable(value):
            parts.append(f"{name} {_function(value, code)}")
        else:
            parts.append(f"{name} {value!r}")
    return f"{type(agg).__name__}({', '.join(parts)})"


def _function(fn: Callable[..., Any], code: bool) -> str:
    label = getattr(fn, "__qualname__", repr(fn))
    body = getattr(fn, "__code__", None)
    if not code or body is None:
        return label
    digest = hashlib.sha256(body.co_code + repr(body.co_consts).encode()).hexdigest()[:12]
    return f"{label}#{digest}"


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
