"""The composition root: the one place that turns settings into running objects.

Every command opens Redis through `connected` (or a server through `start_server`) and nothing
else builds stores, caches or servers, so the wiring (breakers, TLS, the hot-key cache,
ownership and closing) is written once. `serve` adds the process supervisor: one server per
process, or several workers sharing the port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvloop

from featurewell.definitions import Registry, load_repo
from featurewell.errors import ConfigError, StoreUnreachable
from featurewell.serving.server import Server
from featurewell.settings import CacheSettings, RedisSettings, Settings
from featurewell.store.breaker import BreakerPolicy
from featurewell.store.cache import CachePolicy
from featurewell.store.columnar import ColumnarCache
from featurewell.store.connection import NodeAccess
from featurewell.store.online import OnlineStore
from featurewell.telemetry import exposition
from featurewell.telemetry.tracing import Tracing

log = logging.getLogger("featurewell.server")


def node_access(redis: RedisSettings) -> NodeAccess:
    """Credentials and TLS context for every Redis connection."""
    if not redis.tls:
        return NodeAccess(redis.password, None, redis.username, redis.password_file)
    try:
        context = ssl.create_default_context(cafile=redis.tls_ca_file or None)
        if redis.tls_cert_file:
            context.load_cert_chain(redis.tls_cert_file, redis.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the Redis TLS files: {exc}") from exc
    context.check_hostname = redis.tls_check_hostname
    return NodeAccess(redis.password, context, redis.username, redis.password_file)


def hot_key_cache(cache: CacheSettings, store_timeout_ms: float) -> ColumnarCache | None:
    """The serving cache, or None when `cache_entries` is 0."""
    if cache.entries <= 0:
        return None
    return ColumnarCache(
        CachePolicy(
            max_entries=cache.entries,
            max_bytes=cache.mb * 1024 * 1024,
            admit_after=cache.admit_after,
            fallback_s=cache.fallback_horizon_s,
            race_window_s=max(1.0, 2 * store_timeout_ms / 1000),
            refresh_ahead=cache.refresh_ahead,
            refresh_timeout_s=store_timeout_ms / 1000,
        )
    )


async def open_store(
    redis: RedisSettings, cache: ColumnarCache | None = None, *, connect_now: bool = True
) -> OnlineStore:
    """The online store with circuit breakers; raises StoreUnavailable when no node answers
    (StoreUnreachable when none answers at all). `connect_now=False`: not connected yet."""
    return await OnlineStore.connect(
        redis.seeds,
        connect_timeout=redis.connect_timeout_s,
        connections_per_node=redis.connections_per_node,
        breaker=BreakerPolicy(redis.breaker_failures, redis.breaker_open_ms / 1000),
        cache=cache,
        access=node_access(redis),
        connect_now=connect_now,
    )


@asynccontextmanager
async def connected(redis: RedisSettings) -> AsyncIterator[OnlineStore]:
    """The online store for a command (no hot-key cache: a command reads each row once),
    closed when the block ends, however it ends."""
    store = await open_store(redis)
    try:
        yield store
    finally:
        await store.close()


async def start_server(
    settings: Settings, registry: Registry | None = None, tracing: Tracing | None = None
) -> Server:
    """Load the repo (unless given), connect to Redis with the hot-key cache, listen. Raises
    DefinitionError for a bad repo, and StoreUnavailable before anything listens when Redis
    refuses this server (password, TLS, not a cluster). When no node answers at all, the server
    starts NOT_SERVING and connects once the cluster answers (unless `redis_wait_at_start` is
    off: then StoreUnreachable). The server owns the store: `Server.stop` closes it."""
    registry = registry if registry is not None else load_repo(settings.repo)
    cache = hot_key_cache(settings.cache, settings.serving.store_timeout_ms)
    try:
        store = await open_store(settings.redis, cache)
    except StoreUnreachable as exc:
        if not settings.serving.wait_for_redis:
            raise
        store = await open_store(settings.redis, cache, connect_now=False)
        store.check_wrong_types = settings.serving.row_type_checks
        return await Server.start(settings, store, registry, tracing, unreachable=exc)
    store.check_wrong_types = settings.serving.row_type_checks
    return await Server.start(settings, store, registry, tracing)


async def run_server(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain; SIGHUP reloads the repo."""
    server = await start_server(settings)
    log.info(
        "featurewell serving %s:%d (repo %s, Redis %s)",
        settings.listen.host,
        server.port,
        settings.repo,
        ",".join(f"{h}:{p}" for h, p in settings.redis.seeds),
    )
    if settings.serving.workers == 1:  # several workers: the parent prints the line
        announce(settings.listen.host, server.port, server.metrics_port, server.ready)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    background: set[asyncio.Task[object]] = set()
    loop.add_signal_handler(
        signal.SIGHUP, lambda: background.add(loop.create_task(server.reload()))
    )
    if settings.serving.reload_interval_s > 0:
        background.add(loop.create_task(server.watch_repo(settings.serving.reload_interval_s)))
    await stopping.wait()
    for task in background:
        task.cancel()
    log.info(
        "draining in-flight calls (NOT_SERVING for %.1f s, then up to %.1f s of grace)",
        settings.serving.drain_delay_s,
        settings.serving.grace_period_s,
    )
    await server.stop(drain_delay=settings.serving.drain_delay_s)


def serve(settings: Settings) -> None:
    """Run the server in this process, or in `workers` processes sharing the port."""
    if settings.serving.workers == 1:
        uvloop.run(run_server(settings))
        return
    # The parent serves /metrics for all workers (their files aggregated), so each worker's
    # own endpoint stays off.
    listen = settings.listen
    shared = exposition.WorkerMetrics() if listen.metrics_port >= 0 else None
    metrics_port = None
    if shared is not None:
        metrics_port = exposition.serve(shared.registry, listen.host, listen.metrics_port)
        log.info("metrics of %d workers on :%d/metrics", settings.serving.workers, metrics_port)
    # Workers share a fixed port (SO_REUSEPORT); each reports its own health.
    announce(listen.host, settings.serving.port, metrics_port, None)
    context = multiprocessing.get_context("spawn")
    worker_settings = settings.with_changes(metrics_port=-1)
    workers = [
        context.Process(target=_worker, args=(worker_settings,))
        for _ in range(settings.serving.workers)
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


def announce(host: str, port: int, metrics_port: int | None, ready: bool | None) -> None:
    """One JSON line on stdout saying where the server listens, for scripts (`--port 0`,
    `--metrics-port 0`): `{"event": "serving", "grpc": "host:port", "metrics": "host:port" or
    null, "ready": true|false|null}`. Logs go to stderr, so stdout holds only this line."""
    line = {
        "event": "serving",
        "grpc": f"{host}:{port}",
        "metrics": f"{host}:{metrics_port}" if metrics_port is not None else None,
        "ready": ready,  # false: NOT_SERVING until Redis answers; null: several workers
    }
    print(json.dumps(line), flush=True)


def _worker(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(process)d %(message)s")
    uvloop.run(run_server(settings))
