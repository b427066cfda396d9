"""What a written row or an ingested event must satisfy, in one place.

Every write path (WriteFeatures, `featurewell materialize`, backfills, the streaming engine)
checks its input with these rules before anything reaches Redis, so a bad value is refused with
a reason that names what to fix, and never poisons a row: an event time far in the future, for
instance, would make every later write of its row look older and be skipped, forever.

A `Problem` names the row and the column; callers decide what a problem means for them: a
WriteFeatures call is refused whole (nothing is written half-way), a stream sends the event to
its dead letters and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.settings_groups import ServingSettings

_US_PER_S = 1_000_000
_US_PER_DAY = 86_400 * _US_PER_S
# A message never echoes more of a hostile value than this.
_ECHO_CHARS = 40


@dataclass(frozen=True, slots=True)
class WriteRules:
    """The limits every written row and ingested event is held to (from ServingSettings)."""

    max_future_skew_us: int = 300 * _US_PER_S
    max_event_age_us: int = 3650 * _US_PER_DAY
    max_entity_key_bytes: int = 1024

    @classmethod
    def from_settings(cls, serving: ServingSettings) -> WriteRules:
        return cls(
            max_future_skew_us=int(serving.max_future_skew_s * _US_PER_S),
            max_event_age_us=int(serving.max_event_age_days * _US_PER_DAY),
            max_entity_key_bytes=serving.max_entity_key_bytes,
        )


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one row (or a whole column, row -1) cannot be written."""

    row: int
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"column {self.column!r}" if self.row < 0 else f"row {self.row}, {self.column!r}"
        return f"{where}: {self.reason}"


def echo(value: Any) -> str:
    """`value` as a message may show it: truncated, so a huge hostile input is not sent back."""
    text = repr(value)
    if len(text) <= _ECHO_CHARS:
        return text
    return f"{text[:_ECHO_CHARS]}... ({len(text)} chars)"


def event_time_problem(event_time_us: int, rules: WriteRules, now_us: int) -> str | None:
    """Why one event time cannot be written, or None when it can."""
    if event_time_us > now_us + rules.max_future_skew_us:
        ahead_s = (event_time_us - now_us) / _US_PER_S
        return (
            f"event time {event_time_us} µs is {ahead_s:.0f} s in the future (more than "
            f"max_future_skew_s {rules.max_future_skew_us / _US_PER_S:g}); send µs since the "
            "epoch from a synchronised clock"
        )
    if event_time_us < now_us - rules.max_event_age_us:
        if event_time_us <= 0:
            return f"event time {event_time_us} µs is not a positive time since the epoch"
        return (
            f"event time {event_time_us} µs is older than max_event_age_days "
            f"{rules.max_event_age_us / _US_PER_DAY:g}; is it in seconds or ms, not µs?"
        )
    return None


def event_time_problems(
    event_time_us: npt.NDArray[np.int64], rules: WriteRules, now_us: int, column: str
) -> list[Problem]:
    """Every row of `event_time_us` that `event_time_problem` refuses (vectorised: only the bad
    rows cost Python work)."""
    low = now_us - rules.max_event_age_us
    high = now_us + rules.max_future_skew_us
    bad = np.flatnonzero((event_time_us < low) | (event_time_us > high))
    out = []
    for row in bad.tolist():
        reason = event_time_problem(int(event_time_us[row]), rules, now_us)
        if reason is not None:
            out.append(Problem(row, column, reason))
    return out


def entity_key_problem(value: Any, rules: WriteRules) -> str | None:
    """Why one entity key value (a str or an int, as its entity declares) cannot be used."""
    if isinstance(value, str):
        if not value:
            return "an entity key value is the empty string"
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > rules.max_entity_key_bytes:
            return (
                f"entity key value {echo(value)} is {size} bytes, over max_entity_key_bytes "
                f"{rules.max_entity_key_bytes}"
            )
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return f"entity key value {echo(value)} must be a string or an integer"
    return None
