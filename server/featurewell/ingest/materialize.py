"""Bulk-load feature rows from Parquet into the online store.

Rows go through the same `FeatureEngine.write` as WriteFeatures calls (same validation, same
event-time ordering), in batches pipelined per node with a few batches in flight, optionally paced
to a rows-per-second ceiling so serving p99 holds while a backfill runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurewell.definitions import FeatureView, Kind, Registry
from featurewell.engine.calls import InputColumn, WriteRequest
from featurewell.engine.engine import FeatureEngine
from featurewell.errors import DefinitionError, InvalidRequest
from featurewell.values import ColumnValues, Ragged


@dataclass(frozen=True, slots=True)
class ViewLoad:
    view: str
    rows: int
    written: int
    skipped_older: int
    seconds: float


async def materialize(
    engine: FeatureEngine,
    views: list[FeatureView] | None = None,
    *,
    batch_rows: int = 2000,
    in_flight: int = 4,
    max_rows_per_second: float | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> list[ViewLoad]:
    """Load every view that has a ParquetSource (or just `views`). Returns a summary per view;
    `progress(view, rows_sent)` is called after every batch."""
    registry = engine.registry
    chosen = views if views is not None else [v for v in registry.views.values() if v.source]
    results: list[ViewLoad] = []
    for view in chosen:
        started = time.perf_counter()
        written = skipped = rows = 0
        pending: set[asyncio.Task[Any]] = set()
        for request in _batches(registry, view, min(batch_rows, engine.limits.max_rows)):
            if max_rows_per_second:
                ahead = rows / max_rows_per_second - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            rows += len(request.event_time_us)
            pending.add(asyncio.create_task(engine.write(request)))
            if len(pending) >= in_flight:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    outcome = task.result()
                    written, skipped = written + outcome.written, skipped + outcome.skipped_older
            if progress is not None:
                progress(view.ref, rows)
        for task in pending:
            outcome = await task
            written, skipped = written + outcome.written, skipped + outcome.skipped_older
        results.append(ViewLoad(view.ref, rows, written, skipped, time.perf_counter() - started))
    return results


def _batches(registry: Registry, view: FeatureView, batch_rows: int) -> Iterator[WriteRequest]:
    if view.source is None:
        raise DefinitionError(f"feature view {view.ref!r} has no source to materialize from")
    path = Path(view.source.path)
    if not path.is_absolute() and registry.root is not None:
        path = registry.root / path
    if not path.exists():
        raise DefinitionError(f"source of {view.ref!r} does not exist: {path}")
    parquet = pq.ParquetFile(path)
    wanted = [*view.entity.key_names, view.source.timestamp_field, *view.feature_index]
    missing = [c for c in wanted if c not in parquet.schema_arrow.names]
    if missing:
        raise DefinitionError(f"source {path} of {view.ref!r} lacks columns {missing}")
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
        yield WriteRequest(
            view=view.ref,
            entities={
                key: _key_column(view, key, batch.column(key)) for key in view.entity.key_names
            },
            event_time_us=_timestamps(batch.column(view.source.timestamp_field)),
            features={
                f.name: _feature_column(f.dtype.kind, batch.column(f.name)) for f in view.features
            },
        )


def _key_column(view: FeatureView, key: str, array: pa.Array) -> InputColumn:
    kind = view.entity.join_keys[key].kind
    if kind is Kind.INT64 and not pa.types.is_integer(array.type):
        raise InvalidRequest(f"source column {key!r} of {view.ref!r} must hold integers")
    if kind is Kind.STRING and not pa.types.is_string(array.type):
        raise InvalidRequest(f"source column {key!r} of {view.ref!r} must hold strings")
    return InputColumn(kind, array.to_pylist())


def _timestamps(array: pa.Array) -> np.ndarray[Any, np.dtype[np.int64]]:
    if pa.types.is_timestamp(array.type):
        array = array.cast(pa.timestamp("us", tz=array.type.tz)).cast(pa.int64())
    elif not pa.types.is_integer(array.type):
        raise InvalidRequest("timestamp column must be a timestamp or integer microseconds")
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.int64)


def _feature_column(kind: Kind, array: pa.Array) -> ColumnValues:
    if kind is Kind.STRING:
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=object)
    if kind is Kind.EMBEDDING:
        flat = np.asarray(pc.list_flatten(array).to_numpy(zero_copy_only=False))
        return flat.reshape(len(array), -1)
    if kind in (Kind.INT64_LIST, Kind.FLOAT64_LIST):
        offsets = array.offsets.to_numpy()
        return Ragged(pc.list_flatten(array).to_numpy(), (offsets - offsets[0]).astype(np.int32))
    return np.asarray(array.to_numpy(zero_copy_only=False))
