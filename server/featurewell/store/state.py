"""The streaming engine's checkpoints in Redis: each entity's state (the `state` family, in the
slot of the entity's rows) and each consumer group's watermarks (JSON {partition: µs}). What a
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
from featurewell.store.keys import key_slot, slots_of, state_prefix, view_keys, watermarks_key


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
    """The group's watermarks by partition, as last checkpointed (empty: never)."""
    key = watermarks_key(source, group)
    replies, _, failures, _ = await cluster.execute(
        [encode_command("GET", key)], [key_slot(key)], timeout
    )
    if failures:
        raise RuntimeError(f"cannot read the checkpoint: {failures[0].detail}")
    raw = replies[0]
    if not isinstance(raw, bytes) or not raw:
        return {}
    return {int(p): int(w) for p, w in json.loads(raw).items()}


async def save_watermarks(
    cluster: ClusterClient,
    source: EventSource,
    group: str,
    watermarks: Mapping[int, int],
    timeout: float,
) -> None:
    key = watermarks_key(source, group)
    command = encode_command("SET", key, json.dumps(watermarks))
    await _run(cluster, [command], [key_slot(key)], timeout, "checkpoint failed")


async def _run(
    cluster: ClusterClient, commands: list[bytes], slots: list[int], timeout: float, what: str
) -> list[Any]:
    replies, errors, failures, _ = await cluster.execute(commands, slots, timeout)
    if failures or errors:
        raise RuntimeError(f"{what}: {failures or replies[errors[0]]}")
    return list(replies)
