"""Calls answered alike, recorded together.

A hot single entity's kept answer (serving/single_cache.py) is one result object for every call
it answers, so those calls served the same thing (rows by status, the same values for drift,
the same views to their caller) and differ only in when they were served. Recording each call
on its own, a moment after its answer, was the largest share of a kept call's CPU left to us
(in the server, ~25 µs of ~300 µs: docs/performance.md). Here such a call adds one to its group,
(answer, caller header, principal), and its wall-clock time to the group's sum;
`Telemetry.flush` records each group once, with its count, at the mean time of its calls.

A call's own latency is still recorded per call, at once (`ServerMetrics.record_read_time`).
Value ages are taken at the group's mean time: the age histogram's sum is exact, and a call's
bucket can differ only when a bucket bound (1 s at the finest) falls inside one flush interval
(50 ms). Drift draws its sample per call, as before. Traced and logged calls are recorded one
by one, as every other call is (serving/service.py decides).

Bounds: a group per distinct (answer, caller, principal) until recorded. With many hot
entities or callers there are nearly as many groups as calls, so every BATCH new groups are
recorded a moment after the answer that made them (the servicer queues
`Telemetry.record_alike` as it queues any call's telemetry), not all at the flush: the loop
stops for about BATCH groups' work at a time (more only if more arrive within those 2 ms),
and the table stays small. Caller names
are checked where they are counted (telemetry/consumers.py); a header value too long to be
one is kept as a short marker counted alike.
"""

from __future__ import annotations

from typing import NamedTuple

from featurewell.engine.calls import FeatureResult

BATCH = 32  # groups recorded at once, a moment after the answer that made the BATCH-th


class Group(NamedTuple):
    result: FeatureResult
    caller: str | bytes | None  # the x-featurewell-model header's value (None: not sent)
    principal: str | None  # the verified caller (None: authentication off)
    calls: int
    at_us: int  # the calls' mean wall-clock time, µs


class _Pending:
    __slots__ = ("calls", "result", "total_us")

    def __init__(self, result: FeatureResult, at_us: int) -> None:
        self.result, self.calls, self.total_us = result, 1, at_us


class AlikeCalls:
    """Counts per group until `drain`. Not thread-safe: one event loop adds and drains."""

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        # (id of the result, caller, principal) -> its calls so far; the result is held, so
        # its id is not reused while the group waits.
        self._groups: dict[tuple[int, str | bytes | None, str | None], _Pending] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def add(
        self, result: FeatureResult, caller: str | bytes | None, principal: str | None, at_us: int
    ) -> bool:
        """Count a call in its group; True when its group was the BATCH-th (record them)."""
        key = (id(result), caller, principal)
        pending = self._groups.get(key)
        if pending is None:
            self._groups[key] = _Pending(result, at_us)
            return len(self._groups) == BATCH
        pending.calls += 1
        pending.total_us += at_us
        return False

    def drain(self) -> list[Group]:
        """The groups added since the last drain, oldest first; starts afresh."""
        groups, self._groups = self._groups, {}
        return [
            Group(p.result, caller, principal, p.calls, p.total_us // p.calls)
            for (_, caller, principal), p in groups.items()
        ]
