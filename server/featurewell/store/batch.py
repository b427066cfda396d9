"""What one batched `ClusterClient.execute` returns: replies in command order, the commands
that got none (by node and reason), and each node batch's timing."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from featurewell.errors import StoreUnavailable
from featurewell.store.connection import Address, refusal


class FailureReason(enum.IntEnum):
    """Why some commands of a batch got no reply. The numbers are the wire's `FallbackReason`."""

    TIMEOUT = 1  # the node did not answer within the call's budget
    UNAVAILABLE = 2  # no connection to the node, or the cluster had no owner for the slot
    CIRCUIT_OPEN = 3  # the node's breaker is open: it was not asked


@dataclass(frozen=True, slots=True)
class Failure:
    indexes: list[int]
    node: Address | None
    reason: FailureReason
    detail: str


def describe(failures: Sequence[Failure], *, nodes: bool = True) -> tuple[int, str]:
    """How many commands got no reply, and the first failure in words, for error messages:
    (3, "node 10.0.0.1:7000: timeout, no reply within the budget"). `nodes=False` leaves out
    the node and the detail (which may name nodes too), for messages sent to clients:
    (3, "timeout")."""
    first = failures[0]
    if not nodes:
        return sum(len(f.indexes) for f in failures), first.reason.name.lower()
    node = f"node {first.node[0]}:{first.node[1]}" if first.node else "the cluster"
    return sum(len(f.indexes) for f in failures), (
        f"{node}: {first.reason.name.lower()}, {first.detail}"
    )


@dataclass(frozen=True, slots=True)
class NodeTiming:
    """One pipelined batch to one node: when it was sent and answered (`time.perf_counter_ns`;
    `answered_ns` 0 when no answer came), and how many commands it held. Telemetry turns these
    into per-node latency histograms and trace spans after the call, outside the hot path."""

    node: Address
    sent_ns: int
    answered_ns: int
    commands: int


class Replies(NamedTuple):
    """Replies in command order (None where a command failed), the indexes of error replies
    (other than the redirects `execute` follows itself), the commands that got no reply,
    grouped by node and reason, and each node batch's timing. Callers never scan the replies
    again."""

    values: list[Any]
    errors: list[int]
    failures: list[Failure]
    timings: list[NodeTiming]

    def checked(self, what: str) -> list[Any]:
        """The replies of a batch that must succeed whole: StoreUnavailable("<what>: <first
        problem>") when a command got no reply or an error reply."""
        if self.errors and not self.failures:  # an error reply: NOPERM reads differently
            raise refusal(what, self.values[self.errors[0]])
        if self.failures or self.errors:
            problem = self.failures[0].detail if self.failures else self.values[self.errors[0]]
            raise StoreUnavailable(f"{what}: {problem}")
        return self.values
