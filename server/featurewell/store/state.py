"""The streaming engine's checkpoints in Redis: each entity's state (the `state` family, in the
slot of the entity's rows) and each consumer group's progress (a hash: per partition its
watermark, µs, and the position its history covers; per consumer its last history batch). What a
state holds is compute/state.py's; here it is bytes.

Failures raise RuntimeError: the runner stops, loudly, rather than go on without its state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from featurewell.definitions import EventSource, FeatureView
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import encode_command
from featurewell.store.keys import (
    key_slot,
    slots_of,
    state_prefix,
    stream_progress_key,
    view_keys,
    watermarks_key,
)

Position = tuple[int, int]


async def load_states(
    cluster: ClusterClient, view: FeatureView, tags: Sequence[bytes], timeout: float
) -> list[bytes | None]:
    """Each entity's checkpointed state (None: none yet), by entity tag; one GET per entity,
    pipelined per node."""
    keys = view_keys(state_prefix(view), tags)
    replies = await _run(
        cluster,
        [encode_command("GET", key) for key in keys],
        slots_of(tags),
        timeout,
        "cannot load entity state",
    )
    return [reply or None for reply in replies]


async def save_states(
    cluster: ClusterClient,
    view: FeatureView,
    tags: Sequence[bytes],
    states: Sequence[bytes],
    timeout: float,
) -> None:
    keys = view_keys(state_prefix(view), tags)
    commands = [encode_command("SET", key, state) for key, state in zip(keys, states, strict=True)]
    await _run(cluster, commands, slots_of(tags), timeout, "checkpoint failed")


async def load_watermarks(
    cluster: ClusterClient, source: EventSource, group: str, timeout: float
) -> dict[int, int]:
    """The group's watermarks by partition, as last checkpointed (empty: never): each
    partition's own field of the progress hash, else the JSON written before there was one."""
    key, progress = watermarks_key(source, group), stream_progress_key(source, group)
    replies, _, failures, _ = await cluster.execute(
        [encode_command("GET", key), encode_command("HGETALL", progress)],
        [key_slot(key), key_slot(progress)],
        timeout,
    )
    if failures:
        raise RuntimeError(f"cannot read the checkpoint: {failures[0].detail}")
    raw, fields = replies
    marks: dict[int, int] = {}
    if isinstance(raw, bytes) and raw:
        marks = {int(p): int(w) for p, w in json.loads(raw).items()}
    for field, value in zip(fields[::2], fields[1::2], strict=True):
        kind, _, partition = field.decode().partition(":")
        if kind == "watermark":
            marks[int(partition)] = int(value)
    return marks


async def save_watermarks(
    cluster: ClusterClient,
    source: EventSource,
    group: str,
    watermarks: Mapping[int, int],
    timeout: float,
) -> None:
    """Each partition's watermark in its own field: consumers sharing a group's partitions
    write their own partitions' and leave the others'."""
    if not watermarks:
        return
    key = stream_progress_key(source, group)
    fields: list[str | int] = []
    for partition, mark in watermarks.items():
        fields += [f"watermark:{partition}", mark]
    command = encode_command("HSET", key, *fields)
    await _run(cluster, [command], [key_slot(key)], timeout, "checkpoint failed")


async def load_progress(
    cluster: ClusterClient, source: EventSource, group: str, consumer: str, timeout: float
) -> tuple[dict[int, Position], int]:
    """The group's history progress: per partition, the position of the last event whose rows
    the offline store holds; and `consumer`'s last history batch number (0: none yet)."""
    key = stream_progress_key(source, group)
    (reply,) = await _run(
        cluster, [encode_command("HGETALL", key)], [key_slot(key)], timeout, "cannot read"
    )
    covered: dict[int, Position] = {}
    batch = 0
    for field, value in zip(reply[::2], reply[1::2], strict=True):
        kind, _, name = field.decode().partition(":")
        if kind == "covered":
            major, _, minor = value.decode().partition("-")
            covered[int(name)] = (int(major), int(minor))
        elif kind == "batch" and name == consumer:
            batch = int(value)
    return covered, batch


async def save_progress(
    cluster: ClusterClient,
    source: EventSource,
    group: str,
    consumer: str,
    batch: int,
    covered: Mapping[int, Position],
    timeout: float,
) -> None:
    """Record, in one HSET (all or nothing), that `consumer`'s history batch `batch` is written
    and covers each partition up to its position."""
    key = stream_progress_key(source, group)
    fields: list[str | int] = [f"batch:{consumer}", batch]
    for partition, (major, minor) in covered.items():
        fields += [f"covered:{partition}", f"{major}-{minor}"]
    command = encode_command("HSET", key, *fields)
    await _run(cluster, [command], [key_slot(key)], timeout, "history progress not recorded")


async def _run(
    cluster: ClusterClient, commands: list[bytes], slots: list[int], timeout: float, what: str
) -> list[Any]:
    replies, errors, failures, _ = await cluster.execute(commands, slots, timeout)
    if failures or errors:
        raise RuntimeError(f"{what}: {failures or replies[errors[0]]}")
    return list(replies)
