"""Near-cache subscriptions (SubscribeInvalidations, docs/near-cache.md): a client that keeps
rows in its own process hears here of every write to them, from anywhere.

- **What may be cached** is the server's call, per view version: a view is cacheable for
  `near_cache_ttl_s` (at most `cache_ttl_fraction` of its max age, as the hot-key cache), unless
  its definition opts out with the tag `near_cache: "off"`. On-demand outputs are never named
  here (the client caches an answer only when each of its columns is a cacheable view's).
- **Who may subscribe** to a view: whoever may read it (serving/authz.py); the call was
  authenticated by serving/auth.py like every other.
- **The feed**: Redis announces every write to a cacheable view's keys (store/broadcast.py,
  started with the first subscription); each subscriber gets the rows of the views it asked for,
  batched while it is busy. A subscriber's queue is bounded (`near_cache_buffer` rows): one that
  cannot keep up gets its stream ended with `reset` instead of unbounded memory here.
- **Reset**: whenever rows may have changed unannounced (a lost Redis connection, a flush, a
  failover, a reload or promote, the server stopping), every stream ends with `reset`; clients
  drop their rows and subscribe again.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from featurewell.definitions import FeatureView, Kind, Registry, parse_view_ref
from featurewell.engine.engine import FeatureEngine
from featurewell.errors import InvalidRequest, StoreUnavailable, shown
from featurewell.serving import auth, wire
from featurewell.serving.authz import Authoriser
from featurewell.store import broadcast
from featurewell.store.keys import entity_of_tag, key_prefix
from featurewell.telemetry.metrics import ServerMetrics
from featurewell.v1 import feature_service_pb2 as pb

MAX_VIEWS = 256  # views per subscription
MAX_REF_CHARS = 200  # a view reference longer than this is garbage
WAKE_S = 1.0  # an idle stream still notices a reload or a failover this often
WRITE_TIMEOUT_S = 5.0  # a subscriber that reads nothing for this long is let go
OPT_OUT_TAG = "near_cache"


def near_ttl(view: FeatureView, ttl_s: float, fraction: float) -> tuple[float, str]:
    """How long `view`'s rows may answer from a near cache, or 0 and why not."""
    if ttl_s <= 0:
        return 0.0, "near caches are off on this server (near_cache_ttl_s 0)"
    if view.tags.get(OPT_OUT_TAG, "").lower() == "off":
        return 0.0, f"the view's definition opts out (tags {OPT_OUT_TAG}=off)"
    if view.max_age:
        ttl_s = min(ttl_s, fraction * view.max_age.total_seconds())
    return ttl_s, ""


@dataclass(eq=False)
class _Subscriber:
    """One stream's views (by key prefix) and the rows written since its last message."""

    views: dict[bytes, tuple[int, tuple[bool, ...]]]  # prefix -> (position, integer keys)
    limit: int
    pending: dict[int, list[tuple[str, ...]]] = field(default_factory=dict)
    queued: int = 0
    reset: str = ""
    reason: str = ""  # the reset's, of telemetry.metrics.NEAR_CACHE_RESETS
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, position: int, key: tuple[str, ...]) -> None:
        if self.reset:
            return
        if self.queued >= self.limit:
            self.end(f"the subscriber fell behind by more than {self.limit} rows", "fell_behind")
            return
        self.pending.setdefault(position, []).append(key)
        self.queued += 1
        self.wake.set()

    def end(self, why: str, reason: str) -> None:
        if not self.reset:
            self.reset, self.reason = why, reason
            self.pending, self.queued = {}, 0  # nothing queued matters once it must drop all
            self.wake.set()

    def batch(self) -> tuple[pb.InvalidationBatch, int]:
        """The next message, and how many rows it invalidates."""
        message = pb.InvalidationBatch(reset=self.reset)
        for position, keys in self.pending.items():
            rows = message.rows.add(view=position)
            for parts in keys:
                rows.keys.add(parts=parts)
        rows_sent = self.queued
        self.pending, self.queued = {}, 0
        self.wake.clear()
        return message, rows_sent


class InvalidationHub:
    def __init__(self, engine: FeatureEngine, access: Authoriser, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.access = access
        self._gauge = metrics.near_cache_subscribers
        self._resets = metrics.near_cache_resets
        self._invalidated = metrics.near_cache_invalidations
        self._feed: broadcast.RowBroadcast | None = None
        self._feed_registry: Registry | None = None  # whose cacheable views the feed hears
        self._starting = asyncio.Lock()
        self._subscribers: set[_Subscriber] = set()
        self.closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def describe(
        self, registry: Registry, principal: str | None, refs: list[str]
    ) -> list[tuple[pb.CacheableView, FeatureView]]:
        """The views asked for, as the first message describes them (raises InvalidRequest,
        UnknownFeature, PermissionDenied)."""
        if not refs or len(refs) > MAX_VIEWS:
            raise InvalidRequest(
                f"a subscription names 1 to {MAX_VIEWS} views ('view' or 'view@v2'), "
                f"got {len(refs)}"
            )
        granted = self.access.readable(registry, principal)
        limits, cache = self.engine.limits, self.engine.cache
        described = []
        for ref in refs:
            if len(ref) > MAX_REF_CHARS:
                raise InvalidRequest(f"view reference {shown(ref)} is too long")
            view = registry.view(*parse_view_ref(ref))
            if granted is not None and (view.name, view.version) not in granted.readable:
                self.access.check_read(registry, principal, [f"{view.ref}:*"])
            ttl, why = near_ttl(view, limits.near_cache_ttl_s, cache.ttl_fraction)
            message = pb.CacheableView(
                name=view.name,
                version=view.version,
                join_keys=list(view.entity.key_names),
                ttl_seconds=ttl,
                max_age_seconds=view.max_age.total_seconds() if view.max_age else 0.0,
                not_cacheable=why,
            )
            described.append((message, view))
        return described

    async def serve(self, request: pb.SubscribeInvalidationsRequest | bytes, context: Any) -> None:
        """One subscription, until the client leaves or a reset ends it."""
        message = wire.parsed(pb.SubscribeInvalidationsRequest, request)
        registry = self.engine.registry
        described = self.describe(registry, auth.principal(), list(message.views))
        if self.closed:
            raise StoreUnavailable("the server is stopping")
        subscriber = _Subscriber(
            {
                key_prefix(view): (position, _integer_keys(view))
                for position, (about, view) in enumerate(described)
                if about.ttl_seconds > 0
            },
            self.engine.limits.near_cache_buffer,
        )
        if subscriber.views:
            await self._listening(registry)
        self._subscribers.add(subscriber)
        self._gauge.inc()
        try:
            await context.write(pb.InvalidationBatch(views=[about for about, _ in described]))
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(subscriber.wake.wait(), WAKE_S)
                if self.engine.registry is not registry:
                    subscriber.end(
                        "the definitions were reloaded or a version promoted", "reloaded"
                    )
                elif subscriber.views and (self._feed is None or not self._feed.current()):
                    subscriber.end("the Redis Cluster's masters changed", "masters_changed")
                batch, rows = subscriber.batch()
                if batch.rows or batch.reset:
                    await asyncio.wait_for(context.write(batch), WRITE_TIMEOUT_S)
                    self._invalidated.inc(rows)
                if batch.reset:
                    return
        except TimeoutError:
            return  # the subscriber stopped reading: its stream ends, its client resubscribes
        finally:
            self._subscribers.discard(subscriber)
            self._gauge.dec()
            if subscriber.reason:
                self._resets.labels(subscriber.reason).inc()

    async def _listening(self, registry: Registry) -> None:
        """The feed, hearing every cacheable view of `registry` on every current master."""
        async with self._starting:
            feed = self._feed
            if feed is not None and feed.current() and self._feed_registry is registry:
                return
            if feed is not None:
                feed.close()
            ttl_s, fraction = self.engine.limits.near_cache_ttl_s, self.engine.cache.ttl_fraction
            prefixes = [
                key_prefix(view)
                for view in registry.views.values()
                if near_ttl(view, ttl_s, fraction)[0] > 0
            ]
            cluster = self.engine.store.cluster
            self._feed = await broadcast.started(
                cluster, prefixes, self._written, self._reset, cluster.connect_timeout * 2
            )
            self._feed_registry = registry

    def _written(self, keys: list[bytes]) -> None:
        subscribers = self._subscribers
        if not subscribers:
            return
        decoded: dict[bytes, tuple[str, ...]] = {}
        for key in keys:
            split = key.find(b"{") + 1
            prefix, tag = key[:split], key[split:-1]
            for subscriber in subscribers:
                found = subscriber.views.get(prefix)
                if found is None:
                    continue
                parts = decoded.get(key)
                if parts is None:
                    try:
                        parts = decoded[key] = tuple(map(str, entity_of_tag(tag, found[1])))
                    except ValueError:
                        continue  # not a row key of this view (a user's key under its prefix)
                subscriber.offer(found[0], parts)

    def _reset(self, why: str, reason: str) -> None:
        for subscriber in self._subscribers:
            subscriber.end(why, reason)

    def close(self) -> None:
        """End every stream (the server is stopping) and stop listening."""
        self.closed = True
        self._reset("the server is stopping", "stopping")
        if self._feed is not None:
            self._feed.close()


def _integer_keys(view: FeatureView) -> tuple[bool, ...]:
    return tuple(key.kind is Kind.INT64 for key in view.entity.join_keys.values())
