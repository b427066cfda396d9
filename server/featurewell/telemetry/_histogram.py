"""Counting into Prometheus metrics for less than prometheus_client's own `inc`/`observe`.

A call's updates are kept as plain numbers (`Tally`) and added to the metrics' cells in one go
later (the servicer flushes FLUSH_EVERY_S, 50 ms, after a run of answered calls' telemetry, for
all of them). A ranking call serves 500 rows per view, so the served-value age histogram
takes its counts per bucket from numpy (`observe_many`). A flush writes into the metrics' own
value cells (per-bucket counts, not cumulative, and the sum), which works in single- and
multi-process mode alike; `tests/test_telemetry.py` checks the exposition matches observing
the values one by one, so an upgrade that changes those cells fails there first.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import numpy as np
import numpy.typing as npt


class Tally:
    """Counter and histogram children's updates kept as plain numbers until `flush` adds them,
    once per child, to the children's own cells (as `observe_many` does).

    prometheus_client takes a lock per cell update, and a histogram's `observe` walks its
    bounds in Python: 1-2 µs an update, about ten of them per single-entity call
    (docs/performance.md, "Calls per core"). Here an update is a few list operations (a
    histogram's bucket found by bisection) and the locks are taken once per child per flush.
    Not thread-safe: one event loop records and flushes (the scrape thread only reads cells)."""

    __slots__ = ("dirty",)

    def __init__(self) -> None:
        self.dirty: list[PendingCount | PendingHistogram] = []  # updated since the last flush

    def counter(self, child: Any) -> PendingCount:
        return PendingCount(self, child)

    def histogram(self, child: Any) -> PendingHistogram:
        return PendingHistogram(self, child)

    def flush(self) -> None:
        """Add every pending update to its child's cells."""
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for cell in dirty:
                cell.flush()


class PendingCount:
    """A counter child's increments since the last flush."""

    __slots__ = ("_tally", "amount", "child")

    def __init__(self, tally: Tally, child: Any) -> None:
        self._tally, self.child, self.amount = tally, child, 0.0

    def inc(self, amount: float = 1.0) -> None:
        if not self.amount:
            self._tally.dirty.append(self)
        self.amount += amount

    def flush(self) -> None:
        self.child._value.inc(self.amount)
        self.amount = 0.0


class PendingHistogram:
    """A histogram child's observations since the last flush: per-bucket counts and sum."""

    __slots__ = ("_array", "_tally", "bounds", "child", "counts", "observed", "total")

    def __init__(self, tally: Tally, child: Any) -> None:
        self._tally, self.child = tally, child
        self.bounds = tuple(child._upper_bounds)  # +Inf last
        self._array = np.asarray(self.bounds, dtype=np.float64)
        self.counts = [0] * len(self.bounds)
        self.observed = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        """`child.observe(value)`: a value equal to a bound belongs to that bucket (le)."""
        if not self.observed:
            self._tally.dirty.append(self)
        self.observed += 1
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_times(self, value: float, times: int) -> None:
        """`observe(value)` `times` times."""
        if times <= 0:
            return
        if not self.observed:
            self._tally.dirty.append(self)
        self.observed += times
        self.counts[bisect_left(self.bounds, value)] += times
        self.total += value * times

    def observe_many(self, values: npt.NDArray[Any], times: int = 1) -> None:
        """`observe(v)` for every v in `values` (`times` times each), in a handful of numpy
        calls."""
        if len(values) == 0 or times <= 0:
            return
        if not self.observed:
            self._tally.dirty.append(self)
        self.observed += len(values) * times
        found = np.bincount(np.searchsorted(self._array, values, side="left"))
        counts = self.counts
        for index in np.flatnonzero(found).tolist():
            counts[index] += int(found[index]) * times
        self.total += float(values.sum()) * times

    def flush(self) -> None:
        child, counts = self.child, self.counts
        child._sum.inc(self.total)
        buckets = child._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
                counts[index] = 0
        self.total = 0.0
        self.observed = 0
