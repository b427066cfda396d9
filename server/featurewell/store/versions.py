"""Promoted default versions in Redis: which version `view:feature` means on every server (the
`defaults` hash) and every promote and rollback (the `defaults_log` list, newest first).

Servers read them here (`promoted`, then `serve_defaults`); `featurewell promote` and
`rollback` decide what to record (lifecycle/defaults.py) and record it here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from featurewell.definitions import Registry
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
    """The promoted default version of every view that has one. An entry that is not a view
    name and a positive integer (written by hand, or by something else) is logged and
    ignored: it must not stop start-up or the promotion follower."""
    (reply,) = await _run(cluster, [encode_command(b"HGETALL", DEFAULTS_KEY)])
    pairs = iter(reply or [])
    out: dict[str, int] = {}
    for name, version in zip(pairs, pairs, strict=False):
        parsed = _entry(name, version)
        if parsed is not None:
            out[parsed[0]] = parsed[1]
    return out


def _entry(name: Any, version: Any) -> tuple[str, int] | None:
    try:
        view = name.decode()
        number = int(version)
        if number <= 0 or not view:
            raise ValueError("not a positive version")
    except (AttributeError, UnicodeDecodeError, ValueError) as exc:
        log.warning(
            "ignoring a bad promoted default version in Redis (%s): %.60r = %.60r; fix it with "
            "`featurewell promote`",
            exc.__class__.__name__,
            name,
            version,
        )
        return None
    return view, number


async def history(cluster: ClusterClient, view: str | None = None) -> list[Change]:
    """Promotes and rollbacks, newest first (of one view, or all); entries that do not parse
    are logged and skipped."""
    (reply,) = await _run(cluster, [encode_command(b"LRANGE", DEFAULTS_LOG_KEY, 0, -1)])
    changes: list[Change] = []
    for raw in reply or []:
        try:
            changes.append(Change(**json.loads(raw)))
        except (TypeError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError too
            log.warning("ignoring a bad entry of the default versions log: %.60r (%s)", raw, exc)
    return [c for c in changes if view is None or c.view == view]


async def record(cluster: ClusterClient, change: Change) -> Change:
    """Make `change.current` the default of `change.view` and log the change (the newest
    `_LOG_KEPT` are kept), in one round trip to the `{_meta}` node."""
    entry = json.dumps(dataclasses.asdict(change))
    await _run(
        cluster,
        [
            encode_command(b"HSET", DEFAULTS_KEY, change.view, change.current),
            encode_command(b"LPUSH", DEFAULTS_LOG_KEY, entry),
            encode_command(b"LTRIM", DEFAULTS_LOG_KEY, 0, _LOG_KEPT - 1),
        ],
    )
    return change


def serve_defaults(registry: Registry, overrides: Mapping[str, int]) -> Registry:
    """`registry` with the promoted defaults it can serve. A version this server's repo lacks
    (not deployed here yet) is logged and skipped: the view keeps its declared default here.
    Views this repo does not define at all are another repo's, and ignored."""
    for view, version in overrides.items():
        if view in registry.default_versions and (view, version) not in registry.views:
            log.warning(
                "promoted %s@v%d is not in this server's repo; serving its default", view, version
            )
    return registry.with_defaults(overrides)


async def _run(cluster: ClusterClient, commands: list[bytes]) -> list[Any]:
    replies = await cluster.execute(commands, [META_SLOT] * len(commands), 5.0)
    return list(replies.checked("cannot read or change default versions in Redis"))
