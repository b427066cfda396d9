"""A server that starts before its Redis Cluster answers: it listens NOT_SERVING, answers
UNAVAILABLE with the reason, and connects in the background with capped, jittered backoff
(docs/resilience.md, "Starting without Redis").

Why UNAVAILABLE rather than fallbacks: until it has read Redis once, a server does not know
which versions `featurewell promote` made the defaults, so a fallback could be a default of
the wrong version. A running server that loses Redis knows them, and keeps answering fallbacks.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grpc_health.v1 import health_pb2

from featurewell.errors import StoreError, StoreUnavailable, StoreUnreachable
from featurewell.serving.service import FeatureService
from featurewell.store import versions
from featurewell.store.cluster import LOG_EVERY_S
from featurewell.store.online import OnlineStore
from featurewell.v1 import feature_service_pb2 as pb

if TYPE_CHECKING:
    from featurewell.serving.server import Server

log = logging.getLogger("featurewell.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FeatureService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
RETRY_FIRST_S = 0.2  # first pause between connection attempts; doubles up to redis_retry_max_s


@dataclass
class Gate:
    """Why calls cannot be served yet (the store has not connected), or None: serve them."""

    waiting: str | None


def not_yet(exc: StoreUnreachable) -> str:
    return (
        "the feature store is not reachable yet (server starting; Redis Cluster nodes "
        f"{', '.join(exc.nodes)} do not answer); retry with backoff"
    )


def gated(
    service: FeatureService, gate: Gate, method: str, handler: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    """`handler`, answering UNAVAILABLE (with the gate's reason) until the store connects.
    Once it has, one attribute check per call."""

    async def checked(request: Any, context: Any) -> Any:
        if gate.waiting is not None:
            # The service's own abort: the status comes from serving/status, metrics count it.
            await service._abort(
                method, StoreUnavailable(gate.waiting), context, time.perf_counter_ns()
            )
        return await handler(request, context)

    return checked


async def serve_when_connected(server: Server, first: StoreUnreachable) -> None:
    """Connect the server's store (`connect_with_backoff`), then serve the promoted versions,
    start telemetry and following promotions, and turn SERVING."""
    server.promoted = await connect_with_backoff(
        server.store, server.settings.serving.redis_retry_max_s, first, server.gate
    )
    if server.promoted:
        engine = server.service.engine
        server._serve(engine.prepare(versions.serve_defaults(engine.registry, server.promoted)))
    loop = asyncio.get_running_loop()
    server.telemetry_task = loop.create_task(server.telemetry.run())
    server.versions_task = loop.create_task(
        server.follow_promotions(server.settings.serving.versions_poll_s)
    )
    server.gate.waiting = None
    if not server.stopping:
        await server.health.set(SERVICE_NAME, SERVING)


async def connect_with_backoff(
    store: OnlineStore, retry_max_s: float, first: StoreUnreachable, gate: Gate
) -> dict[str, int]:
    """Connect `store` and read the promoted default versions, retrying until both succeed;
    the gate says why meanwhile. Logs the unreachable nodes once, then at most every
    LOG_EVERY_S, and the success. Returns the promoted versions."""
    since = logged_at = time.monotonic()
    log.warning(
        "Redis Cluster unreachable at start-up: %s do not answer; NOT_SERVING, calls get "
        "UNAVAILABLE, retrying with backoff (up to %.1f s apart)",
        ", ".join(first.nodes),
        retry_max_s,
    )
    delay, attempts = RETRY_FIRST_S, 1
    while True:
        # Jittered over the upper half: servers started together do not retry together.
        await asyncio.sleep(random.uniform(delay / 2, delay))
        delay = min(delay * 2, retry_max_s)
        attempts += 1
        try:
            await store.cluster.start()
            # Also a first read: a cluster still forming (or failing over) answers CLUSTER
            # SLOTS but CLUSTERDOWN to reads, and the default versions must be known.
            promoted = await versions.promoted(store.cluster)
            log.warning(
                "Redis Cluster answered after %.1f s (%d attempts): SERVING",
                time.monotonic() - since,
                attempts,
            )
            return promoted
        except StoreError as exc:  # down still, forming, or refusing us: keep trying
            if isinstance(exc, StoreUnreachable):
                gate.waiting = not_yet(exc)
            else:
                gate.waiting = f"the feature store is not ready yet: {exc}"
            if time.monotonic() - logged_at >= LOG_EVERY_S:
                logged_at = time.monotonic()
                log.warning(
                    "Redis Cluster still not ready after %.0f s (%d attempts; logged every "
                    "%.0f s): %s",
                    logged_at - since,
                    attempts,
                    LOG_EVERY_S,
                    exc,
                )


async def promoted_or_none(store: OnlineStore) -> dict[str, int]:
    """The promoted default versions, or none when Redis cannot say (the declared defaults are
    served; `Server.follow_promotions` catches up once Redis answers)."""
    try:
        return await versions.promoted(store.cluster)
    except StoreError as exc:
        log.warning("cannot read promoted versions yet: %s", exc)
        return {}
