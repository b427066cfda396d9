"""The Kafka source, against the Kafka-protocol mock cluster built into librdkafka
(`test.mock.num.brokers`: a mock, not a Kafka deployment). Events produced to a topic are
consumed by the streaming engine, served, and equal to the batch engine's values; a consumer
that dies before committing is replaced without double counting."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from confluent_kafka import Producer

from featurewell.compute.kafka import KafkaSource, produce
from featurewell.compute.runner import StreamRunner
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster
from featurewell.engine.engine import FeatureEngine
from featurewell.settings import Settings
from featurewell.store.online import OnlineStore
from tests.test_stream import check_served, close, definitions, make_events, member
from tests.tools import ServerThread, make_settings


class Recording(KafkaSource):
    """A KafkaSource that keeps what it delivered: the log, in delivery order."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: list[Any] = []

    async def read(self, count: int) -> list[Any]:
        batches = await super().read(count)
        self.seen.extend(batches)
        return batches


@pytest.fixture(scope="module")
def kafka() -> Iterator[tuple[Producer, str]]:
    """A 3-broker mock cluster, kept alive by the producer that created it."""
    producer = Producer({"test.mock.num.brokers": 3, "log_level": 3})
    brokers = producer.list_topics(timeout=10).brokers.values()
    yield producer, ",".join(f"{b.host}:{b.port}" for b in brokers)
    producer.flush(5)


async def _runner(
    cluster: LocalCluster, registry: Registry, events: KafkaSource, **options: Any
) -> StreamRunner:
    settings = Settings.load(environ={}).with_changes(redis=tuple(cluster.seeds))
    store = await OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
    source = next(v.events for v in registry.views.values() if v.events is not None)
    runner = StreamRunner(
        registry, source, FeatureEngine(registry, store, settings.serving), events=events, **options
    )
    await runner.start()
    return runner


async def _drain(runner: StreamRunner, expected: int, steps: int | None = None) -> None:
    """Step until `expected` events were read (or `steps` steps); Kafka hands them out in its
    own time, so an empty read is not the end."""
    taken = 0
    for _ in range(600):
        if runner.stats.events >= expected or (steps is not None and taken >= steps):
            return
        if await runner.step():
            taken += 1
    raise AssertionError(f"read {runner.stats.events} of {expected} events")


def test_events_on_kafka_become_served_rows(
    kafka: tuple[Producer, str], cluster: LocalCluster
) -> None:
    producer, bootstrap = kafka
    source, view = definitions(f"clicks_{uuid.uuid4().hex[:6]}")
    registry = Registry.build([member, view])
    members = [f"k{n}-{uuid.uuid4().hex[:4]}" for n in range(15)]
    events, _ = make_events(members, 800, seed=8)
    produce(producer, source, events)
    loop = asyncio.new_event_loop()
    runner = None
    try:
        group = f"g-{uuid.uuid4().hex[:6]}"
        reader = Recording(source, {"bootstrap.servers": bootstrap}, group)
        runner = loop.run_until_complete(_runner(cluster, registry, reader, batch_size=100))
        loop.run_until_complete(_drain(runner, len(events)))
        loop.run_until_complete(runner.checkpoint())
        reader.close()
        server = ServerThread(make_settings(cluster), registry)
        try:
            check_served(server, view, kafka_log(reader.seen, source), members)
        finally:
            server.stop()
    finally:
        close(loop, runner)


def kafka_log(batches: list[Any], source: Any) -> pa.Table:
    """The events as delivered (partition, offset), for the batch engine."""
    table: dict[str, list[Any]] = {
        name: []
        for name in (
            "event_id",
            "event_time",
            *source.columns,
            "_partition",
            "_pos_major",
            "_pos_minor",
        )
    }
    for batch in batches:
        for i in range(len(batch)):
            table["event_id"].append(batch.event_ids[i])
            table["event_time"].append(int(batch.event_time_us[i]))
            for name in source.columns:
                value = batch.columns[name][i]
                table[name].append(value.item() if hasattr(value, "item") else value)
            table["_partition"].append(batch.partition)
            table["_pos_major"].append(batch.positions[i][0])
            table["_pos_minor"].append(0)
    return pa.table(table)


def test_a_consumer_that_dies_before_committing_is_replayed_exactly(
    kafka: tuple[Producer, str], cluster: LocalCluster
) -> None:
    producer, bootstrap = kafka
    source, view = definitions(f"clicks_{uuid.uuid4().hex[:6]}")
    registry = Registry.build([member, view])
    members = [f"k{n}-{uuid.uuid4().hex[:4]}" for n in range(12)]
    events, _ = make_events(members, 600, seed=9)
    produce(producer, source, events)
    group = f"g-{uuid.uuid4().hex[:6]}"
    # A short session: the dead member is given up on in seconds, not the default 45.
    config = {
        "bootstrap.servers": bootstrap,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }
    loop = asyncio.new_event_loop()
    first = second = None
    try:
        dying = KafkaSource(source, config, group)
        first = loop.run_until_complete(
            _runner(cluster, registry, dying, batch_size=50, checkpoint_s=1e9)
        )
        loop.run_until_complete(_drain(first, len(events), steps=4))
        # State saved, offsets never committed: the process dies here.
        loop.run_until_complete(first.checkpoint(ack=False))
        dying.close()
        reader = Recording(source, config, group)
        second = loop.run_until_complete(_runner(cluster, registry, reader, batch_size=50))
        loop.run_until_complete(_drain(second, len(events)))
        loop.run_until_complete(second.checkpoint())
        reader.close()
        assert second.engine.counters.replayed > 0  # redelivered, already in the saved state
        server = ServerThread(make_settings(cluster), registry)
        try:
            check_served(server, view, kafka_log(reader.seen, source), members)
        finally:
            server.stop()
    finally:
        close(loop, first, second)
