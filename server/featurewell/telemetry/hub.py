"""`Telemetry`: what the service hands each finished call to, and the loop that keeps the
scrape-independent parts (cache and breaker counts, freshness markers, drift windows) current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata

import grpc

from featurewell.definitions import Registry
from featurewell.engine.calls import FeatureResult, InputColumn, WriteRequest, WriteResult
from featurewell.errors import ConfigError, FeaturewellError
from featurewell.offline.store import OfflineStore
from featurewell.settings import OfflineSettings, TelemetrySettings
from featurewell.settings_groups import rate_list
from featurewell.store.online import OnlineStore
from featurewell.telemetry import baseline
from featurewell.telemetry.alike import AlikeCalls
from featurewell.telemetry.consumers import (
    CALLER_HEADER,
    Consumers,
    as_principal,
    caller_header,
    caller_name,
)
from featurewell.telemetry.drift import DriftMonitor
from featurewell.telemetry.freshness import FreshnessMonitor
from featurewell.telemetry.metrics import ServerMetrics
from featurewell.telemetry.served_log import LoggedCall, Sampler, ServedLog
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
        offline: OfflineSettings | None = None,
    ) -> None:
        """`poll_timeout_s`: how long the freshness poll waits for Redis. `offline`: where the
        served-feature log and pushed rows' history go (telemetry/served_log.py)."""
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
        self.alike = AlikeCalls()  # kept answers' calls, recorded at the next flush
        self.tracing = tracing
        self._computed = baseline.load(settings.drift_baseline) if settings.drift_baseline else {}
        self.metrics.build_info.labels(_version()).set(1)
        self.served_log = _served_log(settings, offline, self.metrics)
        self._write_history = offline is not None and offline.write_history
        self._registry = registry
        self._gc_pauses: Callable[[], Iterable[tuple[int, str, float]]] | None = None
        self.use(registry)

    def watch_gc(self, pauses: Callable[[], Iterable[tuple[int, str, float]]]) -> None:
        """Record the collector's passes, taken from `pauses` (serving/gc_pacing.py's `drain`:
        (generation, trigger, seconds) since the last call) every second."""
        self._gc_pauses = pauses

    def use(self, registry: Registry) -> None:
        """Follow a (re)loaded registry: its views' SLAs and its features' baselines."""
        self.metrics.use(registry)
        self.freshness.use(registry)
        self.drift.use(baseline.for_registry(registry, self._computed))
        self._registry = registry

    # -- the served-feature log: the handler asks, the record follows the answer --

    def sample(
        self, metadata: Metadata, result: FeatureResult
    ) -> tuple[str, float, str, int] | None:
        """For a GetFeatures call about to answer `result`: (request id, its fraction, caller,
        logged at µs) when some of its views or transforms are logged, else None (no id)."""
        served_log = self.served_log
        if served_log is None or not served_log.sampler.on:
            return None
        header = caller_header(metadata, None)
        caller = "" if header is None else caller_name(header)  # "(invalid)" for a hostile one
        widest = served_log.sampler.widest(caller)
        if widest <= 0:
            return None
        fraction = served_log.sampler.fraction()
        if fraction >= widest or not served_log.logs_any(result, fraction, caller):
            return None
        return served_log.sampler.request_id(fraction), fraction, caller, time.time_ns() // 1000

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
        logged: tuple[tuple[str, float, str, int], Mapping[str, InputColumn]] | None = None,
    ) -> None:
        """`logged`: the call's sample (from `sample`) and entity columns when it is logged."""
        if logged is not None and self.served_log is not None:
            (request_id, fraction, caller, at_us), entities = logged
            self.served_log.record(
                LoggedCall(request_id, fraction, at_us, caller, principal or "", entities, result)
            )
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

    def read_alike(
        self,
        result: FeatureResult,
        seconds: float,
        metadata: Metadata,
        principal: str | None,
    ) -> bool:
        """A call answered with a kept answer's `result` (one object for all its calls),
        neither traced nor logged: its time now, the rest with its group's (telemetry/alike.py).
        Cheap enough to run before the answer goes out. True when a batch of groups waits:
        queue `record_alike` after the answer."""
        self.metrics.record_read_time(result.rows, seconds)
        caller = caller_header(metadata, principal)
        return self.alike.add(result, caller, principal, time.time_ns() // 1000)

    def record_alike(self) -> None:
        """Record the groups of calls answered alike (their metrics pending until `flush`)."""
        for group in self.alike.drain():
            result, calls = group.result, group.calls
            # Each part on its own, as for a call's own telemetry: one failing (logged) leaves
            # the others their counts.
            try:
                self.metrics.record_served(result, calls, group.at_us)
            except Exception:
                log.exception("metrics of %d answered calls failed", calls)
            try:
                self.drift.observe(result, calls)
            except Exception:
                log.exception("drift samples of %d answered calls failed", calls)
            try:
                metadata = () if group.caller is None else ((CALLER_HEADER, group.caller),)
                self.consumers.observe(as_principal(metadata, group.principal), result, calls)
            except Exception:
                log.exception("lineage of %d answered calls failed", calls)

    def flush(self) -> None:
        """Record the groups of calls answered alike, then export what the calls recorded
        since the last flush (the servicer flushes after each batch of calls it records; the
        loop below every second, whatever else happens)."""
        self.record_alike()
        self.metrics.flush()

    def write_done(
        self,
        result: WriteResult,
        started_ns: int,
        ended_ns: int,
        metadata: Metadata | None,
        pushed: tuple[WriteRequest, int] | None = None,
    ) -> None:
        """`pushed`: the write's rows and when they were written, for the offline history."""
        if pushed is not None and self._write_history and self.served_log is not None:
            name, _, version = result.view.rpartition("@v")
            try:
                view = self._registry.view(name, int(version))
            except FeaturewellError:  # a reload took the version away since the write
                log.warning("%s rows not added to the offline history: no longer defined", name)
            else:
                self.served_log.record_write(view, pushed[0], pushed[1])
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
        """Sync cache/breaker counts and GC pauses every second, read freshness markers every
        `freshness_interval_s`, compare drift every `drift_window_s`. Never raises: a failed
        step is logged and tried again next time."""
        next_freshness = next_drift = 0.0
        next_consumers = time.monotonic() + self.settings.consumers_flush_s
        while True:
            now = time.monotonic()
            self.flush()
            self.store_stats.sync()
            self._record_gc()
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

    def _record_gc(self) -> None:
        if self._gc_pauses is None:
            return
        histogram = self.metrics.gc_pause_seconds
        for generation, trigger, seconds in self._gc_pauses():
            histogram.labels(str(generation), trigger).observe(seconds)

    def close(self) -> None:
        self.flush()
        self._record_gc()
        if self.served_log is not None:
            self.served_log.close()
        if self.tracing is not None:
            with contextlib.suppress(Exception):  # exporting must never block shutdown
                self.tracing.shutdown()


def _served_log(
    settings: TelemetrySettings, offline: OfflineSettings | None, metrics: ServerMetrics
) -> ServedLog | None:
    """The served-log writer when anything is to be logged or pushed rows recorded."""
    callers = rate_list(settings.served_log_callers, "served_log_callers")
    views = rate_list(settings.served_log_views, "served_log_views")
    sampler = Sampler(settings.served_log_rate, callers, views)
    logging_on = sampler.on
    directory = offline.dir if offline is not None else ""
    if logging_on and not directory:
        raise ConfigError(
            "served_log_rate (or a served_log_callers/views rate) is above 0 but offline_dir is "
            "empty: the served-feature log is written to the offline store; set offline_dir"
        )
    if not directory or not (logging_on or (offline is not None and offline.write_history)):
        return None
    assert offline is not None
    return ServedLog(
        OfflineStore(directory, offline.format),
        sampler,
        metrics.registry,
        queue_rows=settings.served_log_queue_rows,
        flush_s=settings.served_log_flush_s,
        batch_rows=settings.served_log_batch_rows,
        nice=settings.served_log_nice,
    )


def _version() -> str:
    try:
        return metadata.version("featurewell")
    except metadata.PackageNotFoundError:
        return "dev"
