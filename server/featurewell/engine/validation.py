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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.definitions import FeatureType, FeatureView, Kind, Registry
from featurewell.engine.calls import InputColumn, WriteRequest
from featurewell.engine.feature_checks import feature_problems, rows_and_values, utf8
from featurewell.errors import InvalidRequest, UnknownFeature
from featurewell.settings_groups import ServingSettings

_US_PER_S = 1_000_000
_US_PER_DAY = 86_400 * _US_PER_S
# A message never echoes more of a hostile value than this.
_ECHO_CHARS = 40
# A refusal names this many problems (then says how many more there are).
SHOWN_PROBLEMS = 5
_INT64_MAX = np.iinfo(np.int64).max


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
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: Redis keys and tags are UTF-8 bytes
            return f"entity key value {echo(value)} is not valid Unicode (a lone surrogate?)"
        if size > rules.max_entity_key_bytes:
            return (
                f"entity key value {echo(value)} is {size} bytes, over max_entity_key_bytes "
                f"{rules.max_entity_key_bytes}"
            )
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return f"entity key value {echo(value)} must be a string or an integer"
    return None


# -- a whole write ------------------------------------------------------------------------------


def check_write(
    view: FeatureView, request: WriteRequest, rules: WriteRules, now_us: int
) -> list[Problem]:
    """Every problem of a write's values, rows in order (column-wide problems, row -1, first).

    The request's shape (entity keys and features present, key kinds, row counts) is the
    engine's to check before; this checks the values, in bulk: numeric columns cost a few numpy
    passes whatever their size, strings and keys one C-level pass unless something is wrong.
    """
    rows = len(request.event_time_us)
    if request.event_time_us.dtype.kind not in "iu":  # not from the wire: a caller's array
        got = request.event_time_us.dtype
        return [Problem(-1, "event_time", f"event times are integer µs, got {got} values")]
    problems = event_time_problems(request.event_time_us, rules, now_us, "event_time")
    if now_us - rules.max_event_age_us <= 0:  # else event_time_problems caught these already
        problems += [
            Problem(row, "event_time", f"event time {t} µs is not a positive time since the epoch")
            for row, t in rows_and_values(request.event_time_us <= 0, request.event_time_us)
        ]
    for key in view.entity.key_names:
        column = request.entities.get(key)
        if column is not None:
            kind = view.entity.join_keys[key].kind
            problems += entity_key_problems(column.values, kind, rules, key)
    for feature in view.features:
        values = request.features.get(feature.name)
        if values is not None:
            found = feature_problems(feature, values, rows)
            problems += [Problem(row, feature.name, reason) for row, reason in found]
    return sorted(problems, key=lambda problem: problem.row)


def refusal(what: str, problems: Sequence[Problem], total: int | None = None) -> str:
    """`what` refused for `problems`, naming the first few and how many there are (`total`,
    when `problems` holds only the first ones)."""
    count = len(problems) if total is None else total
    shown = "; ".join(str(p) for p in problems[:SHOWN_PROBLEMS])
    more = count - min(len(problems), SHOWN_PROBLEMS)
    tail = f"; and {more} more" if more > 0 else ""
    plural = "s" if count != 1 else ""
    return f"{what}: {count} problem{plural}, nothing written: {shown}{tail}"


def entity_key_problems(
    values: Sequence[Any], kind: Kind, rules: WriteRules, column: str
) -> list[Problem]:
    """`entity_key_problem` for every row of a key column of `kind`; a valid column of the
    kind's Python type costs a few C-level passes, not a Python call per row."""
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    types = set(map(type, items))
    if kind is Kind.STRING and types <= {str, np.str_}:
        longest = max(map(len, items), default=0)
        # A char is 1 byte in UTF-8 if ASCII, else at most 4: no row can be over the limit if
        # the longest is under it in chars (ASCII) or in chars x 4.
        limit = rules.max_entity_key_bytes
        short = longest * 4 <= limit or (longest <= limit and "".join(items).isascii())
        if short and "" not in items and utf8(items):
            return []
    if kind is Kind.INT64 and types <= {int}:
        try:
            np.asarray(items, dtype=np.int64)
            return []
        except OverflowError:
            pass
    out = []
    for row, value in enumerate(items):
        reason = _key_value_problem(value, kind, rules)
        if reason is not None:
            out.append(Problem(row, column, reason))
    return out


def _key_value_problem(value: Any, kind: Kind, rules: WriteRules) -> str | None:
    if value is None:
        return "the entity key is null"
    if kind is Kind.STRING and not isinstance(value, str):
        return f"entity key value {echo(value)} must be a string (the entity declares String)"
    if kind is Kind.INT64 and isinstance(value, str):
        return f"entity key value {echo(value)} must be an integer (the entity declares Int64)"
    reason = entity_key_problem(value, rules)
    if reason is not None:
        return reason
    if isinstance(value, int | np.integer) and not -(2**63) <= int(value) <= _INT64_MAX:
        return f"entity key value {echo(value)} does not fit in int64"
    return None


def write_view(registry: Registry, request: WriteRequest, max_rows: int) -> FeatureView:
    """The view `request` writes, if the request has the shape of a write to it; else raises
    at once (there are no rows to name): InvalidRequest for a malformed reference, no rows or
    too many, a missing key or feature, columns of different lengths or the wrong kind;
    UnknownFeature for an unknown view or version, or a feature the view does not have."""
    name, _, version = request.view.partition("@v")
    if version and not version.isdigit():
        raise InvalidRequest(f"view {request.view!r}: write 'view' or 'view@v2'")
    view = registry.view(name, int(version) if version else None)
    rows = len(request.event_time_us)
    if rows == 0:
        raise InvalidRequest("empty write: send at least one row")
    if rows > max_rows:
        raise InvalidRequest(f"write of {rows} rows exceeds the limit of {max_rows}")
    for key in view.entity.key_names:
        column = request.entities.get(key)
        if column is None:
            raise InvalidRequest(f"writing {view.ref!r} needs entity key {key!r}")
        check_kind(f"entity key {key!r}", view.entity.join_keys[key], column)
        if len(column.values) != rows:
            raise InvalidRequest(
                f"entity key {key!r} has {len(column.values)} values for {rows} rows"
            )
    unknown = sorted(set(request.features) - set(view.feature_index))
    if unknown:
        raise UnknownFeature(f"feature view {view.ref!r} has no features {unknown}")
    missing = [f.name for f in view.features if f.name not in request.features]
    if missing:
        raise InvalidRequest(
            f"writing {view.ref!r} replaces whole rows: send every feature; missing {missing}"
        )
    return view


def check_kind(what: str, expected: FeatureType, column: InputColumn) -> None:
    """Refuse a column whose values are not of the kind `expected` says."""
    if column.kind is not expected.kind:
        raise InvalidRequest(f"{what} is {expected}; got {column.kind.name.lower()} values")
