"""What a principal may read and write: the definitions' Access policies (definitions/_access.py)
applied to calls.

Fast on the hot path: a principal's grants (the views it may read and write, the features
hidden from it) are resolved once per principal and registry (a reload or a promote brings a
new registry and starts afresh), and each feature reference's verdict is memoised in them, so
checking a call is one dict lookup per reference.

With `auth_required` off nothing is enforced on reads, writes or ListFeatures, except that a
view the stream computes refuses WriteFeatures unless its own policy names the (verified)
caller: a pushed row would fight the stream's and corrupt its windows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from featurewell.definitions import FeatureRef, FeatureView, Registry
from featurewell.definitions._access import allows, names
from featurewell.errors import PermissionDenied, RequestError, Unauthenticated

MAX_PRINCIPALS = 10_000  # grants kept (then all are dropped and rebuilt as calls come)
MAX_REFS = 4_096  # memoised reference verdicts per principal


@dataclass
class Grants:
    """One principal's access under one registry."""

    principal: str
    readable: frozenset[tuple[str, int]]
    writable: frozenset[tuple[str, int]]
    hidden: dict[tuple[str, int], frozenset[str]]  # readable views' features it may not read
    verdicts: dict[str, str | None] = field(default_factory=dict)  # ref -> denial or None

    def can_read(self, view: FeatureView, feature: str) -> bool:
        key = (view.name, view.version)
        return key in self.readable and feature not in self.hidden.get(key, ())


def grants(registry: Registry, principal: str) -> Grants:
    teams = registry.teams
    readable, writable, hidden = set(), set(), {}
    for key, view in registry.views.items():
        access = registry.access(view)
        if allows(access.read, principal, teams):
            readable.add(key)
            closed = {
                name
                for name, entries in access.features.items()
                if not allows(entries, principal, teams)
            }
            if closed:
                hidden[key] = frozenset(closed)
        if view.events is not None:  # computed: only a pipeline principal named outright
            if view.access is not None and names(view.access.write, principal, teams):
                writable.add(key)
        elif allows(access.write, principal, teams):
            writable.add(key)
    return Grants(principal, frozenset(readable), frozenset(writable), hidden)


class Authoriser:
    def __init__(self, enforce: bool) -> None:
        self.enforce = enforce
        self._registry: Registry | None = None
        self._grants: dict[str, Grants] = {}

    def grants(self, registry: Registry, principal: str) -> Grants:
        if registry is not self._registry:  # reloaded or promoted: resolve again
            self._registry = registry
            self._grants = {}
        found = self._grants.get(principal)
        if found is None:
            if len(self._grants) >= MAX_PRINCIPALS:
                self._grants = {}
            found = self._grants[principal] = grants(registry, principal)
        return found

    def check_read(self, registry: Registry, principal: str | None, refs: Iterable[str]) -> None:
        """Raise PermissionDenied naming the principal and the first view it may not read."""
        if not self.enforce:
            return
        granted = self.grants(registry, _known(principal))
        verdicts = granted.verdicts
        for ref in refs:
            verdict = verdicts.get(ref, "")
            if verdict == "":
                verdict = _read_verdict(registry, granted, ref)
                if len(verdicts) < MAX_REFS:
                    verdicts[ref] = verdict
            if verdict is not None:
                raise PermissionDenied(verdict)

    def check_write(self, registry: Registry, principal: str | None, target: str) -> None:
        """Raise PermissionDenied when `principal` may not write view `target` ('view' or
        'view@v2'). Computed views are refused whether or not auth is enforced."""
        name, _, version = target.partition("@v")
        try:
            view = registry.view(name, int(version) if version else None)
        except (RequestError, ValueError):
            return  # unknown or malformed: the engine answers with what to fix
        key = (view.name, view.version)
        if principal is not None and key in self.grants(registry, principal).writable:
            return
        who = f"principal {principal!r}" if principal is not None else "an anonymous caller"
        if view.events is not None:
            raise PermissionDenied(
                f"view {view.ref!r} is computed by the stream from event source "
                f"{view.events.name!r}; WriteFeatures from {who} is refused. Append events to "
                "the source instead (featurewell append), or name the pipeline principal in "
                "the view's Access(write=[...])"
            )
        if self.enforce:
            raise PermissionDenied(
                f"{who} may not write view {view.ref!r}; its Access(write=...) must name it "
                "or one of its teams"
            )

    def readable(self, registry: Registry, principal: str | None) -> Grants | None:
        """What ListFeatures may show (None: everything)."""
        if not self.enforce:
            return None
        return self.grants(registry, _known(principal))


def _known(principal: str | None) -> str:
    """Fail closed: the interceptor refuses anonymous calls when policies are enforced, so one
    that gets here anyway is refused too, not let through."""
    if principal is None:
        raise Unauthenticated("this server requires authentication; no identity was verified")
    return principal


def _read_verdict(registry: Registry, granted: Grants, text: str) -> str | None:
    try:
        ref = FeatureRef.parse(text)
    except RequestError:
        return None  # malformed: the engine answers INVALID_ARGUMENT
    transform = registry.transform(ref.table)
    if transform is not None:
        for source in transform.inputs.values():
            denied = _read_verdict(registry, granted, source)
            if denied is not None:
                return f"{denied} (read by on-demand transform {transform.name!r})"
        return None
    try:
        view = registry.view(ref.table, ref.version)
    except RequestError:
        return None  # unknown: the engine answers NOT_FOUND
    who = f"principal {granted.principal!r}"
    if (view.name, view.version) not in granted.readable:
        return (
            f"{who} may not read view {view.ref!r}; its Access(read=...) must name it or one "
            "of its teams"
        )
    closed = granted.hidden.get((view.name, view.version), frozenset())
    wanted = set(view.feature_index) if ref.field == "*" else {ref.field}
    refused = sorted(closed & wanted)
    if refused:
        return (
            f"{who} may not read features {refused} of view {view.ref!r} (Access features=); "
            "ask for the others by name"
        )
    return None
