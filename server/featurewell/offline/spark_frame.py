"""Training sets as Spark DataFrames, in and out: for label tables that do not fit a driver (the
seeds' ~1B rows an hour). The joins are offline/spark.py's; the finishing step (defaults,
STALE, NOT_FOUND, on-demand transforms, output types) is offline/training.py's own `finish`,
run on the executors per Arrow batch (`mapInArrow`), so all three entry points share one rule
and one finishing code path.

Differences from `get_historical_features`, all from Spark's types: rows come in no particular
order (a DataFrame has none; keep a label id column to join back); status columns are int8
(Spark has no unsigned bytes); embeddings are arrays (Spark has no fixed-size lists); the
versions used are returned beside the frame, not in schema metadata; integer label times are
taken as µs without the unit check (it needs the whole column: check a sample).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from featurewell.definitions import Kind, Registry
from featurewell.engine.plan import Planner
from featurewell.errors import InvalidRequest
from featurewell.offline import versions as served_versions
from featurewell.offline.spark import as_of
from featurewell.offline.store import OfflineStore
from featurewell.offline.training import (
    STATUS_SUFFIX,
    Fetched,
    _arrow,
    _defaults,
    finish,
    from_joined,
)
from featurewell.offline.versions import ServedDefaults
from featurewell.values import NOT_FOUND


def training_frame(
    registry: Registry,
    labels: Any,
    features: Sequence[str],
    offline: OfflineStore,
    *,
    timestamp_column: str = "event_timestamp",
    defaults: ServedDefaults | None = None,
    prune: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """(`labels` plus the features and statuses as a DataFrame, the versions used)."""
    from pyspark.sql import functions as fn
    from pyspark.sql import types as st
    from pyspark.sql.pandas.types import from_arrow_type, to_arrow_schema

    offline.check_exists()
    plan = Planner(served_versions.as_served(registry, defaults)).plan(list(features))
    if timestamp_column not in labels.columns:
        raise InvalidRequest(
            f"the label table has no {timestamp_column!r} column; name its timestamp column "
            f"with timestamp_column= (it has {labels.columns})"
        )
    kind = labels.schema[timestamp_column].dataType
    if isinstance(kind, st.TimestampType | st.TimestampNTZType):
        ts = fn.unix_micros(fn.col(timestamp_column).cast("timestamp"))
    elif isinstance(kind, st.LongType | st.IntegerType):
        ts = fn.col(timestamp_column).cast("long")
    else:
        raise InvalidRequest(f"label column {timestamp_column!r} is {kind}: a timestamp or µs")
    for group in plan.groups:
        for name in group.entity.join_keys:
            if name not in labels.columns:
                raise InvalidRequest(f"the label table lacks entity key column {name!r}")
    spark = labels.sparkSession
    label_names = list(labels.columns)
    # Row ids and label times fixed once: every join below must see the same ids.
    keyed = labels.withColumn("__row", fn.monotonically_increasing_id()).withColumn("__ts", ts)
    keyed = keyed.localCheckpoint()
    span = None
    if prune:
        first, last = keyed.agg(fn.min("__ts"), fn.max("__ts")).first()
        span = (int(first), int(last)) if first is not None else None
    frame, hits = keyed, list[str]()
    for group in plan.groups:
        keys = list(group.entity.join_keys)
        for read, wanted in zip(group.reads, group.wanted, strict=True):
            source = offline.source_of(read.view, registry, span)
            column = f"__hit{len(hits)}"
            if source is not None and source.files:
                found = as_of(
                    spark, keyed.select(*keys, "__ts", "__row"), source, keys, sorted(wanted)
                )
                frame = frame.join(found.withColumnRenamed("__last", column), "__row", "left")
                hits.append(column)
            else:
                hits.append("")  # no history: defaults, NOT_FOUND
    fields = [labels.schema[name] for name in label_names]
    for output in plan.outputs:
        sample = _arrow(output.feature, _defaults(output.feature, 1)).type
        if output.feature.dtype.kind is Kind.EMBEDDING:
            sample = pa.list_(pa.float32())
        fields.append(st.StructField(output.name, from_arrow_type(sample)))
    tables = [step.transform.name for step in plan.transforms]  # in `finish`'s order
    tables += [o.name.split(":", 1)[0] for o in plan.outputs if o.read is not None]
    for table in dict.fromkeys(tables):
        fields.append(st.StructField(table + STATUS_SUFFIX, st.ByteType()))
    schema = st.StructType(fields)
    arrow_schema = to_arrow_schema(schema, timezone="UTC")  # the session's (offline/spark.py)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            table = pa.Table.from_batches([batch])
            label_ts = np.asarray(table.column("__ts").to_numpy(), np.int64)
            fetched: Fetched = {}
            reads = [
                (r, sorted(w)) for g in plan.groups for r, w in zip(g.reads, g.wanted, strict=True)
            ]
            for column, (read, wanted) in zip(hits, reads, strict=True):
                if not column:
                    view = read.view
                    values = {
                        n: _defaults(view.features[view.feature_index[n]], len(label_ts))
                        for n in wanted
                    }
                    fetched[id(read)] = (values, np.full(len(label_ts), NOT_FOUND, np.uint8))
                    continue
                hit = table.column(column)
                struct = hit.combine_chunks()
                joined = pa.table({name: struct.field(name) for name in ["__event_time", *wanted]})
                fetched[id(read)] = from_joined(read, joined, wanted, label_ts)
            out, _ = finish(plan, table.select(label_names), fetched)
            result = pa.table(out)
            yield from result.select(arrow_schema.names).cast(arrow_schema).to_batches()

    used = served_versions.used(plan, defaults)
    return frame.mapInArrow(run, schema), used
