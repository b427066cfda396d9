"""Where the stream puts the events it refuses (compute/events.py), and how they come back.

Redis Streams sources: the source's dead-letter stream (`store.keys.dead_letters_key`), one entry
per refused event: the reason, the source, the partition, the original entry id, when, the
payload's size and whether it was cut, then the payload's own fields as `raw:<field>`. Kafka
sources: the topic `<topic>.dead-letters` (or a configured one), the original key and value with
the rest in headers.

The runner writes a batch's dead letters before it acknowledges any of its entries, and the
write must succeed (it raises otherwise, and the runner stops with the entries unacknowledged):
nothing refused is lost. A crash between the write and the checkpoint that acknowledges the entry
writes that dead letter again on restart (at least once, like every event).

Payloads are kept up to `max_payload_bytes` (a hostile 60 MB event must not be copied whole); a
cut letter says so and cannot be replayed (its event is no longer whole).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from featurewell.compute.events import DeadLetter, Payload, wall_clock_us
from featurewell.compute.stream import EventBatch
from featurewell.definitions import EventSource
from featurewell.errors import InvalidRequest, StoreUnavailable
from featurewell.store import streams
from featurewell.store.cluster import ClusterClient
from featurewell.store.keys import dead_letters_key, stream_keys

log = logging.getLogger("featurewell.stream")
_RAW = b"raw:"
_META = ("reason_class", "reason", "source", "partition", "receipt", "refused_at_us")


def batch_letters(
    source: EventSource, batch: EventBatch, refused: Sequence[tuple[int, str]]
) -> list[DeadLetter]:
    """A batch's dead letters, in the order they were read: the entries the screen refused and
    the events (by index in `batch`) a view refused while applying them. Each is logged."""
    letters = [*batch.rejected]
    for row, reason in refused:
        receipt = batch.receipts[row] if batch.receipts else str(batch.positions[row][0])
        payload = batch.payloads[row] if batch.payloads else ()
        letters.append(
            DeadLetter(
                source.name,
                batch.partition,
                receipt,
                "view_rejected",
                reason,
                payload,
                wall_clock_us(),
            )
        )
    # A receipt's place in its partition: a Redis Stream id "ms-seq", a Kafka offset.
    letters.sort(key=lambda letter: tuple(int(part) for part in letter.receipt.split("-")))
    for letter in letters:
        log.warning(
            "dead letter: %s partition %d entry %s: %s",
            letter.source,
            letter.partition,
            letter.receipt,
            letter.reason,
        )
    return letters


class DeadLetterSink(Protocol):
    async def write(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """A dead letter as stored: its id in the dead-letter stream, its original size, and
    whether the payload kept was cut."""

    id: str
    letter: DeadLetter
    size: int
    cut: bool

    def as_json(self) -> dict[str, Any]:
        letter = self.letter
        return {
            "id": self.id,
            "source": letter.source,
            "partition": letter.partition,
            "entry": letter.receipt,
            "reason_class": letter.reason_class,
            "reason": letter.reason,
            "refused_at_us": letter.time_us,
            "payload_bytes": self.size,
            "cut": self.cut,
            "payload": {
                name.decode("utf-8", "backslashreplace"): value.decode("utf-8", "backslashreplace")
                for name, value in letter.payload
            },
        }


def bounded(payload: Payload, limit: int) -> tuple[Payload, int, bool]:
    """The payload cut to `limit` bytes (names and values), its whole size, and whether cut."""
    size = sum(len(name) + len(value) for name, value in payload)
    if size <= limit:
        return payload, size, False
    kept, left = [], limit
    for name, value in payload:
        if len(name) >= left:
            break
        kept.append((name, value[: left - len(name)]))
        left -= len(name) + len(kept[-1][1])
    return tuple(kept), size, True


class RedisDeadLetters:
    """A Redis Streams source's dead letters."""

    def __init__(
        self,
        cluster: ClusterClient,
        source: EventSource,
        max_payload_bytes: int = 64 * 1024,
        timeout: float = 5.0,
    ) -> None:
        self.cluster = cluster
        self.source = source
        self.key = dead_letters_key(source)
        self.max_payload_bytes = max_payload_bytes
        self.timeout = timeout

    async def write(self, letters: Sequence[DeadLetter]) -> None:
        entries = []
        for letter in letters:
            payload, size, cut = bounded(letter.payload, self.max_payload_bytes)
            fields: list[streams.Field] = []
            for meta in _META:
                fields += [meta, str(getattr(letter, _ATTRS.get(meta, meta)))]
            fields += ["payload_bytes", str(size), "cut", "1" if cut else "0"]
            for name, value in payload:
                fields += [_RAW + name, value]
            entries.append((self.key, fields))
        if entries:
            await streams.add(self.cluster, entries, self.timeout)

    async def read(self, limit: int, after: str = "-") -> list[StoredLetter]:
        """The oldest `limit` dead letters (after id `after`, exclusive, when given)."""
        start = after if after == "-" else f"({after}"
        found = await streams.entries(self.cluster, self.key, start, limit, self.timeout)
        return [_stored(entry_id.decode(), fields) for entry_id, fields in found]

    async def all(self, page: int = 1000) -> list[StoredLetter]:
        out: list[StoredLetter] = []
        while True:
            got = await self.read(page, out[-1].id if out else "-")
            out += got
            if len(got) < page:
                return out

    async def count(self) -> int:
        return await streams.length(self.cluster, self.key, self.timeout)

    async def replay(self, ids: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
        """Append the letters (`ids`, default all) to their partitions' streams again, as they
        were read, and remove them. Returns the ids replayed and why others were not."""
        letters = await self._chosen(ids)
        replayed, skipped = [], []
        keys = stream_keys(self.source)
        for stored in letters:
            if stored.cut:
                skipped.append(f"{stored.id}: its payload was cut at {self.max_payload_bytes} B")
                continue
            fields: list[streams.Field] = [v for pair in stored.letter.payload for v in pair]
            if not fields:
                skipped.append(f"{stored.id}: it has no payload")
                continue
            key = keys[stored.letter.partition % len(keys)]
            # Appended before it is removed: a crash in between replays it twice, never zero.
            await streams.add(self.cluster, [(key, fields)], self.timeout)
            await streams.delete(self.cluster, self.key, [stored.id], self.timeout)
            replayed.append(stored.id)
        return replayed, skipped

    async def drop(self, ids: Sequence[str] | None = None) -> int:
        """Remove the letters (`ids`, default all) without replaying them."""
        chosen = [stored.id for stored in await self._chosen(ids)]
        removed = 0
        for start in range(0, len(chosen), 1000):
            part = chosen[start : start + 1000]
            removed += await streams.delete(self.cluster, self.key, part, self.timeout)
        return removed

    async def _chosen(self, ids: Sequence[str] | None) -> list[StoredLetter]:
        letters = await self.all()
        if ids is None:
            return letters
        known = {stored.id: stored for stored in letters}
        if missing := [i for i in ids if i not in known]:
            raise InvalidRequest(
                f"no dead letters {missing[:5]} for source {self.source.name!r}; "
                "`featurewell dead-letters list` shows their ids"
            )
        return [known[i] for i in ids]


_ATTRS = {"refused_at_us": "time_us"}


def _stored(entry_id: str, fields: list[bytes]) -> StoredLetter:
    meta: dict[str, str] = {}
    payload = []
    for name, value in zip(fields[::2], fields[1::2], strict=True):
        if name.startswith(_RAW):
            payload.append((name[len(_RAW) :], value))
        else:
            meta[name.decode()] = value.decode("utf-8", "backslashreplace")
    letter = DeadLetter(
        meta.get("source", ""),
        int(meta.get("partition", "0")),
        meta.get("receipt", ""),
        meta.get("reason_class", ""),
        meta.get("reason", ""),
        tuple(payload),
        int(meta.get("refused_at_us", "0")),
    )
    size = int(meta.get("payload_bytes", "0"))
    return StoredLetter(entry_id, letter, size, meta.get("cut") == "1")


class KafkaDeadLetters:
    """A Kafka source's dead letters: a topic, written with acks from all in-sync replicas."""

    def __init__(
        self, config: Mapping[str, Any], topic: str, max_payload_bytes: int = 64 * 1024
    ) -> None:
        self.topic = topic
        self.max_payload_bytes = max_payload_bytes
        settings = {k: v for k, v in config.items() if not k.startswith(("group.", "enable."))}
        self.producer = Producer({**settings, "acks": "all"})

    async def write(self, letters: Sequence[DeadLetter]) -> None:
        failures: list[str] = []

        def delivered(error: KafkaError | None, _: Message) -> None:
            if error is not None:
                failures.append(str(error))

        for letter in letters:
            payload, size, cut = bounded(letter.payload, self.max_payload_bytes)
            parts = dict(payload)
            headers: list[tuple[str, str | bytes | None]] = [
                (name, str(getattr(letter, _ATTRS.get(name, name)))) for name in _META
            ]
            headers += [("payload_bytes", str(size)), ("cut", "1" if cut else "0")]
            self.producer.produce(
                self.topic,
                key=parts.get(b"key") or None,
                value=parts.get(b"value", b""),
                headers=headers,
                on_delivery=delivered,
            )
        remaining = await asyncio.to_thread(self.producer.flush, 30)
        if remaining or failures:
            raise StoreUnavailable(
                f"dead letters not acknowledged by Kafka ({remaining} pending): {failures[:3]}"
            )


def read_kafka_dead_letters(
    config: Mapping[str, Any], topic: str, limit: int = 1000, timeout_s: float = 10.0
) -> list[StoredLetter]:
    """The oldest `limit` dead letters of a Kafka dead-letter topic (each partition from its
    start, commits nothing). Ids are "<partition>:<offset>"."""
    settings = {k: v for k, v in config.items() if not k.startswith(("group.", "enable."))}
    consumer = Consumer(
        {
            **settings,
            "group.id": f"featurewell-dead-letters-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        found = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if found is None or found.error is not None:
            return []
        partitions = list(found.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[StoredLetter] = []
        ended: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(ended) < len(partitions) and len(out) < limit and time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    ended.add(int(message.partition() or 0))
                    continue
                raise StoreUnavailable(f"cannot read dead letters from {topic}: {error}")
            out.append(_from_kafka(message))
        return sorted(out, key=lambda s: s.letter.time_us)
    finally:
        consumer.close()


def _from_kafka(message: Message) -> StoredLetter:
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    meta = {
        str(name): value.decode("utf-8", "backslashreplace")
        for name, value in pairs
        if isinstance(value, bytes)
    }
    payload = ((b"key", message.key() or b""), (b"value", message.value() or b""))
    letter = DeadLetter(
        meta.get("source", ""),
        int(meta.get("partition", "0")),
        meta.get("receipt", ""),
        meta.get("reason_class", ""),
        meta.get("reason", ""),
        payload,
        int(meta.get("refused_at_us", "0")),
    )
    entry_id = f"{message.partition()}:{message.offset()}"
    size = int(meta.get("payload_bytes", "0"))
    return StoredLetter(entry_id, letter, size, meta.get("cut") == "1")
