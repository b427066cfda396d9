"""What goes into the serving engine and what comes out: validated requests, typed columns
with per-value status, and the facts telemetry reads after the answer (per-view rows, timings).
Plain data, no behaviour; `wire` converts protobuf to and from these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from featurewell.definitions import FeatureType, FeatureView, Kind
from featurewell.store.batch import FailureReason, NodeTiming
from featurewell.store.codec import DecodedRows
from featurewell.values import ColumnValues


@dataclass(frozen=True, slots=True)
class InputColumn:
    """An entity-key or context column as the caller sent it."""

    kind: Kind
    values: Sequence[Any]


@dataclass(frozen=True, slots=True)
class FeatureRequest:
    features: tuple[str, ...]
    entities: Mapping[str, InputColumn]
    context: Mapping[str, InputColumn]
    strict: bool = False
    include_event_timestamps: bool = False


# The per-call records below are NamedTuples, not frozen dataclasses: as immutable, and built
# in C (a frozen dataclass sets each field through object.__setattr__), which a single-entity
# call building a dozen of them measurably paid for (docs/performance.md).


class ResultColumn(NamedTuple):
    name: str
    dtype: FeatureType
    values: ColumnValues
    statuses: npt.NDArray[np.uint8]
    event_time_us: npt.NDArray[np.int64] | None
    entity: str
    version: int


@dataclass(frozen=True, slots=True)
class FallbackCount:
    """Rows of one view served from fallbacks in one call, for one reason."""

    view: str
    reason: FailureReason
    from_cache: int
    from_default: int


class ServedView(NamedTuple):
    """One view's rows as a call served them (by reference, not copied), for telemetry:
    statuses per view, value ages, drift samples."""

    view: FeatureView
    rows: DecodedRows
    statuses: npt.NDArray[np.uint8]


@dataclass(slots=True)
class CallTimings:
    """Where a call's time went (`time.perf_counter_ns`), recorded as plain numbers so metrics
    and traces can be built after the answer, outside the serving path."""

    store_started_ns: int = 0
    store_ended_ns: int = 0
    nodes: list[NodeTiming] = field(default_factory=list)
    transforms: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FeatureResult:
    rows: int
    columns: list[ResultColumn]
    fallbacks: list[FallbackCount] = field(default_factory=list)
    served: list[ServedView] = field(default_factory=list)
    timings: CallTimings = field(default_factory=CallTimings)


@dataclass(frozen=True, slots=True)
class WriteResult:
    view: str  # the written view's reference, name@vN
    written: int
    skipped_older: int


@dataclass(frozen=True, slots=True)
class WriteRequest:
    view: str
    entities: Mapping[str, InputColumn]
    event_time_us: npt.NDArray[np.int64]
    features: Mapping[str, ColumnValues]


@dataclass(frozen=True, slots=True)
class Budget:
    """How long the store may take for one call, and whether the caller's deadline (rather than
    the server's cap) set that limit."""

    seconds: float
    deadline_bound: bool = False
