"""Garbage collection paced to idle moments: small passes when no call is in a handler, instead
of CPython's automatic passes at whatever moment its count runs over; and every pass timed.

Why: grpc.aio leaves a reference cycle behind every call (its method lookup's closure with the
call's details, five objects), which only the collector frees: ~2,000 objects/s at the gate's
load. The automatic young-generation threshold is high (`gc_gen0_threshold`, 50,000) so that no
pass lands inside a ranking call, which holds a few thousand young objects at once. But the pass
that does come frees tens of thousands of objects at once and stopped the event loop for 8-30 ms
(up to 114 ms) in the gate: the p99 of every call caught in it (docs/architecture.md).

Paced, a pass runs once `young_objects` have piled up and the last call in flight has left:
`after_s` later (its answer is out by then), if no call is in a handler at that moment. It frees
about that many objects (0.6 ms at 1,000, measured) while no call waits. Older generations follow
CPython's own counts (a generation-1 pass once more than `gc.get_threshold()[1]` paced young ones
ran, a full one once more than `[2]` of those did), also at idle moments. CPython also holds a
full pass back until the long-lived heap has grown by a quarter, a count Python cannot read; here
a full pass waits at least `FULL_PASS_EVERY_S` since the last one instead (a generation-1 pass
runs meanwhile), so no setting makes full passes frequent. CPython's automatic collection stays
on as the backstop for a server never idle: its threshold is reached only when pacing could not
keep up. Python 3.14's incremental collector gives the counts another meaning: there, passes are
timed but not paced. One pacer per server: several servers in one process (tests) each pace at
their own idle moments, and each sees the others' passes as automatic.

Every pass, paced or automatic, in any thread, is timed (`pauses`) for the
`featurewell_gc_pause_seconds` histogram: an automatic pass there says pacing did not keep up.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from featurewell.settings import ServingSettings
from featurewell.telemetry.metrics import GC_TRIGGERS

PACED, AUTOMATIC = GC_TRIGGERS
FULL_PASS_EVERY_S = 60.0  # at least this long between paced full passes
# Young passes before a full one is due by the counts: CPython's 10 x 10 was this server's
# 20 x 100 until generation-1 passes became a setting; the product stays, so full passes come
# no more often when generation-1 passes do.
YOUNG_PASSES_PER_FULL = 2_000
PACING_SUPPORTED = sys.version_info < (3, 14)  # the generational counts this module reads
_KEPT_PAUSES = 10_000  # undrained pauses kept (bounded: nothing may grow if no one drains)


class GcPacer:
    """Collects when `busy()` says no call is in a handler and `young_objects` wait (0: never,
    only CPython's automatic passes). `idle()` is the hint that the last call in flight left;
    the pass runs `after_s` later, if the server is still idle then. Times every collector pass
    in the process until `close()`."""

    def __init__(self, young_objects: int, busy: Callable[[], bool], after_s: float = 0.0) -> None:
        self.young_objects = young_objects if PACING_SUPPORTED else 0
        self._busy = busy
        self._after_s = after_s
        self._last_full = time.monotonic()  # start-up's own full pass just ran (server.py)
        self._armed = False
        self._pacing = False
        self._started = 0.0
        # (generation, trigger, seconds) of each pass since the last `drain`
        self.pauses: deque[tuple[int, str, float]] = deque(maxlen=_KEPT_PAUSES)
        gc.callbacks.append(self._timed)

    def close(self) -> None:
        """Stop timing passes (pacing stops with the loop's calls)."""
        self.young_objects = 0
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)

    def idle(self) -> None:
        """No call is in a handler: collect soon if enough young objects wait. One C call when
        there is nothing to do."""
        if self._armed or not self.young_objects or gc.get_count()[0] < self.young_objects:
            return
        self._armed = True
        # Not now: gRPC is still sending the answer of the call that just left, and a pass on
        # the loop would hold it (serving/service.py's AFTER_ANSWER_S, measured for telemetry).
        asyncio.get_running_loop().call_later(self._after_s, self._collect)

    def drain(self) -> list[tuple[int, str, float]]:
        """The passes timed since the last drain, oldest first."""
        pauses = self.pauses
        return [pauses.popleft() for _ in range(len(pauses))]

    def _collect(self) -> None:
        self._armed = False
        if self._busy():  # a call came in meanwhile: the next idle moment
            return
        generation = due_generation()
        if generation == 2:
            now = time.monotonic()
            if now - self._last_full < FULL_PASS_EVERY_S:
                generation = 1
            else:
                self._last_full = now
        self._pacing = True
        try:
            gc.collect(generation)
        finally:
            self._pacing = False

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector, in whichever thread allocated: no locks, no metrics here
        # (a Prometheus lock held by the interrupted code would deadlock it); `drain` hands the
        # pauses to the telemetry loop.
        if phase == "start":
            self._started = time.perf_counter()
            return
        trigger = PACED if self._pacing else AUTOMATIC
        self.pauses.append((info["generation"], trigger, time.perf_counter() - self._started))


def older_thresholds(serving: ServingSettings) -> tuple[int, int]:
    """`gc.set_threshold`'s generation-1 and generation-2 counts: a generation-1 pass every
    `gc_gen1_every` young passes. It walks all that survived since the last one, mostly kept
    answers and cached rows at a few dozen objects each: 6.7 ms at the gate's load every 20
    young passes, 2.5 ms every 5 (docs/architecture.md#garbage-collection)."""
    every = serving.gc_gen1_every
    return every, max(1, YOUNG_PASSES_PER_FULL // every)


def due_generation() -> int:
    """The oldest generation due by CPython's counts: each pass of a generation adds one to the
    next one's count, and a generation is due once its count is above its threshold."""
    count, threshold = gc.get_count(), gc.get_threshold()
    if count[2] > threshold[2]:
        return 2
    if count[1] > threshold[1]:
        return 1
    return 0


def trim_heap() -> float:
    """Hand the C heap's free pages back to the OS now (glibc's `malloc_trim`); the seconds
    it took, 0.0 without glibc.

    Why: protobuf's upb backend calls `malloc_trim(0)` itself after every 10,000 arena blocks
    it frees, on whichever thread frees them: the event loop. The first such trim after
    start-up (or a reload, or the demo's data load) freed much memory stopped the loop for
    33 ms in the gate; the ones after it, every ~6 s, took 0.4-0.9 ms (perf uprobes on
    `malloc_trim`, docs/architecture.md#garbage-collection). Trimmed here first, before
    calls come, upb's first trim is one of the short ones."""
    trim = _malloc_trim()
    if trim is None:
        return 0.0
    started = time.perf_counter()
    trim(0)
    return time.perf_counter() - started


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
        return trim
    except (AttributeError, OSError):  # not glibc (musl, macOS): no such call
        return None
