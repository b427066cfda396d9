"""Reads per (caller, view version), summed over every server: the `consumer_calls` and
`consumer_seen` hashes (store/keys.py), one field "<caller>|<view>@v<n>" per pair. Callers are
free text, view references hold no '|': a field splits back at its last '|'.
"""

from __future__ import annotations

from collections.abc import Mapping

from featurewell.errors import StoreUnavailable
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import encode_command
from featurewell.store.keys import CONSUMER_CALLS_KEY, CONSUMER_SEEN_KEY, META_SLOT

Pair = tuple[str, str]  # (caller, view reference "name@vN")


async def add(
    cluster: ClusterClient, calls: Mapping[Pair, int], seen: Mapping[Pair, int], timeout: float
) -> None:
    """Add `calls` to each pair's count and set its last call (Unix seconds) from `seen`."""
    commands = []
    for (caller, view), count in calls.items():
        field = f"{caller}|{view}"
        commands.append(encode_command(b"HINCRBY", CONSUMER_CALLS_KEY, field, count))
        commands.append(encode_command(b"HSET", CONSUMER_SEEN_KEY, field, seen[(caller, view)]))
    replies = await cluster.execute(commands, [META_SLOT] * len(commands), timeout)
    replies.checked("cannot record consumers")


async def read(cluster: ClusterClient, timeout: float) -> dict[Pair, tuple[int, int]]:
    """Every pair's (calls, last call in Unix seconds: 0 if not recorded)."""
    replies, _, failures, _ = await cluster.execute(
        [
            encode_command(b"HGETALL", CONSUMER_CALLS_KEY),
            encode_command(b"HGETALL", CONSUMER_SEEN_KEY),
        ],
        [META_SLOT, META_SLOT],
        timeout,
    )
    if failures:
        raise StoreUnavailable(f"cannot read consumers: {failures[0].detail}")
    calls, seen = (_fields(reply) for reply in replies)
    out = {}
    for field, count in calls.items():
        caller, _, view = field.rpartition("|")
        out[(caller, view)] = (int(count), int(seen.get(field, 0)))
    return out


def _fields(reply: list[bytes] | None) -> dict[str, bytes]:
    items = iter(reply or [])
    return {key.decode(): value for key, value in zip(items, items, strict=True)}
