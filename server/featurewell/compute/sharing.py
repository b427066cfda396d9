"""Stream workers sharing a source's partitions: which views can be shared, and what a worker
does when it takes a partition or gives one up. Redis Streams share by lease (`featurewell stream
--lease-s`; the leases are compute/redis_streams.py's); Kafka by its consumer group's rebalancing
(`--shared`; the callbacks are compute/kafka.py's)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from featurewell.compute.events import wall_clock_us
from featurewell.compute.program import ViewProgram
from featurewell.compute.redis_streams import RedisStreamSource
from featurewell.definitions import EventSource
from featurewell.store.state import load_watermarks

if TYPE_CHECKING:
    from featurewell.compute.runner import StreamRunner

log = logging.getLogger("featurewell.stream")


def check_shareable(
    source: EventSource, programs: Sequence[ViewProgram], *, by_lease: bool, kafka: bool
) -> None:
    """Refuse to share what sharing would get wrong: a view whose entity hears from several
    partitions (two workers would each hold part of it), or leases on a Kafka source (Kafka
    shares by rebalancing)."""
    if by_lease and kafka:
        raise ValueError(
            "sharing partitions by lease (--lease-s) is for Redis Streams; Kafka workers share "
            "a topic's partitions by the consumer group's rebalancing (--shared)"
        )
    first = next(iter(source.keys))
    for program in programs:
        names = list(program.view.entity.key_names)
        if first not in names:
            raise ValueError(
                f"view {program.view.ref} is keyed by {names}, but source {source.name!r} is "
                f"partitioned by {first!r}: its entities hear from every partition, so workers "
                "sharing the partitions would each count part of them. Compute it from a source "
                f"partitioned by {names[0]!r}, or run one worker (no --lease-s or --shared)"
            )


async def take(runner: StreamRunner, partitions: Sequence[int]) -> None:
    """Start on partitions: their watermarks and the position the group's history covers
    (whoever held them before wrote both); what this worker knew of them may be stale, so it is
    dropped (entity states load again from their checkpoint as events come)."""
    if not partitions:
        return
    if runner._checkpointing is not None:
        await runner._checkpointing  # its history progress first, then the group's
    marks = await load_watermarks(runner.cluster, runner.source, runner.group, 10.0)
    if runner.history is not None:
        await runner.history.load()
    for partition in partitions:
        runner.forget(partition)
        if partition in marks:
            runner.engine.watermarks[partition] = marks[partition]


async def give_up(runner: StreamRunner, partitions: Sequence[int]) -> None:
    """Before partitions go to another worker: write the rows, history and checkpoint of every
    event applied, acknowledge them, then forget the partitions."""
    if not partitions:
        return
    await runner.settle()
    for partition in partitions:
        runner.forget(partition)


async def balance(runner: StreamRunner) -> None:
    """Redis Streams: renew the runner's partition leases, take those due to it, give up those
    due to others (checkpointed and acknowledged first), forget those lost."""
    events = runner.events
    assert isinstance(events, RedisStreamSource)
    gained, lost, surplus = await events.balance(wall_clock_us() // 1000)
    for partition in lost:  # another consumer took it: its entries go to that one
        runner.forget(partition)
    if surplus:
        await give_up(runner, surplus)
        await events.release(surplus)
    await take(runner, gained)
    if gained or lost or surplus:
        log.info(
            "stream %s: partitions gained %s, lost %s, released %s; owns %s",
            runner.consumer,
            gained,
            lost,
            surplus,
            sorted(events.owned),
        )


class KafkaHandoff:
    """What a worker does when its Kafka consumer group rebalances (compute/kafka.py calls
    these from its rebalance callbacks, which the rebalance waits for)."""

    def __init__(self, runner: StreamRunner) -> None:
        self.runner = runner

    async def assigned(self, partitions: Sequence[int]) -> None:
        await take(self.runner, partitions)
        log.info("stream %s: Kafka assigned partitions %s", self.runner.consumer, partitions)

    async def revoked(self, partitions: Sequence[int]) -> None:
        await give_up(self.runner, partitions)
        log.info("stream %s: Kafka revoked partitions %s", self.runner.consumer, partitions)

    async def lost(self, partitions: Sequence[int]) -> None:
        """Taken away without a revoke (this worker missed its session timeout): their new
        owner re-reads from the last commit, so what this worker applied since is dropped."""
        for partition in partitions:
            self.runner.forget(partition)
        log.warning("stream %s: Kafka partitions %s lost", self.runner.consumer, partitions)
