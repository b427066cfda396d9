"""Stream workers sharing a source's partitions (`featurewell stream --lease-s`): which views can
be shared, and one round of balancing. The leases themselves are compute/redis_streams.py's."""

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


def check_shareable(source: EventSource, programs: Sequence[ViewProgram], kafka: bool) -> None:
    """Refuse to share what sharing would get wrong: a view whose entity hears from several
    partitions (two workers would each hold part of it), or a Kafka source (Kafka rebalances)."""
    if kafka:
        raise ValueError("sharing partitions by lease is for Redis Streams (Kafka rebalances)")
    first = next(iter(source.keys))
    for program in programs:
        names = list(program.view.entity.key_names)
        if first not in names:
            raise ValueError(
                f"view {program.view.ref} is keyed by {names}, but source {source.name!r} is "
                f"partitioned by {first!r}: its entities hear from every partition, so workers "
                "sharing the partitions would each count part of them. Compute it from a source "
                f"partitioned by {names[0]!r}, or run one worker (no --lease-s)"
            )


async def balance(runner: StreamRunner) -> None:
    """Renew the runner's partition leases, take those due to it, give up those due to others
    (checkpointed and acknowledged first), forget those lost."""
    events = runner.events
    assert isinstance(events, RedisStreamSource)
    gained, lost, surplus = await events.balance(wall_clock_us() // 1000)
    for partition in lost:  # another consumer took it: its entries go to that one
        runner.forget(partition)
    if surplus:
        await runner.settle()
        await events.release(surplus)
        for partition in surplus:
            runner.forget(partition)
    if gained:
        marks = await load_watermarks(runner.cluster, runner.source, runner.group, 10.0)
        if runner.history is not None:
            await runner.history.load()
        for partition in gained:
            runner.forget(partition)  # what this consumer knew of it may be stale
            if partition in marks:
                runner.engine.watermarks[partition] = marks[partition]
    if gained or lost or surplus:
        log.info(
            "stream %s: partitions gained %s, lost %s, released %s; owns %s",
            runner.consumer,
            gained,
            lost,
            surplus,
            sorted(events.owned),
        )
