"""Pipelines never crash on data (Redis Streams, against a real Redis Cluster): each malformed
event lands in the source's dead letters with its reason, the stream goes on, the good events
around it are applied and served, a future event does not move the watermark, a restart does not
read the bad entries again, and `featurewell dead-letters` lists, replays (after a fix) and drops
them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from featurewell.compute.deadletters import RedisDeadLetters, bounded
from featurewell.compute.metrics import stream_registry
from featurewell.compute.redis_streams import append
from featurewell.compute.runner import StreamRunner
from featurewell.definitions import (
    Count,
    Entity,
    EventSource,
    Feature,
    FeatureView,
    Float32,
    Float64,
    Int64,
    Mode,
    Registry,
    String,
    Sum,
    load_repo,
)
from featurewell.devcluster import LocalCluster
from featurewell.engine.validation import WriteRules
from featurewell.store import streams
from featurewell.store.keys import stream_keys
from tests.test_stream import _runner, close, served
from tests.tools import ServerThread, make_settings

MINUTE_US = 60_000_000
member = Entity("member", join_keys={"member_id": String})

REPO = """
from datetime import timedelta
from featurewell.definitions import (Count, Entity, EventSource, Feature, FeatureView, Float64,
                                     Int64, Mode, String, Sum)
member = Entity("member", join_keys={"member_id": String})
watches = EventSource("NAME", keys={"member_id": String},
                      fields={"amount": Float64, "hour": Int64})
NAME_stats = FeatureView("NAME_stats", entity=member, events=watches, tile=timedelta(minutes=10),
    features=[Feature("watches_1d", Int64, computed=Count(window=timedelta(days=1))),
              Feature("amount_1d", Float64, computed=Sum("amount", window=timedelta(days=1))),
              Feature("top_hour", Int64, computed=Mode("hour", categories=CATEGORIES,
                                                        window=timedelta(days=1)))])
"""


def definitions(name: str, categories: int = 24) -> tuple[EventSource, FeatureView]:
    fields = {"amount": Float64, "hour": Int64}
    source = EventSource(name, keys={"member_id": String}, fields=fields)
    view = FeatureView(
        f"{name}_stats",
        entity=member,
        events=source,
        tile=timedelta(minutes=10),
        features=[
            Feature("watches_1d", Int64, computed=Count(window=timedelta(days=1))),
            Feature("amount_1d", Float64, computed=Sum("amount", window=timedelta(days=1))),
            Feature(
                "top_hour",
                Int64,
                computed=Mode("hour", categories=categories, window=timedelta(days=1)),
            ),
        ],
    )
    return source, view


def entry(member_id: Any, time_us: int, amount: Any = "1.5", hour: Any = "3") -> list[bytes]:
    """A Redis Stream entry's fields as a producer may write them, rightly or not."""
    fields = {
        b"event_id": uuid.uuid4().hex.encode(),
        b"event_time": str(time_us).encode(),
        b"member_id": member_id if isinstance(member_id, bytes) else str(member_id).encode(),
        b"amount": str(amount).encode(),
        b"hour": str(hour).encode(),
    }
    return [v for pair in fields.items() for v in pair]


def malformed(now: int) -> list[tuple[str, list[bytes]]]:
    """(reason class, fields) of every malformed case the stream must refuse."""
    fields = entry("m1", now)
    missing_key = [v for i, v in enumerate(fields) if i not in (4, 5)]  # no member_id
    return [
        ("missing_field", missing_key),
        ("undecodable", entry(b"\xff\xfe", now)),
        ("entity_key", entry("", now)),
        ("wrong_type", entry("m1", now, amount="lots")),
        ("wrong_type", entry("m1", now, hour="1.5")),
        ("not_finite", entry("m1", now, amount="nan")),
        ("event_time", entry("m1", now + 24 * 60 * MINUTE_US)),
        ("entity_key", entry("x" * 5000, now)),
        ("view_rejected", entry("m1", now, hour="99")),  # the Mode refuses: not in [0, 24)
    ]


async def _add(runner: StreamRunner, source: EventSource, entries: list[list[bytes]]) -> list[str]:
    key = stream_keys(source)[0]
    return await streams.add(runner.cluster, [(key, fields) for fields in entries], 5.0)


async def _drain(runner: StreamRunner) -> None:
    while await runner.step():
        pass


def test_each_malformed_event_is_a_dead_letter_and_the_stream_goes_on(
    cluster: LocalCluster,
) -> None:
    name = f"watches_{uuid.uuid4().hex[:6]}"
    source, view = definitions(name)
    registry = Registry.build([member, view])
    now = time.time_ns() // 1000
    good_at = [now - (30 - n) * MINUTE_US for n in range(20)]  # one good event around each bad
    cases = malformed(now - 5 * MINUTE_US)
    loop = asyncio.new_event_loop()
    runner = restarted = None
    try:
        runner = loop.run_until_complete(_runner(cluster, registry, source, batch_size=7))
        entries, bad_ids = [], []
        for n, (_, fields) in enumerate(cases):
            entries.append(entry("m1", good_at[2 * n], amount="2.0", hour="5"))
            entries.append(fields)
        entries.append(entry("m2", good_at[-1], amount="1.0", hour="7"))
        ids = loop.run_until_complete(_add(runner, source, entries))
        bad_ids = ids[1::2]
        loop.run_until_complete(_drain(runner))
        loop.run_until_complete(runner.checkpoint())

        # Every bad entry is a dead letter with its reason class, partition and entry id.
        letters = loop.run_until_complete(RedisDeadLetters(runner.cluster, source).all())
        got = [(s.letter.reason_class, s.letter.receipt, s.letter.partition) for s in letters]
        assert got == [(case, i, 0) for (case, _), i in zip(cases, bad_ids, strict=True)]
        assert "'member_id' is missing" in letters[0].letter.reason
        assert "empty string" in letters[2].letter.reason
        assert "future" in letters[6].letter.reason
        assert "over max_entity_key_bytes" in letters[7].letter.reason
        assert "mode values must be in [0, 24)" in letters[8].letter.reason
        assert letters[1].letter.payload[2] == (b"member_id", b"\xff\xfe")  # kept as read

        # The good events were applied and are served; the future one moved no watermark.
        counters = runner.engine.counters
        assert (counters.applied, counters.late) == (len(cases) + 1, 0)
        assert runner.engine.watermarks == {0: good_at[-1]}
        server = ServerThread(make_settings(cluster), registry)
        try:
            values, _ = served(server, view, ["m1", "m2"])
        finally:
            server.stop()
        assert values[f"{view.name}:watches_1d"] == [len(cases), 1]
        assert values[f"{view.name}:amount_1d"] == [2.0 * len(cases), 1.0]
        assert values[f"{view.name}:top_hour"] == [5, 7]

        # Counted by reason class, every class present from 0.
        metrics = stream_registry(runner)
        sample = "featurewell_stream_dead_letters_total"
        for reason, want in (("wrong_type", 2), ("event_time", 1), ("event_id", 0)):
            labels = {"source": name, "reason": reason}
            assert metrics.get_sample_value(sample, labels) == want

        # Acknowledged: nothing pending, and a restart reads no bad entry again.
        pending = loop.run_until_complete(
            streams.pending(runner.cluster, stream_keys(source)[0], "featurewell", 5.0)
        )
        assert pending == 0
        restarted = loop.run_until_complete(_runner(cluster, registry, source))
        assert loop.run_until_complete(restarted.step()) == 0
        assert sum(restarted.stats.dead_letters.values()) == 0
    finally:
        close(loop, runner, restarted)


def test_a_view_refusing_one_event_refuses_only_that_one(cluster: LocalCluster) -> None:
    """The Mode check fails the whole batch at once; only the failing event is refused."""
    name = f"watches_{uuid.uuid4().hex[:6]}"
    source, view = definitions(name)
    registry = Registry.build([member, view])
    now = time.time_ns() // 1000
    loop = asyncio.new_event_loop()
    runner = None
    try:
        runner = loop.run_until_complete(_runner(cluster, registry, source, batch_size=100))
        hours = ["1", "2", "-1", "3", "24", "4"]
        loop.run_until_complete(
            _add(runner, source, [entry("m1", now - MINUTE_US, hour=h) for h in hours])
        )
        loop.run_until_complete(_drain(runner))
        assert runner.engine.counters.applied == 4
        assert runner.stats.dead_letters["view_rejected"] == 2
        assert runner.stats.batches == 1  # one read, refused events taken out of it
    finally:
        close(loop, runner)


def test_screen_rules_come_from_the_write_rules(cluster: LocalCluster) -> None:
    """A tighter max_entity_key_bytes and max_future_skew_s refuse what the defaults accept."""
    name = f"watches_{uuid.uuid4().hex[:6]}"
    source, view = definitions(name)
    registry = Registry.build([member, view])
    now = time.time_ns() // 1000
    rules = WriteRules(max_future_skew_us=1_000_000, max_entity_key_bytes=8)
    loop = asyncio.new_event_loop()
    runner = None
    try:
        runner = loop.run_until_complete(_runner(cluster, registry, source, rules=rules))
        loop.run_until_complete(
            _add(
                runner,
                source,
                [entry("short", now), entry("a-long-key", now), entry("m", now + 60_000_000)],
            )
        )
        loop.run_until_complete(_drain(runner))
        assert runner.engine.counters.applied == 1
        assert runner.stats.dead_letters["entity_key"] == 1
        assert runner.stats.dead_letters["event_time"] == 1
    finally:
        close(loop, runner)


def test_a_huge_payload_is_cut_and_says_so() -> None:
    payload = ((b"member_id", b"x" * 100_000), (b"amount", b"1"))
    kept, size, cut = bounded(payload, 1024)
    assert cut
    assert size == 100_016
    assert sum(len(n) + len(v) for n, v in kept) == 1024
    assert bounded(payload[1:], 1024) == (payload[1:], 7, False)


def _cli(repo: Path, seeds: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "featurewell.cli",
            "dead-letters",
            *args,
            "--repo",
            str(repo),
            "--redis",
            seeds,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dead_letters_command_lists_replays_after_a_fix_and_drops(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    name = f"watches_{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo.py"
    repo.write_text(REPO.replace("NAME", name).replace("CATEGORIES", "24"))
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    registry = load_repo(str(repo))
    view = registry.view(f"{name}_stats")
    source = view.events
    assert source is not None
    now = time.time_ns() // 1000
    loop = asyncio.new_event_loop()
    runner = fixed = None
    try:
        runner = loop.run_until_complete(_runner(cluster, registry, source))
        loop.run_until_complete(
            _add(
                runner,
                source,
                [
                    entry("m1", now - MINUTE_US, hour="30"),  # refused by the Mode (24 hours)
                    entry("m1", now - MINUTE_US, amount="nan"),  # refused on its own
                    entry("", now - MINUTE_US),
                ],
            )
        )
        loop.run_until_complete(_drain(runner))
        loop.run_until_complete(runner.checkpoint())

        listed = _cli(repo, seeds, "list", "--source", name, "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [r["reason_class"] for r in rows] == ["view_rejected", "not_finite", "entity_key"]
        assert rows[0]["payload"]["hour"] == "30"
        assert rows[0]["source"] == name
        text = _cli(repo, seeds, "list", "--source", name, "--limit", "1")
        assert text.returncode == 0
        assert "[view_rejected]" in text.stdout
        assert "1 of 3 dead letters" in text.stderr

        # The fix: the Mode takes 48 categories. Replay the letter it refused.
        repo.write_text(REPO.replace("NAME", name).replace("CATEGORIES", "48"))
        replay = _cli(repo, seeds, "replay", "--source", name, "--ids", rows[0]["id"])
        assert replay.returncode == 0, replay.stderr
        assert "replayed 1" in replay.stdout
        unknown = _cli(repo, seeds, "replay", "--source", name, "--ids", "1-1")
        assert unknown.returncode != 0
        assert "no dead letters ['1-1']" in unknown.stderr
        fixed_registry = load_repo(str(repo))
        fixed = loop.run_until_complete(_runner(cluster, fixed_registry, source))
        loop.run_until_complete(_drain(fixed))
        loop.run_until_complete(fixed.flush())
        assert fixed.engine.counters.applied == 1
        server = ServerThread(make_settings(cluster), fixed_registry)
        try:
            values, _ = served(server, fixed_registry.view(view.name), ["m1"])
        finally:
            server.stop()
        assert values[f"{view.name}:top_hour"] == [30]

        left = loop.run_until_complete(RedisDeadLetters(runner.cluster, source).all())
        assert [s.letter.reason_class for s in left] == ["not_finite", "entity_key"]
        drop = _cli(repo, seeds, "drop", "--source", name, "--all")
        assert drop.returncode == 0
        assert "dropped 2" in drop.stdout
        assert loop.run_until_complete(RedisDeadLetters(runner.cluster, source).count()) == 0
    finally:
        close(loop, runner, fixed)


def test_producers_append_helper_still_round_trips(cluster: LocalCluster) -> None:
    """`append` writes what the screen accepts: bools, ints, floats and strings."""
    name = f"watches_{uuid.uuid4().hex[:6]}"
    source, view = definitions(name)
    registry = Registry.build([member, view])
    loop = asyncio.new_event_loop()
    runner = None
    try:
        runner = loop.run_until_complete(_runner(cluster, registry, source))
        event = {
            "event_id": "e1",
            "event_time": time.time_ns() // 1000,
            "member_id": "m1",
            "amount": 2.5,
            "hour": 4,
        }
        loop.run_until_complete(append(runner.cluster, source, [event]))
        loop.run_until_complete(_drain(runner))
        assert runner.engine.counters.applied == 1
        assert sum(runner.stats.dead_letters.values()) == 0
    finally:
        close(loop, runner)


@pytest.mark.parametrize("value", [b"1e400", b"-inf", b"NaN"])
def test_non_finite_text_is_refused(value: bytes) -> None:
    from featurewell.compute.events import EventScreen, Refused

    source, _ = definitions("watches")
    fields = entry("m1", time.time_ns() // 1000, amount=value.decode())
    with pytest.raises(Refused) as refused:
        EventScreen(source).redis_entry(fields)
    assert refused.value.reason_class == "not_finite"


def test_the_stream_addresses_an_empty_key_as_redis_and_serving_do(cluster: LocalCluster) -> None:
    """The stream's state keys are tagged by the same function as the served rows
    (store.keys.entity_tags): an empty key is '%00', in the slot Redis itself computes, never
    the whole-key hash of an empty '{}' (which sent its checkpoint to a node answering MOVED)."""
    from featurewell.compute.checkpoint import tags as _tags
    from featurewell.devcluster import call
    from featurewell.store.addressing import Addresses
    from featurewell.store.keys import slots_of, state_prefix, view_keys

    _, view = definitions("watches")
    keys: list[tuple[Any, ...]] = [("",), ("a",), ("{}",), ("|",)]
    tags = _tags(keys)
    served = Addresses().read(_rows(view, [k[0] for k in keys]))
    assert tags == served.tags
    assert tags[0] == b"%00"
    port = cluster.masters[0]
    for key, slot in zip(view_keys(state_prefix(view), tags), slots_of(tags), strict=True):
        assert call(port, "CLUSTER", "KEYSLOT", key) == slot, key


def _rows(view: FeatureView, members: list[str]) -> Any:
    from featurewell.store.addressing import EntityRows

    return EntityRows([view], [members], len(members))


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"member_id": ""}, "empty string"),
        ({"member_id": "x" * 2000}, "over max_entity_key_bytes 1024"),
        ({"event_time": 2**62}, "in the future"),
        ({"amount": float("inf")}, "only finite numbers"),
        ({"event_id": "e" * 2000}, "must be 1 to 1024 bytes"),
    ],
)
def test_append_refuses_what_the_stream_would(change: dict[str, Any], complaint: str) -> None:
    """`featurewell append` (checked_event) screens with the stream's own rules."""
    from featurewell.compute.redis_streams import checked_event
    from featurewell.errors import InvalidRequest

    source, _ = definitions("watches")
    now = time.time_ns() // 1000
    event = {"member_id": "m1", "amount": 1.0, "hour": 3, **change}
    with pytest.raises(InvalidRequest, match=complaint):
        checked_event(source, event, now)
    assert checked_event(source, {"member_id": "m1", "amount": 1.0, "hour": 3}, now)


def test_featurewell_stream_keeps_running_past_bad_entries(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The crash loop, end to end: `featurewell stream` as a process, a malformed entry before
    each good one; the process stays up, the good events become servable, the metric counts."""
    import signal

    from featurewell.client import FeatureClient
    from featurewell.store.online import OnlineStore
    from tests.tools import free_port, scrape_until, wait_until

    name = f"watches_{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo.py"
    repo.write_text(REPO.replace("NAME", name).replace("CATEGORIES", "24"))
    registry = load_repo(str(repo))
    view = registry.view(f"{name}_stats")
    source = view.events
    assert source is not None
    metrics = free_port()
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    command = [sys.executable, "-m", "featurewell.cli", "stream", "--repo", str(repo)]
    process = subprocess.Popen(
        [*command, "--source", name, "--redis", seeds, "--metrics-port", str(metrics)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = ServerThread(make_settings(cluster), registry)
    loop = asyncio.new_event_loop()
    feature = f"{view.name}:watches_1d"
    try:
        store = loop.run_until_complete(
            OnlineStore.connect(cluster.seeds, connect_timeout=2, connections_per_node=1)
        )
        key = stream_keys(source)[0]
        now = time.time_ns() // 1000
        for n, (_, bad) in enumerate(malformed(now - MINUTE_US)):
            good = entry("m1", now - MINUTE_US)
            loop.run_until_complete(streams.add(store.cluster, [(key, bad), (key, good)], 5.0))

            def served_count(count: int = n + 1) -> bool:
                with FeatureClient(server.address, timeout=5.0) as client:
                    got = client.get_features([feature], entities={"member_id": ["m1"]})
                return int(got.values(feature)[0]) == count

            wait_until(served_count, 15, f"good event {n + 1} to become servable")
            assert process.poll() is None  # still running
        sample = f'featurewell_stream_dead_letters_total{{reason="wrong_type",source="{name}"}}'
        got = scrape_until(metrics, lambda m: m.get(sample, 0) >= 2)
        assert got[sample] == 2
        loop.run_until_complete(store.close())
    finally:
        loop.close()
        server.stop()
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors.decode()[-2000:]


def test_a_computed_row_the_write_rules_refuse_is_skipped_and_counted(
    cluster: LocalCluster,
) -> None:
    """Valid events can still compute a row no write may store: a Float32 sum past its range.
    That entity's row is refused (counted, logged), the others are written, the stream goes on,
    and the entity's last good value stays served."""
    name = f"watches_{uuid.uuid4().hex[:6]}"
    source = EventSource(name, keys={"member_id": String}, fields={"amount": Float64})
    view = FeatureView(
        f"{name}_sum32",
        entity=member,
        events=source,
        tile=timedelta(minutes=10),
        features=[Feature("amount_1d", Float32, computed=Sum("amount", window=timedelta(days=1)))],
    )
    registry = Registry.build([member, view])
    now = time.time_ns() // 1000
    loop = asyncio.new_event_loop()
    runner = None

    def amount(member_id: str, at: int, value: str) -> list[bytes]:
        fields = {
            b"event_id": uuid.uuid4().hex.encode(),
            b"event_time": str(at).encode(),
            b"member_id": member_id.encode(),
            b"amount": value.encode(),
        }
        return [v for pair in fields.items() for v in pair]

    try:
        runner = loop.run_until_complete(_runner(cluster, registry, source, batch_size=10))
        first = [amount("big", now - 3 * MINUTE_US, "1e38"), amount("ok", now - MINUTE_US, "2")]
        loop.run_until_complete(_add(runner, source, first))
        loop.run_until_complete(_drain(runner))
        loop.run_until_complete(runner.flush())
        # 1e38 + 1e38 + 2e38 is past float32's 3.4e38: valid events, an unstorable sum.
        later = [amount("big", now - 2 * MINUTE_US, "1e38"), amount("big", now - 60, "2e38")]
        later.append(amount("ok", now - 30, "3"))
        loop.run_until_complete(_add(runner, source, later))
        loop.run_until_complete(_drain(runner))
        loop.run_until_complete(runner.flush())
        assert runner.stats.rows_refused == 1
        metrics = stream_registry(runner)
        assert metrics.get_sample_value("featurewell_stream_rows_refused_total", {"source": name})
        server = ServerThread(make_settings(cluster), registry)
        try:
            values, _ = served(server, view, ["big", "ok"])
        finally:
            server.stop()
        assert values[f"{view.name}:amount_1d"] == [pytest.approx(1e38, rel=1e-6), 5.0]
    finally:
        close(loop, runner)
