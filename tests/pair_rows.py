"""Rows of the `pair` view (one float, `progress`) written to and read from the store directly,
by hash tag: for tests of the store's cache below the engine."""

from __future__ import annotations

import numpy as np

from featurewell.devcluster import LocalCluster
from featurewell.store.addressing import EntityRead
from featurewell.store.codec import RowCodec
from featurewell.store.columnar import ColumnarCache
from featurewell.store.keys import key_prefix, slot_of
from featurewell.store.online import OnlineStore
from tests import defs

CODEC = RowCodec(defs.pair)
PREFIX = key_prefix(defs.pair)


def encoded(values: list[float], at_us: int) -> list[bytes]:
    """Stored rows of these `progress` values, all at event time `at_us`."""
    progress = np.asarray(values, np.float32)
    return CODEC.encode(np.full(len(values), at_us, np.int64), {"progress": progress})


async def connect(cluster: LocalCluster, cache: ColumnarCache) -> OnlineStore:
    """A store with this cache (one connection per node) on the test cluster."""
    return await OnlineStore.connect(
        cluster.seeds, connect_timeout=2, connections_per_node=1, cache=cache
    )


async def progress(store: OnlineStore, tags: list[bytes], ttl: float = 60.0) -> list[float]:
    """The rows' `progress` as the store reads them (from Redis or its cache), all served."""
    read = EntityRead([PREFIX], tags, [slot_of(t) for t in tags], cache_ttl=ttl)
    got = await store.read_keys([read], 2.0, codecs=[[CODEC]])
    assert got.failures == []
    ((view,),) = got.views
    values = view.decode(CODEC).values["progress"]
    assert isinstance(values, np.ndarray)
    return [round(float(v), 3) for v in values]
