"""Start, run and stop the gRPC server (FeatureService + health + reflection)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from featurewell.definitions import Registry, load_repo, repo_fingerprint
from featurewell.engine.engine import FeatureEngine
from featurewell.engine.plan import Planner
from featurewell.errors import ConfigError, FeaturewellError, StoreError
from featurewell.serving.service import AFTER_ANSWER_S, FeatureService
from featurewell.settings import Settings
from featurewell.store import versions
from featurewell.store.breaker import BreakerPolicy
from featurewell.store.cache import CachePolicy, HotKeyCache
from featurewell.store.connection import NodeAccess
from featurewell.store.online import OnlineStore
from featurewell.telemetry import exposition
from featurewell.telemetry.hub import Telemetry
from featurewell.telemetry.tracing import Tracing
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc

log = logging.getLogger("featurewell.server")
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
    telemetry_task: asyncio.Task[None]
    reloads: int = 0
    reloads_failed: int = 0
    promoted: dict[str, int] = field(default_factory=dict)  # as last read from Redis
    versions_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, settings: Settings, registry: Registry | None = None, tracing: Tracing | None = None
    ) -> Server:
        """Load the repo, connect to Redis, listen. Raises DefinitionError for a bad repo and
        StoreUnavailable when no Redis Cluster node answers, before anything listens.
        `tracing` replaces the one the settings describe (tests pass in-memory exporters)."""
        registry = registry if registry is not None else load_repo(settings.repo)
        store = await open_store(settings)
        try:
            overrides = await versions.promoted(store.cluster)
        except StoreError as exc:  # serve the declared defaults; followed once Redis answers
            log.warning("cannot read promoted versions yet: %s", exc)
            overrides = {}
        if overrides:
            registry = versions.serve_defaults(registry, overrides)
        telemetry: Telemetry | None = None
        try:
            grpc_server = grpc.aio.server(
                options=[
                    ("grpc.max_send_message_length", settings.max_message_bytes),
                    ("grpc.max_receive_message_length", settings.max_message_bytes),
                    ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
                ]
            )
            tracing = tracing if tracing is not None else Tracing.from_settings(settings)
            telemetry = Telemetry(settings, store, registry, tracing)
            service = FeatureService(FeatureEngine(registry, store, settings), settings, telemetry)
            pb_grpc.add_FeatureServiceServicer_to_server(service, grpc_server)
            health = health_aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health, grpc_server)
            reflection.enable_server_reflection(
                [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME],
                grpc_server,
            )  # fmt: skip
            port = _listen(grpc_server, settings)
            await grpc_server.start()
            metrics_port = _serve_metrics(telemetry, settings)
        except BaseException:
            if telemetry is not None:
                telemetry.close()
            await store.close()
            raise
        telemetry_task = asyncio.get_running_loop().create_task(telemetry.run())
        for name in ("", SERVICE_NAME):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if settings.inject_delay_ms:
            log.warning("fault injection on: every GetFeatures waits %.1f ms first",
                        settings.inject_delay_ms)  # fmt: skip
        # Start-up objects (registry, stubs, plans) never die: keep them out of every future
        # collection, or a full GC pass over them stalls calls for tens of milliseconds.
        gc.collect()
        gc.freeze()
        # A ranking call allocates a few thousand short-lived objects; the default gen-0
        # threshold (700) would collect several times per call. Collect young objects less often.
        gc.set_threshold(settings.gc_gen0_threshold, 20, 100)
        server = cls(
            settings, port, service, store, grpc_server, health, metrics_port, telemetry,
            telemetry_task, promoted=overrides,
        )  # fmt: skip
        server.versions_task = asyncio.get_running_loop().create_task(
            server.follow_promotions(settings.versions_poll_s)
        )
        return server

    async def follow_promotions(self, interval: float) -> None:
        """Serve the default versions `featurewell promote` and `rollback` set, read from Redis
        every `interval` seconds: the next call plans with them, calls in flight finish as
        they started, and calls pinned to a version (`view@v1:x`) never move."""
        while True:
            await asyncio.sleep(interval)
            try:
                overrides = await versions.promoted(self.store.cluster)
            except StoreError as exc:
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
        # competes for the GIL, which by default the loop may wait 5 ms to get back; ask for
        # 0.5 ms turns while it runs.
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
            log.exception("reload of %s failed; still serving the previous definitions",
                          self.settings.repo)  # fmt: skip
            return False
        finally:
            sys.setswitchinterval(switch_interval)
        self._serve(planner)
        gc.freeze()  # like start-up objects, the new definitions live until the next reload
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
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        calls = self.service.calls
        in_flight = calls.in_flight
        await self.grpc_server.stop(self.settings.grace_period_s if grace is None else grace)
        self.telemetry_task.cancel()
        if self.versions_task is not None:
            self.versions_task.cancel()
        # The last calls' telemetry runs AFTER_ANSWER_S after their answers: let it, then add
        # their callers to the consumers too (if Redis is up).
        await asyncio.sleep(4 * AFTER_ANSWER_S)
        with contextlib.suppress(FeaturewellError):
            await self.telemetry.consumers.flush(self.store, timeout=1.0)
        self.telemetry.close()
        await self.store.close()
        log.info(
            "stopped: %d calls were in flight, %d cut off by the grace period",
            in_flight, calls.cancelled,
        )  # fmt: skip


def _listen(grpc_server: grpc.aio.Server, settings: Settings) -> int:
    address = f"{settings.host}:{settings.port}"
    if not settings.tls_cert_file:
        return grpc_server.add_insecure_port(address)
    try:
        key = Path(settings.tls_key_file).read_bytes()
        chain = Path(settings.tls_cert_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS certificate or key: {exc}") from exc
    return grpc_server.add_secure_port(address, grpc.ssl_server_credentials([(key, chain)]))


def _serve_metrics(telemetry: Telemetry, settings: Settings) -> int | None:
    if settings.metrics_port < 0:
        return None
    try:
        return exposition.serve(telemetry.metrics.registry, settings.host, settings.metrics_port)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve /metrics on port {settings.metrics_port} ({exc}); choose another "
            "--metrics-port, 0 for a free one, or -1 to turn it off"
        ) from None


def node_access(settings: Settings) -> NodeAccess:
    """Password and TLS context for every Redis connection, from the settings."""
    if not settings.redis_tls:
        return NodeAccess(settings.redis_password)
    try:
        context = ssl.create_default_context(cafile=settings.redis_tls_ca_file or None)
        if settings.redis_tls_cert_file:
            context.load_cert_chain(settings.redis_tls_cert_file, settings.redis_tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the Redis TLS files: {exc}") from exc
    context.check_hostname = settings.redis_tls_check_hostname
    return NodeAccess(settings.redis_password, context)


async def open_store(settings: Settings) -> OnlineStore:
    """The online store as the settings describe it: breakers, and the hot-key cache unless
    `cache_entries` is 0."""
    cache = None
    if settings.cache_entries > 0:
        cache = HotKeyCache(
            CachePolicy(
                max_entries=settings.cache_entries,
                max_bytes=settings.cache_mb * 1024 * 1024,
                admit_after=settings.cache_admit_after,
                fallback_s=settings.fallback_horizon_s,
                race_window_s=max(1.0, 2 * settings.store_timeout_ms / 1000),
            )
        )
    return await OnlineStore.connect(
        settings.redis,
        connect_timeout=settings.connect_timeout_s,
        connections_per_node=settings.connections_per_node,
        breaker=BreakerPolicy(settings.breaker_failures, settings.breaker_open_ms / 1000),
        cache=cache,
        access=node_access(settings),
    )


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    server = await Server.start(settings)
    log.info(
        "featurewell serving %s:%d (repo %s, Redis %s)",
        settings.host, server.port, settings.repo,
        ",".join(f"{h}:{p}" for h, p in settings.redis),
    )  # fmt: skip
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    background: set[asyncio.Task[object]] = set()
    loop.add_signal_handler(
        signal.SIGHUP, lambda: background.add(loop.create_task(server.reload()))
    )
    if settings.reload_interval_s > 0:
        background.add(loop.create_task(server.watch_repo(settings.reload_interval_s)))
    await stopping.wait()
    for task in background:
        task.cancel()
    log.info(
        "draining in-flight calls (NOT_SERVING for %.1f s, then up to %.1f s of grace)",
        settings.drain_delay_s, settings.grace_period_s,
    )  # fmt: skip
    await server.stop(drain_delay=settings.drain_delay_s)


def serve(settings: Settings) -> None:
    """Run the server in this process, or in `settings.workers` processes sharing the port."""
    if settings.workers == 1:
        uvloop.run(run(settings))
        return
    # The parent serves /metrics for all workers (their files aggregated), so each worker's
    # own endpoint stays off.
    shared = exposition.WorkerMetrics() if settings.metrics_port >= 0 else None
    if shared is not None:
        port = exposition.serve(shared.registry, settings.host, settings.metrics_port)
        log.info("metrics of %d workers on :%d/metrics", settings.workers, port)
    context = multiprocessing.get_context("spawn")
    worker_settings = settings.with_changes(metrics_port=-1)
    workers = [
        context.Process(target=_worker, args=(worker_settings,)) for _ in range(settings.workers)
    ]
    for worker in workers:
        worker.start()

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)  # each worker drains its own calls

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    for worker in workers:
        worker.join()
        if shared is not None and worker.pid is not None:
            shared.worker_exited(worker.pid)
    if shared is not None:
        shared.close()


def _worker(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(process)d %(message)s")
    uvloop.run(run(settings))
