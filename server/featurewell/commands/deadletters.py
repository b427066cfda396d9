"""`featurewell dead-letters`: the events a stream refused (compute/deadletters.py), listed,
replayed onto their source after a fix, or dropped."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from featurewell.app import connected
from featurewell.commands._command import Command, event_source, registry_of, run
from featurewell.compute.deadletters import RedisDeadLetters, StoredLetter
from featurewell.engine.validation import echo
from featurewell.errors import ConfigError
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


def _dead_letters(settings: Settings, args: argparse.Namespace) -> None:
    registry = registry_of(settings)
    source = event_source(registry, args.source)
    if args.action == "drop" and not args.ids and not args.all:
        raise ConfigError("featurewell dead-letters drop: pass --ids ID... or --all")
    if args.limit <= 0:
        raise ConfigError(f"--limit must be positive, got {args.limit}")

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
