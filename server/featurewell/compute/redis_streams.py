"""Events on Redis Streams: appending them (producers, tests, the demo) and consuming them with a
consumer group (the streaming engine). The commands are store/streams.py's.

Each partition of a source is one stream (`store.keys.stream_keys(source)[p]`); a producer puts an
event on partition crc32(first key column) % partitions, so one entity's events keep their order.
An entry holds `event_id`, `event_time` (µs) and every key and field of the source.

Consumption is at-least-once: entries are acknowledged (XACK) only after the state that applied
them is checkpointed. A restarted consumer first re-reads its own pending entries; a consumer that
replaces a dead one (another name) first claims the dead one's pending entries (XAUTOCLAIM). The
engine skips what its checkpointed state already holds, so redelivery never double-counts.

Scale-out (`lease_ms` > 0): several consumers of one group share a source's partitions, each
partition owned by one consumer at a time (its entities' state lives in that consumer's memory;
two consumers reading one partition would each count half an entity's events). Ownership is a
lease per partition (a Redis key holding the owner's name, for `lease_ms`), renewed every third
of that. Live consumers (a heartbeat hash) are sorted by name and partition i goes to consumer
i mod n, so adding or losing a consumer moves only the partitions it must. A consumer that no
longer should own a partition checkpoints, acknowledges and releases it; one that dies (SIGKILL)
keeps it until the lease runs out. Whoever takes a partition first claims every entry still
pending on it (XAUTOCLAIM, no idle time: the lease, not the entry's idle time, says its owner is
gone) and reads those first; the state's replay rule skips what the checkpoint already holds.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from featurewell.compute.deadletters import RedisDeadLetters
from featurewell.compute.events import Event, EventScreen, Refused, wall_clock_us
from featurewell.compute.stream import EventBatch
from featurewell.definitions import EventSource, Kind
from featurewell.engine.validation import WriteRules, echo
from featurewell.errors import InvalidRequest
from featurewell.store import streams
from featurewell.store.cluster import ClusterClient
from featurewell.store.keys import stream_keys, stream_lease_key, stream_members_key


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
    keys = stream_keys(source)
    entries = []
    for event in events:
        fields: list[streams.Field] = []
        for name in (source.id_field, source.timestamp_field, *source.columns):
            fields += [name, _text(event[name])]
        entries.append((keys[partition_of(source, event)], fields))
    return await streams.add(cluster, entries, timeout)


def checked_event(
    source: EventSource, event: Mapping[str, Any], now_us: int, rules: WriteRules | None = None
) -> dict[str, Any]:
    """A producer's event (e.g. parsed JSON) checked against the source's columns and types,
    and by the stream's own screen (`rules`: keys, event time, finite numbers), so what is
    appended is what the stream accepts; `event_id` defaults to a fresh UUID and `event_time`
    to `now_us`."""
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
    try:
        EventScreen(source, rules).mapping(checked, now_us)
    except Refused as refused:
        raise InvalidRequest(f"{where}: {refused.reason}") from None
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
        raise InvalidRequest(f"{where}: {name!r} must be {kind.name.lower()}, got {echo(value)}")
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
        rules: WriteRules | None = None,
        clock_us: Callable[[], int] = wall_clock_us,
        dead_letter_kb: int = 64,
        lease_ms: int = 0,
    ) -> None:
        """Entries are screened (compute/events.py) by `rules` against `clock_us`; refused
        ones go to the source's dead-letter stream, payloads cut at `dead_letter_kb` KiB.
        `lease_ms` > 0 shares `partitions` with the group's other consumers (see above)."""
        self.cluster = cluster
        self.source = source
        self.group = group
        self.consumer = consumer
        self.partitions = list(range(source.partitions)) if partitions is None else list(partitions)
        self.claim_idle_ms = claim_idle_ms
        self._keys = stream_keys(source)
        self._members = stream_members_key(source, group)
        self.timeout = timeout
        self.screen = EventScreen(source, rules, clock_us)
        self.dead_letters = RedisDeadLetters(cluster, source, dead_letter_kb * 1024, timeout)
        # Per partition: "0" (then the last id read) while re-reading our own pending entries,
        # then ">" (new ones).
        self._cursor = dict.fromkeys(self.partitions, "0")
        self.claimed = 0
        self.lease_ms = lease_ms
        self.owned = set() if lease_ms else set(self.partitions)

    async def start(self) -> None:
        """Create the group if needed (from the stream's start), and claim the entries a dead
        consumer left pending."""
        for partition in self.partitions:
            key = self._keys[partition]
            await streams.create_group(self.cluster, key, self.group, self.timeout)
            if not self.lease_ms:  # sharing: claimed when its lease is taken
                self.claimed += await streams.claim_idle(
                    self.cluster, key, self.group, self.consumer, self.claim_idle_ms, self.timeout
                )

    async def balance(self, now_ms: int) -> tuple[list[int], list[int], list[int]]:
        """Heartbeat, renew the leases held, take those this consumer should own and are free.
        Returns the partitions gained, lost (a lease found taken: this consumer stalled past
        it), and held but due to another consumer (to checkpoint, then `release`)."""
        members = await streams.heartbeat(
            self.cluster, self._members, self.consumer, now_ms, self.timeout
        )
        alive = sorted(m for m, seen in members.items() if now_ms - seen < self.lease_ms)
        alive = alive if self.consumer in alive else sorted([*alive, self.consumer])
        mine = {p for i, p in enumerate(self.partitions) if alive[i % len(alive)] == self.consumer}
        asked = sorted(self.owned | mine)
        keys = [self._lease(p) for p in asked]
        held = await streams.lease(self.cluster, keys, self.consumer, self.lease_ms, self.timeout)
        now = {p for p, ok in zip(asked, held, strict=True) if ok}
        gained, lost = sorted(now - self.owned), sorted(self.owned - now)
        self.owned = now
        for partition in gained:
            self._cursor[partition] = "0"  # what it claims is read first
            self.claimed += await streams.claim_idle(
                self.cluster, self._keys[partition], self.group, self.consumer, 0, self.timeout
            )
        return gained, lost, sorted(now - mine)

    async def release(self, partitions: Sequence[int]) -> None:
        """Give partitions up (checkpointed and acknowledged first): their owner-to-be takes
        them at its next renewal, not when the lease would have run out."""
        self.owned -= set(partitions)
        await streams.release(
            self.cluster, [self._lease(p) for p in partitions], self.consumer, self.timeout
        )

    def _lease(self, partition: int) -> bytes:
        return stream_lease_key(self.source, self.group, partition)

    async def read(self, count: int) -> list[EventBatch]:
        """Up to `count` entries per partition (pending ones first after a restart)."""
        batches: list[EventBatch] = []
        partitions = [p for p in self.partitions if p in self.owned]
        while partitions:
            switched = []
            for partition, entries in zip(
                partitions, await self._read(partitions, count), strict=True
            ):
                if self._cursor[partition] != ">" and not entries:
                    self._cursor[partition] = ">"  # our pending entries are done: new ones now
                    switched.append(partition)
                elif entries:
                    if self._cursor[partition] != ">":
                        # Pending entries after this one next (they stay pending until the
                        # checkpoint acknowledges them: "0" would return these again).
                        self._cursor[partition] = entries[-1][0].decode()
                    batches.append(self._batch(partition, entries))
            partitions = switched  # read those again, for new entries
        return batches

    async def _read(self, partitions: list[int], count: int) -> list[list[streams.Entry]]:
        reads = [(self._keys[p], self._cursor[p]) for p in partitions]
        return await streams.read_group(
            self.cluster, self.group, self.consumer, reads, count, self.timeout
        )

    async def ack(self, partition: int, ids: Sequence[str]) -> None:
        await streams.ack(self.cluster, self._keys[partition], self.group, ids, self.timeout)

    async def lag(self) -> int:
        """Entries in the group's partitions not yet delivered to any consumer."""
        total = 0
        for partition in self.partitions:
            key = self._keys[partition]
            total += await streams.lag(self.cluster, key, self.group, self.timeout)
        return total

    def _batch(self, partition: int, entries: list[streams.Entry]) -> EventBatch:
        """The entries as events; those the screen refuses ride along as dead letters."""
        events: list[Event] = []
        ids, positions, payloads, rejected = [], [], [], []
        now_us = self.screen.clock_us()  # event times are judged against one now per batch
        for entry_id, fields in entries:
            receipt = entry_id.decode()
            payload = tuple(zip(fields[::2], fields[1::2], strict=True))
            try:
                event = self.screen.redis_entry(fields, now_us)
            except Refused as refused:
                rejected.append(self.screen.screened(partition, receipt, payload, refused))
                continue
            major, _, minor = entry_id.partition(b"-")
            positions.append((int(major), int(minor)))
            events.append(event)
            ids.append(receipt)
            payloads.append(payload)
        return EventBatch(
            partition,
            self.screen.columns(events),
            np.asarray([event[1] for event in events], np.int64),
            [event[0] for event in events],
            positions,
            ids,
            payloads,
            rejected,
        )
