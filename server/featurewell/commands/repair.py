"""`featurewell repair`: delete rows poisoned by a future event time (lifecycle/repair.py)."""

from __future__ import annotations

import argparse

from featurewell.app import connected
from featurewell.commands._command import Command, registry_of, run
from featurewell.errors import ConfigError
from featurewell.lifecycle.repair import Repair, render, repair_view
from featurewell.settings import RedisSettings, Settings


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--view", required=True, help="the feature view's name")
    parser.add_argument("--version", type=int, help="the view's version (default: its default)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--entity",
        action="append",
        metavar="KEY=VALUE",
        help="an entity key value to repair (repeat: several entities, or each key of a "
        "composite entity)",
    )
    which.add_argument(
        "--all-future",
        action="store_true",
        help="scan the whole view (SCAN on every master) for rows beyond now + skew",
    )
    parser.add_argument("--dry-run", action="store_true", help="report, delete nothing")


def _repair(settings: Settings, args: argparse.Namespace) -> None:
    registry = registry_of(settings)
    view = registry.view(args.view, args.version)
    entities = None if args.all_future else _entities(args.entity)

    async def go() -> Repair:
        async with connected(settings.redis) as store:
            return await repair_view(
                store.cluster,
                view,
                entities,
                settings.serving.max_future_skew_s,
                dry_run=args.dry_run,
            )

    print(render(run(go())))


def _entities(items: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--entity takes KEY=VALUE, got {item!r}")
        found.setdefault(key, []).append(value)
    return found


COMMANDS = (
    Command(
        "repair",
        "delete rows whose stored event time is in the future (they shadow every later write)",
        _repair,
        (RedisSettings,),
        _arguments,
    ),
)
