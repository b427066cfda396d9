"""`featurewell impact` and `featurewell unused`: who read a view version in the last N days and
how much, and which view versions nobody read. Both come from the per-day consumer counts every
server adds to Redis (store/consumers.py), so they see every replica's callers; the last call
comes from the all-time counts. Days are UTC days; the window is today and the N-1 before it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from featurewell.definitions import FeatureView, Registry, parse_view_ref
from featurewell.errors import ConfigError
from featurewell.store import consumers as stored
from featurewell.store.cluster import ClusterClient
from featurewell.store.keys import CONSUMER_DAYS_KEPT


@dataclass(frozen=True)
class Reader:
    caller: str
    view: str  # name@vN
    calls: int  # in the window
    last_seen: str  # ISO 8601 UTC of the last call ever recorded, "" if none


@dataclass(frozen=True)
class Impact:
    target: str
    days: int
    views: list[str]  # the view versions the target covers
    deprecations: dict[str, str]  # view version -> its notice, for the deprecated ones
    readers: list[Reader]

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.readers)


def window(days: int) -> list[str]:
    if not 1 <= days <= CONSUMER_DAYS_KEPT:
        raise ConfigError(
            f"--days must be 1-{CONSUMER_DAYS_KEPT}: servers keep per-day read counts for "
            f"{CONSUMER_DAYS_KEPT} days"
        )
    return stored.last_days(days)


def targets(registry: Registry, target: str) -> list[FeatureView]:
    """`view` (every version) or `view@vN` (that one)."""
    name, version = parse_view_ref(target)  # InvalidRequest says what a reference looks like
    registry.view(name, version)  # UnknownFeature names the known views and versions
    return [
        v for (n, ver), v in sorted(registry.views.items()) if n == name and version in (None, ver)
    ]


async def impact(cluster: ClusterClient, registry: Registry, target: str, days: int) -> Impact:
    views = targets(registry, target)
    refs = {view.ref for view in views}
    counts = await stored.read_days(cluster, window(days), timeout=5.0)
    totals = await stored.read(cluster, timeout=5.0)
    readers = [
        Reader(caller, view, calls, _iso(totals.get((caller, view), (0, 0))[1]))
        for (caller, view), calls in counts.items()
        if view in refs and calls > 0
    ]
    readers.sort(key=lambda r: (r.view, -r.calls, r.caller))
    notices = {v.ref: v.deprecated.notice(v.ref) for v in views if v.deprecated is not None}
    return Impact(target, days, sorted(refs), notices, readers)


async def unused(cluster: ClusterClient, registry: Registry, days: int) -> list[str]:
    """Every view version with no recorded read in the window, in name order."""
    counts = await stored.read_days(cluster, window(days), timeout=5.0)
    read = {view for (_, view), calls in counts.items() if calls > 0}
    return [view.ref for _, view in sorted(registry.views.items()) if view.ref not in read]


def render_impact(report: Impact) -> str:
    lines = []
    for view in report.views:
        readers = [r for r in report.readers if r.view == view]
        notice = report.deprecations.get(view)
        mark = f" (deprecated: {notice})" if notice else ""
        calls = sum(r.calls for r in readers)
        lines.append(
            f"{view}{mark}: {len(readers)} callers, {calls:,} calls in the last {report.days} days"
        )
        width = max((len(r.caller) for r in readers), default=0)
        lines += [
            f"  {r.caller:<{width}}  {r.calls:>10,} calls  last {r.last_seen or 'unknown'}"
            for r in readers
        ]
    return "\n".join(lines)


def render_unused(views: list[str], registry: Registry, days: int) -> str:
    if not views:
        return f"every view version was read in the last {days} days"
    lines = [f"{len(views)} view versions nobody read in the last {days} days:"]
    for ref in views:
        name, version = parse_view_ref(ref)
        view = registry.view(name, version)
        note = " (default)" if registry.default_versions[name] == version else ""
        if view.deprecated is not None:
            note += " (deprecated)"
        lines.append(f"  {ref}{note}")
    return "\n".join(lines)


def impact_json(report: Impact) -> str:
    return json.dumps({**asdict(report), "calls": report.calls}, indent=2)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat() if seconds else ""
