"""Pipelined batches on one connection each get their own replies, in order, whether hiredis reads
a batch's replies as one array (the usual case) or one by one (when they arrive behind another
batch's in the same read), across reads that split a reply, and past a caller that gave up."""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis

from featurewell.devcluster import LocalCluster
from featurewell.store.addressing import EntityRead
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import Connection, encode_command
from featurewell.store.keys import entity_tags, key_prefix, slots_of
from tests import defs


def _echoes(tag: str, count: int, size: int = 8) -> tuple[bytes, list[bytes]]:
    values = [f"{tag}{i}".encode().ljust(size, b".") for i in range(count)]
    return b"".join(encode_command("ECHO", v) for v in values), values


async def _open(cluster: LocalCluster) -> Connection:
    return await Connection.open(("127.0.0.1", cluster.masters[0]), timeout=2)


async def test_back_to_back_batches_each_get_their_replies(cluster: LocalCluster) -> None:
    connection = await _open(cluster)
    try:
        mixed = (
            encode_command("ECHO", "first")
            + encode_command("CONFIG", "GET", "maxmemory")  # an array inside the batch
            + encode_command("GET")  # an error reply, returned as a value
            + encode_command("PING")
        )
        big, big_values = _echoes("b", 500)
        small, small_values = _echoes("s", 3)
        # Sent before any reply is read: the later batches' replies can arrive behind the
        # first's in one read, where they cannot be read as one array.
        futures = [connection.send(mixed, 4), connection.send(big, 500), connection.send(small, 3)]
        async with asyncio.timeout(5):
            first, second, third = await asyncio.gather(*futures)
        assert first[0] == b"first"
        assert first[1] == [b"maxmemory", b"0"]
        assert type(first[2]) is hiredis.ReplyError
        assert "wrong number of arguments" in str(first[2])
        assert first[3] == b"PONG"
        assert second == big_values
        assert third == small_values
        for _ in range(3):  # and again once the connection is idle
            async with asyncio.timeout(5):
                assert await connection.send(small, 3) == small_values
                assert await connection.call("ECHO", "alone") == b"alone"
    finally:
        connection.close()


async def test_replies_split_across_many_reads(cluster: LocalCluster) -> None:
    connection = await _open(cluster)
    try:
        payload, values = _echoes("x", 40, size=50_000)  # 2 MB of replies: many socket reads
        small, small_values = _echoes("y", 2)
        async with asyncio.timeout(10):
            big, after = await asyncio.gather(
                connection.send(payload, 40), connection.send(small, 2)
            )
        assert big == values
        assert after == small_values
    finally:
        connection.close()


async def test_a_batch_given_up_on_does_not_shift_the_next_ones(cluster: LocalCluster) -> None:
    connection = await _open(cluster)
    try:
        slow = encode_command("DEBUG", "SLEEP", "0.2") + encode_command("ECHO", "late")
        abandoned = connection.send(slow, 2)
        abandoned.cancel()  # its caller timed out; its replies still come and are dropped
        after, after_values = _echoes("z", 5)
        async with asyncio.timeout(5):
            assert await connection.send(after, 5) == after_values
            assert await connection.call("ECHO", "then") == b"then"
    finally:
        connection.close()


async def test_rows_read_through_the_cluster_match_what_was_written(
    cluster: LocalCluster,
) -> None:
    """The full path: commands built for tags of two widths (one template per width), grouped
    by node, replies placed back in command order."""
    prefix = key_prefix(defs.pair)
    tags = entity_tags([[f"pipelined-{i}" for i in range(120)] + ["w"]], 121)
    keys = [prefix + tag + b"}" for tag in tags]
    slots = slots_of(tags)
    client = ClusterClient(cluster.seeds)
    await client.start()
    try:
        sets = [encode_command("SET", key, b"row-%d" % i) for i, key in enumerate(keys)]
        written = await client.execute(sets, slots, 2.0)
        assert written.values == [b"OK"] * len(keys)
        read = EntityRead([prefix], tags, slots)
        commands = read.commands()
        assert commands == [encode_command("GET", key) for key in keys]
        got: Any = await client.execute(commands, slots, 2.0)
        assert got.values == [b"row-%d" % i for i in range(len(keys))]
        assert got.failures == []
        assert got.errors == []
    finally:
        await client.close()
