"""Events on Kafka (confluent-kafka): producing them, and consuming them for the streaming engine.

A message's key is the event's first key column (so one entity's events stay on one partition,
in order) and its value is a JSON object: `event_id`, `event_time` (µs) and the source's columns.
Offsets are committed only after the state that applied them is checkpointed; a restarted
consumer resumes from the last commit and the state skips what it already holds.

Scale-out: the workers of one consumer group share the topic's partitions as Kafka assigns them.
A rebalance calls back into the consumer's poll (in the thread that polls, `read`'s), and waits
for the callback: on revoke, the runner writes the rows, history and checkpoint of every event
applied and commits their offsets before the partitions go (compute/sharing.py `give_up`); on
assign, it loads the partitions' watermarks and history progress (`take`). The callback runs
those on the runner's event loop, which is idle meanwhile (it awaits the poll). A worker that dies
(SIGKILL) holds its partitions until its session times out; their next owner re-reads from the
last commit, and the state's replay rule skips what the checkpoint already holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from featurewell.compute.deadletters import KafkaDeadLetters
from featurewell.compute.events import Event, EventScreen, Refused, wall_clock_us
from featurewell.compute.stream import EventBatch
from featurewell.definitions import EventSource
from featurewell.engine.validation import WriteRules
from featurewell.errors import StoreUnavailable

log = logging.getLogger("featurewell.stream")
# Commit refusals that mean "the group moved on": the partition's next owner re-reads from the
# last commit (and the replay rule skips what the checkpoint holds), so the stream goes on.
_MOVED_ON = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError._STATE,
}


class PartitionHooks(Protocol):
    """The runner's side of a rebalance (compute/sharing.py `KafkaHandoff`)."""

    async def assigned(self, partitions: Sequence[int]) -> None: ...

    async def revoked(self, partitions: Sequence[int]) -> None: ...

    async def lost(self, partitions: Sequence[int]) -> None: ...


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
        self.assigned: set[int] = set()  # the partitions Kafka gave this consumer
        # Partitions revoked during the poll under way: what it fetched of them before the
        # revoke is dropped (their next owner reads it from the commit).
        self._revoked: set[int] = set()
        self.hooks: PartitionHooks | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # Per partition, the offset after the last event acknowledged (checkpointed).
        self._acked: dict[int, int] = {}
        self._handing_over = False  # in a revoke callback: its own commit follows

    def bind(self, hooks: PartitionHooks, loop: asyncio.AbstractEventLoop) -> None:
        """Call `hooks` (on `loop`, whose thread this is) when the group rebalances."""
        self.hooks, self._loop = hooks, loop
        self._loop_thread = threading.get_ident()

    async def start(self) -> None:
        self.consumer.subscribe(
            [self.source.kafka_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _on_assign(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        taken = sorted(p.partition for p in partitions)
        self._call(lambda hooks: hooks.assigned(taken))
        self.assigned |= set(taken)

    def _on_revoke(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        given = sorted(p.partition for p in partitions)
        self._handing_over = True
        try:
            self._call(lambda hooks: hooks.revoked(given))
        finally:
            self._handing_over = False
        # Before they go (their offsets can be committed while this callback runs): every
        # event the checkpoint holds, committed.
        self._commit(given, asynchronous=False)
        self.assigned -= set(given)
        self._revoked |= set(given)
        for partition in given:
            self._acked.pop(partition, None)

    def _on_lost(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        gone = sorted(p.partition for p in partitions)
        self.assigned -= set(gone)
        self._revoked |= set(gone)
        for partition in gone:
            self._acked.pop(partition, None)
        self._call(lambda hooks: hooks.lost(gone))  # on the loop: it changes the runner's state

    def _call(self, work: Callable[[PartitionHooks], Awaitable[None]]) -> None:
        """Run a hook on the runner's loop and wait for it (the rebalance waits for us). Not
        when polled from the loop's own thread, or with no hooks (closing: the runner's last
        checkpoint is written)."""
        hooks, loop = self.hooks, self._loop
        if hooks is None or loop is None or not loop.is_running():
            return
        if threading.get_ident() == self._loop_thread:
            return  # it would wait for itself
        asyncio.run_coroutine_threadsafe(_awaited(work(hooks)), loop).result()

    async def read(self, count: int) -> list[EventBatch]:
        self._revoked = set()
        messages: list[Message] = await asyncio.to_thread(self.consumer.consume, count, self.poll_s)
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.code() == KafkaError._MAX_POLL_EXCEEDED:
                    # This worker stalled past max.poll.interval.ms and left the group: its
                    # partitions are reported lost (`_on_lost`), and it rejoins as it polls.
                    log.warning("stream: %s; rejoining the group", error.str())
                    continue
                raise StoreUnavailable(f"Kafka consumer error: {error}")
            partition = int(message.partition() or 0)
            if partition in self._revoked or partition not in self.assigned:
                continue  # fetched before a revoke: its next owner reads it again
            by_partition[partition].append(message)
        return [self._batch(p, batch) for p, batch in sorted(by_partition.items())]

    async def ack(self, partition: int, receipts: Sequence[str]) -> None:
        """Commit the partition's offsets up to the last receipt; not a partition this consumer
        no longer holds (its next owner re-reads from the last commit).

        Asynchronously: a commit lost only means events read again and skipped (the replay
        rule), and a synchronous one issued while the group rebalances waits for the rebalance,
        which waits for our revoke callback, which waits for the checkpoint making this commit.
        The revoke callback commits, synchronously and from the polling thread, the offsets of
        what it gives up."""
        if not receipts or partition not in self.assigned:
            return
        offset = max(int(r) for r in receipts) + 1
        self._acked[partition] = max(offset, self._acked.get(partition, 0))
        if not self._handing_over:
            self._commit([partition], asynchronous=True)

    def _commit(self, partitions: Sequence[int], *, asynchronous: bool) -> None:
        topic = self.source.kafka_topic
        offsets = [TopicPartition(topic, p, self._acked[p]) for p in partitions if p in self._acked]
        if not offsets:
            return
        try:
            if asynchronous:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            else:
                for part in self.consumer.commit(offsets=offsets, asynchronous=False):
                    if part.error is not None:
                        log.warning(
                            "stream: offsets of partition %d not committed: %s",
                            part.partition,
                            part.error,
                        )
        except KafkaException as error:
            if error.args[0].code() not in _MOVED_ON:
                raise
            log.warning("stream: offsets of partitions %s not committed: %s", partitions, error)

    def close(self) -> None:
        """Leave the group (the runner's last checkpoint is written: nothing to hand over)."""
        self.hooks = None
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


async def _awaited(work: Awaitable[None]) -> None:
    await work


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
