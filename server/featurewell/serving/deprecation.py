"""Reads of deprecated view versions: the notices a call's trailing metadata carries
(`x-featurewell-deprecated: view@v1 -> view@v2 on 2027-01-31`, one value per version read) and
the per-view counter. A call reading no deprecated version costs one attribute test per view
served."""

from __future__ import annotations

from prometheus_client import Counter

from featurewell.definitions import Registry
from featurewell.engine.calls import FeatureResult

DEPRECATED_HEADER = "x-featurewell-deprecated"


class DeprecationNotices:
    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._registry: Registry | None = None

    def notices(self, registry: Registry, result: FeatureResult) -> list[tuple[str, str]]:
        """The trailing metadata for `result` (empty for most calls), counting each read."""
        if registry is not self._registry:  # start-up or a reload: series start at 0
            self._registry = registry
            for view in registry.views.values():
                if view.deprecated is not None:
                    self._counter.labels(view.ref)
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for served in result.served:
            view = served.view
            if view.deprecated is None or view.ref in seen:
                continue
            seen.add(view.ref)
            self._counter.labels(view.ref).inc()
            out.append((DEPRECATED_HEADER, view.deprecated.notice(view.ref)))
        return out
