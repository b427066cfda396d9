"""Backfills write through the engine's write validation: rows computed as of now pass, an
as-of time in the future is refused before anything is computed or written (real cluster)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pyarrow as pa
import pytest

from featurewell.compute.backfill import backfill
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster
from featurewell.engine.calls import Budget, FeatureRequest, InputColumn
from featurewell.engine.engine import FeatureEngine
from featurewell.errors import InvalidRequest
from featurewell.settings import ServingSettings
from featurewell.store.online import OnlineStore
from tests.test_stream import definitions, make_events, member

HOUR_US = 3600 * 1_000_000


def test_a_backfill_as_of_the_future_is_refused_and_writes_nothing(cluster: LocalCluster) -> None:
    source, view = definitions(f"bf_{uuid.uuid4().hex[:6]}")
    registry = Registry.build([member, view])
    members = [f"f{n}-{uuid.uuid4().hex[:4]}" for n in range(5)]
    events, _ = make_events(members, 200, seed=5)
    log = pa.table({k: [e[k] for e in events] for k in events[0]})

    async def go() -> tuple[str, list[bool], int]:
        store = await OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
        try:
            writer = FeatureEngine(registry, store, ServingSettings())
            future = time.time_ns() // 1000 + HOUR_US
            with pytest.raises(InvalidRequest) as error:
                await backfill(registry, source, writer, log, as_of_us=future)
            request = FeatureRequest(
                (f"{view.name}:clicks_1d",),
                {"member_id": InputColumn(member.join_keys["member_id"].kind, members)},
                {},
            )
            before = (await writer.get_features(request, Budget(2.0))).served[0].rows.present
            done = await backfill(registry, source, writer, log, as_of_us=time.time_ns() // 1000)
            return str(error.value), before.tolist(), done[0].entities
        finally:
            await store.close()

    message, present_before, written = asyncio.run(go())

    assert f"backfill of {source.name!r} as of" in message
    assert "s in the future (more than max_future_skew_s 300)" in message
    assert present_before == [False] * 5  # nothing was written by the refused backfill
    assert written == 5  # as of now, every computed row passes the same validation
