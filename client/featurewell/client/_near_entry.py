"""One answer the near cache (_near_cache.py) keeps: what it holds, what it costs in memory, and
how a hit reads it back with the statuses the server would give it now."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featurewell.client._result import Column, FeatureResult, Status
from featurewell.v1.columns import LIST_TYPES

_ENTRY_OVERHEAD = 600  # bytes of Python objects per entry besides the answer's payload
_STALE = np.full(1, Status.STALE, dtype=np.uint8)
_STALE.flags.writeable = False
_NEVER = 1 << 62

RowId = tuple[str, int, tuple[str, ...]]  # (view, version, entity key parts)


@dataclass(slots=True)
class Entry:
    """A kept single-entity answer: one row."""

    columns: dict[str, Column]
    deprecations: list[str]
    until: float  # monotonic: never answers after this
    stale_at_us: int  # wall clock: the first PRESENT value to turn STALE does then
    max_age_us: dict[str, int]  # column -> its view's max age (0: never stale)
    stamps: dict[str, int]  # column -> its row's event time
    rows_of: tuple[RowId, ...]
    size: int

    @classmethod
    def of(
        cls,
        result: FeatureResult,
        until: float,
        max_age: dict[str, int],
        stamps: dict[str, int],
        rows_of: Sequence[RowId],
    ) -> Entry:
        columns = {n: _read_only(c) for n, c in result.columns.items()}
        size = _ENTRY_OVERHEAD + sum(_payload(c) for c in columns.values()) + 64 * len(columns)
        stale_at = min(
            (
                stamps[n] + max_age[n]
                for n, c in columns.items()
                if max_age[n] and c.statuses[0] == Status.PRESENT
            ),
            default=_NEVER,
        )
        return cls(
            columns, result.deprecations, until, stale_at, max_age, stamps, tuple(rows_of), size
        )

    def answer(self) -> FeatureResult:
        """The answer of a hit, as the server would give it now."""
        if time.time_ns() // 1000 > self.stale_at_us:
            self._age()
        columns = self.columns
        if any(c.type in LIST_TYPES for c in columns.values()):
            columns = {n: _fresh_lists(c) for n, c in columns.items()}
        return FeatureResult.from_columns(1, columns, self.deprecations)

    def _age(self) -> None:
        """Turn PRESENT values older than their max age STALE, as the server would now."""
        now_us = time.time_ns() // 1000
        columns = dict(self.columns)
        next_stale = _NEVER
        for name, column in columns.items():
            max_age = self.max_age_us[name]
            if not max_age or column.statuses[0] != Status.PRESENT:
                continue
            if self.stamps[name] + max_age < now_us:
                columns[name] = dataclasses.replace(column, statuses=_STALE)
            else:
                next_stale = min(next_stale, self.stamps[name] + max_age)
        self.columns, self.stale_at_us = columns, next_stale


def stamps_of(result: FeatureResult) -> dict[str, int]:
    """Each column's event time (0: no row), from the answer read with event times."""
    return {
        name: int(column.event_time_us[0]) if column.event_time_us is not None else 0
        for name, column in result.columns.items()
    }


def _read_only(column: Column) -> Column:
    """Arrays shared by every hit must not be changed by one caller."""
    values = column.values
    if isinstance(values, np.ndarray) and values.flags.writeable:
        values = values.copy()
        values.flags.writeable = False
        column = dataclasses.replace(column, values=values)
    return column


def _fresh_lists(column: Column) -> Column:
    """A list feature's rows in a list of the caller's own (the arrays are read-only)."""
    if column.type not in LIST_TYPES:
        return column
    return dataclasses.replace(column, values=list(column.values))


def _payload(column: Column) -> int:
    values = column.values
    if isinstance(values, np.ndarray):
        if values.dtype == np.dtype(object):
            return sum(len(str(v)) + 50 for v in values.ravel())
        return int(values.nbytes)
    return sum(int(np.asarray(v).nbytes) + 100 for v in values)
