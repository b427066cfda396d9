"""`featurewell promote`, `rollback`, `versions`, `lineage` and `validate` (argument parsing is
the CLI's)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import uvloop

from featurewell.definitions import Registry, load_repo
from featurewell.engine.engine import FeatureEngine
from featurewell.lifecycle import defaults
from featurewell.lifecycle import validate as validation
from featurewell.lifecycle.lineage import as_json, describe, render
from featurewell.serving.server import open_store
from featurewell.settings import Settings
from featurewell.store.cluster import ClusterClient
from featurewell.store.online import OnlineStore
from featurewell.telemetry import consumers


def promote(settings: Settings, args: argparse.Namespace) -> None:
    change = _with_cluster(
        settings, lambda cluster, registry: defaults.promote(
            cluster, registry, args.view, args.version)
    )  # fmt: skip
    print(f"{change.view}: default version {change.previous} -> {change.current}; servers follow "
          f"within {settings.versions_poll_s:g} s (calls pinned with @vN keep theirs)")  # fmt: skip


def rollback(settings: Settings, args: argparse.Namespace) -> None:
    change = _with_cluster(
        settings, lambda cluster, registry: defaults.rollback(cluster, registry, args.view)
    )
    print(f"{change.view}: rolled back, default version {change.previous} -> {change.current}")


def versions(settings: Settings, args: argparse.Namespace) -> None:
    async def read(
        cluster: ClusterClient, registry: Registry
    ) -> tuple[Registry, dict[str, int], list[defaults.Change]]:
        return registry, await defaults.promoted(cluster), await defaults.history(cluster)

    registry, chosen, changes = _with_cluster(settings, read)
    serving = registry.with_defaults(chosen)
    for name in sorted(registry.default_versions):
        defined = sorted(v for n, v in registry.views if n == name)
        how = "promoted" if name in chosen else "highest"
        print(f"{name}: versions {defined}, default v{serving.default_versions[name]} ({how})")
        for change in (c for c in changes if c.view == name):
            at = datetime.fromtimestamp(change.at_us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
            print(f"  {at} UTC {change.action} v{change.previous} -> v{change.current}")


def lineage(settings: Settings, args: argparse.Namespace) -> None:
    async def read(
        cluster: ClusterClient, registry: Registry
    ) -> tuple[Registry, dict[str, int], list[consumers.Consumer]]:
        return registry, await defaults.promoted(cluster), await consumers.read(cluster)

    described = describe(*_with_cluster(settings, read))
    print(as_json(described) if args.json else render(described))


def validate(settings: Settings, args: argparse.Namespace) -> None:
    """Exit 1 when a feature's PSI passes --fail-above, or the new version has rows for 5
    points fewer of the sampled entities than the old one."""

    async def run(store: OnlineStore, registry: Registry) -> validation.Validation:
        old = registry.view(args.view, getattr(args, "from"))
        new = registry.view(args.view, args.to)
        engine = FeatureEngine(registry, store, settings)
        entities = await validation.sample_entities(engine, new, args.sample)
        return await validation.validate(engine, old, new, entities)

    report = _with_store(settings, run)
    print(validation.render(report))
    if report.worst_psi() > args.fail_above or report.present_new < report.present_old - 0.05:
        print(f"NOT READY to promote {report.new}: PSI above {args.fail_above} or rows missing")
        raise SystemExit(1)
    print(f"ready to promote: featurewell promote --view {args.view} --version {args.to}")


T = TypeVar("T")


def _with_cluster(
    settings: Settings, action: Callable[[ClusterClient, Registry], Awaitable[T]]
) -> T:
    return _with_store(settings, lambda store, registry: action(store.cluster, registry))


def _with_store(settings: Settings, action: Callable[[OnlineStore, Registry], Awaitable[T]]) -> T:
    """Load the repo, connect to Redis, run `action`, disconnect."""
    registry = load_repo(settings.required_repo())

    async def run() -> T:
        store = await open_store(settings.with_changes(cache_entries=0))
        try:
            return await action(store, registry)
        finally:
            await store.close()

    return uvloop.run(run())
