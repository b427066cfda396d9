"""Events on Kafka (confluent-kafka): producing them, and consuming them for the streaming engine.

A message's key is the event's first key column (so one entity's events stay on one partition,
in order) and its value is a JSON object: `event_id`, `event_time` (µs) and the source's columns.
Offsets are committed only after the state that applied them is checkpointed; a restarted
consumer resumes from the last commit and the state skips what it already holds.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from featurewell.compute.stream import EventBatch
from featurewell.definitions import EventSource, Kind
from featurewell.errors import StoreUnavailable


def produce(producer: Producer, source: EventSource, events: Sequence[Mapping[str, Any]]) -> None:
    """Send events to the source's topic and wait until the brokers have them."""
    first = next(iter(source.keys))
    names = (source.id_field, source.timestamp_field, *source.columns)
    for event in events:
        value = json.dumps({name: _plain(event[name]) for name in names}).encode()
        producer.produce(source.kafka_topic, key=str(event[first]).encode(), value=value)
    remaining = producer.flush(30)
    if remaining:
        raise StoreUnavailable(f"{remaining} events were not acknowledged by Kafka")


class KafkaSource:
    """One member of a consumer group reading a source's topic."""

    def __init__(
        self,
        source: EventSource,
        config: Mapping[str, Any],
        group: str,
        poll_s: float = 0.05,
    ) -> None:
        self.source = source
        self.poll_s = poll_s
        self.consumer = Consumer(
            {
                **config,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self.claimed = 0

    async def start(self) -> None:
        self.consumer.subscribe([self.source.kafka_topic])

    async def read(self, count: int) -> list[EventBatch]:
        messages: list[Message] = await asyncio.to_thread(self.consumer.consume, count, self.poll_s)
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise StoreUnavailable(f"Kafka consumer error: {error}")
            by_partition[int(message.partition() or 0)].append(message)
        return [self._batch(p, batch) for p, batch in sorted(by_partition.items())]

    async def ack(self, partition: int, receipts: Sequence[str]) -> None:
        if not receipts:
            return
        offset = max(int(r) for r in receipts) + 1
        commit = [TopicPartition(self.source.kafka_topic, partition, offset)]
        await asyncio.to_thread(self.consumer.commit, offsets=commit, asynchronous=False)

    def close(self) -> None:
        self.consumer.close()

    def _batch(self, partition: int, messages: list[Message]) -> EventBatch:
        source = self.source
        rows = [json.loads(m.value() or b"{}") for m in messages]
        columns = {
            name: _column(kind.kind, [row.get(name) for row in rows])
            for name, kind in source.columns.items()
        }
        times = np.asarray([int(row[source.timestamp_field]) for row in rows], dtype=np.int64)
        offsets = [int(m.offset() or 0) for m in messages]
        return EventBatch(
            partition,
            columns,
            times,
            [str(row[source.id_field]) for row in rows],
            [(offset, 0) for offset in offsets],
            [str(offset) for offset in offsets],
        )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _column(kind: Kind, values: list[Any]) -> Any:
    if kind is Kind.STRING:
        return np.asarray([str(v) for v in values], dtype=object)
    if kind is Kind.BOOL:
        return np.asarray([bool(v) for v in values], dtype=bool)
    if kind is Kind.INT64:
        return np.asarray([int(v) for v in values], dtype=np.int64)
    return np.asarray([float(v) for v in values], dtype=np.float64)
