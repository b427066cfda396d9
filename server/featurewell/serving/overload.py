"""Admission: which calls a server takes on, which it sheds at once, and how much of a call's
deadline it keeps back to answer.

Three layers, cheapest first (docs/resilience.md, "Overload"):

1. gRPC's own `maximum_concurrent_rpcs` (serving/transport.py, setting `max_concurrent_rpcs`)
   answers RESOURCE_EXHAUSTED in gRPC's C-level loop code, before any handler or Python task
   exists. It bounds the calls a server holds, queued before their handler included, which
   nothing here can see: past capacity, calls otherwise wait there until their deadline.
2. An adaptive concurrency limit on calls inside handlers (AIMD on handler latency, the scheme of
   Netflix's concurrency-limits `AIMDLimit` and close to Envoy's adaptive concurrency): a call
   slower than `overload_latency_ms` shrinks the limit by `BACKOFF`, a call in time grows it by
   one while the limit is in use, never above `max_in_flight` nor below `MIN_LIMIT`. On an
   asyncio server a saturated loop shows as slower handlers (each await waits its turn behind
   the queue), so the limit follows the loop's congestion.
3. A call whose remaining deadline cannot cover the time an answer needs is dropped before any
   work (DEADLINE_EXCEEDED): its caller has given up, or will before an answer could reach it
   (one whose deadline has already passed ends without a status: none can reach its caller).

Every refusal is counted by reason in `featurewell_shed_calls_total` (reasons: SHED_REASONS).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

from featurewell.errors import DeadlineExceeded, Overloaded
from featurewell.telemetry.metrics import SHED_REASONS

MIN_LIMIT = 4  # the adaptive limit never starves a server of concurrency below this
BACKOFF = 0.9  # multiplicative decrease on a slow call (Netflix AIMDLimit's default)
# A slow call shrinks the limit at most once per this long: a burst of slow calls that were all
# admitted together is one congestion signal, not fifty.
BACKOFF_EVERY_S = 0.005
# The measured answer time decays towards new samples by this much per call: a GC pause or a
# cold path raises the margin at once and lets it down over a few hundred calls.
PEAK_DECAY = 0.995
PEAK_CEILING_S = 0.010  # no single sample may keep back more than this of a deadline
# A store timeout's answer, measured on a 2-core box with a node asleep (DEBUG SLEEP): 1.2-2.0 ms
# from the budget's end to the handler's return. Calls keep this back until one is measured.
TIMEOUT_PRIOR_S = 0.003
TIMEOUT_DECAY = 0.9  # per timed-out call


class AdaptiveLimit:
    """AIMD concurrency limit on handler latency."""

    __slots__ = ("_last_backoff", "ceiling", "limit", "target_s")

    def __init__(self, ceiling: int, target_s: float) -> None:
        self.ceiling = ceiling
        self.target_s = target_s  # 0: adaptation off, the limit stays at the ceiling
        self.limit = float(ceiling)
        self._last_backoff = 0.0

    def done(self, seconds: float, in_flight: int, now: float) -> None:
        """Adjust for a finished call that took `seconds` with `in_flight` calls running."""
        if not self.target_s:
            return
        if seconds > self.target_s:
            if now - self._last_backoff >= BACKOFF_EVERY_S:
                self._last_backoff = now
                self.limit = max(MIN_LIMIT, self.limit * BACKOFF)
        elif in_flight * 2 >= self.limit:  # grow only while the limit is what binds
            self.limit = min(self.ceiling, self.limit + 1.0)


class AnswerMargin:
    """How much of a call's remaining deadline to keep back for the answer: the configured
    `deadline_margin_ms` (the answer's trip to the client, which the server cannot time) plus
    the measured time from the end of the store's budget (or its reply, if earlier) to the
    handler's return: fallbacks, transforms, encoding, and when the store used its whole budget,
    its timer's overshoot (asyncio's epoll timers round up to the millisecond) and the timeout's
    bookkeeping. Each is kept as a decaying peak, so the margin covers slow answers, not the
    average one; the timeout path's peak decays only with new timeouts (ordinary calls say
    nothing of it) and starts from TIMEOUT_PRIOR_S, so the first timeout is covered too."""

    __slots__ = ("base_s", "peak_s", "timeout_peak_s")

    def __init__(self, base_s: float) -> None:
        self.base_s = base_s
        self.peak_s = 0.0
        self.timeout_peak_s = TIMEOUT_PRIOR_S

    @property
    def seconds(self) -> float:
        return self.base_s + max(self.peak_s, self.timeout_peak_s)

    def answered(self, seconds: float, timed_out: bool = False) -> None:
        """Record an answer that needed `seconds` after its store reply or budget's end
        (`timed_out`: the store used its whole budget)."""
        seconds = min(seconds, PEAK_CEILING_S)
        if timed_out:
            self.timeout_peak_s = max(seconds, self.timeout_peak_s * TIMEOUT_DECAY)
        else:
            self.peak_s = max(seconds, self.peak_s * PEAK_DECAY)


class Admission:
    """Calls inside a handler now, and which to refuse: at the hard `max_in_flight`, at the
    adaptive limit, or because their deadline cannot be met. Also counts handlers cancelled
    before they finished (`cancelled`: any reason, a client's expired deadline included), and
    of those the ones cut off by a shutdown's grace period (`cut_off`: cancelled at or after
    `cut_off_at`, which shutdown sets to the end of its grace). Shutdown reports the last, so
    "drained" is a measured claim."""

    def __init__(
        self,
        max_in_flight: int,
        on_shed: Callable[[str, str], None] | None = None,
        *,
        latency_target_s: float = 0.0,
        margin_s: float = 0.001,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.adaptive = AdaptiveLimit(max_in_flight, latency_target_s)
        self.margin = AnswerMargin(margin_s)
        self._on_shed = on_shed
        self.in_flight = 0
        self.shed = 0
        self.shed_by_reason = dict.fromkeys(SHED_REASONS, 0)
        self.cancelled = 0
        self.cut_off = 0
        self.cut_off_at: float | None = None  # time.monotonic() when the grace period ends
        # Called when the last call in flight has left (serving/gc_pacing.py collects then).
        self.on_idle: Callable[[], None] | None = None

    @property
    def limit(self) -> int:
        return self.max_in_flight

    def _refuse(self, method: str, reason: str) -> None:
        self.shed += 1
        self.shed_by_reason[reason] += 1
        if self._on_shed is not None:
            self._on_shed(method, reason)

    def admit(self, method: str, remaining: float | None) -> None:
        """Raise Overloaded or DeadlineExceeded for a call to refuse; return for one to serve."""
        if self.in_flight >= self.max_in_flight:
            self._refuse(method, "max_in_flight")
            raise Overloaded(
                f"server busy: {self.in_flight} calls in flight (max_in_flight "
                f"{self.max_in_flight}); retry with backoff or on another replica"
            )
        if self.in_flight >= self.adaptive.limit:
            self._refuse(method, "adaptive_limit")
            raise Overloaded(
                f"server busy: {self.in_flight} calls in flight, its adaptive limit now "
                f"{self.adaptive.limit:.0f} (calls are slower than overload_latency_ms); retry "
                "with backoff or on another replica"
            )
        if remaining is not None and remaining <= self.margin.seconds:
            self._refuse(method, "deadline")
            if remaining <= 0.0:
                # Its deadline has passed (it waited in a busy server's queue): the caller has
                # given up and gRPC's core cancels the call, so no status can reach it. Sending
                # one anyway races that cancellation, and when it loses gRPC logs a traceback
                # per call, many a second in an overload: end the call without one.
                raise asyncio.CancelledError
            raise DeadlineExceeded(
                f"the call's deadline leaves {remaining * 1000:.2f} ms, less than the "
                f"{self.margin.seconds * 1000:.2f} ms the server needs to answer (it may have "
                "waited in a busy server's queue); raise the deadline or retry elsewhere"
            )

    # A call's way through admission, without a context manager: the servicer's hot path calls
    # these three itself (a generator-based `track` cost a single-entity call ~3 µs of CPU).

    def enter(self, method: str, remaining: float | None = None) -> None:
        """Admit a call (or raise, as `admit`) and count it in flight."""
        self.admit(method, remaining)
        self.in_flight += 1

    def leave(self, started_ns: int) -> None:
        """A call `enter` admitted has ended, however it ended; it started (its handler took
        it) at `started_ns` (`time.perf_counter_ns`)."""
        now_ns = time.perf_counter_ns()
        now = now_ns / 1e9
        self.adaptive.done((now_ns - started_ns) / 1e9, self.in_flight, now)
        self.in_flight -= 1
        if self.in_flight == 0 and self.on_idle is not None:
            self.on_idle()

    def was_cancelled(self) -> None:
        """A call `enter` admitted was cancelled before it ended (`leave` still follows)."""
        self.cancelled += 1
        # gRPC cancels every handler still running when the grace ends; a client whose
        # deadline expires cancels its handler too, but before that (or with no shutdown).
        if self.cut_off_at is not None and time.monotonic() >= self.cut_off_at - 0.001:
            self.cut_off += 1

    @contextlib.contextmanager
    def track(self, method: str, remaining: float | None = None) -> Iterator[None]:
        self.enter(method, remaining)
        started = time.perf_counter_ns()
        try:
            yield
        except asyncio.CancelledError:
            self.was_cancelled()
            raise
        finally:
            self.leave(started)
