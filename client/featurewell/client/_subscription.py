"""The near cache's invalidation stream (SubscribeInvalidations), followed by one daemon thread
per client on a channel of its own: the sync and asyncio clients share it, and the call path
never waits for it.

It subscribes to the views the cache has seen answers of, feeds every announced write to the
cache, and when the stream ends (a reset from the server, an error, a server gone) marks the
cache not live: nothing new is kept, what is held lives out its TTL. It then subscribes again
after a pause that doubles up to `max_resubscribe_s` (jittered), at once when new views are to be
followed; the new stream's first message flushes the cache.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

import grpc

from featurewell.client._near_cache import NearCacheStore
from featurewell.client._tracing import call_metadata
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc

log = logging.getLogger("featurewell.client.near_cache")

Metadata = Callable[[], tuple[tuple[str, str | bytes], ...] | None]


class Subscription:
    def __init__(
        self,
        store: NearCacheStore,
        channel: grpc.Channel,
        caller: str,
        bearer: Callable[[], str | None],
    ) -> None:
        self.store = store
        self.channel = channel  # its owner closes it
        self._stub = pb_grpc.FeatureServiceStub(channel)
        self._metadata: Metadata = lambda: call_metadata(caller, bearer())
        self._stopping = threading.Event()
        self._call: grpc.Call | None = None
        self._call_lock = threading.Lock()
        self.last_reset = ""  # why the last stream ended (for logs and tests)
        self._thread = threading.Thread(
            target=self._run, name="featurewell-near-cache", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self.store.wanted_changed.set()
        self._cancel()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        pause = self.store.options.resubscribe_s
        store = self.store
        while not self._stopping.is_set():
            store.wanted_changed.wait()
            if self._stopping.is_set():
                return
            store.wanted_changed.clear()
            views = sorted(store.wanted)
            heard = self._follow(views)
            store.broke()
            if self._stopping.is_set():
                return
            if store.wanted_changed.is_set():
                continue  # new views to follow: subscribe again now
            if heard:
                pause = store.options.resubscribe_s
            # Jittered so that a fleet of clients does not come back at once.
            self._stopping.wait(pause * random.uniform(0.5, 1.0))
            pause = min(pause * 2, store.options.max_resubscribe_s)
            store.wanted_changed.set()

    def _follow(self, views: list[str]) -> bool:
        """One stream, until it ends; whether it went live."""
        request = pb.SubscribeInvalidationsRequest(views=views)
        live = False
        try:
            call = self._stub.SubscribeInvalidations(request, metadata=self._metadata())
            with self._call_lock:
                self._call = call
            if self._stopping.is_set():
                call.cancel()
            described: list[pb.CacheableView] = []
            for batch in call:
                if batch.views:
                    described = list(batch.views)
                    self.store.went_live(described)
                    live = True
                    watcher = threading.Thread(target=self._watch, args=(call,), daemon=True)
                    watcher.start()
                if batch.rows:
                    self.store.invalidate(described, batch.rows)
                if batch.reset:
                    self.last_reset = batch.reset
                    log.info("near cache: the server reset its stream: %s", batch.reset)
                    return live
            self.last_reset = "the stream ended"
        except grpc.RpcError as exc:
            if not self._stopping.is_set() and exc.code() != grpc.StatusCode.CANCELLED:
                self.last_reset = f"{exc.code().name}: {exc.details()}"
                log.info("near cache: invalidation stream broke (%s)", self.last_reset)
        finally:
            with self._call_lock:
                self._call = None
        return live

    def _watch(self, call: grpc.Call) -> None:
        """While `call` is live, end it when new views are wanted (the next stream follows
        them too); once it has ended, cancelling it does nothing."""
        self.store.wanted_changed.wait()
        call.cancel()

    def _cancel(self) -> None:
        with self._call_lock:
            if self._call is not None:
                self._call.cancel()
