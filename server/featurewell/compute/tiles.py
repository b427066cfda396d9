"""The arithmetic of the streaming engine's tiles: per aggregation, how an event is added to a
tile's partial (`ADD`) and how a window's tiles make a value (`VALUE`). compute/stream.py applies
them; the batch engine computes the same with DuckDB, and the parity tests hold them equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from featurewell.compute.program import FeatureProgram


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def empty(feature: FeatureProgram) -> Any:
    kind = feature.kind
    if kind in ("count", "sum", "decayed sum"):
        return 0
    if kind == "mean":
        return [0.0, 0.0]
    if kind == "mode":
        return {}
    return None  # min, max


Adder = Callable[[FeatureProgram, Any, Any, Any, int, int, int], Any]
Finisher = Callable[[FeatureProgram, list[tuple[int, list[Any]]], int, int, int], Any]


def _add_count(
    f: FeatureProgram, partial: Any, value: Any, w: Any, t: int, tile: int, tile_us: int
) -> Any:
    return partial + 1


def _add_sum(
    f: FeatureProgram, partial: Any, value: Any, w: Any, t: int, tile: int, tile_us: int
) -> Any:
    return partial + _plain(value)


def _add_min(
    f: FeatureProgram, partial: Any, value: Any, w: Any, t: int, tile: int, tile_us: int
) -> Any:
    value = _plain(value)
    return value if partial is None or value < partial else partial


def _add_max(
    f: FeatureProgram, partial: Any, value: Any, w: Any, t: int, tile: int, tile_us: int
) -> Any:
    value = _plain(value)
    return value if partial is None or value > partial else partial


def _add_mean(
    f: FeatureProgram, partial: Any, value: Any, w: Any, t: int, tile: int, tile_us: int
) -> Any:
    weight = 1.0 if w is None else float(w)
    partial[0] = partial[0] + weight * (value if isinstance(value, np.ndarray) else float(value))
    partial[1] += weight
    return partial


def _add_decayed(
    f: FeatureProgram, partial: Any, value: Any, w: Any, t: int, tile: int, tile_us: int
) -> Any:
    # Decayed to the tile's end, so every term's factor is at most 1.
    end = (tile + 1) * tile_us
    return partial + float(value) * 2.0 ** (-(end - t) / f.half_life_us)


def _add_mode(
    f: FeatureProgram, partial: Any, value: Any, w: Any, t: int, tile: int, tile_us: int
) -> Any:
    category = int(value)
    partial[category] = partial.get(category, 0) + 1
    return partial


ADD: dict[str, Adder] = {
    "count": _add_count,
    "sum": _add_sum,
    "min": _add_min,
    "max": _add_max,
    "mean": _add_mean,
    "decayed sum": _add_decayed,
    "mode": _add_mode,
}


Tiles = list[tuple[int, list[Any]]]  # (tile, partials of every windowed feature) in a window


def _count(f: FeatureProgram, tiles: Tiles, slot: int, as_of: int, tile_us: int) -> Any:
    total = 0
    for _, parts in tiles:
        total += parts[slot]
    return total


def _sum(f: FeatureProgram, tiles: Tiles, slot: int, as_of: int, tile_us: int) -> Any:
    total = 0
    for _, parts in tiles:
        total = total + parts[slot]
    return total


def _min(f: FeatureProgram, tiles: Tiles, slot: int, as_of: int, tile_us: int) -> Any:
    present = [parts[slot] for _, parts in tiles if parts[slot] is not None]
    return min(present) if present else f.feature.default


def _max(f: FeatureProgram, tiles: Tiles, slot: int, as_of: int, tile_us: int) -> Any:
    present = [parts[slot] for _, parts in tiles if parts[slot] is not None]
    return max(present) if present else f.feature.default


def _mean(f: FeatureProgram, tiles: Tiles, slot: int, as_of: int, tile_us: int) -> Any:
    total: Any = 0.0
    weight = 0.0
    for _, parts in tiles:
        partial = parts[slot]
        total = total + partial[0]
        weight += partial[1]
    return total / weight if weight else f.feature.default


def _decayed(f: FeatureProgram, tiles: Tiles, slot: int, as_of: int, tile_us: int) -> Any:
    return math.fsum(
        parts[slot] * 2.0 ** (-(as_of - (tile + 1) * tile_us) / f.half_life_us)
        for tile, parts in tiles
    )


def _mode(f: FeatureProgram, tiles: Tiles, slot: int, as_of: int, tile_us: int) -> Any:
    counts: dict[int, int] = {}
    for _, parts in tiles:
        for category, n in parts[slot].items():
            counts[category] = counts.get(category, 0) + n
    if not counts:
        return f.feature.default
    return min(counts, key=lambda c: (-counts[c], c))


VALUE: dict[str, Finisher] = {
    "count": _count,
    "sum": _sum,
    "min": _min,
    "max": _max,
    "mean": _mean,
    "decayed sum": _decayed,
    "mode": _mode,
}
