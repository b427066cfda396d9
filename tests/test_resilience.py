"""Surviving Redis Cluster trouble under steady load: a master killed and its replica promoted,
a node restarted, connections reset, a node slow, slots migrating. Each test runs its own server;
the ones that kill nodes run their own 3+3 cluster (node timeout 1 s, so failovers take ~2 s)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from featurewell.client import ClientOptions, FeatureClient, Status
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster, call, start_local_cluster
from featurewell.store.keys import entity_tags, key_prefix, slot_of
from tests import defs
from tests.load import Call, Load, median_ms
from tests.tools import ServerThread, make_settings, sleep_node, wait_until

USERS = 60


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    with start_local_cluster(masters=3, replicas_per_master=1, node_timeout_ms=1000) as running:
        yield running


def _serve(cluster: LocalCluster, registry: Registry, **changes: Any) -> ServerThread:
    changes.setdefault("breaker_open_ms", 200.0)
    # A generous cap: these tests are about nodes dying, not about a starved 2-core box taking
    # 50 ms to answer (the slow-node test covers timeouts on purpose).
    changes.setdefault("store_timeout_ms", 500.0)
    return ServerThread(make_settings(cluster, **changes), registry)


def _seed(server: ServerThread, cluster: LocalCluster, prefix: str) -> tuple[list[str], list[int]]:
    users = [f"{prefix}-{i}" for i in range(USERS)]
    with FeatureClient(server.address, timeout=5) as client:
        defs.write_profiles(client, users, ages=list(range(USERS)))
    _wait_replicated(cluster)
    return users, [cluster.owner(_slot(u)) for u in users]


def _slot(user: str) -> int:
    return slot_of(entity_tags([[user]], 1)[0])


def _wait_replicated(cluster: LocalCluster, timeout: float = 10.0) -> None:
    """Until every replica has applied everything its master had (so a failover loses nothing).
    The master's offset keeps moving with replication pings: wait for the replica to reach the
    offset it had when we asked, not to equal a moving one."""
    deadline = time.monotonic() + timeout
    for port in cluster.masters:
        _wait_caught_up(port, deadline)


def _wait_caught_up(master: int, deadline: float) -> None:
    target = int(_replication(master)["master_repl_offset"])
    wait_until(
        lambda: _replica_offset(master) >= target,
        max(0.0, deadline - time.monotonic()),
        f"the replica of {master} to catch up with offset {target}",
        interval=0.02,
    )


def _replica_offset(master: int) -> int:
    replica = dict(
        part.split("=", 1)
        for part in _replication(master).get("slave0", "").split(",")
        if "=" in part
    )
    return int(replica.get("offset", -1))


def _replication(port: int) -> dict[str, str]:
    info = call(port, "INFO", "replication").decode()
    return dict(line.split(":", 1) for line in info.splitlines() if ":" in line)


def _wait_owner_change(cluster: LocalCluster, slot: int, old: int, timeout: float = 15.0) -> int:
    def new_owner() -> int | None:
        owner = cluster.owner(slot)
        return owner if owner != old else None

    owner = wait_until(new_owner, timeout, f"slot {slot} to move off {old}", interval=0.02)
    assert owner is not None
    return owner


def _check_values(calls: list[Call], on_victim: list[bool]) -> None:
    """Every value is correct or flagged: PRESENT and cache fallbacks carry the written age,
    default fallbacks the default (-1); rows on healthy nodes are always PRESENT."""
    for made in calls:
        for row, (age, status) in enumerate(zip(made.ages, made.statuses, strict=True)):
            if status == Status.FALLBACK:
                assert on_victim[row], (row, age, status)
                assert age == -1, (row, age, status)
            else:
                assert status in (Status.PRESENT, Status.FALLBACK_CACHE), (row, status)
                assert age == row, (row, age, status)
                assert status == Status.PRESENT or on_victim[row], (row, status, made.reasons)


def test_master_killed_no_call_fails_and_the_promoted_replica_takes_over(
    own_cluster: LocalCluster, registry: Registry
) -> None:
    server = _serve(own_cluster, registry)
    try:
        users, owners = _seed(server, own_cluster, "failover")
        victim = owners[0]
        on_victim = [owner == victim for owner in owners]
        with Load(server.address, users, threads=2) as load:
            load.wait_calls(20)  # a steady state to compare with
            killed_at = time.monotonic()
            own_cluster.kill(victim)
            _wait_owner_change(own_cluster, _slot(users[0]), victim)
            promoted_at = time.monotonic()
            time.sleep(3.0)  # the window observed after the promotion (recovery must take < 2 s)
        before = [c for c in load.calls if c.started + c.seconds < killed_at]
        during = load.between(killed_at, promoted_at)
        after = load.between(promoted_at, float("inf"))
        assert load.errors == [], [c.error for c in load.errors[:3]]
        assert before
        assert all(c.all_present for c in before)
        _check_values(load.calls, on_victim)
        # While the master was out its rows were served from fallbacks, flagged and explained.
        degraded = [c for c in during if not c.all_present]
        assert degraded
        assert all(c.reasons for c in degraded)
        # Once the replica is promoted the server finds it by itself, within a couple of seconds.
        recovered = next(c.started for c in after if c.all_present) - promoted_at
        assert recovered < 2.0, f"still degraded {recovered:.2f} s after the promotion"
        tail = [c for c in after if c.started > promoted_at + recovered]
        assert tail
        assert all(c.all_present for c in tail)
        print(
            f"\nfailover: {len(during)} calls while the master was out, none failed; "
            f"{len(degraded)} flagged; values back {recovered * 1000:.0f} ms after the promotion;"
            f" median {median_ms(before):.2f} ms before, {median_ms(tail):.2f} ms after"
        )
    finally:
        server.stop()


def test_restarted_node_rejoins_and_takes_its_slots_back(
    own_cluster: LocalCluster, registry: Registry
) -> None:
    server = _serve(own_cluster, registry)
    try:
        users, owners = _seed(server, own_cluster, "restart")
        victim, slot = owners[0], _slot(users[0])
        on_victim = [owner == victim for owner in owners]
        with Load(server.address, users, threads=2) as load:
            own_cluster.kill(victim)
            promoted = _wait_owner_change(own_cluster, slot, victim)
            own_cluster.restart(victim)  # comes back as a replica of the promoted node
            _wait_for_sync(victim)
            # Move the slots back at once (TAKEOVER: the masters already voted in this epoch
            # window, so a voted failover would wait 2 node timeouts).
            assert call(victim, "CLUSTER", "FAILOVER", "TAKEOVER") == b"OK"
            assert _wait_owner_change(own_cluster, slot, promoted) == victim
            back_at = time.monotonic()
            time.sleep(1.5)  # the window observed after the takeover (settled from 1 s on)
        assert load.errors == [], [c.error for c in load.errors[:3]]
        _check_values(load.calls, on_victim)
        settled = [c for c in load.between(back_at + 1.0, float("inf"))]
        assert settled
        assert all(c.all_present for c in settled)
    finally:
        server.stop()


def _wait_for_sync(port: int, timeout: float = 15.0) -> None:
    def synced() -> bool:
        info = call(port, "INFO", "replication").decode()
        return "role:slave" in info and "master_link_status:up" in info

    wait_until(synced, timeout, f"node {port} to resync as a replica", interval=0.05)


def test_connections_reset_under_load_lose_no_call(
    cluster: LocalCluster, registry: Registry
) -> None:
    # A long cache TTL: at the end only an invalidation can drop the deleted key in time.
    server = _serve(cluster, registry, cache_ttl_s=60.0)
    try:
        users, owners = _seed(server, cluster, "reset")
        tracker = server.server.store.tracker
        assert tracker is not None
        with Load(server.address, users, threads=2) as load:
            for _ in range(5):
                time.sleep(0.15)  # the pace of the resets (calls run in between)
                for port in cluster.masters:  # data and invalidation connections alike
                    call(port, "CLIENT", "KILL", "TYPE", "normal")
                    call(port, "CLIENT", "KILL", "TYPE", "pubsub")
            load.wait_calls(20, since=time.monotonic())  # answered after the last reset
        assert load.errors == []
        _check_values(load.calls, [True] * USERS)
        assert tracker.lost >= 3  # the invalidation subscribers were cut too, and came back
        # After all that, a write from elsewhere still reaches the cache as an invalidation.
        with FeatureClient(server.address, timeout=5) as client:
            for _ in range(3):  # fetched twice: admitted to the cache
                client.get_features(["profile:age"], entities={"user_id": users[:1]})
            key = key_prefix(defs.profile) + entity_tags([users[:1]], 1)[0] + b"}"
            call(owners[0], "DEL", key)
            wait_until(
                lambda: (
                    client.get_features(["profile:age"], entities={"user_id": users[:1]})
                    .statuses("profile:age")
                    .tolist()
                    == [Status.NOT_FOUND]
                ),
                30,
                "the cache to drop the deleted key",
            )
    finally:
        server.stop()


def test_slot_migrating_under_load_is_served_throughout(
    cluster: LocalCluster, registry: Registry
) -> None:
    server = _serve(cluster, registry)
    try:
        users, owners = _seed(server, cluster, "reshard")
        slot, source = _slot(users[0]), owners[0]
        target = next(p for p in cluster.masters if p != source)
        source_id, target_id = (call(p, "CLUSTER", "MYID").decode() for p in (source, target))
        key = key_prefix(defs.profile) + entity_tags([users[:1]], 1)[0] + b"}"
        with Load(server.address, users, threads=2) as load:
            load.wait_calls(20)
            assert call(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id) == b"OK"
            assert call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id) == b"OK"
            load.wait_calls(20, since=time.monotonic())  # the slot migrating, the key not yet
            assert call(source, "MIGRATE", "127.0.0.1", target, key, 0, 5000) == b"OK"
            load.wait_calls(20, since=time.monotonic())  # calls now meet ASK for the moved key
            for port in cluster.masters:
                call(port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
            load.wait_calls(20, since=time.monotonic())  # and MOVED: the slot is the target's
        assert load.errors == []
        assert load.calls
        assert all(c.all_present for c in load.calls)
        _check_values(load.calls, [False] * USERS)
        assert cluster.owner(slot) == target
    finally:
        server.stop()


def test_slow_node_opens_its_circuit_then_recovers(
    cluster: LocalCluster, registry: Registry
) -> None:
    server = _serve(
        cluster,
        registry,
        breaker_failures=2,
        breaker_open_ms=300.0,
        cache_entries=0,
        store_timeout_ms=50.0,
    )
    try:
        users, owners = _seed(server, cluster, "slow")
        user = users[0]
        with FeatureClient(server.address, timeout=5) as client:
            # 2 s: the six calls below must all meet the node asleep, on a slow machine too.
            sleeping = sleep_node(owners[0], 2.0)
            reasons: list[list[str]] = []
            for _ in range(6):
                result = client.get_features(["profile:age"], entities={"user_id": [user]})
                assert result.statuses("profile:age").tolist() == [Status.FALLBACK]
                reasons.append([f.reason.name for f in result.fallbacks])
            sleeping.join()
            # Two timeouts open the circuit; then the node is not asked until a trial.
            assert reasons[:2] == [["STORE_TIMEOUT"], ["STORE_TIMEOUT"]]
            assert ["CIRCUIT_OPEN"] in reasons[2:]
            wait_until(
                lambda: (
                    client.get_features(["profile:age"], entities={"user_id": [user]})
                    .statuses("profile:age")
                    .tolist()
                    == [Status.PRESENT]
                ),
                30,
                "the node to be read again once its circuit closes",
            )
        breaker = server.server.store.cluster.breakers[("127.0.0.1", owners[0])]
        assert breaker.opened >= 1
    finally:
        server.stop()


@pytest.mark.parametrize("deadline_ms", [50, 20])
def test_a_sleeping_node_never_costs_a_call_its_deadline(
    cluster: LocalCluster, registry: Registry, deadline_ms: int
) -> None:
    # Short client deadlines and a node asleep: every call is answered before its deadline,
    # the node's rows as fallbacks (the store's budget follows the deadline and keeps back the
    # measured answer margin), and the node's timeouts open its circuit although the client's
    # deadline, not the server's cap, set every budget.
    server = _serve(cluster, registry, breaker_failures=3, breaker_open_ms=5000.0, cache_entries=0)
    try:
        users, owners = _seed(server, cluster, f"deadline{deadline_ms}")
        asleep = owners[0]
        options = ClientOptions(deadline_ms / 1000, read_attempts=1)
        with FeatureClient(server.address, options=options) as client:
            client.get_features(["profile:age"], entities={"user_id": users})  # connected, warm
            sleeping = sleep_node(asleep, 1.5)
            try:
                results = [
                    client.get_features(["profile:age"], entities={"user_id": users})
                    for _ in range(12)
                ]
            finally:
                sleeping.join()
        breaker = server.server.store.cluster.breakers.get(("127.0.0.1", asleep))
    finally:
        server.stop()
    on_node = [owner == asleep for owner in owners]
    for result in results:
        statuses = result.statuses("profile:age").tolist()
        assert [s == Status.FALLBACK for s in statuses] == on_node
    assert breaker is not None  # made on the node's first counted failure
    assert breaker.opened >= 1
