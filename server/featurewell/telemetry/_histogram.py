"""Adding many observations to a Prometheus histogram at once.

prometheus_client observes one value per call (~1 µs each); a ranking call serves 500 rows per
view, so the served-value age histogram takes its counts per bucket from numpy instead. This
writes into the histogram's own value cells (per-bucket counts, not cumulative, and the sum),
which works in single- and multi-process mode alike; `tests/test_telemetry.py` checks the
exposition matches observing the values one by one, so an upgrade that changes those cells
fails there first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import Histogram


def bounds_of(histogram: Histogram) -> npt.NDArray[np.float64]:
    """The upper bounds of a histogram's buckets, +Inf last."""
    return np.asarray(histogram._upper_bounds, dtype=np.float64)


def observe_many(child: Any, bounds: npt.NDArray[np.float64], values: npt.NDArray[Any]) -> None:
    """`child.observe(v)` for every v in `values`, in a handful of numpy calls."""
    if len(values) == 0:
        return
    # A value equal to a bound belongs to that bucket (le = "less than or equal").
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    child._sum.inc(float(values.sum()))
    buckets = child._buckets
    for index in np.flatnonzero(counts).tolist():
        buckets[index].inc(int(counts[index]))
