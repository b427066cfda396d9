"""Row keys of another Redis type, on both read paths.

A GET of a key that is not a string answers WRONGTYPE; the reply stays in place and the codec
serves it as a corrupt row (DATA_LOSS). An MGET answers nil for it, exactly as for a missing row,
so `mark_wrong_types` asks the TYPE of the views an MGET left nil and puts the WRONGTYPE reply a
GET would have had where the key exists with another type: both paths answer DATA_LOSS, neither
UNAVAILABLE nor a silent NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis

from featurewell.store.addressing import EntityRead
from featurewell.store.batch import Replies
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import encode_command, refusal

# One entity read's place in a batch: the read, where its commands start, and which of its rows
# were fetched (None: all).
Fetched = tuple[EntityRead, int, Sequence[int] | None]


def keep_wrong_types(replies: Replies) -> None:
    """WRONGTYPE replies stay in place (the codec serves them as corrupt rows); any other
    error reply to a read is the store's failure."""
    for i in replies.errors:
        if not str(replies.values[i]).startswith("WRONGTYPE"):
            raise refusal("Redis Cluster refused a read", replies.values[i])


def cacheable(reply: Any) -> bool:
    """Whether a row's reply may be cached: not an error (a WRONGTYPE row is read again)."""
    if type(reply) is list:
        return not any(type(row) is hiredis.ReplyError for row in reply)
    return type(reply) is not hiredis.ReplyError


async def mark_wrong_types(
    cluster: ClusterClient, reads: Sequence[Fetched], values: list[Any], timeout: float
) -> None:
    """Replace the nil views of MGET replies in `values` whose keys hold another type by a
    WRONGTYPE reply. Calls whose rows all exist pay one scan of their replies; calls with
    missing views of multi-view rows pay one more pipelined round trip (no reply within the
    remaining `timeout`: those rows stay NOT_FOUND)."""
    commands: list[bytes] = []
    slots: list[int] = []
    where: list[tuple[int, int]] = []
    for read, start, fetched in reads:
        prefixes = read.prefixes
        if len(prefixes) < 2:
            continue
        rows = range(len(read.tags)) if fetched is None else fetched
        part = values[start : start + len(rows)]
        if not any(type(reply) is list and None in reply for reply in part):
            continue
        for j, reply in enumerate(part):
            if type(reply) is not list or None not in reply:
                continue
            r = rows[j]
            for v, row in enumerate(reply):
                if row is None:
                    commands.append(encode_command(b"TYPE", prefixes[v] + read.tags[r] + b"}"))
                    slots += read.row_slots([read.tags[r]])
                    where.append((start + j, v))
    if not commands or timeout <= 0:
        return
    types = await cluster.execute(commands, slots, timeout, count_timeouts=False)
    for (i, v), kind in zip(where, types.values, strict=True):
        if type(kind) is bytes and kind not in (b"none", b"string"):
            values[i][v] = hiredis.ReplyError(
                f"WRONGTYPE the key holds a {kind.decode(errors='replace')}, not a row"
            )
