"""What the streaming engine accepts from a source, event by event, before any event touches
state: the one screen both readers (Redis Streams, Kafka) pass every entry through.

An event is refused, never raised: a malformed entry used to stop `featurewell stream`, and since
it was never acknowledged the restarted stream read it first again (a crash loop). A refused
event becomes a `DeadLetter` (compute/deadletters.py writes it), the rest of the batch goes on.

Checked, in order (the reason class is a metric label, so the set is fixed):
- `undecodable`: not UTF-8 (a Redis entry's event id and String values), not a JSON object
  (Kafka);
- `missing_field`: the event id, the event time or a column of the source is absent;
- `wrong_type`: a value that is not the column's declared type (Kafka: JSON types exactly);
- `not_finite`: NaN or ±Inf in a float column;
- `entity_key`: an empty key or one over `max_entity_key_bytes` (engine/validation.py);
- `event_id`: an empty event id, or one over `MAX_EVENT_ID_BYTES` (ids are kept in state);
- `event_time`: beyond `max_future_skew_s` ahead of the clock, or absurdly old: a future event
  would move the partition's watermark, and every later event would be dropped as late;
- `view_rejected`: a computed view's own code (an expression, an aggregation's check) refuses
  the event while it is applied (compute/stream.py finds which event).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featurewell.definitions import EventSource, Kind
from featurewell.engine.validation import WriteRules, echo, entity_key_problem, event_time_problem

REASONS = (
    "undecodable",
    "missing_field",
    "wrong_type",
    "not_finite",
    "entity_key",
    "event_id",
    "event_time",
    "view_rejected",
)
Payload = tuple[tuple[bytes, bytes], ...]  # as read: a Redis entry's fields, Kafka's key/value
MAX_EVENT_ID_BYTES = 1024  # ids are remembered per entity for the lateness horizon
_INT64 = (-(2**63), 2**63 - 1)
_TRUE, _FALSE = (b"1", b"true", b"True"), (b"0", b"false", b"False")


def wall_clock_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused event: why, where it was read, and what it held."""

    source: str
    partition: int
    receipt: str  # what the source acknowledges: a Redis Stream entry id, a Kafka offset
    reason_class: str  # one of REASONS
    reason: str
    payload: Payload
    time_us: int  # when it was refused


class Refused(Exception):
    def __init__(self, reason_class: str, reason: str) -> None:
        super().__init__(reason)
        self.reason_class = reason_class
        self.reason = reason


Event = tuple[str, int, list[Any]]  # event id, event time (µs), the source's columns in order


class EventScreen:
    """Turns a source's raw entries into checked events (or `Refused`)."""

    def __init__(
        self,
        source: EventSource,
        rules: WriteRules | None = None,
        clock_us: Callable[[], int] = wall_clock_us,
    ) -> None:
        self.source = source
        self.rules = rules or WriteRules()
        self.clock_us = clock_us
        self._columns = [(name, t.kind, name in source.keys) for name, t in source.columns.items()]
        self._text_columns = [(n, n.encode(), k, key) for n, k, key in self._columns]

    def redis_entry(self, fields: Sequence[bytes], now_us: int | None = None) -> Event:
        """An entry's [field, value, ...] as Redis returned them: text in UTF-8. `now_us`
        (default the clock) is what event times are judged against: read once per batch."""
        row = dict(zip(fields[::2], fields[1::2], strict=True))
        id_field, time_field = self.source.id_field, self.source.timestamp_field
        raw_id = row.get(id_field.encode())
        raw_time = row.get(time_field.encode())
        if raw_id is None or raw_time is None:
            self._present({k.decode("utf-8", "replace"): v for k, v in row.items()}, id_field)
            self._present({k.decode("utf-8", "replace"): v for k, v in row.items()}, time_field)
        assert raw_id is not None
        assert raw_time is not None
        values = []
        max_key = self.rules.max_entity_key_bytes
        for name, encoded, kind, is_key in self._text_columns:
            raw = row.get(encoded)
            if raw is None:
                self._present({k.decode("utf-8", "replace"): v for k, v in row.items()}, name)
            assert raw is not None
            value = _from_text(name, kind, raw)
            if kind is Kind.FLOAT64 or kind is Kind.FLOAT32:
                self._checked(name, value)
            # A text key's UTF-8 size is its raw size: the rule is only called to say why.
            if is_key and (not 0 < len(raw) <= max_key if kind is Kind.STRING else True):
                self._key(name, value)
            values.append(value)
        event_id = _text(raw_id, "the event id")
        time_us = _from_text(time_field, Kind.INT64, raw_time)
        return self._event(event_id, time_us, now_us), time_us, values

    def kafka_value(self, value: bytes | None, now_us: int | None = None) -> Event:
        """A message's value: a JSON object of the event id, the event time and the columns."""
        try:
            row = json.loads(value or b"")
        except (UnicodeDecodeError, ValueError) as exc:
            raise Refused("undecodable", f"the message is not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise Refused("undecodable", f"the message is not a JSON object: {echo(row)}")
        return self.mapping(row, now_us)

    def mapping(self, row: Mapping[str, Any], now_us: int | None = None) -> Event:
        """An event as a mapping of JSON-typed values (a Kafka message, `featurewell append`)."""
        event_id = self._present(row, self.source.id_field)
        if isinstance(event_id, int) and not isinstance(event_id, bool):
            event_id = str(event_id)
        if not isinstance(event_id, str):
            raise Refused("wrong_type", f"event id {echo(event_id)} must be a string")
        raw_time = self._present(row, self.source.timestamp_field)
        values = []
        for name, kind, is_key in self._columns:
            values.append(self._checked(name, _from_json(name, kind, self._present(row, name))))
            if is_key:
                self._key(name, values[-1])
        time_us = _from_json(self.source.timestamp_field, Kind.INT64, raw_time)
        return self._event(event_id, time_us, now_us), time_us, values

    def _event(self, event_id: str, time_us: int, now_us: int | None) -> str:
        """The event id, once it and the event time pass."""
        if not event_id or len(event_id) * 4 > MAX_EVENT_ID_BYTES:  # 4: UTF-8's widest
            size = len(event_id.encode("utf-8", "surrogatepass"))
            if not event_id or size > MAX_EVENT_ID_BYTES:
                raise Refused(
                    "event_id",
                    f"event id {echo(event_id)} must be 1 to {MAX_EVENT_ID_BYTES} bytes",
                )
        now = self.clock_us() if now_us is None else now_us
        rules = self.rules
        if not now - rules.max_event_age_us <= time_us <= now + rules.max_future_skew_us:
            problem = event_time_problem(time_us, rules, now)
            if problem is not None:
                raise Refused("event_time", problem)
        return event_id

    def _present(self, row: Mapping[str, Any], name: str) -> Any:
        if name not in row:
            raise Refused("missing_field", f"{name!r} is missing; the event has {_names(row)}")
        return row[name]

    def _checked(self, name: str, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise Refused("not_finite", f"{name!r} is {value}; only finite numbers are accepted")
        return value

    def _key(self, name: str, value: Any) -> None:
        problem = entity_key_problem(value, self.rules)
        if problem is not None:
            raise Refused("entity_key", f"{name!r}: {problem}")

    def screened(self, partition: int, receipt: str, payload: Payload, exc: Refused) -> DeadLetter:
        return DeadLetter(
            self.source.name,
            partition,
            receipt,
            exc.reason_class,
            exc.reason,
            payload,
            wall_clock_us(),
        )

    def columns(self, events: Sequence[Event]) -> dict[str, Any]:
        """The checked events' columns, as the engine reads them."""
        out = {}
        for n, (name, kind, _) in enumerate(self._columns):
            values = [event[2][n] for event in events]
            if kind is Kind.STRING:
                out[name] = np.asarray(values, dtype=object)
            elif kind is Kind.BOOL:
                out[name] = np.asarray(values, dtype=bool)
            elif kind is Kind.INT64:
                out[name] = np.asarray(values, dtype=np.int64)
            else:
                out[name] = np.asarray(values, dtype=np.float64)
        return out


def _names(row: Mapping[str, Any]) -> str:
    names = sorted(row)
    shown = ", ".join(echo(n) for n in names[:10])
    return f"[{shown}{', ...' if len(names) > 10 else ''}]"


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise Refused("undecodable", f"{what} is not UTF-8: {echo(value)}") from None


def _from_text(name: str, kind: Kind, raw: bytes) -> Any:
    """A Redis Stream value (text, as compute/redis_streams.py's `append` writes it) as `kind`."""
    if kind is Kind.STRING:
        return _text(raw, f"{name!r}")
    if kind is Kind.BOOL:
        if raw in _TRUE or raw in _FALSE:
            return raw in _TRUE
        raise Refused("wrong_type", f"{name!r} must be a bool (1/0/true/false), got {echo(raw)}")
    if kind is Kind.INT64:
        try:
            number = int(raw)
        except ValueError:
            number = None
        digits = raw[1:] if raw[:1] in (b"-", b"+") else raw
        # int() also takes spaces and '_': only plain digits are an int64 here.
        if number is not None and _INT64[0] <= number <= _INT64[1] and digits.isdigit():
            return number
        raise Refused("wrong_type", f"{name!r} must be an int64, got {echo(raw)}")
    try:
        return float(raw)
    except ValueError:
        raise Refused("wrong_type", f"{name!r} must be a number, got {echo(raw)}") from None


def _from_json(name: str, kind: Kind, value: Any) -> Any:
    """A JSON value as `kind`, exactly: no string to number, no number to string."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is Kind.STRING and isinstance(value, str):
        return value
    if kind is Kind.BOOL and isinstance(value, bool):
        return value
    if kind is Kind.INT64 and isinstance(value, int) and number and _INT64[0] <= value <= _INT64[1]:
        return value
    if kind in (Kind.FLOAT32, Kind.FLOAT64) and number:
        try:
            return float(value)
        except OverflowError:  # an integer past float64's range
            raise Refused("not_finite", f"{name!r} is {echo(value)}: beyond float64") from None
    raise Refused("wrong_type", f"{name!r} must be {kind.name.lower()}, got {echo(value)}")
