"""Served values of computed views against the batch engine over their event log
(compute/batch.py), as of each served row's event time: the time its values are as of, which is
what makes the recomputation exact (as `featurewell parity` does for live values). Each distinct
event time is one batch computation, so at most `batch_times` of them, evenly spread, are
compared, and the result says so."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from featurewell.compute import batch
from featurewell.compute.program import compile_view
from featurewell.definitions import FeatureView
from featurewell.offline.skew_compare import EXAMPLES, FeatureSkew, Tolerance, same
from featurewell.values import PRESENT, STALE


def against_batch(
    view: FeatureView,
    log: pa.Table,
    logged: pa.Table,
    allowed_lateness_s: float,
    batch_times: int,
    tolerance: Tolerance,
) -> list[FeatureSkew]:
    """Served values of a computed view against the batch engine as of each served row's event
    time (up to `batch_times` distinct times, evenly spread)."""
    program = compile_view(view)
    accepted = batch.accepted_events(log, int(allowed_lateness_s * 1e6))
    table = f"{view.name}@v{view.version}"
    results = [FeatureSkew(table, f.name, "batch") for f in view.features]
    status = np.asarray(logged.column("status").to_numpy(), np.uint8)
    times = np.asarray(logged.column("event_time").to_numpy(), np.int64)
    found = np.isin(status, (PRESENT, STALE))
    distinct = np.unique(times[found])
    if len(distinct) > batch_times:
        distinct = distinct[np.linspace(0, len(distinct) - 1, batch_times).astype(int)]
    keys = list(zip(*(logged.column(k).to_pylist() for k in view.entity.key_names), strict=True))
    note = "" if len(np.unique(times[found])) <= batch_times else f"{batch_times} times sampled"
    for as_of in distinct.tolist():
        computed = batch.compute(program, accepted, as_of)
        for row in np.flatnonzero(found & (times == as_of)).tolist():
            expected = computed.get(keys[row]) or [batch.empty_value(f) for f in program.features]
            for n, result in enumerate(results):
                value = logged.column(result.feature)[row].as_py()
                result.compared += 1
                if not same(value, _plain(expected[n]), tolerance):
                    result.mismatched += 1
                    if len(result.examples) < EXAMPLES:
                        result.examples.append(
                            {
                                "request_id": logged.column("request_id")[row].as_py(),
                                "entity": keys[row],
                                "event_time": as_of,
                                "served": value,
                                "batch": _plain(expected[n]),
                            }
                        )
    for result in results:
        result.skipped = int((~found).sum())
        result.note = note
    return results


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value
