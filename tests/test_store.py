"""The online store against a real Redis Cluster: routing, redirects, reconnects, ordering, TTL."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurewell.definitions import Feature, FeatureView, Int64, Registry
from featurewell.devcluster import LocalCluster, call, free_ports
from featurewell.errors import StoreTimeout, StoreUnavailable
from featurewell.store.addressing import EntityRead, EntityRows
from featurewell.store.batch import FailureReason
from featurewell.store.codec import RowCodec
from featurewell.store.keys import entity_tags, key_prefix, slot_of, slots_of, view_keys
from featurewell.store.online import OnlineStore
from featurewell.values import Status
from tests import defs
from tests.tools import Ids, NodeSleep, fixed, sleep_node, wait_until, wait_until_async

CODEC = RowCodec(defs.pair)
PREFIX = key_prefix(defs.pair)


@pytest.fixture
async def store(cluster: LocalCluster) -> AsyncIterator[OnlineStore]:
    connected = await OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
    yield connected
    await connected.close()


def _rows(n: int, at_us: int, value: float) -> list[bytes]:
    progress = np.full(n, value, dtype=np.float32)
    return CODEC.encode(np.full(n, at_us, dtype=np.int64), {"progress": progress})


async def _write(store: OnlineStore, tags: list[bytes], at_us: int, value: float, **kw: Any) -> Any:
    keys = view_keys(PREFIX, tags)
    return await store.write_keys(
        keys, [slot_of(t) for t in tags], _rows(len(tags), at_us, value), **kw
    )


async def _read(store: OnlineStore, tags: list[bytes]) -> list[bytes | None]:
    result = await store.read_keys([EntityRead([PREFIX], tags, [slot_of(t) for t in tags])], 2.0)
    assert result.failures == []
    ((view,),) = result.views
    assert view.fallback is None
    return view.rows


def test_slots_match_redis(cluster: LocalCluster) -> None:
    port = cluster.masters[0]
    columns: list[Any] = [["plain", "a{b}", "}x{", "%7B", "with|bar", "ünïcode"], [1, -5, 2**62]]
    tags = entity_tags([columns[0]], 6) + entity_tags([columns[1]], 3)
    tags += entity_tags([["u1"], [1, 2, 3]], 3)  # composite, broadcast user
    for tag in tags:
        key = PREFIX + tag + b"}"
        assert call(port, "CLUSTER", "KEYSLOT", key) == slot_of(tag), key


def test_composite_tags_do_not_collide() -> None:
    left = entity_tags([["a|b"], ["c"]], 1)
    right = entity_tags([["a"], ["b|c"]], 1)
    assert left != right


async def test_many_keys_across_all_nodes(store: OnlineStore, ids: Ids) -> None:
    tags = [ids(f"k{i}").encode() for i in range(600)]
    outcome = await _write(store, tags, 1_000, 0.5)
    assert (outcome.written, outcome.skipped_older) == (600, 0)
    nodes = {store.cluster.node_of(slot_of(t)) for t in tags}
    assert len(nodes) == 3

    rows = await _read(store, [*tags, b"missing-entity"])

    decoded = CODEC.decode(rows)
    assert decoded.present.tolist() == [True] * 600 + [False]
    assert fixed(decoded.values["progress"])[:600].tolist() == [0.5] * 600


async def test_an_empty_string_key_is_written_and_read_in_every_view(
    store: OnlineStore, ids: Ids
) -> None:
    """The entity "" (a lone empty string key) has its views' rows in one slot, like any
    other: written through the routing by tag, and read back in one MGET."""
    name = ids("v").replace("-", "_")
    features = [Feature("age", Int64)]
    views = [FeatureView(name, entity=defs.user, version=v, features=features) for v in (1, 2)]
    row = (7_000).to_bytes(8, "little") + b"row"
    for view in views:
        outcome = await store.write(view, [[""]], [row], np.array([7_000], dtype=np.int64))
        assert outcome.written == 1
    result = await store.read([EntityRows(views, [[""]], 1)], 2.0)
    assert result.failures == []
    assert [view.rows for view in result.views[0]] == [[row], [row]]
    tags = entity_tags([[""]], 1)  # and the keys are where the routing by tag put them
    prefixes = [key_prefix(view) for view in views]
    addressed = await store.read_keys([EntityRead(prefixes, tags, slots_of(tags))], 2.0)
    assert [view.rows for view in addressed.views[0]] == [[row], [row]]


async def test_event_time_ordering_is_atomic_per_key(store: OnlineStore, ids: Ids) -> None:
    tag = [ids("ordered").encode()]
    assert (await _write(store, tag, 2_000, 0.2)).written == 1
    assert (await _write(store, tag, 1_000, 0.1)).skipped_older == 1  # late event: ignored
    assert (await _write(store, tag, 2_000, 0.3)).written == 1  # same time: later write wins
    decoded = CODEC.decode(await _read(store, tag))
    assert fixed(decoded.values["progress"]).tolist() == [pytest.approx(0.3)]
    assert decoded.event_time_us.tolist() == [2_000]


async def test_retention_sets_expiry_from_event_time(
    store: OnlineStore, cluster: LocalCluster, ids: Ids
) -> None:
    tag = ids("ttl").encode()
    event_us = defs.now_us()
    await _write(store, [tag], event_us, 0.9, expire_at_ms=[event_us // 1000 + 60_000])
    node = store.cluster.node_of(slot_of(tag))
    assert node is not None
    remaining_ms = call(node[1], "PTTL", PREFIX + tag + b"}")
    assert 55_000 < remaining_ms <= 60_000


async def test_moved_redirect_is_followed_and_slot_map_fixed(store: OnlineStore, ids: Ids) -> None:
    tag = ids("moved").encode()
    await _write(store, [tag], 5, 0.5)
    slot = slot_of(tag)
    right = store.cluster.node_of(slot)
    wrong = next(a for a in store.cluster.masters if a != right)
    store.cluster.slot_map.move(slot, wrong)  # as if the slot had moved since the map was loaded

    rows = await _read(store, [tag])

    assert CODEC.decode(rows).present.tolist() == [True]
    assert store.cluster.node_of(slot) == right


async def test_reconnects_after_connections_are_killed(
    store: OnlineStore, cluster: LocalCluster, ids: Ids
) -> None:
    tag = ids("reconnect").encode()
    await _write(store, [tag], 5, 0.5)
    # No public view of the store's connections: its pools (one connection per master here).
    connections = [c for pool in store.cluster._pools.values() for c in pool]
    assert len(connections) >= len(cluster.masters)
    killed = sum(
        call(port, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") for port in cluster.masters
    )
    assert killed >= 3  # at least the store's own connection to each master
    # Once the store has seen them close, the read below must open new ones.
    await wait_until_async(
        lambda: all(c.closed for c in connections), 30, "the store to see its connections closed"
    )

    rows = await _read(store, [tag])

    assert CODEC.decode(rows).present.tolist() == [True]


async def test_write_script_is_reloaded_after_script_flush(
    store: OnlineStore, cluster: LocalCluster, ids: Ids
) -> None:
    await _write(store, [ids("before").encode()], 5, 0.5)
    for port in cluster.masters:
        assert call(port, "SCRIPT", "FLUSH") == b"OK"
    tags = [ids(f"after{i}").encode() for i in range(30)]
    assert (await _write(store, tags, 5, 0.5)).written == 30


async def test_unreachable_cluster_is_reported_with_addresses() -> None:
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1: cannot connect"):
        await OnlineStore.connect([("127.0.0.1", 1)], connect_timeout=0.5, connections_per_node=1)


@pytest.fixture
def standalone_redis(tmp_path: Path) -> Iterator[int]:
    """A plain (non-cluster) redis-server of our own on a free port."""
    (port,) = free_ports(1)
    args = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--dir",
        str(tmp_path),
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        wait_until(
            lambda: call(port, "PING") == b"PONG",
            10,
            f"redis-server on {port}",
            retry_on=(OSError,),
        )
        yield port
    finally:
        process.kill()
        process.wait()


async def test_standalone_redis_is_not_mistaken_for_a_cluster(standalone_redis: int) -> None:
    with pytest.raises(StoreUnavailable, match="is not a cluster node"):
        await OnlineStore.connect(
            [("127.0.0.1", standalone_redis)], connect_timeout=1, connections_per_node=1
        )


@pytest.fixture
def sleeping_node() -> Iterator[Callable[[int, float], None]]:
    """Make one master unresponsive for a while (DEBUG SLEEP blocks it), then wait it out."""
    sleeps: list[NodeSleep] = []
    yield lambda port, seconds: sleeps.append(sleep_node(port, seconds))
    for sleeping in sleeps:
        sleeping.join()


async def test_reads_and_writes_time_out_on_a_stuck_node(
    store: OnlineStore, sleeping_node: Callable[[int, float], None], ids: Ids
) -> None:
    tag = ids("stuck").encode()
    node = store.cluster.node_of(slot_of(tag))
    assert node is not None
    asleep_s = 2.0  # a read and a write of 0.1 s each fit well before it wakes, loaded or not
    sleeping_node(node[1], asleep_s)
    started = time.monotonic()
    elsewhere = next(
        t for t in (b"e%d" % i for i in range(100)) if store.cluster.node_of(slot_of(t)) != node
    )
    read = await _read_within(store, [tag, elsewhere], 0.1)
    with pytest.raises(StoreTimeout, match="did not confirm 1 writes"):
        await _write(store, [tag], 5, 0.5, timeout=0.1)
    # Both gave up on time, not when the node woke (about asleep_s after `started`).
    assert time.monotonic() - started < asleep_s - 0.5
    # A read never raises for a node: the stuck node's row comes back flagged, the rest served.
    (failure,) = read.failures
    assert (failure.indexes, failure.node, failure.reason) == ([0], node, FailureReason.TIMEOUT)
    ((view,),) = read.views
    assert view.rows == [None, None]
    assert view.fallback is not None
    assert view.fallback.tolist() == [Status.FALLBACK, 0]
    assert view.reasons is not None
    assert view.reasons.tolist() == [FailureReason.TIMEOUT, 0]


async def _read_within(store: OnlineStore, tags: list[bytes], timeout: float) -> Any:
    return await store.read_keys([EntityRead([PREFIX], tags, slots_of(tags))], timeout)


async def test_ask_redirect_during_slot_migration(
    store: OnlineStore, cluster: LocalCluster, ids: Ids
) -> None:
    tag = ids("migrating").encode()
    await _write(store, [tag], 5, 0.75)
    slot = slot_of(tag)
    source = store.cluster.node_of(slot)
    assert source is not None
    target = next(a for a in store.cluster.masters if a != source)
    source_id, target_id = (call(a[1], "CLUSTER", "MYID").decode() for a in (source, target))
    key = PREFIX + tag + b"}"
    assert call(target[1], "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id) == b"OK"
    assert call(source[1], "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id) == b"OK"
    try:
        # The key moves while its slot still belongs to the source: the source answers ASK.
        assert call(source[1], "MIGRATE", target[0], target[1], key, 0, 5000) == b"OK"
        assert str(call(source[1], "GET", key)).startswith("ASK ")

        rows = await _read(store, [tag])

        assert fixed(CODEC.decode(rows).values["progress"]).tolist() == [0.75]
        assert store.cluster.node_of(slot) == source  # ASK is one-off: the map is unchanged
    finally:
        for address in store.cluster.masters:  # finish the migration: the slot is the target's
            call(address[1], "CLUSTER", "SETSLOT", slot, "NODE", target_id)
    rows = await _read(store, [tag])  # now a MOVED, after which the map points at the target
    assert CODEC.decode(rows).present.tolist() == [True]
    assert store.cluster.node_of(slot) == target


@pytest.mark.redis
async def test_password_protected_cluster(registry: Registry) -> None:
    from featurewell.app import start_server
    from featurewell.devcluster import start_local_cluster
    from featurewell.settings import Settings

    with start_local_cluster(masters=3) as protected:
        for port in protected.masters:
            assert call(port, "CONFIG", "SET", "requirepass", "s3cret") == b"OK"
        base = Settings.load(environ={}).with_changes(
            redis=tuple(protected.seeds), port=0, metrics_port=-1
        )
        with pytest.raises(StoreUnavailable, match=r"NOAUTH|refused the password"):
            await start_server(base, registry)
        with pytest.raises(StoreUnavailable, match="refused the password"):
            await start_server(base.with_changes(redis_password="wrong"), registry)
        server = await start_server(base.with_changes(redis_password="s3cret"), registry)
        try:
            store = server.store
            tags = [b"auth-1", b"auth-2"]
            outcome = await _write(store, tags, 10, 0.25)
            assert outcome.written == 2
            rows = await _read(store, tags)
            assert fixed(CODEC.decode(rows).values["progress"]).tolist() == [0.25, 0.25]
            assert "s3cret" not in repr(server.settings)
        finally:
            await server.stop(grace=0.1)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    """3+1 nodes serving TLS (and the cluster bus over TLS), certificates from a throwaway CA."""
    import trustme

    from featurewell.devcluster import TlsFiles, start_local_cluster

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    node = ca.issue_cert("127.0.0.1", "localhost")
    node.cert_chain_pems[0].write_to_path(folder / "node.crt")
    node.private_key_pem.write_to_path(folder / "node.key")
    ca.cert_pem.write_to_path(folder / "ca.crt")
    trustme.CA().cert_pem.write_to_path(folder / "other-ca.crt")
    files = TlsFiles(folder / "node.crt", folder / "node.key", folder / "ca.crt")
    with start_local_cluster(masters=3, replicas_per_master=1, tls=files) as running:
        yield running, folder


async def test_tls_cluster(tls_cluster: tuple[LocalCluster, Path], registry: Registry) -> None:
    from featurewell.app import start_server
    from featurewell.settings import Settings

    cluster, folder = tls_cluster
    base = Settings.load(environ={}).with_changes(
        redis=tuple(cluster.tls_seeds), port=0, metrics_port=-1
    )
    # Plaintext to a TLS port gets no CLUSTER SLOTS answer: refused at start-up.
    with pytest.raises(StoreUnavailable, match="no Redis Cluster node answered"):
        await start_server(base.with_changes(connect_timeout_s=0.5), registry)
    # A CA that did not sign the nodes' certificates: a TLS error that says what to check.
    untrusted = base.with_changes(redis_tls=True, redis_tls_ca_file=str(folder / "other-ca.crt"))
    with pytest.raises(StoreUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await start_server(untrusted, registry)
    # The right CA, with a client certificate (mutual TLS) and the hot-key cache's tracking
    # connections, which must speak TLS too.
    trusted = base.with_changes(
        redis_tls=True,
        redis_tls_ca_file=str(folder / "ca.crt"),
        redis_tls_cert_file=str(folder / "node.crt"),
        redis_tls_key_file=str(folder / "node.key"),
    )
    server = await start_server(trusted, registry)
    try:
        store = server.store
        assert {port for _, port in store.cluster.masters} <= set(cluster.tls_ports.values())
        tags = [b"tls-1", b"tls-2", b"tls-3"]
        assert (await _write(store, tags, 10, 0.5)).written == 3
        rows = await _read(store, tags)
        assert fixed(CODEC.decode(rows).values["progress"]).tolist() == [0.5, 0.5, 0.5]
        assert store.tracker is not None
    finally:
        await server.stop(grace=0.1)


def test_tls_settings_are_checked() -> None:
    from featurewell.app import node_access
    from featurewell.errors import ConfigError
    from featurewell.settings import Settings

    with pytest.raises(ConfigError, match="redis_tls is off"):
        Settings.load(environ={"FEATUREWELL_REDIS_TLS_CA_FILE": "/ca.pem"})
    with pytest.raises(ConfigError, match="go together"):
        Settings.load(
            environ={"FEATUREWELL_REDIS_TLS": "true", "FEATUREWELL_REDIS_TLS_CERT_FILE": "/c.pem"}
        )
    with pytest.raises(ConfigError, match="expected true or false"):
        Settings.load(environ={"FEATUREWELL_REDIS_TLS": "maybe"})
    missing = Settings.load(
        environ={"FEATUREWELL_REDIS_TLS": "yes", "FEATUREWELL_REDIS_TLS_CA_FILE": "/nope/ca.pem"}
    )
    with pytest.raises(ConfigError, match="cannot load the Redis TLS files"):
        node_access(missing.redis)
    assert node_access(Settings.load(environ={}).redis).tls is None
