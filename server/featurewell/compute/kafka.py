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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from featurewell.compute.deadletters import KafkaDeadLetters
from featurewell.compute.events import Event, EventScreen, Refused, wall_clock_us
from featurewell.compute.stream import EventBatch
from featurewell.definitions import EventSource
from featurewell.engine.validation import WriteRules
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
        *,
        rules: WriteRules | None = None,
        clock_us: Callable[[], int] = wall_clock_us,
        dead_letter_topic: str = "",
        dead_letter_kb: int = 64,
    ) -> None:
        """Messages are screened (compute/events.py) by `rules` against `clock_us`; refused
        ones go to `dead_letter_topic` (default `<topic>.dead-letters`), payloads cut at
        `dead_letter_kb` KiB."""
        self.source = source
        self.poll_s = poll_s
        self.screen = EventScreen(source, rules, clock_us)
        self.dead_letters = KafkaDeadLetters(
            config, dead_letter_topic or f"{source.kafka_topic}.dead-letters", dead_letter_kb * 1024
        )
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
        """The messages as events; those the screen refuses ride along as dead letters."""
        events: list[Event] = []
        offsets, payloads, rejected = [], [], []
        now_us = self.screen.clock_us()  # event times are judged against one now per batch
        for message in messages:
            offset = int(message.offset() or 0)
            payload = ((b"key", message.key() or b""), (b"value", message.value() or b""))
            try:
                event = self.screen.kafka_value(message.value(), now_us)
            except Refused as refused:
                rejected.append(self.screen.screened(partition, str(offset), payload, refused))
                continue
            events.append(event)
            offsets.append(offset)
            payloads.append(payload)
        return EventBatch(
            partition,
            self.screen.columns(events),
            np.asarray([event[1] for event in events], dtype=np.int64),
            [event[0] for event in events],
            [(offset, 0) for offset in offsets],
            [str(offset) for offset in offsets],
            payloads,
            rejected,
        )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
