"""`featurewell dead-letters`: the events a stream refused (compute/deadletters.py), listed,
replayed onto their source after a fix, or dropped."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from confluent_kafka import Producer

from featurewell.app import connected
from featurewell.commands._command import Command, event_source, registry_of, run
from featurewell.compute.deadletters import (
    RedisDeadLetters,
    StoredLetter,
    read_kafka_dead_letters,
)
from featurewell.definitions import EventSource
from featurewell.engine.validation import echo
from featurewell.errors import ConfigError, InvalidRequest, StoreUnavailable
from featurewell.settings import RedisSettings, Settings


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("list", "replay", "drop"),
        help="list them; replay them onto the source's streams (and remove them); drop them",
    )
    parser.add_argument("--source", required=True, help="the EventSource's name")
    parser.add_argument("--limit", type=int, default=100, help="list: at most this many")
    parser.add_argument("--json", action="store_true", help="list: one JSON object per line")
    parser.add_argument(
        "--ids", nargs="+", metavar="ID", help="replay/drop: only these (default: replay all)"
    )
    parser.add_argument("--all", action="store_true", help="drop: every dead letter")
    parser.add_argument(
        "--kafka-bootstrap",
        metavar="HOST:PORT,...",
        help="a Kafka source's dead letters (its topic + '.dead-letters'): list, or replay "
        "--ids onto the source's topic (a topic cannot delete: they stay listed)",
    )
    parser.add_argument("--dead-letter-topic", default="", help="Kafka: the dead-letter topic")


def _dead_letters(settings: Settings, args: argparse.Namespace) -> None:
    registry = registry_of(settings)
    source = event_source(registry, args.source)
    if args.action == "drop" and not args.ids and not args.all:
        raise ConfigError("featurewell dead-letters drop: pass --ids ID... or --all")
    if args.limit <= 0:
        raise ConfigError(f"--limit must be positive, got {args.limit}")

    if args.kafka_bootstrap:
        _kafka(source, args)
        return

    async def act() -> None:
        async with connected(settings.redis) as store:
            letters = RedisDeadLetters(store.cluster, source)
            if args.action == "list":
                shown = await letters.read(args.limit)
                total = await letters.count()
                for stored in shown:
                    print(json.dumps(stored.as_json()) if args.json else _line(stored))
                if not args.json:
                    print(f"{len(shown)} of {total} dead letters of {source.name}", file=sys.stderr)
            elif args.action == "replay":
                replayed, skipped = await letters.replay(args.ids)
                for reason in skipped:
                    print(f"not replayed: {reason}", file=sys.stderr)
                print(f"replayed {len(replayed)} dead letters onto {source.name}")
            else:
                removed = await letters.drop(None if args.all else args.ids)
                print(f"dropped {removed} dead letters of {source.name}")

    run(act())


def _kafka(source: EventSource, args: argparse.Namespace) -> None:
    config = {"bootstrap.servers": args.kafka_bootstrap}
    topic = args.dead_letter_topic or f"{source.kafka_topic}.dead-letters"
    if args.action == "drop":
        raise ConfigError(
            f"Kafka dead letters cannot be dropped one by one: set {topic}'s retention instead"
        )
    if args.action == "replay" and not args.ids:
        raise ConfigError(
            "featurewell dead-letters replay --kafka-bootstrap needs --ids PARTITION:OFFSET... "
            "(a topic keeps what was replayed: name what to send again)"
        )
    letters = read_kafka_dead_letters(config, topic, args.limit if args.action == "list" else 10**9)
    if args.action == "list":
        for stored in letters:
            print(json.dumps(stored.as_json()) if args.json else _line(stored))
        print(f"{len(letters)} dead letters on {topic}", file=sys.stderr)
        return
    known = {stored.id: stored for stored in letters}
    if missing := [i for i in args.ids if i not in known]:
        raise InvalidRequest(f"no dead letters {missing[:5]} on {topic}")
    chosen = [known[i] for i in args.ids]
    if cut := [stored.id for stored in chosen if stored.cut]:
        raise InvalidRequest(f"dead letters {cut[:5]} were cut: their events are not whole")
    producer = Producer({**config, "acks": "all"})
    for stored in chosen:
        payload = dict(stored.letter.payload)
        producer.produce(
            source.kafka_topic, key=payload.get(b"key") or None, value=payload.get(b"value")
        )
    if producer.flush(30):
        raise StoreUnavailable(f"the replayed events were not acknowledged by Kafka ({topic})")
    print(f"replayed {len(chosen)} dead letters onto {source.kafka_topic}")


def _line(stored: StoredLetter) -> str:
    letter = stored.letter
    when = datetime.fromtimestamp(letter.time_us / 1e6, UTC).isoformat(timespec="seconds")
    payload = {
        name.decode("utf-8", "backslashreplace"): echo(value) for name, value in letter.payload
    }
    cut = f" (cut from {stored.size} B)" if stored.cut else ""
    return (
        f"{stored.id}  {when}  partition {letter.partition} entry {letter.receipt}  "
        f"[{letter.reason_class}] {letter.reason}  payload{cut} {payload}"
    )


COMMANDS = (
    Command(
        "dead-letters",
        "the events `featurewell stream` refused: list, replay onto the source, drop",
        _dead_letters,
        (RedisSettings,),
        _arguments,
    ),
)
