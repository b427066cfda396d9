"""Which version of a view `view:feature` means: the highest defined, unless `featurewell
promote` chose another. The choice lives in Redis, so every server (every replica, every worker)
follows it within `versions_poll_s`, without a restart; calls pinned to a version
(`view@v1:feature`) never move. The choice is the `defaults` hash, every change the
`defaults_log` list (store/keys.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from featurewell.definitions import Registry
from featurewell.errors import StoreUnavailable, UnknownFeature
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import encode_command
from featurewell.store.keys import DEFAULTS_KEY, DEFAULTS_LOG_KEY, META_SLOT

_LOG_KEPT = 1000
log = logging.getLogger("featurewell.versions")


@dataclass(frozen=True)
class Change:
    view: str
    previous: int
    current: int
    at_us: int
    action: str  # "promote" or "rollback"


async def promoted(cluster: ClusterClient) -> dict[str, int]:
    """The promoted default version of every view that has one."""
    (reply,) = await _run(cluster, [encode_command(b"HGETALL", DEFAULTS_KEY)])
    pairs = iter(reply or [])
    return {name.decode(): int(version) for name, version in zip(pairs, pairs, strict=True)}


async def history(cluster: ClusterClient, view: str | None = None) -> list[Change]:
    """Promotes and rollbacks, newest first (of one view, or all)."""
    (reply,) = await _run(cluster, [encode_command(b"LRANGE", DEFAULTS_LOG_KEY, 0, -1)])
    changes = [Change(**json.loads(raw)) for raw in reply or []]
    return [c for c in changes if view is None or c.view == view]


async def promote(cluster: ClusterClient, registry: Registry, view: str, version: int) -> Change:
    """Make `version` what `view:feature` reads, on every server."""
    registry.view(view, version)  # UnknownFeature, naming the versions there are
    previous = registry.with_defaults(await promoted(cluster)).default_versions[view]
    return await _record(cluster, Change(view, previous, version, _now_us(), "promote"))


async def rollback(cluster: ClusterClient, registry: Registry, view: str) -> Change:
    """Go back to the default `view` had before its last promote."""
    registry.view(view)
    last = next((c for c in await history(cluster, view) if c.action == "promote"), None)
    if last is None:
        raise UnknownFeature(f"{view!r} was never promoted: nothing to roll back")
    current = registry.with_defaults(await promoted(cluster)).default_versions[view]
    registry.view(view, last.previous)
    return await _record(cluster, Change(view, current, last.previous, _now_us(), "rollback"))


def serve_defaults(registry: Registry, overrides: Mapping[str, int]) -> Registry:
    """`registry` with the promoted defaults it can serve. A version this server's repo lacks
    (not deployed here yet) is logged and skipped: the view keeps its declared default here.
    Views this repo does not define at all are another repo's, and ignored."""
    for view, version in overrides.items():
        if view in registry.default_versions and (view, version) not in registry.views:
            log.warning("promoted %s@v%d is not in this server's repo; serving its default",
                        view, version)  # fmt: skip
    return registry.with_defaults(overrides)


async def _record(cluster: ClusterClient, change: Change) -> Change:
    entry = json.dumps(dataclasses.asdict(change))
    await _run(cluster, [
        encode_command(b"HSET", DEFAULTS_KEY, change.view, change.current),
        encode_command(b"LPUSH", DEFAULTS_LOG_KEY, entry),
        encode_command(b"LTRIM", DEFAULTS_LOG_KEY, 0, _LOG_KEPT - 1),
    ])  # fmt: skip
    return change


async def _run(cluster: ClusterClient, commands: list[bytes]) -> list[Any]:
    replies, errors, failures, _ = await cluster.execute(commands, [META_SLOT] * len(commands), 5.0)
    if failures or errors:
        problem = failures[0].detail if failures else replies[errors[0]]
        raise StoreUnavailable(f"cannot read or change default versions in Redis: {problem}")
    return list(replies)


def _now_us() -> int:
    return time.time_ns() // 1000
