"""Versions and audits: promote, rollback, versions, lineage, validate."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from featurewell.app import connected
from featurewell.commands._command import Command, number, registry_of, run
from featurewell.commands.progress import Progress
from featurewell.definitions import Registry
from featurewell.engine.engine import FeatureEngine
from featurewell.lifecycle import defaults
from featurewell.lifecycle import validate as validation
from featurewell.lifecycle.lineage import as_json, describe, render
from featurewell.offline import versions as offline_versions
from featurewell.settings import RedisSettings, Settings
from featurewell.store.online import OnlineStore
from featurewell.telemetry import consumers

T = TypeVar("T")


def _with_store(settings: Settings, action: Callable[[OnlineStore, Registry], Awaitable[T]]) -> T:
    """Load the repo, connect to Redis, run `action`, disconnect."""
    registry = registry_of(settings)

    async def go() -> T:
        async with connected(settings.redis) as store:
            return await action(store, registry)

    return run(go())


def _view_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--view", required=True, help="the feature view's name")


def _promote_arguments(parser: argparse.ArgumentParser) -> None:
    _view_argument(parser)
    parser.add_argument("--version", type=int, required=True)


def _promote(settings: Settings, args: argparse.Namespace) -> None:
    change = _with_store(
        settings,
        lambda store, registry: defaults.promote(store.cluster, registry, args.view, args.version),
    )
    print(
        f"{change.view}: default version {change.previous} -> {change.current}; servers follow "
        f"within {settings.serving.versions_poll_s:g} s (calls pinned with @vN keep theirs)"
    )


def _rollback(settings: Settings, args: argparse.Namespace) -> None:
    change = _with_store(
        settings, lambda store, registry: defaults.rollback(store.cluster, registry, args.view)
    )
    print(f"{change.view}: rolled back, default version {change.previous} -> {change.current}")


def _versions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--export",
        metavar="FILE",
        help="also write the promoted defaults to FILE (JSON), for `featurewell training-set "
        "--defaults FILE` away from the cluster",
    )


def _versions(settings: Settings, args: argparse.Namespace) -> None:
    async def read(
        store: OnlineStore, registry: Registry
    ) -> tuple[Registry, dict[str, int], list[defaults.Change]]:
        return (
            registry,
            await defaults.promoted(store.cluster),
            await defaults.history(store.cluster),
        )

    registry, chosen, changes = _with_store(settings, read)
    serving = registry.with_defaults(chosen)
    for name in sorted(registry.default_versions):
        defined = sorted(v for n, v in registry.views if n == name)
        how = "promoted" if name in chosen else "highest"
        print(f"{name}: versions {defined}, default v{serving.default_versions[name]} ({how})")
        for change in (c for c in changes if c.view == name):
            at = datetime.fromtimestamp(change.at_us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
            print(f"  {at} UTC {change.action} v{change.previous} -> v{change.current}")
    if args.export:
        seeds = ",".join(f"{host}:{port}" for host, port in settings.redis.seeds)
        offline_versions.export(args.export, chosen, f"the cluster at {seeds}")
        print(
            f"wrote {len(chosen)} promoted defaults to {args.export}; train on what servers "
            f"serve with `featurewell training-set --defaults {args.export}`"
        )


def _lineage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable, for audits")


def _lineage(settings: Settings, args: argparse.Namespace) -> None:
    async def read(
        store: OnlineStore, registry: Registry
    ) -> tuple[Registry, dict[str, int], list[consumers.Consumer]]:
        return registry, await defaults.promoted(store.cluster), await consumers.read(store.cluster)

    described = describe(*_with_store(settings, read))
    print(as_json(described) if args.json else render(described))


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    _view_argument(parser)
    parser.add_argument("--from", type=int, required=True, help="the version serving now")
    parser.add_argument("--to", type=int, required=True, help="the version to promote")
    parser.add_argument("--sample", type=int, default=1000, help="entities to compare")
    parser.add_argument("--fail-above", type=number(), default=0.25, help="largest PSI allowed")


def _validate(settings: Settings, args: argparse.Namespace) -> None:
    """Exit 1 when a feature's PSI passes --fail-above, or the new version has rows for 5
    points fewer of the sampled entities than the old one."""
    old_version, new_version = getattr(args, "from"), args.to

    async def compare(store: OnlineStore, registry: Registry) -> validation.Validation:
        old = registry.view(args.view, old_version)
        new = registry.view(args.view, new_version)
        engine = FeatureEngine(registry, store)
        entities = await validation.sample_entities(engine, new, args.sample)
        return await validation.validate(
            engine, old, new, entities, lambda done, total: progress.update(args.view, done, total)
        )

    with Progress("validate") as progress:
        report = _with_store(settings, compare)
    print(validation.render(report))
    if report.worst_psi() > args.fail_above or report.present_new < report.present_old - 0.05:
        print(f"NOT READY to promote {report.new}: PSI above {args.fail_above} or rows missing")
        raise SystemExit(1)
    print(f"ready to promote: featurewell promote --view {args.view} --version {new_version}")


COMMANDS = (
    Command(
        "promote",
        "make VERSION the default of VIEW on every server, live",
        _promote,
        (RedisSettings,),
        _promote_arguments,
    ),
    Command(
        "rollback",
        "restore VIEW's default from before its last promote",
        _rollback,
        (RedisSettings,),
        _view_argument,
    ),
    Command(
        "versions",
        "every view's versions, default and promote history",
        _versions,
        (RedisSettings,),
        _versions_arguments,
    ),
    Command(
        "lineage",
        "every view: source, definition, default, transforms, callers",
        _lineage,
        (RedisSettings,),
        _lineage_arguments,
    ),
    Command(
        "validate",
        "compare a new version's served values with the current one's",
        _validate,
        (RedisSettings,),
        _validate_arguments,
    ),
)
