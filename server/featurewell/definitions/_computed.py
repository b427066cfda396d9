"""Computed features: aggregations over an event source, defined once and executed by both the
streaming engine (seconds-fresh online values) and the batch engine (history for backfills and
training), which `featurewell parity` and the parity tests hold to the same results.

    watches = EventSource("watches", keys={"user_id": String, "item_id": String},
                          fields={"duration_min": Float64, "hour": Int64})
    user_activity = FeatureView(
        "user_activity", entity=user, events=watches, tile=timedelta(hours=1),
        features=[
            Feature("watch_count_7d", Int64, computed=Count(window=timedelta(days=7))),
            Feature("avg_watch_min_30d", Float32,
                    computed=Mean("duration_min", window=timedelta(days=30))),
        ],
    )

Windows slide in steps of the view's `tile`: a value as of time T covers the events with event
time <= T in T's tile and the (window / tile - 1) tiles before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.definitions._names import check_name
from featurewell.definitions._types import FeatureType, Kind
from featurewell.errors import DefinitionError

EventColumns = Mapping[str, npt.NDArray[Any]]
# A column of the events by name, or a vectorised function of the event columns (a row-level
# expression). Both engines give expressions the source's key and field columns and
# `event_time` (int64 µs).
Expression = str | Callable[[EventColumns], Any]
EVENT_KINDS = (Kind.INT64, Kind.FLOAT32, Kind.FLOAT64, Kind.BOOL, Kind.STRING)


@dataclass(frozen=True, eq=False)
class EventSource:
    """A log of events: entity keys, payload fields, an event time and an id.

    Every event carries `timestamp_field` (event time, int64 µs since the epoch) and `id_field`
    (unique per event: a redelivered or re-sent event is counted once). Live events arrive on
    Redis Streams (one per partition) or a Kafka topic; history is the Parquet log at `parquet`
    (a file or a folder of files, relative to the repo). `stream` names the Redis Streams
    instead of featurewell (`<stream>:<p>` per partition when there are several); the default
    names and the partition suffix are the store's (featurewell.store.keys), like every key.
    """

    name: str
    keys: Mapping[str, FeatureType]
    fields: Mapping[str, FeatureType] = field(default_factory=dict)
    timestamp_field: str = "event_time"
    id_field: str = "event_id"
    stream: str = ""
    partitions: int = 1
    kafka_topic: str = ""
    parquet: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        check_name(self.name, "event source")
        where = f"event source {self.name!r}"
        if not self.keys:
            raise DefinitionError(f"{where} needs at least one entity key column")
        columns = {**self.keys, **self.fields}
        if len(columns) != len(self.keys) + len(self.fields):
            raise DefinitionError(f"{where}: a column is both a key and a field")
        for name, kind in columns.items():
            check_name(name, f"{where} column")
            if not isinstance(kind, FeatureType) or kind.kind not in EVENT_KINDS:
                raise DefinitionError(
                    f"{where}: column {name!r} must be Int64, Float32, Float64, Bool or String"
                )
        for special in (self.timestamp_field, self.id_field):
            if special in columns:
                raise DefinitionError(f"{where}: {special!r} is implicit; do not list it")
        if isinstance(self.partitions, bool) or not 1 <= self.partitions <= 1024:
            raise DefinitionError(f"{where}: partitions must be 1-1024")
        object.__setattr__(self, "keys", dict(self.keys))
        object.__setattr__(self, "fields", dict(self.fields))
        object.__setattr__(self, "kafka_topic", self.kafka_topic or f"featurewell.{self.name}")

    @property
    def columns(self) -> dict[str, FeatureType]:
        return {**self.keys, **self.fields}


@dataclass(frozen=True, eq=False)
class Aggregation:
    """Base of the aggregations. `where` keeps only the events it is true for (a vectorised
    function of the event columns returning booleans)."""

    of: Expression | None = None
    window: timedelta | None = None
    where: Callable[[EventColumns], Any] | None = None

    name = "aggregation"
    windowed = True  # needs a window

    def check(self, feature: str, dtype: FeatureType, source: EventSource, tile: timedelta) -> None:
        """Raise DefinitionError when this cannot compute `feature` of type `dtype`."""
        where = f"feature {feature!r} ({self.name})"
        if self.windowed:
            if not isinstance(self.window, timedelta) or self.window <= timedelta(0):
                raise DefinitionError(f"{where}: needs window=timedelta(...)")
            if self.window % tile:
                raise DefinitionError(
                    f"{where}: window {self.window} is not a whole number of the view's tiles "
                    f"({tile}); pick a window that is, or a smaller tile"
                )
        elif self.window is not None:
            raise DefinitionError(f"{where}: takes no window")
        if isinstance(self.of, str) and self.of not in source.columns:
            raise DefinitionError(
                f"{where}: event source {source.name!r} has no column {self.of!r}; "
                f"it has {sorted(source.columns)}"
            )
        if self.where is not None and not callable(self.where):
            raise DefinitionError(f"{where}: where= must be a function of the event columns")
        self._check_type(where, dtype, source)

    def _check_type(self, where: str, dtype: FeatureType, source: EventSource) -> None:
        if dtype.kind not in (Kind.INT64, Kind.FLOAT32, Kind.FLOAT64):
            raise DefinitionError(f"{where}: computes a number; declare Int64, Float32 or Float64")
        if isinstance(self.of, str) and source.columns[self.of].kind is Kind.STRING:
            raise DefinitionError(f"{where}: column {self.of!r} is a string, not a number")

    def tiles(self, tile: timedelta) -> int:
        """How many tiles the window spans."""
        return int(self.window / tile) if self.window is not None else 0


@dataclass(frozen=True, eq=False)
class Count(Aggregation):
    name = "count"

    def _check_type(self, where: str, dtype: FeatureType, source: EventSource) -> None:
        if self.of is not None:
            raise DefinitionError(f"{where}: counts events; use where= to filter, not of=")
        if dtype.kind is not Kind.INT64:
            raise DefinitionError(f"{where}: a count is Int64")


@dataclass(frozen=True, eq=False)
class Sum(Aggregation):
    name = "sum"


@dataclass(frozen=True, eq=False)
class Min(Aggregation):
    name = "min"


@dataclass(frozen=True, eq=False)
class Max(Aggregation):
    name = "max"


@dataclass(frozen=True, eq=False)
class Mean(Aggregation):
    """The mean of `of`, or with `weight` the weighted mean; `of` may be a vector expression
    (an Embedding feature: e.g. the duration-weighted mean of watched titles' genre vectors)."""

    weight: Expression | None = None
    name = "mean"

    def _check_type(self, where: str, dtype: FeatureType, source: EventSource) -> None:
        if dtype.kind is Kind.EMBEDDING:
            if isinstance(self.of, str):
                raise DefinitionError(f"{where}: an Embedding mean needs a vector expression")
            return
        if dtype.kind not in (Kind.FLOAT32, Kind.FLOAT64):
            raise DefinitionError(f"{where}: a mean is Float32, Float64 or Embedding(dim)")
        super()._check_type(where, dtype, source)
        if isinstance(self.weight, str) and self.weight not in source.columns:
            raise DefinitionError(f"{where}: no column {self.weight!r} to weight by")


@dataclass(frozen=True, eq=False)
class Last(Aggregation):
    """The value of the newest event (greatest event time; equal times: the later event id)."""

    name = "last"
    windowed = False

    def _check_type(self, where: str, dtype: FeatureType, source: EventSource) -> None:
        if self.of is None:
            raise DefinitionError(f"{where}: needs of= (a column or expression)")
        if dtype.kind not in (*EVENT_KINDS,):
            raise DefinitionError(f"{where}: last values are scalars or strings")
        column = source.columns[self.of] if isinstance(self.of, str) else None
        if column is not None and (column.kind is Kind.STRING) != (dtype.kind is Kind.STRING):
            raise DefinitionError(f"{where}: column {self.of!r} is {column}, the feature {dtype}")


@dataclass(frozen=True, eq=False)
class DecayedSum(Aggregation):
    """Sum of `of` (default: 1 per event) decayed by event age: weight 2^(-age / half_life)
    as of the time of the value (item popularity: recent views count more)."""

    half_life: timedelta | None = None
    name = "decayed sum"

    def _check_type(self, where: str, dtype: FeatureType, source: EventSource) -> None:
        if not isinstance(self.half_life, timedelta) or self.half_life <= timedelta(0):
            raise DefinitionError(f"{where}: needs half_life=timedelta(...)")
        if dtype.kind not in (Kind.FLOAT32, Kind.FLOAT64):
            raise DefinitionError(f"{where}: a decayed sum is Float32 or Float64")
        super()._check_type(where, dtype, source)


@dataclass(frozen=True, eq=False)
class Mode(Aggregation):
    """The most frequent value of an integer in [0, categories) (ties: the smallest), e.g. the
    hour of day a user watches most."""

    categories: int = 0
    name = "mode"

    def _check_type(self, where: str, dtype: FeatureType, source: EventSource) -> None:
        if self.of is None:
            raise DefinitionError(f"{where}: needs of= (an integer column or expression)")
        if not 1 < self.categories <= 4096:
            raise DefinitionError(f"{where}: needs categories=N (2-4096), values 0..N-1")
        if dtype.kind is not Kind.INT64:
            raise DefinitionError(f"{where}: a mode is Int64")
        if isinstance(self.of, str) and source.columns[self.of].kind is not Kind.INT64:
            raise DefinitionError(f"{where}: column {self.of!r} is not Int64")


def evaluate(expression: Expression, events: EventColumns, rows: int, what: str) -> Any:
    """An expression over `rows` events: a column, or the function's result, checked."""
    if isinstance(expression, str):
        return events[expression]
    try:
        result = np.asarray(expression(events))
    except Exception as exc:
        raise DefinitionError(f"{what} failed on the events: {exc!r}") from exc
    if result.ndim == 0:
        result = np.broadcast_to(result, (rows,))
    if len(result) != rows:
        raise DefinitionError(f"{what} returned {len(result)} values for {rows} events")
    return result
