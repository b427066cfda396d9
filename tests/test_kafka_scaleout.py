"""Stream scale-out on Kafka against real processes: `featurewell stream --shared` workers in
one consumer group over librdkafka's mock cluster (`test.mock.num.brokers`, which runs the group
protocol: joins, rebalances, session timeouts). The second to start makes the group rebalance
(the first checkpoints and commits before its partitions go); the second leaves (SIGTERM) and the
first takes its partitions back (dropping what it knew of them: stale); a third joins, and the
first is SIGKILLed mid-run: once its session times out, the third takes all partitions from their
last commit. Every event is counted once: the served values equal the batch engine's over the
topic as delivered, and the offline history they wrote has no row lost or twice."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from featurewell.compute.kafka import KafkaSource, produce
from featurewell.compute.runner import StreamRunner
from featurewell.definitions import (
    EventSource,
    Registry,
    load_repo,
)
from featurewell.devcluster import LocalCluster
from featurewell.engine.engine import FeatureEngine
from featurewell.store.online import OnlineStore
from tests.test_history_crash import check_history
from tests.test_scaleout import REPO, _events, mixed_keys
from tests.test_stream import check_served, member
from tests.tools import ServerThread, make_settings, wait_until

PARTITIONS = 4  # the mock cluster's topics (created on first use) have 4


@pytest.fixture(scope="module")
def kafka() -> Iterator[tuple[Producer, str]]:
    """A 3-broker mock cluster, kept alive by the producer that created it."""
    producer = Producer({"test.mock.num.brokers": 3, "log_level": 3})
    brokers = producer.list_topics(timeout=10).brokers.values()
    yield producer, ",".join(f"{b.host}:{b.port}" for b in brokers)
    producer.flush(5)


def _worker(repo: Path, name: str, seeds: str, kafka: str, consumer: str, log: IO[bytes]) -> Any:
    command = [sys.executable, "-m", "featurewell.cli", "stream", "--repo", str(repo)]
    command += ["--offline-dir", str(repo.parent / "offline")]
    command += ["--source", name, "--redis", seeds, "--metrics-port", "-1"]
    command += ["--kafka-bootstrap", kafka, "--shared", "--consumer", consumer]
    # A short session: a dead worker's partitions move in seconds, not the default 45.
    command += ["--kafka-option", "session.timeout.ms=6000"]
    command += ["--kafka-option", "heartbeat.interval.ms=500", "--kafka-option", "log_level=3"]
    command += ["--checkpoint-s", "2", "--batch-size", "20", "--refresh-s", "3600"]
    command += ["--log-level", "INFO"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)


def _assignments(log: Path) -> list[list[int]]:
    """The partitions each assignment of the worker gave it, in order."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if "Kafka assigned partitions" in line:
            out.append(json.loads(line.rsplit("partitions ", 1)[1]))
    return out


def _halves(logs: dict[str, Path], *workers: str) -> bool:
    """True once each worker's last assignment is half the partitions, and together all."""
    last = [_assignments(logs[worker])[-1:] for worker in workers]
    mine = [set(parts[0]) for parts in last if parts]
    return len(mine) == 2 and all(len(m) == 2 for m in mine) and set.union(*mine) == {0, 1, 2, 3}


def _topic(bootstrap: str, source: EventSource, count: int) -> list[tuple[int, int, Any]]:
    """Every message of the topic: (partition, offset, event), in each partition's order."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:6]}"})
    reader.assign([TopicPartition(source.kafka_topic, p, 0) for p in range(PARTITIONS)])
    out: list[tuple[int, int, Any]] = []
    deadline = time.monotonic() + 30
    while len(out) < count and time.monotonic() < deadline:
        for message in reader.consume(500, 0.2):
            value = message.value()
            if message.error() is None and value is not None:
                out.append((message.partition() or 0, message.offset() or 0, json.loads(value)))
    reader.close()
    assert len(out) == count
    return sorted(out, key=lambda m: (m[0], m[1]))


def _committed(bootstrap: str, source: EventSource) -> int:
    """Messages not committed by the group yet."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "featurewell"})
    try:
        parts = [TopicPartition(source.kafka_topic, p) for p in range(PARTITIONS)]
        left = 0
        for part in probe.committed(parts, timeout=10):
            _, high = probe.get_watermark_offsets(part, timeout=10)
            left += high - max(part.offset, 0)
        return left
    finally:
        probe.close()


def test_kafka_workers_share_partitions_and_survive_a_sigkill(
    kafka: tuple[Producer, str], cluster: LocalCluster, tmp_path: Path
) -> None:
    producer, bootstrap = kafka
    name = f"kshare_{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo.py"
    repo.write_text(REPO.replace("NAME", name))
    registry = load_repo(str(repo))
    view = registry.view(f"{name}_stats")
    source = view.events
    assert source is not None
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    members, events = _events(name, 12000)
    produce(producer, source, events[:45])  # the topic exists before the workers subscribe

    killed = threading.Event()
    split = 2 * len(events) // 3 // 45 * 45

    def send() -> None:  # ~400 events/s through the rebalances, and on after the kill
        for start in range(45, len(events), 45):
            if start == split:  # the last third waits for a's SIGKILL however slow the
                killed.wait(120)  # rebalances before it were (a busy machine once outran it)
            produce(producer, source, events[start : start + 45])
            time.sleep(0.1)

    logs = {c: tmp_path / f"{c}.log" for c in ("a", "b", "c")}
    files = {c: path.open("wb") for c, path in logs.items()}
    workers = {"a": _worker(repo, name, seeds, bootstrap, "a", files["a"])}
    sender = threading.Thread(target=send)
    try:
        wait_until(lambda: _assignments(logs["a"]) == [[0, 1, 2, 3]], 60, "a to take all four")
        sender.start()
        time.sleep(2.0)  # a mid-stream when the group rebalances
        workers["b"] = _worker(repo, name, seeds, bootstrap, "b", files["b"])
        wait_until(lambda: _halves(logs, "a", "b"), 60, "a and b to get two partitions each")
        assert "Kafka revoked partitions [0, 1, 2, 3]" in logs["a"].read_text()
        time.sleep(1.0)
        # b leaves (SIGTERM): a takes b's partitions back, and must drop what it knew of them
        # (b counted their events since).
        workers["b"].send_signal(signal.SIGTERM)
        assert workers["b"].wait(30) == 0
        wait_until(lambda: _assignments(logs["a"])[-1] == [0, 1, 2, 3], 60, "a to take b's")
        workers["c"] = _worker(repo, name, seeds, bootstrap, "c", files["c"])
        wait_until(lambda: _halves(logs, "a", "c"), 60, "a and c to get two partitions each")
        time.sleep(1.0)
        assert sender.is_alive()  # killed mid-run
        workers["a"].send_signal(signal.SIGKILL)
        workers["a"].wait(10)
        killed.set()
        wait_until(lambda: _assignments(logs["c"])[-1] == [0, 1, 2, 3], 60, "c to take a's")
        sender.join(60)
        wait_until(lambda: _committed(bootstrap, source) == 0, 60, "every event committed")
        workers["c"].send_signal(signal.SIGTERM)
        assert workers["c"].wait(30) == 0
    finally:
        killed.set()
        if sender.ident is not None:
            sender.join(60)
        for worker in workers.values():
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        for file in files.values():
            file.close()
    delivered = _topic(bootstrap, source, len(events))
    table: dict[str, list[Any]] = {key: [m[2][key] for m in delivered] for key in events[0]}
    table["_partition"] = [m[0] for m in delivered]
    table["_pos_major"] = [m[1] for m in delivered]
    table["_pos_minor"] = [0] * len(delivered)
    server = ServerThread(make_settings(cluster), registry)
    try:
        check_served(server, view, pa.table(table), members)
    finally:
        server.stop()
    # The history both wrote: nothing lost or twice across the rebalance and the takeover.
    # (Each member's events are on one partition, in offset order: the delivery order.)
    parquet = sorted((tmp_path / "offline" / view.name / "v1").glob("date=*/*.parquet"))
    history = pa.concat_tables(pq.read_table(f) for f in parquet)
    check_history(history, view, [m[2] for m in delivered], [f"{m[1]}-0" for m in delivered])


def test_shared_kafka_refuses_a_view_keyed_by_another_key(
    kafka: tuple[Producer, str], cluster: LocalCluster
) -> None:
    """As with leases: a page view over events partitioned by member hears from every partition,
    so workers sharing the topic would each count part of a page. And leases are not Kafka's."""
    _, bootstrap = kafka
    name = f"kmixed_{uuid.uuid4().hex[:6]}"
    source, views = mixed_keys(name)
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(
        OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
    )
    readers: list[KafkaSource] = []

    def reader() -> KafkaSource:
        readers.append(KafkaSource(source, {"bootstrap.servers": bootstrap}, "g"))
        return readers[-1]

    try:
        shared = Registry.build([member, views[0]])
        engine = FeatureEngine(shared, store)
        StreamRunner(shared, source, engine, events=reader(), shared=True)  # member: fine
        with pytest.raises(ValueError, match="Kafka workers share"):
            StreamRunner(shared, source, engine, events=reader(), lease_s=2.0)
        mixed = Registry.build([member, views[1].entity, *views])
        with pytest.raises(ValueError, match="partitioned by 'member_id'"):
            StreamRunner(mixed, source, FeatureEngine(mixed, store), events=reader(), shared=True)
        StreamRunner(mixed, source, FeatureEngine(mixed, store), events=reader())  # one: fine
    finally:
        for each in readers:
            each.close()
        loop.run_until_complete(store.close())
        loop.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shared"], "--shared is for Kafka sources (--kafka-bootstrap)"),
        (["--kafka-bootstrap", "127.0.0.1:1", "--kafka-option", "linger"], "give KEY=VALUE"),
    ],
    ids=["shared-without-kafka", "option-without-value"],
)
def test_stream_flags_that_cannot_work_are_refused(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    repo = tmp_path / "repo.py"
    repo.write_text(REPO.replace("NAME", "flags"))
    command = [sys.executable, "-m", "featurewell.cli", "stream", "--repo", str(repo)]
    command += ["--source", "flags", "--redis", "127.0.0.1:1", "--metrics-port", "-1", *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_a_worker_that_stops_polling_loses_its_partitions_and_forgets_them(
    kafka: tuple[Producer, str],
    cluster: LocalCluster,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker stalled past max.poll.interval.ms is taken out of the group: its next poll
    reports the partitions lost (no revoke: too late to commit) and the runner drops what it
    held of them instead of stopping (it raised on _MAX_POLL_EXCEEDED before), rejoins, and
    reads them again from their last commit (none here): every event counted once."""
    producer, bootstrap = kafka
    name = f"klost_{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo.py"
    repo.write_text(REPO.replace("NAME", name))
    registry = load_repo(str(repo))
    view = registry.view(f"{name}_stats")
    source = view.events
    assert source is not None
    members, events = _events(name, 400)
    produce(producer, source, events)
    config = {
        "bootstrap.servers": bootstrap,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "max.poll.interval.ms": 6000,
        "log_level": 0,
    }
    reader = KafkaSource(source, config, f"g-{uuid.uuid4().hex[:6]}")
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(
        OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
    )
    engine = FeatureEngine(registry, store)
    runner = StreamRunner(registry, source, engine, events=reader, batch_size=50)
    runner.checkpoint_s = 1e9  # nothing checkpointed nor committed before the loss

    def step_until(done: Any, what: str) -> None:
        for _ in range(600):
            loop.run_until_complete(runner.step())
            if done():
                return
        raise AssertionError(f"never: {what}")

    try:
        loop.run_until_complete(runner.start())
        step_until(lambda: runner.stats.events >= 100, "a first read")
        time.sleep(8.0)  # no poll: the consumer is taken out of the group
        step_until(lambda: "lost" in caplog.text, "the partitions reported lost")
        step_until(lambda: runner.stats.events >= 100 + len(events), "everything read again")
        loop.run_until_complete(runner.checkpoint())
    finally:
        reader.close()
        loop.run_until_complete(store.close())
        loop.close()
    delivered = _topic(bootstrap, source, len(events))
    table: dict[str, list[Any]] = {key: [m[2][key] for m in delivered] for key in events[0]}
    table["_partition"] = [m[0] for m in delivered]
    table["_pos_major"] = [m[1] for m in delivered]
    table["_pos_minor"] = [0] * len(delivered)
    server = ServerThread(make_settings(cluster), registry)
    try:
        check_served(server, view, pa.table(table), members)
    finally:
        server.stop()
