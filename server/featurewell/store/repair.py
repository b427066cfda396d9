"""Repair of rows poisoned by a future event time (`featurewell repair`).

A row whose stored event time is in the future makes every later write of that entity look
older, so each is skipped, and the row never goes STALE. Writes are validated now
(engine/validation.py), but a row written before, or by hand, stays poisoned until repaired:
these functions find such rows (for given entities, or by SCAN over a whole view) and delete
them, each with an atomic compare on the stored time, so a row that is not (or no longer)
beyond the cutoff is never touched. The next write of the entity then lands. The view's write
marker (its newest event time, for the freshness alert) is reset the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from featurewell.definitions import FeatureView, Kind
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import encode_command
from featurewell.store.keys import (
    META_SLOT,
    KeyColumn,
    entity_of_tag,
    entity_tags,
    freshness_key,
    key_prefix,
    key_slot,
    view_keys,
)

_TIME = struct.Struct("<q")

# Delete a row only while its stored event time (first 8 bytes, int64 LE µs) is beyond ARGV[1].
_DELETE_IF_FUTURE = b"""
local current = redis.call('GET', KEYS[1])
if current and #current >= 8 and struct.unpack('<i8', current) > tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
# Forget the marker's newest event time while it is beyond ARGV[1]; the next write sets it.
_RESET_MARKER_IF_FUTURE = b"""
local newest = tonumber(redis.call('HGET', KEYS[1], 'newest_event_us') or '0')
if newest > tonumber(ARGV[1]) then
  redis.call('HDEL', KEYS[1], 'newest_event_us')
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class PoisonedRow:
    """A stored row whose event time is beyond the cutoff."""

    entity: tuple[int | str, ...]  # key values in the entity's key order
    event_time_us: int
    key: bytes


async def future_rows(
    cluster: ClusterClient,
    view: FeatureView,
    keys: Sequence[KeyColumn],
    rows: int,
    cutoff_us: int,
    timeout: float,
) -> list[PoisonedRow]:
    """The rows of these entities (key columns in key order, `rows` long) stored with an event
    time beyond `cutoff_us`."""
    tags = entity_tags(keys, rows)
    return await _beyond(cluster, view, view_keys(key_prefix(view), tags), cutoff_us, timeout)


async def scan_future_rows(
    cluster: ClusterClient, view: FeatureView, cutoff_us: int, timeout: float
) -> list[PoisonedRow]:
    """Every row of `view` stored with an event time beyond `cutoff_us`: SCAN on every master
    (a step at a time, so no node is blocked), then the stored times in batches."""
    pattern = key_prefix(view) + b"*"
    found: list[PoisonedRow] = []
    for address in list(cluster.masters):
        cursor: Any = b"0"
        while True:
            cursor, keys = await cluster.call(
                address, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000
            )
            if keys:
                found += await _beyond(cluster, view, list(keys), cutoff_us, timeout)
            if cursor in (b"0", 0):
                break
    return found


async def delete_future_rows(
    cluster: ClusterClient, rows: Sequence[PoisonedRow], cutoff_us: int, timeout: float
) -> list[bool]:
    """Delete `rows` that are still beyond `cutoff_us`: whether each was deleted."""
    if not rows:
        return []
    commands = [encode_command(b"EVAL", _DELETE_IF_FUTURE, b"1", r.key, cutoff_us) for r in rows]
    replies = await cluster.execute(commands, [key_slot(r.key) for r in rows], timeout)
    return [bool(reply) for reply in replies.checked("deleting poisoned rows")]


async def marker_newest_event(cluster: ClusterClient, view: FeatureView, timeout: float) -> int:
    """The newest event time the view's write marker holds (0: none)."""
    command = encode_command(b"HGET", freshness_key(view), b"newest_event_us")
    (reply,) = (await cluster.execute([command], [META_SLOT], timeout)).checked("write marker")
    return int(reply or 0)


async def reset_future_marker(
    cluster: ClusterClient, view: FeatureView, cutoff_us: int, timeout: float
) -> bool:
    """Forget the view's newest written event time if it is beyond `cutoff_us`."""
    command = encode_command(b"EVAL", _RESET_MARKER_IF_FUTURE, b"1", freshness_key(view), cutoff_us)
    (reply,) = (await cluster.execute([command], [META_SLOT], timeout)).checked("write marker")
    return bool(reply)


async def _beyond(
    cluster: ClusterClient, view: FeatureView, keys: list[bytes], cutoff_us: int, timeout: float
) -> list[PoisonedRow]:
    commands = [encode_command(b"GETRANGE", key, 0, 7) for key in keys]
    replies = await cluster.execute(commands, [key_slot(key) for key in keys], timeout)
    stored = replies.checked("reading stored event times")
    prefix = key_prefix(view)
    integer_keys = [t.kind is Kind.INT64 for t in view.entity.join_keys.values()]
    out = []
    for key, head in zip(keys, stored, strict=True):
        if not isinstance(head, bytes) or len(head) < 8:
            continue  # no row (or not a row of this layout): nothing to repair here
        (event_time_us,) = _TIME.unpack(head)
        if event_time_us > cutoff_us:
            entity = entity_of_tag(key[len(prefix) : -1], integer_keys)
            out.append(PoisonedRow(entity, event_time_us, key))
    return out
