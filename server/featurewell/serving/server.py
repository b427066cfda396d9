"""Start, run and stop the gRPC server (FeatureService + health + reflection)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from featurewell.definitions import Registry, load_repo, repo_fingerprint
from featurewell.engine.engine import FeatureEngine
from featurewell.engine.plan import Planner
from featurewell.errors import ConfigError, FeaturewellError, StoreError, StoreUnreachable
from featurewell.serving import transport
from featurewell.serving.authz import Authoriser
from featurewell.serving.gc_pacing import GcPacer, older_thresholds, trim_heap
from featurewell.serving.grpc_options import demote_grpc_threads
from featurewell.serving.service import AFTER_ANSWER_S, FeatureService
from featurewell.serving.startup import (
    Gate,
    gated,
    not_yet,
    promoted_or_none,
    serve_when_connected,
)
from featurewell.settings import Settings
from featurewell.store import versions
from featurewell.store.cluster import LOG_EVERY_S
from featurewell.store.online import OnlineStore
from featurewell.telemetry import exposition
from featurewell.telemetry.hub import Telemetry
from featurewell.telemetry.tracing import Tracing
from featurewell.v1 import feature_service_pb2 as pb

log = logging.getLogger("featurewell.server")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FeatureService"].full_name


@dataclass
class Server:
    """A started server. `port` is the bound port (useful with port 0)."""

    settings: Settings
    port: int
    service: FeatureService
    store: OnlineStore
    grpc_server: grpc.aio.Server
    health: health_aio.HealthServicer
    metrics_port: int | None  # None: /metrics is off
    telemetry: Telemetry
    telemetry_task: asyncio.Task[None] | None  # None until the store has connected
    gate: Gate = field(default_factory=lambda: Gate(None))
    reloads: int = 0
    reloads_failed: int = 0
    promoted: dict[str, int] = field(default_factory=dict)  # as last read from Redis
    versions_task: asyncio.Task[None] | None = None
    connecting_task: asyncio.Task[None] | None = None
    demote_task: asyncio.Task[None] | None = None  # with grpc_threads_nice
    gc_pacer: GcPacer | None = None
    stopping: bool = False

    @classmethod
    async def start(
        cls,
        settings: Settings,
        store: OnlineStore,
        registry: Registry,
        tracing: Tracing | None = None,
        *,
        unreachable: StoreUnreachable | None = None,
    ) -> Server:
        """Listen and serve `registry` from `store`, which the server then owns: it closes it
        when it stops, or here if starting fails. `tracing` replaces the one the settings
        describe (tests pass in-memory exporters). `featurewell.app.start_server` opens the
        store and loads the repo from the settings. With `unreachable` (the store has not
        connected: no node answered), the server listens NOT_SERVING, answers UNAVAILABLE and
        connects in the background (`startup.serve_when_connected`)."""
        telemetry: Telemetry | None = None
        gate = Gate(None if unreachable is None else not_yet(unreachable))
        overrides: dict[str, int] = {}
        try:
            if unreachable is None:
                overrides = await promoted_or_none(store)
            if overrides:
                registry = versions.serve_defaults(registry, overrides)
            grpc_server, authenticating = transport.grpc_server(settings)
            tracing = tracing if tracing is not None else Tracing.from_settings(settings.telemetry)
            telemetry = Telemetry(
                settings.telemetry,
                store,
                registry,
                tracing,
                poll_timeout_s=settings.redis.connect_timeout_s,
                offline=settings.offline,
            )
            if authenticating is not None:
                authenticating.on_refused = _counted(telemetry)
            engine = FeatureEngine(registry, store, settings.serving, settings.cache)
            service = FeatureService(
                engine, settings.serving, telemetry, Authoriser(enforce=settings.auth.required)
            )
            add_feature_service(service, grpc_server, gate if unreachable is not None else None)
            health = health_aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health, grpc_server)
            reflection.enable_server_reflection(
                [
                    SERVICE_NAME,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ],
                grpc_server,
            )
            port = transport.listen(grpc_server, settings)
            await grpc_server.start()
            demote_grpc_threads(settings.serving.grpc_threads_nice)
            metrics_port = _serve_metrics(telemetry, settings)
        except BaseException:
            if telemetry is not None:
                telemetry.close()
            await store.close()
            raise
        ready = unreachable is None
        telemetry_task = asyncio.get_running_loop().create_task(telemetry.run()) if ready else None
        # Waiting for Redis, the service is NOT_SERVING (not ready: readiness probes, load
        # balancers) but the server as a whole ("") is alive: Kubernetes' startup and liveness
        # probes check "", and failing them would restart the pod, the crash loop this avoids.
        await health.set("", SERVING)
        await health.set(SERVICE_NAME, SERVING if ready else NOT_SERVING)
        # Start-up objects (registry, stubs, plans) never die: keep them out of every future
        # collection, or a full GC pass over them stalls calls for tens of milliseconds.
        gc.collect()
        gc.freeze()
        trim_heap()  # now, not in the first calls: gc_pacing.trim_heap
        # A ranking call allocates a few thousand short-lived objects; the default gen-0
        # threshold (700) would collect several times per call. Collect young objects less often
        # automatically, and in small passes when no call is in a handler (gc_pacing.py).
        gc.set_threshold(settings.serving.gc_gen0_threshold, *older_thresholds(settings.serving))
        # The loop's wait for the GIL held by another of our threads: docs/performance.md.
        sys.setswitchinterval(settings.serving.gil_switch_interval_ms / 1000)
        calls = service.calls
        pacer = GcPacer(
            settings.serving.gc_pace_objects, lambda: calls.in_flight > 0, AFTER_ANSWER_S
        )
        calls.on_idle = pacer.idle
        telemetry.watch_gc(pacer.drain)
        server = cls(
            settings,
            port,
            service,
            store,
            grpc_server,
            health,
            metrics_port,
            telemetry,
            telemetry_task,
            gate,
            promoted=overrides,
            gc_pacer=pacer,
        )
        if settings.serving.grpc_threads_nice > 0:
            server.demote_task = asyncio.get_running_loop().create_task(
                _keep_grpc_threads_demoted(settings.serving.grpc_threads_nice)
            )
        if unreachable is not None:
            server.connecting_task = asyncio.get_running_loop().create_task(
                serve_when_connected(server, unreachable)
            )
        else:
            server.versions_task = asyncio.get_running_loop().create_task(
                server.follow_promotions(settings.serving.versions_poll_s)
            )
        return server

    @property
    def ready(self) -> bool:
        """Whether the store has connected (health SERVING unless stopping)."""
        return self.gate.waiting is None

    async def follow_promotions(self, interval: float) -> None:
        """Serve the default versions `featurewell promote` and `rollback` set, read from Redis
        every `interval` seconds: the next call plans with them, calls in flight finish as
        they started, and calls pinned to a version (`view@v1:x`) never move."""
        logged_at = -LOG_EVERY_S
        while True:
            await asyncio.sleep(interval)
            try:
                overrides = await versions.promoted(self.store.cluster)
            except StoreError as exc:  # logged at most every LOG_EVERY_S through an outage
                if time.monotonic() - logged_at >= LOG_EVERY_S:
                    logged_at = time.monotonic()
                    log.warning("cannot read promoted versions (keeping the current ones): %s", exc)
                continue
            if overrides != self.promoted:
                engine = self.service.engine
                self.promoted = overrides
                self._serve(engine.prepare(versions.serve_defaults(engine.registry, overrides)))
                log.info("default versions now %s", engine.registry.default_versions)

    def _serve(self, planner: Planner) -> None:
        self.service.engine.use(planner)
        self.telemetry.use(planner.registry)

    async def reload(self) -> bool:
        """Load the feature repo again and serve it from the next call on, atomically. A repo
        that fails to load is logged and the current one kept. Returns whether it swapped."""
        engine = self.service.engine
        # In a thread: executing the repo and planning must not stall calls in flight. It still
        # competes for the GIL: at most 0.5 ms turns while it runs, whatever the setting.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, 0.0005))
        try:
            planner = await asyncio.to_thread(
                lambda: engine.prepare(
                    versions.serve_defaults(load_repo(self.settings.repo), self.promoted)
                )
            )
        except Exception:
            self.reloads_failed += 1
            self.telemetry.metrics.reloads.labels("failed").inc()
            log.exception(
                "reload of %s failed; still serving the previous definitions", self.settings.repo
            )
            return False
        finally:
            sys.setswitchinterval(switch_interval)
        self._serve(planner)
        gc.freeze()  # like start-up objects, the new definitions live until the next reload
        # The old definitions' memory back to the OS now (gc_pacing.trim_heap), in a thread:
        # ctypes lets go of the GIL, so calls go on meanwhile.
        await asyncio.to_thread(trim_heap)
        self.reloads += 1
        self.telemetry.metrics.reloads.labels("ok").inc()
        log.info("reloaded %s: %d views", self.settings.repo, len(planner.registry.views))
        return True

    async def watch_repo(self, interval: float) -> None:
        """Reload whenever the repo's files change (a Kubernetes ConfigMap update, a deploy)."""
        seen = repo_fingerprint(self.settings.repo)
        while True:
            await asyncio.sleep(interval)
            current = repo_fingerprint(self.settings.repo)
            if current != seen:
                seen = current
                await self.reload()

    async def stop(self, grace: float | None = None, drain_delay: float = 0.0) -> None:
        """Report NOT_SERVING, keep serving `drain_delay` seconds (load balancers move away),
        then stop accepting calls, let in-flight ones finish within `grace`, close Redis.

        gRPC core cancels calls that arrived in the instant of stopping but never reached a
        handler; they were not processed, so clients may retry them (the client retries reads).
        """
        try:
            await self._stop(grace, drain_delay)
        finally:  # however stopping ends: the collector's callback must not outlive the server
            if self.gc_pacer is not None:
                self.gc_pacer.close()

    async def _stop(self, grace: float | None, drain_delay: float) -> None:
        self.stopping = True
        if self.connecting_task is not None:
            self.connecting_task.cancel()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, NOT_SERVING)
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        calls = self.service.calls
        in_flight = calls.in_flight
        grace = self.settings.serving.grace_period_s if grace is None else grace
        calls.cut_off_at = time.monotonic() + grace  # handlers cancelled from then on: cut off
        self.service.invalidations.close()  # near-cache streams end now, not at the grace's end
        await self._stop_grpc(grace)
        for task in (self.telemetry_task, self.versions_task, self.demote_task):
            if task is not None:
                task.cancel()
        # The last calls' telemetry runs AFTER_ANSWER_S after their answers: let it, record the
        # kept answers' groups (telemetry/alike.py: at the next flush otherwise), then add their
        # callers to the consumers too (if Redis is up).
        await asyncio.sleep(4 * AFTER_ANSWER_S)
        self.telemetry.flush()
        if self.ready:
            with contextlib.suppress(FeaturewellError):
                await self.telemetry.consumers.flush(self.store, timeout=1.0)
        self.telemetry.close()
        await self.store.close()
        log.info(
            "stopped: %d calls were in flight, %d cut off by the grace period",
            in_flight,
            calls.cut_off,
        )

    async def _stop_grpc(self, grace: float) -> None:
        """gRPC's graceful stop, but not held by calls no handler will ever take. A call gRPC
        core accepted in the instant of stopping, and never handed to Python, kept the grace
        (and its client) waiting until its deadline (tests/test_cli.py saw 5 s). Once every
        handler has finished and `_SETTLE_S` has let their answers go out, what is left is
        cancelled: CANCELLED, never processed, safe to retry elsewhere."""
        stopping = asyncio.ensure_future(self.grpc_server.stop(grace))
        calls, end = self.service.calls, time.monotonic() + grace
        idle_since: float | None = None
        while not stopping.done() and time.monotonic() < end:
            now = time.monotonic()
            if calls.in_flight:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= _SETTLE_S:
                await self.grpc_server.stop(None)
                break
            await asyncio.wait([stopping], timeout=0.01)
        await stopping


# After the last handler's answer, how long a stopping server lets gRPC send it before
# cancelling calls no handler took.
_SETTLE_S = 0.2


def add_feature_service(
    service: FeatureService, grpc_server: grpc.aio.Server, gate: Gate | None = None
) -> None:
    """Register FeatureService as the generated `add_FeatureServiceServicer_to_server` does,
    but with requests passed on as bytes: gRPC's own parsing answers a corrupt request (or one
    with invalid UTF-8) UNKNOWN "Unexpected DecodeError", so `serving/wire` parses it instead
    and answers INVALID_ARGUMENT with a message. Same methods, same cost (one FromString per
    call, moved), same names for reflection, clients unchanged."""
    descriptor = pb.DESCRIPTOR.services_by_name["FeatureService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        # SubscribeInvalidations streams its answers (near caches); every other call is unary.
        method.name: (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )(
            getattr(service, method.name)
            if gate is None
            else gated(service, gate, method.name, getattr(service, method.name)),
            request_deserializer=None,  # bytes in: serving/wire parses
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in descriptor.methods
    }
    grpc_server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )
    grpc_server.add_registered_method_handlers(descriptor.full_name, handlers)


def _counted(telemetry: Telemetry) -> Callable[[str, grpc.StatusCode, int, int, str], None]:
    """Refused authentications, counted and traced like every other answered call."""

    def refused(method: str, code: grpc.StatusCode, started: int, ended: int, message: str) -> None:
        telemetry.call_done(method, code, started, ended, None, error=message)

    return refused


def _serve_metrics(telemetry: Telemetry, settings: Settings) -> int | None:
    if settings.listen.metrics_port < 0:
        return None
    try:
        return exposition.serve(
            telemetry.metrics.registry, settings.listen.host, settings.listen.metrics_port
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot serve /metrics on port {settings.listen.metrics_port} ({exc}); choose another "
            "--metrics-port, 0 for a free one, or -1 to turn it off"
        ) from None


async def _keep_grpc_threads_demoted(nice: int) -> None:
    """gRPC core starts threads as it needs them (its timer pool grows and shrinks): one started
    from a thread it did not demote would run at the loop's priority. Demote any new one within
    a second (reading /proc/self/task: tens of microseconds)."""
    while True:
        await asyncio.sleep(1.0)
        demote_grpc_threads(nice)
