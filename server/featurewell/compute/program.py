"""A computed view compiled for execution: per feature, what to evaluate on each event (the
value, a weight, the filter) and over how many tiles. Both engines start from this; each does its
own arithmetic (the streaming engine incrementally in tiles, the batch engine with DuckDB over the
whole log), and the parity tests hold them to the same results.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from featurewell.definitions import (
    Aggregation,
    Count,
    DecayedSum,
    EventSource,
    Feature,
    FeatureView,
    Kind,
    Last,
    Mean,
    Mode,
)
from featurewell.definitions._computed import EventColumns, evaluate
from featurewell.engine.calls import InputColumn, WriteRequest
from featurewell.errors import DefinitionError

US = 1_000_000


@dataclass(frozen=True)
class FeatureProgram:
    feature: Feature
    aggregation: Aggregation
    tiles: int  # window length in tiles (0: Last, no window)
    half_life_us: float = 0.0  # DecayedSum

    @property
    def kind(self) -> str:
        return self.aggregation.name

    def inputs(self, events: EventColumns, rows: int) -> tuple[Any, Any, npt.NDArray[np.bool_]]:
        """Per event: the value aggregated, its weight (Mean) and whether it counts (where=)."""
        what = f"feature {self.feature.name!r}"
        agg = self.aggregation
        value: Any = None
        if isinstance(agg, Count):
            value = np.ones(rows, dtype=np.int64)
        elif agg.of is None:  # DecayedSum of 1 per event
            value = np.ones(rows, dtype=np.float64)
        else:
            value = evaluate(agg.of, events, rows, f"{what}'s of=")
        weight = None
        if isinstance(agg, Mean) and agg.weight is not None:
            weight = np.asarray(evaluate(agg.weight, events, rows, f"{what}'s weight="), float)
        keep = np.ones(rows, dtype=bool)
        if agg.where is not None:
            keep = np.asarray(evaluate(agg.where, events, rows, f"{what}'s where="), dtype=bool)
        if isinstance(agg, Mode):
            value = np.asarray(value, dtype=np.int64)
            bad = keep & ((value < 0) | (value >= agg.categories))
            if bad.any():
                raise DefinitionError(
                    f"{what}: mode values must be in [0, {agg.categories}); got "
                    f"{value[bad][:3].tolist()}"
                )
        if self.feature.dtype.kind is Kind.EMBEDDING:
            value = np.asarray(value, dtype=np.float64)
            if value.ndim != 2 or value.shape[1] != self.feature.dtype.dim:
                raise DefinitionError(
                    f"{what}: the expression must give {self.feature.dtype.dim} numbers per "
                    f"event; got shape {value.shape}"
                )
        return value, weight, keep


@dataclass(frozen=True)
class ViewProgram:
    view: FeatureView
    source: EventSource
    tile_us: int
    features: tuple[FeatureProgram, ...]

    @property
    def horizon_tiles(self) -> int:
        """Tiles a value can reach back: the longest window."""
        return max((f.tiles for f in self.features), default=1) or 1

    def tile_of(self, event_time_us: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return event_time_us // self.tile_us


def compile_view(view: FeatureView) -> ViewProgram:
    if view.events is None:
        raise DefinitionError(f"feature view {view.ref!r} is not computed from events")
    tile_us = int(view.tile / timedelta(microseconds=1))
    programs = []
    for feature in view.features:
        agg = feature.computed
        assert agg is not None
        half_life = 0.0
        if isinstance(agg, DecayedSum):
            assert agg.half_life is not None
            half_life = agg.half_life / timedelta(microseconds=1)
        programs.append(FeatureProgram(feature, agg, agg.tiles(view.tile), half_life))
    return ViewProgram(view, view.events, tile_us, tuple(programs))


def is_last(program: FeatureProgram) -> bool:
    return isinstance(program.aggregation, Last)


def write_request(
    program: ViewProgram, rows: list[tuple[tuple[Any, ...], list[Any]]], as_of_us: int
) -> WriteRequest:
    """Feature rows of a computed view (entity key, values in feature order) as a write."""
    view = program.view
    entity = view.entity
    entities = {
        name: InputColumn(entity.join_keys[name].kind, [key[i] for key, _ in rows])
        for i, name in enumerate(entity.key_names)
    }
    features: dict[str, Any] = {}
    for n, feature in enumerate(view.features):
        column = [values[n] for _, values in rows]
        kind = feature.dtype.kind
        if kind is Kind.STRING:
            features[feature.name] = np.asarray(column, dtype=object)
        elif kind is Kind.EMBEDDING:
            features[feature.name] = np.asarray(
                [np.asarray(v, dtype=np.float32) for v in column], dtype=np.float32
            ).reshape(len(rows), feature.dtype.dim)
        elif kind is Kind.FLOAT32:
            # Kept wide: the write validation refuses a sum past float32's range by name,
            # where a cast here would quietly make it inf.
            features[feature.name] = np.asarray(column, dtype=np.float64)
        else:
            features[feature.name] = np.asarray(column, dtype=feature.dtype.element_dtype)
    return WriteRequest(view.ref, entities, np.full(len(rows), as_of_us, dtype=np.int64), features)


def history_table(view: FeatureView, request: WriteRequest, created_us: int) -> pa.Table:
    """A computed view's write (from `write_request`) as offline-store history rows."""
    columns: dict[str, Any] = {
        name: list(column.values) for name, column in request.entities.items()
    }
    columns["event_time"] = pa.array(request.event_time_us, pa.int64())
    columns["created"] = pa.array(np.full(len(request.event_time_us), created_us), pa.int64())
    for feature in view.features:
        values = request.features[feature.name]
        assert isinstance(values, np.ndarray)  # computed features are never lists
        if feature.dtype.kind is Kind.EMBEDDING:
            flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).ravel())
            columns[feature.name] = pa.FixedSizeListArray.from_arrays(flat, feature.dtype.dim)
        elif feature.dtype.kind is Kind.STRING:
            columns[feature.name] = pa.array(list(values), pa.string())
        else:
            columns[feature.name] = pa.array(values.astype(feature.dtype.element_dtype, copy=False))
    return pa.table(columns)
