"""Pipelines never crash on data, on Kafka (librdkafka's mock cluster): each malformed message
lands on the `<topic>.dead-letters` topic with its reason, the stream goes on, the good events are
served, a future event moves no watermark, and a restarted consumer does not read the bad
messages again."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from featurewell.compute.deadletters import read_kafka_dead_letters
from featurewell.compute.kafka import KafkaSource
from featurewell.definitions import Registry, load_repo
from featurewell.devcluster import LocalCluster
from tests.test_deadletters import MINUTE_US, REPO, definitions, member
from tests.test_kafka import _runner, kafka
from tests.test_stream import close, served
from tests.tools import ServerThread, make_settings

__all__ = ["kafka"]  # the mock cluster fixture


def _event(member_id: Any, time_us: int, amount: Any = 2.0, hour: Any = 5) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "event_time": time_us,
        "member_id": member_id,
        "amount": amount,
        "hour": hour,
    }


def _malformed(now: int) -> list[tuple[str, bytes]]:
    def value(**changes: Any) -> bytes:
        event = _event("m1", now)
        event.update(changes)
        return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()

    return [
        ("undecodable", b'{"event_id": "e", not json'),
        ("undecodable", b"[1, 2, 3]"),
        ("missing_field", value(member_id=...)),
        ("entity_key", value(member_id="")),
        ("wrong_type", value(amount="lots")),
        ("wrong_type", value(member_id=5)),
        ("not_finite", value(amount=float("nan"))),  # json writes NaN, and reads it back
        ("event_time", value(event_time=now + 24 * 60 * MINUTE_US)),
        ("entity_key", value(member_id="x" * 5000)),
        ("view_rejected", value(hour=99)),
    ]


def test_each_malformed_message_is_a_dead_letter_and_the_stream_goes_on(
    kafka: tuple[Producer, str], cluster: LocalCluster
) -> None:
    producer, bootstrap = kafka
    name = f"watches_{uuid.uuid4().hex[:6]}"
    source, view = definitions(name)
    registry = Registry.build([member, view])
    now = time.time_ns() // 1000
    cases = _malformed(now - 5 * MINUTE_US)
    good_at = [now - (30 - n) * MINUTE_US for n in range(len(cases) + 1)]
    # One key for all: one partition, in this order (a good event around each bad one).
    for n, (_, raw) in enumerate(cases):
        good = json.dumps(_event("m1", good_at[n])).encode()
        producer.produce(source.kafka_topic, key=b"m1", value=good)
        producer.produce(source.kafka_topic, key=b"m1", value=raw)
    last = json.dumps(_event("m1", good_at[-1], amount=1.0, hour=7)).encode()
    producer.produce(source.kafka_topic, key=b"m1", value=last)
    assert producer.flush(30) == 0
    total = 2 * len(cases) + 1
    group = f"g-{uuid.uuid4().hex[:6]}"
    config = _config(bootstrap)
    loop = asyncio.new_event_loop()
    runner = restarted = None
    try:
        reader = KafkaSource(source, config, group)
        runner = loop.run_until_complete(_runner(cluster, registry, reader, batch_size=6))
        loop.run_until_complete(_read(runner, total))
        loop.run_until_complete(runner.checkpoint())
        reader.close()

        letters = read_kafka_dead_letters(config, f"{source.kafka_topic}.dead-letters")
        assert sorted(s.letter.reason_class for s in letters) == sorted(c for c, _ in cases)
        by_offset = sorted(letters, key=lambda s: int(s.letter.receipt))
        assert [s.letter.reason_class for s in by_offset] == [c for c, _ in cases]
        assert [dict(s.letter.payload)[b"value"] for s in by_offset] == [r for _, r in cases]
        assert {s.letter.source for s in letters} == {name}
        assert "not JSON" in by_offset[0].letter.reason

        counters = runner.engine.counters
        assert (counters.applied, counters.late) == (len(cases) + 1, 0)
        assert max(runner.engine.watermarks.values()) == good_at[-1]
        server = ServerThread(make_settings(cluster), registry)
        try:
            values, _ = served(server, view, ["m1"])
        finally:
            server.stop()
        assert values[f"{view.name}:watches_1d"] == [len(cases) + 1]
        assert values[f"{view.name}:amount_1d"] == [2.0 * len(cases) + 1.0]

        # Committed past the bad messages: a restarted member reads only what came after.
        after = json.dumps(_event("m1", now - MINUTE_US)).encode()
        producer.produce(source.kafka_topic, key=b"m1", value=after)
        assert producer.flush(30) == 0
        again = KafkaSource(source, config, group)
        restarted = loop.run_until_complete(_runner(cluster, registry, again))
        loop.run_until_complete(_read(restarted, 1))
        for _ in range(10):
            loop.run_until_complete(restarted.step())
        again.close()
        assert restarted.stats.events == 1
        assert restarted.engine.counters.applied == 1
        assert sum(restarted.stats.dead_letters.values()) == 0
        assert len(read_kafka_dead_letters(config, f"{source.kafka_topic}.dead-letters")) == len(
            cases
        )
    finally:
        close(loop, runner, restarted)


def _config(bootstrap: str) -> dict[str, Any]:
    # A short session: a closed member's partitions go to the next one in seconds, not 45.
    return {
        "bootstrap.servers": bootstrap,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }


async def _read(runner: Any, expected: int) -> None:
    for _ in range(600):
        if runner.stats.events >= expected:
            return
        await runner.step()
    raise AssertionError(f"read {runner.stats.events} of {expected} events")


def test_dead_letters_command_lists_and_replays_kafka_after_a_fix(
    kafka: tuple[Producer, str], cluster: LocalCluster, tmp_path: Path
) -> None:
    producer, bootstrap = kafka
    name = f"watches_{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo.py"
    repo.write_text(REPO.replace("NAME", name).replace("CATEGORIES", "24"))
    registry = load_repo(str(repo))
    view = registry.view(f"{name}_stats")
    source = view.events
    assert source is not None
    now = time.time_ns() // 1000
    for hour in (3, 30):  # 30: refused by the Mode of 24 hours
        value = json.dumps(_event("m1", now - MINUTE_US, hour=hour)).encode()
        producer.produce(source.kafka_topic, key=b"m1", value=value)
    assert producer.flush(30) == 0
    group = f"g-{uuid.uuid4().hex[:6]}"
    config = _config(bootstrap)
    kafka_flags = ("--source", name, "--kafka-bootstrap", bootstrap)
    loop = asyncio.new_event_loop()
    runner = fixed = None
    try:
        reader = KafkaSource(source, config, group)
        runner = loop.run_until_complete(_runner(cluster, registry, reader))
        loop.run_until_complete(_read(runner, 2))
        loop.run_until_complete(runner.checkpoint())
        reader.close()

        listed = _cli(repo, cluster, "list", *kafka_flags, "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [r["reason_class"] for r in rows] == ["view_rejected"]
        assert json.loads(rows[0]["payload"]["value"])["hour"] == 30
        refused = _cli(repo, cluster, "replay", *kafka_flags)
        assert refused.returncode != 0
        assert "needs --ids" in refused.stderr

        repo.write_text(REPO.replace("NAME", name).replace("CATEGORIES", "48"))  # the fix
        replay = _cli(repo, cluster, "replay", *kafka_flags, "--ids", rows[0]["id"])
        assert replay.returncode == 0, replay.stderr
        assert "replayed 1" in replay.stdout
        fixed_registry = load_repo(str(repo))
        again = KafkaSource(source, config, group)
        fixed = loop.run_until_complete(_runner(cluster, fixed_registry, again))
        loop.run_until_complete(_read(fixed, 1))
        loop.run_until_complete(fixed.flush())
        again.close()
        assert fixed.engine.counters.applied == 1
        server = ServerThread(make_settings(cluster), fixed_registry)
        try:
            values, _ = served(server, fixed_registry.view(view.name), ["m1"])
        finally:
            server.stop()
        assert values[f"{view.name}:watches_1d"] == [2]
    finally:
        close(loop, runner, fixed)


def _cli(repo: Path, cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    command = [sys.executable, "-m", "featurewell.cli", "dead-letters", *args]
    return subprocess.run(
        [*command, "--repo", str(repo), "--redis", seeds],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
