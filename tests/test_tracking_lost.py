"""The hot-key cache's coherence when a tracked data connection is cut: Redis sends a closed
client's invalidations nowhere, so the tracker (store/tracking.py) must stop trusting entries."""

from __future__ import annotations

from featurewell.devcluster import LocalCluster, call
from featurewell.store.cache import CachePolicy
from featurewell.store.columnar import ColumnarCache
from featurewell.store.keys import slot_of
from tests import defs
from tests.pair_rows import PREFIX, connect, encoded, progress
from tests.tools import Ids, wait_until_async


async def test_a_lost_data_connection_ends_every_entry_s_freshness(
    cluster: LocalCluster, ids: Ids
) -> None:
    """Redis sends a closed client's invalidations nowhere: once a tracked data connection is
    cut (here as a proxy or Redis's `timeout` would cut it), a write from another client must
    still reach readers. The other nodes' entries stay fresh: their own connections still
    carry their invalidations. (Refresh-ahead off: this is the tracker's guarantee alone.)"""
    cache = ColumnarCache(CachePolicy(admit_after=1))
    store = await connect(cluster, cache)
    tracker = store.tracker
    assert tracker is not None
    try:
        tag = ids("connection-lost").encode()
        port = cluster.owner(slot_of(tag))
        key = PREFIX + tag + b"}"
        elsewhere = next(  # a row on another node
            t for i in range(100) if cluster.owner(slot_of(t := ids(f"kept{i}").encode())) != port
        )
        at_us = defs.now_us()
        for row_tag in (tag, elsewhere):
            owner = cluster.owner(slot_of(row_tag))
            assert call(owner, "SET", PREFIX + row_tag + b"}", encoded([0.5], at_us)[0]) == b"OK"
        assert await progress(store, [tag, elsewhere]) == [0.5, 0.5]
        await wait_until_async(lambda: len(cache) == 2, 30, "the rows to be cached")
        subscriber = next(i for (_, p), (_, i) in tracker._subscribers.items() if p == port)
        listed = call(port, "CLIENT", "LIST").decode().splitlines()
        data = [
            f.split("=")[1]
            for line in listed
            if f"redir={subscriber} " in line
            for f in line.split()
            if f.startswith("id=")
        ]
        assert data, "no tracked data connection on the node"
        for client_id in data:
            call(port, "CLIENT", "KILL", "ID", client_id)
        (cut,) = (c for (_, p), pool in store.cluster._pools.items() if p == port for c in pool)
        await wait_until_async(lambda: cut.closed, 30, "the cut to be noticed")
        assert call(port, "SET", key, encoded([0.9], at_us + 1)[0]) == b"OK"
        hits = cache.stats.hits
        assert await progress(store, [tag]) == [0.9]  # not the cached 0.5, fresh for 60 s
        assert await progress(store, [elsewhere]) == [0.5]
        assert cache.stats.hits == hits + 1  # the other node's row: still from the cache
        assert (tracker.cut, tracker.lost) == (1, 0)
    finally:
        await store.close()
