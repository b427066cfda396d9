"""Freshness of each view as Prometheus gauges: the newest event written (by any writer: every
write batch updates the view's marker in Redis), when the last write happened, and the SLA.

The alert (deploy/prometheus/rules.yml) compares `time() - newest event` with the SLA, so a
stopped writer pages even when nobody reads the view. The age of the values actually served is
the `featurewell_served_value_age_seconds` histogram, recorded per call.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Gauge

from featurewell.definitions import Registry
from featurewell.store.keys import freshness_key
from featurewell.store.online import OnlineStore


class FreshnessMonitor:
    def __init__(self, store: OnlineStore, registry: CollectorRegistry) -> None:
        self._store = store
        self._newest = Gauge(
            "featurewell_view_newest_event_timestamp_seconds",
            "Event time of the newest row written to the view (Unix seconds), by any writer.",
            ["view"],
            registry=registry,
            multiprocess_mode="max",
        )
        self._written = Gauge(
            "featurewell_view_last_write_timestamp_seconds",
            "When a row was last written to the view (Unix seconds), by any writer.",
            ["view"],
            registry=registry,
            multiprocess_mode="max",
        )
        self._sla = Gauge(
            "featurewell_view_freshness_sla_seconds",
            "The view's freshness SLA: its newest event must be younger than this.",
            ["view"],
            registry=registry,
            multiprocess_mode="max",
        )
        self._max_age = Gauge(
            "featurewell_view_max_age_seconds",
            "The view's max age: older values are served STALE.",
            ["view"],
            registry=registry,
            multiprocess_mode="max",
        )
        self._views: dict[str, bytes] = {}

    def use(self, registry: Registry) -> None:
        """Watch `registry`'s views (at start-up and after each reload)."""
        views = {view.ref: view for view in registry.views.values()}
        for gone in set(self._views) - set(views):
            for gauge in (self._newest, self._written, self._sla, self._max_age):
                with contextlib.suppress(KeyError):  # a view that never had this gauge set
                    gauge.remove(gone)
        self._views = {ref: freshness_key(view) for ref, view in views.items()}
        for ref, view in views.items():
            if view.sla is not None:
                self._sla.labels(ref).set(view.sla.total_seconds())
            if view.max_age is not None:
                self._max_age.labels(ref).set(view.max_age.total_seconds())

    async def poll(self, timeout: float) -> None:
        """Read every view's write marker (one node holds them all) into the gauges."""
        refs = list(self._views)
        if not refs:
            return
        markers = await self._store.write_markers([self._views[r] for r in refs], timeout)
        for ref, marker in zip(refs, markers, strict=True):
            if marker.newest_event_us:
                self._newest.labels(ref).set(marker.newest_event_us / 1e6)
            if marker.written_us:
                self._written.labels(ref).set(marker.written_us / 1e6)
