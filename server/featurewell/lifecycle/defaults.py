"""Which version of a view `view:feature` means: the highest defined, unless `featurewell
promote` chose another. The choice lives in Redis (store/versions.py), so every server (every
replica, every worker) follows it within `versions_poll_s`, without a restart; calls pinned to a
version (`view@v1:feature`) never move.

This module holds the rules: what may be promoted, and what a rollback goes back to.
"""

from __future__ import annotations

import time

from featurewell.definitions import Registry
from featurewell.errors import UnknownFeature
from featurewell.store.cluster import ClusterClient
from featurewell.store.versions import Change, history, promoted, record

# Kept in the store (servers read them there); the lifecycle commands use them through here.
__all__ = ["Change", "history", "promote", "promoted", "rollback"]


async def promote(cluster: ClusterClient, registry: Registry, view: str, version: int) -> Change:
    """Make `version` what `view:feature` reads, on every server."""
    registry.view(view, version)  # UnknownFeature, naming the versions there are
    previous = registry.with_defaults(await promoted(cluster)).default_versions[view]
    return await record(cluster, Change(view, previous, version, _now_us(), "promote"))


async def rollback(cluster: ClusterClient, registry: Registry, view: str) -> Change:
    """Go back to the default `view` had before its last promote."""
    registry.view(view)
    last = next((c for c in await history(cluster, view) if c.action == "promote"), None)
    if last is None:
        raise UnknownFeature(f"{view!r} was never promoted: nothing to roll back")
    current = registry.with_defaults(await promoted(cluster)).default_versions[view]
    registry.view(view, last.previous)
    return await record(cluster, Change(view, current, last.previous, _now_us(), "rollback"))


def _now_us() -> int:
    return time.time_ns() // 1000
