"""Per-node circuit breakers: stop sending to a Redis node that keeps failing.

A node that times out or refuses connections `failures` calls in a row is *open* for `open_s`
seconds: calls whose keys live there fail at once (and the serving engine answers those rows from
its fallbacks) instead of each spending its whole budget waiting. After `open_s` one call is let
through as a trial; its success closes the breaker, its failure opens it again.

A timeout counts as a failure whatever set the budget (the server's cap or a client's deadline),
as long as the budget was at least TIMEOUT_EVIDENCE_S: a node that does not answer within that
is slow, however short the caller's deadline. Below it, a miss may be the client's haste or this
server's own busy loop, and says nothing of the node (counting those would open circuits on an
overloaded server and serve fallbacks it need not).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

# A healthy Redis node answers a pipelined read in well under 1 ms on a LAN; 5 ms without a reply
# is a node problem (DEBUG SLEEP, a fork, swapping), not noise.
TIMEOUT_EVIDENCE_S = 0.005


def timeout_counts(budget_s: float) -> bool:
    """Whether a timeout after `budget_s` seconds counts against the node's breaker."""
    return budget_s >= TIMEOUT_EVIDENCE_S


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # a trial call is in flight


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 3
    open_s: float = 1.0


class Breaker:
    __slots__ = ("_failures", "_open_until", "_policy", "_trial", "opened")

    def __init__(self, policy: BreakerPolicy) -> None:
        self._policy = policy
        self._failures = 0
        self._open_until = 0.0
        self._trial = 0.0  # when the trial call started; 0: none in flight
        self.opened = 0  # how many times it opened: for metrics and tests

    @property
    def failures(self) -> int:
        """Failures counted since the last success."""
        return self._failures

    @property
    def state(self) -> BreakerState:
        if self._trial:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN if self._open_until else BreakerState.CLOSED

    def allow(self, now: float | None = None) -> bool:
        """Whether a call may go to the node now. Past the open period the first caller becomes
        the trial; others keep failing fast until it reports."""
        if not self._open_until:
            return True
        now = now if now is not None else time.monotonic()
        # A trial that never reported (its call was cancelled) must not block recovery forever.
        if now < self._open_until or now - self._trial < self._policy.open_s:
            return False
        self._trial = now
        return True

    def success(self) -> None:
        self._failures = 0
        self._open_until = 0.0
        self._trial = 0.0

    def failure(self, now: float | None = None) -> bool:
        """Record a failed call; True when this failure opened the breaker."""
        self._failures += 1
        if self._trial or (not self._open_until and self._failures >= self._policy.failures):
            self._trial = 0.0
            self._open_until = (now if now is not None else time.monotonic()) + self._policy.open_s
            self.opened += 1
            return True
        return False
