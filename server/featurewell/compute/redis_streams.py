"""Events on Redis Streams: appending them (producers, tests, the demo) and consuming them with a
consumer group (the streaming engine).

Each partition of a source is one stream (`store.keys.stream_keys(source)[p]`); a producer puts an
event on partition crc32(first key column) % partitions, so one entity's events keep their order.
An entry holds `event_id`, `event_time` (µs) and every key and field of the source.

Consumption is at-least-once: entries are acknowledged (XACK) only after the state that applied
them is checkpointed. A restarted consumer first re-reads its own pending entries; a consumer that
replaces a dead one (another name) first claims the dead one's pending entries (XAUTOCLAIM). The
engine skips what its checkpointed state already holds, so redelivery never double-counts.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import hiredis
import numpy as np

from featurewell.compute.stream import EventBatch
from featurewell.definitions import EventSource, Kind
from featurewell.errors import InvalidRequest, StoreUnavailable
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import encode_command
from featurewell.store.keys import key_slot, stream_keys


def partition_of(source: EventSource, event: Mapping[str, Any]) -> int:
    first = next(iter(source.keys))
    return zlib.crc32(str(event[first]).encode()) % source.partitions


async def append(
    cluster: ClusterClient,
    source: EventSource,
    events: Sequence[Mapping[str, Any]],
    timeout: float = 5.0,
) -> list[str]:
    """XADD each event (a mapping with event_id, event_time and the source's columns) to its
    partition's stream; returns the entry ids."""
    commands, slots = [], []
    keys = stream_keys(source)
    for event in events:
        key = keys[partition_of(source, event)]
        fields: list[bytes | str | int] = []
        for name in (source.id_field, source.timestamp_field, *source.columns):
            fields += [name, _text(event[name])]
        commands.append(encode_command("XADD", key, "*", *fields))
        slots.append(key_slot(key))
    replies, errors, failures, _ = await cluster.execute(commands, slots, timeout)
    if failures or errors:
        problem = failures[0].detail if failures else replies[errors[0]]
        raise StoreUnavailable(f"cannot append events to Redis: {problem}")
    return [reply.decode() for reply in replies]


def checked_event(source: EventSource, event: Mapping[str, Any], now_us: int) -> dict[str, Any]:
    """A producer's event (e.g. parsed JSON) checked against the source's columns and types;
    `event_id` defaults to a fresh UUID and `event_time` to `now_us`."""
    where = f"event for source {source.name!r}"
    columns = source.columns
    known = {*columns, source.id_field, source.timestamp_field}
    problems = []
    if unknown := sorted(set(event) - known):
        problems.append(f"unknown columns {unknown}")
    if missing := sorted(set(columns) - set(event)):
        problems.append(f"missing columns {missing}")
    if problems:
        raise InvalidRequest(
            f"{where}: {'; '.join(problems)}. It takes {sorted(columns)}, and optionally "
            f"{source.id_field!r} and {source.timestamp_field!r} (µs since the epoch)"
        )
    checked: dict[str, Any] = {
        source.id_field: str(event.get(source.id_field) or uuid.uuid4().hex),
        source.timestamp_field: _typed(
            where, source.timestamp_field, Kind.INT64, event.get(source.timestamp_field, now_us)
        ),
    }
    for name, dtype in columns.items():
        checked[name] = _typed(where, name, dtype.kind, event[name])
    return checked


def _typed(where: str, name: str, kind: Kind, value: Any) -> Any:
    ok = {
        Kind.STRING: isinstance(value, str),
        Kind.BOOL: isinstance(value, bool),
        Kind.INT64: isinstance(value, int) and not isinstance(value, bool),
        Kind.FLOAT32: isinstance(value, int | float) and not isinstance(value, bool),
        Kind.FLOAT64: isinstance(value, int | float) and not isinstance(value, bool),
    }[kind]
    if not ok:
        raise InvalidRequest(f"{where}: {name!r} must be {kind.name.lower()}, got {value!r}")
    return float(value) if kind in (Kind.FLOAT32, Kind.FLOAT64) else value


def _text(value: Any) -> bytes:
    if isinstance(value, bool | np.bool_):
        return b"1" if value else b"0"
    if isinstance(value, bytes):
        return value
    return str(value.item() if isinstance(value, np.generic) else value).encode()


class RedisStreamSource:
    """One consumer of a source's partitions in a consumer group."""

    def __init__(
        self,
        cluster: ClusterClient,
        source: EventSource,
        group: str,
        consumer: str,
        partitions: Sequence[int] | None = None,
        claim_idle_ms: int = 30_000,
        timeout: float = 5.0,
    ) -> None:
        self.cluster = cluster
        self.source = source
        self.group = group
        self.consumer = consumer
        self.partitions = list(range(source.partitions)) if partitions is None else list(partitions)
        self.claim_idle_ms = claim_idle_ms
        self._keys = stream_keys(source)
        self.timeout = timeout
        # Per partition: "0" while re-reading our own pending entries, then ">" (new ones).
        self._cursor = dict.fromkeys(self.partitions, "0")
        self.claimed = 0

    async def start(self) -> None:
        """Create the group if needed (from the stream's start), and claim the entries a dead
        consumer left pending."""
        for partition in self.partitions:
            key = self._keys[partition]
            reply = await self._one(key, "XGROUP", "CREATE", key, self.group, "0", "MKSTREAM")
            if isinstance(reply, hiredis.ReplyError) and "BUSYGROUP" not in str(reply):
                raise StoreUnavailable(f"cannot create consumer group on {key}: {reply}")
            cursor = "0-0"
            while True:
                reply = await self._one(
                    key, "XAUTOCLAIM", key, self.group, self.consumer, self.claim_idle_ms,
                    cursor, "COUNT", 1000, "JUSTID",
                )  # fmt: skip
                if isinstance(reply, hiredis.ReplyError):
                    raise StoreUnavailable(f"cannot claim pending entries on {key}: {reply}")
                cursor = reply[0].decode()
                self.claimed += len(reply[1])
                if cursor == "0-0":
                    break

    async def read(self, count: int) -> list[EventBatch]:
        """Up to `count` entries per partition (pending ones first after a restart)."""
        batches: list[EventBatch] = []
        partitions = self.partitions
        while partitions:
            switched = []
            for partition, entries in zip(
                partitions, await self._read(partitions, count), strict=True
            ):
                if self._cursor[partition] == "0" and not entries:
                    self._cursor[partition] = ">"  # our pending entries are done: new ones now
                    switched.append(partition)
                elif entries:
                    batches.append(self._batch(partition, entries))
            partitions = switched  # read those again, for new entries
        return batches

    async def _read(self, partitions: list[int], count: int) -> list[Any]:
        commands, slots = [], []
        for partition in partitions:
            key = self._keys[partition]
            commands.append(encode_command(
                "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count,
                "STREAMS", key, self._cursor[partition],
            ))  # fmt: skip
            slots.append(key_slot(key))
        replies, errors, failures, _ = await self.cluster.execute(commands, slots, self.timeout)
        if failures or errors:
            problem = failures[0].detail if failures else replies[errors[0]]
            raise StoreUnavailable(f"cannot read events from Redis: {problem}")
        return [reply[0][1] if reply else [] for reply in replies]

    async def ack(self, partition: int, ids: Sequence[str]) -> None:
        if not ids:
            return
        key = self._keys[partition]
        await self._one(key, "XACK", key, self.group, *ids)

    async def lag(self) -> int:
        """Entries in the group's partitions not yet delivered to any consumer."""
        total = 0
        for partition in self.partitions:
            key = self._keys[partition]
            reply = await self._one(key, "XINFO", "GROUPS", key)
            for group in reply if isinstance(reply, list) else []:
                info = dict(zip(group[::2], group[1::2], strict=True))
                if info.get(b"name") == self.group.encode():
                    total += int(info.get(b"lag") or 0)
        return total

    def _batch(self, partition: int, entries: list[Any]) -> EventBatch:
        source = self.source
        ids, positions, rows = [], [], []
        for entry_id, fields in entries:
            major, _, minor = entry_id.partition(b"-")
            positions.append((int(major), int(minor)))
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            rows.append(values)
            ids.append(entry_id.decode())
        columns = {
            name: _column(kind.kind, [row.get(name.encode(), b"") for row in rows])
            for name, kind in source.columns.items()
        }
        times = np.asarray([int(row[source.timestamp_field.encode()]) for row in rows], np.int64)
        event_ids = [row[source.id_field.encode()].decode() for row in rows]
        return EventBatch(partition, columns, times, event_ids, positions, ids)

    async def _one(self, key: str, *args: Any) -> Any:
        # Error replies come back as values: each caller reads its own (BUSYGROUP is fine).
        replies, _, failures, _ = await self.cluster.execute(
            [encode_command(*args)], [key_slot(key)], self.timeout
        )
        if failures:
            raise StoreUnavailable(f"Redis did not answer {args[0]} on {key}: {failures[0].detail}")
        return replies[0]


def _column(kind: Kind, raw: list[bytes]) -> Any:
    if kind is Kind.STRING:
        return np.asarray([value.decode() for value in raw], dtype=object)
    if kind is Kind.BOOL:
        return np.asarray([value in (b"1", b"true", b"True") for value in raw], dtype=bool)
    if kind is Kind.INT64:
        return np.asarray([int(value) for value in raw], dtype=np.int64)
    return np.asarray([float(value) for value in raw], dtype=np.float64)
