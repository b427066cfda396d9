"""The streaming engine's state as JSON: per entity (what the runner checkpoints to Redis, next
to the entity's rows) and whole (snapshots). JSON, not pickle: the state lives in a shared
Redis, and loading it must never run code. orjson, not json: encoding checkpoints was a fifth of
the engine's time with the standard library (it writes numpy vectors and int keys natively)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from featurewell.compute.program import FeatureProgram
from featurewell.compute.stream import EntityKey, EntityState, StreamEngine, ViewState

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def encode_entity(state: ViewState, entity: EntityState) -> bytes:
    # Partials as they are: numbers, [total, weight] with numpy vector totals, {category: n}.
    return orjson.dumps(
        {
            "tiles": entity.tiles,
            "last": entity.last,
            "seen": entity.seen,
            "applied": entity.applied,
            "newest": entity.newest_us,
        },
        option=_OPTIONS,
    )


def decode_entity(state: ViewState, raw: bytes) -> EntityState:
    data = orjson.loads(raw)
    return EntityState(
        tiles={
            int(tile): [_decode_partial(f, p) for f, p in zip(state.windowed, parts, strict=True)]
            for tile, parts in data["tiles"].items()
        },
        last=[None if x is None else (int(x[0]), str(x[1]), x[2]) for x in data["last"]],
        seen={str(k): int(v) for k, v in data["seen"].items()},
        applied={int(p): (int(pos[0]), int(pos[1])) for p, pos in data["applied"].items()},
        newest_us=int(data["newest"]),
    )


def snapshot(engine: StreamEngine) -> bytes:
    """The whole engine: watermarks and every entity of every view."""
    views = {
        ref: [[list(key), encode_entity(state, e).decode()] for key, e in state.entities.items()]
        for ref, state in engine.views.items()
    }
    return orjson.dumps({"watermarks": engine.watermarks, "views": views}, option=_OPTIONS)


def restore(engine: StreamEngine, raw: bytes) -> None:
    data = orjson.loads(raw)
    engine.watermarks = {int(p): int(w) for p, w in data["watermarks"].items()}
    for ref, entities in data["views"].items():
        state = engine.views[ref]
        state.entities = {
            _key(key): decode_entity(state, encoded.encode()) for key, encoded in entities
        }


def _key(values: list[Any]) -> EntityKey:
    return tuple(values)


def _decode_partial(feature: FeatureProgram, raw: Any) -> Any:
    if feature.kind == "mean":
        total = raw[0]
        return [np.asarray(total, dtype=np.float64) if isinstance(total, list) else total, raw[1]]
    if feature.kind == "mode":
        return {int(category): int(n) for category, n in raw.items()}
    return raw
