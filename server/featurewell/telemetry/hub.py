"""`Telemetry`: what the service hands each finished call to, and the loop that keeps the
scrape-independent parts (cache and breaker counts, freshness markers, drift windows) current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from importlib import metadata

import grpc

from featurewell.definitions import Registry
from featurewell.engine.calls import FeatureResult, WriteResult
from featurewell.errors import FeaturewellError
from featurewell.settings import TelemetrySettings
from featurewell.store.online import OnlineStore
from featurewell.telemetry import baseline
from featurewell.telemetry.consumers import Consumers, as_principal
from featurewell.telemetry.drift import DriftMonitor
from featurewell.telemetry.freshness import FreshnessMonitor
from featurewell.telemetry.metrics import ServerMetrics
from featurewell.telemetry.store_stats import StoreStats
from featurewell.telemetry.tracing import Tracing

log = logging.getLogger("featurewell.telemetry")
Metadata = Iterable[tuple[str, str | bytes]]
SYNC_INTERVAL_S = 1.0


class Telemetry:
    def __init__(
        self,
        settings: TelemetrySettings,
        store: OnlineStore,
        registry: Registry,
        tracing: Tracing | None = None,
        *,
        poll_timeout_s: float = 2.0,
    ) -> None:
        """`poll_timeout_s`: how long the freshness poll waits for Redis."""
        self.settings = settings
        self._poll_timeout_s = max(1.0, poll_timeout_s)
        self.store = store
        self.metrics = ServerMetrics()
        self.store_stats = StoreStats(store, self.metrics.registry)
        self.freshness = FreshnessMonitor(store, self.metrics.registry)
        self.drift = DriftMonitor(
            self.metrics.registry,
            sample_rate=settings.drift_sample_rate,
            reservoir_size=settings.drift_reservoir,
        )
        self.consumers = Consumers()
        self.tracing = tracing
        self._computed = baseline.load(settings.drift_baseline) if settings.drift_baseline else {}
        self.metrics.build_info.labels(_version()).set(1)
        self.use(registry)

    def use(self, registry: Registry) -> None:
        """Follow a (re)loaded registry: its views' SLAs and its features' baselines."""
        self.metrics.use(registry)
        self.freshness.use(registry)
        self.drift.use(baseline.for_registry(registry, self._computed))

    # -- calls: run a moment after the answer (service.AFTER_ANSWER_S), off the call's path.
    # `metadata` is the call's: the caller's trace context (None unless tracing is on; reads
    # always pass it, for the caller's name). --

    def read_done(
        self,
        result: FeatureResult,
        started_ns: int,
        ended_ns: int,
        metadata: Metadata | None,
        principal: str | None = None,
    ) -> None:
        self.metrics.record_read(result, (ended_ns - started_ns) / 1e9)
        self.drift.observe(result)
        self.consumers.observe(as_principal(metadata or (), principal), result)
        if self.tracing is not None:
            self.tracing.record(
                "GetFeatures",
                metadata or (),
                started_ns,
                ended_ns,
                0,
                timings=result.timings,
                attributes={
                    "featurewell.rows": result.rows,
                    "featurewell.features": len(result.columns),
                },
            )

    def write_done(
        self, result: WriteResult, started_ns: int, ended_ns: int, metadata: Metadata | None
    ) -> None:
        self.metrics.record_write(result, (ended_ns - started_ns) / 1e9)
        if self.tracing is not None:
            self.tracing.record(
                "WriteFeatures",
                metadata or (),
                started_ns,
                ended_ns,
                0,
                attributes={"featurewell.rows": result.written + result.skipped_older},
            )

    def call_done(
        self,
        method: str,
        code: grpc.StatusCode,
        started_ns: int,
        ended_ns: int,
        metadata: Metadata | None,
        error: str = "",
    ) -> None:
        """Any other answered call: errors (any method), ListFeatures."""
        self.metrics.record_call(method, code.name)
        if self.tracing is not None:
            self.tracing.record(
                method,
                metadata or (),
                started_ns,
                ended_ns,
                code.value[0],
                error=error,
            )

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync cache/breaker counts every second, read freshness markers every
        `freshness_interval_s`, compare drift every `drift_window_s`. Never raises: a failed
        step is logged and tried again next time."""
        next_freshness = next_drift = 0.0
        next_consumers = time.monotonic() + self.settings.consumers_flush_s
        while True:
            now = time.monotonic()
            self.store_stats.sync()
            if now >= next_consumers:
                next_consumers = now + self.settings.consumers_flush_s
                try:
                    await self.consumers.flush(self.store, timeout=5.0)
                except FeaturewellError as exc:
                    log.warning("cannot record consumers (kept for the next flush): %s", exc)
            if now >= next_freshness:
                next_freshness = now + self.settings.freshness_interval_s
                try:
                    await self.freshness.poll(timeout=self._poll_timeout_s)
                except FeaturewellError as exc:
                    log.warning("cannot read freshness markers: %s", exc)
            if now >= next_drift:
                if next_drift:
                    self.drift.evaluate()
                next_drift = now + self.settings.drift_window_s
            wake = min(next_freshness, next_drift, next_consumers, now + SYNC_INTERVAL_S)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    def close(self) -> None:
        if self.tracing is not None:
            with contextlib.suppress(Exception):  # exporting must never block shutdown
                self.tracing.shutdown()


def _version() -> str:
    try:
        return metadata.version("featurewell")
    except metadata.PackageNotFoundError:
        return "dev"
