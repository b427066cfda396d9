"""The streaming engine's state as JSON: per entity (what the runner checkpoints to Redis, next
to the entity's rows) and whole (snapshots). JSON, not pickle: the state lives in a shared
Redis, and loading it must never run code."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from featurewell.compute.program import FeatureProgram
from featurewell.compute.stream import EntityKey, EntityState, StreamEngine, ViewState


def encode_entity(state: ViewState, entity: EntityState) -> bytes:
    tiles = {
        str(tile): [_encode_partial(f, p) for f, p in zip(state.windowed, parts, strict=True)]
        for tile, parts in entity.tiles.items()
    }
    return json.dumps(
        {
            "tiles": tiles,
            "last": [None if x is None else list(x) for x in entity.last],
            "seen": entity.seen,
            "applied": {str(p): list(pos) for p, pos in entity.applied.items()},
            "newest": entity.newest_us,
        },
        separators=(",", ":"),
    ).encode()


def decode_entity(state: ViewState, raw: bytes) -> EntityState:
    data = json.loads(raw)
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
    return json.dumps({"watermarks": engine.watermarks, "views": views}).encode()


def restore(engine: StreamEngine, raw: bytes) -> None:
    data = json.loads(raw)
    engine.watermarks = {int(p): int(w) for p, w in data["watermarks"].items()}
    for ref, entities in data["views"].items():
        state = engine.views[ref]
        state.entities = {
            _key(key): decode_entity(state, encoded.encode()) for key, encoded in entities
        }


def _key(values: list[Any]) -> EntityKey:
    return tuple(values)


def _encode_partial(feature: FeatureProgram, partial: Any) -> Any:
    if feature.kind == "mean":
        total = partial[0]
        return [total.tolist() if isinstance(total, np.ndarray) else total, partial[1]]
    if feature.kind == "mode":
        return {str(category): n for category, n in partial.items()}
    return partial


def _decode_partial(feature: FeatureProgram, raw: Any) -> Any:
    if feature.kind == "mean":
        total = raw[0]
        return [np.asarray(total, dtype=np.float64) if isinstance(total, list) else total, raw[1]]
    if feature.kind == "mode":
        return {int(category): int(n) for category, n in raw.items()}
    return raw
