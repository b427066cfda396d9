"""The FeatureService gRPC servicer: wire in, engine, wire out, telemetry after. No logic of its
own beyond turning the call's deadline into a store budget and an error into its status."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc

from featurewell import faults
from featurewell.engine.calls import Budget
from featurewell.engine.engine import FeatureEngine
from featurewell.offline.served import REQUEST_ID_HEADER
from featurewell.serving import auth, wire
from featurewell.serving.authz import Authoriser
from featurewell.serving.deprecation import DeprecationNotices
from featurewell.serving.invalidations import InvalidationHub
from featurewell.serving.overload import Admission
from featurewell.serving.single_cache import SingleAnswers
from featurewell.serving.status import status_for
from featurewell.settings import ServingSettings
from featurewell.telemetry.hub import Metadata, Telemetry
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc

log = logging.getLogger("featurewell.server")
Request = TypeVar("Request")
Context: TypeAlias = grpc.aio.ServicerContext[Request, Any]


# Telemetry for a call runs this long after its answer. gRPC is still sending the answer when
# the handler returns, and Python work on the loop in that window delays it: recording a
# ranking call's metrics right away (or in a done-callback) cost callers +0.2 ms p50 on a 75 KB
# answer (bench/telemetry.py); 2 ms later it costs them nothing measurable.
AFTER_ANSWER_S = 0.002


# uvloop's timers fire on millisecond ticks: work this close to due runs on the earlier tick.
_TIMER_SLACK_S = 0.0005
# The metrics calls recorded are exported this long after the first of them (then the next
# ones): a flush costs about what one call's metric updates did, and runs of a call or two
# each flushing cost as much as exporting every update at once. Still well inside any scrape
# interval; the served-feature log, traces and lineage are not delayed.
FLUSH_EVERY_S = 0.05


class AfterAnswer:
    """Work each call leaves to run AFTER_ANSWER_S after its answer, in answer order, on one
    timer for everything due rather than a timer per call: at thousands of calls a second a
    call_later each (a TimerHandle, a heap insert) was a measurable share of a single-entity
    call's CPU (docs/performance.md). `after_batch` (telemetry's flush of the metrics those
    calls recorded) runs FLUSH_EVERY_S after a run, for every run in that time."""

    __slots__ = ("_after_batch", "_armed", "_due", "_flush_armed", "_loop")

    def __init__(self, after_batch: Callable[[], None] | None = None) -> None:
        self._due: deque[tuple[float, Callable[..., None], tuple[Any, ...]]] = deque()
        self._armed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the armed timer's loop
        self._after_batch = after_batch
        self._flush_armed = False

    def __call__(self, record: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or not self._armed:
            # Asked once per run of calls, not per call: asyncio.get_running_loop makes a
            # getpid() system call each time, ~1% of a kept single-entity call in a py-spy
            # profile (docs/performance.md). While armed, calls run on the timer's loop.
            loop = self._loop = asyncio.get_running_loop()
        self._due.append((loop.time() + AFTER_ANSWER_S, record, args))
        if not self._armed:
            self._armed = True
            loop.call_later(AFTER_ANSWER_S, self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self._due
        now = loop.time() + _TIMER_SLACK_S
        while due and due[0][0] <= now:
            _, record, args = due.popleft()
            try:
                record(*args)
            except Exception:  # as the loop would for a callback of its own: log, go on
                log.exception("telemetry of an answered call failed")
        if due:
            loop.call_at(due[0][0], self._run, loop)
        else:
            self._armed = False
        self.flush_soon(loop)

    def flush_soon(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Arm `after_batch` FLUSH_EVERY_S from now unless it is armed (for telemetry recorded
        without the queue too: calls answered alike, telemetry/alike.py)."""
        if self._after_batch is not None and not self._flush_armed:
            self._flush_armed = True
            (loop or asyncio.get_running_loop()).call_later(FLUSH_EVERY_S, self._flush)

    def _flush(self) -> None:
        self._flush_armed = False
        after_batch = self._after_batch
        if after_batch is None:  # (never armed without it)
            return
        try:
            after_batch()
        except Exception:
            log.exception("telemetry of answered calls failed")


class FeatureService(pb_grpc.FeatureServiceServicer):
    def __init__(
        self,
        engine: FeatureEngine,
        settings: ServingSettings,
        telemetry: Telemetry,
        access: Authoriser | None = None,
    ) -> None:
        self.engine = engine
        self.access = access if access is not None else Authoriser(enforce=False)
        self.telemetry = telemetry
        shed = telemetry.metrics.shed_calls
        # Admission (serving/overload.py): calls in handlers, the ones shed and why, the margin.
        self.calls = Admission(
            settings.max_in_flight,
            lambda method, reason: shed.labels(method, reason).inc(),
            latency_target_s=settings.overload_latency_ms / 1000,
            margin_s=settings.deadline_margin_ms / 1000,
        )
        self._cap = settings.store_timeout_ms / 1000
        self._fault = faults.applied(settings.fault_delay)  # off unless set
        self._deprecations = DeprecationNotices(telemetry.metrics.deprecated_reads)
        # Near-cache subscriptions.
        self.invalidations = InvalidationHub(engine, self.access, telemetry.metrics)
        self._after_answer = AfterAnswer(telemetry.flush)
        self.single = SingleAnswers(engine)  # hot single-entity answers (serving/single_cache)

    def _store_seconds(self, remaining: float | None) -> float:
        """Store time for a call with `remaining` seconds left (None: no client deadline): what
        the deadline leaves once the measured answer margin is kept back, at most the cap (the
        call's Budget is deadline-bound below it). `Admission.admit` has already refused calls
        whose deadline leaves nothing."""
        if remaining is None:
            return self._cap
        return max(min(remaining - self.calls.margin.seconds, self._cap), 0.0)

    # Requests arrive as bytes (parsed by serving/wire, see serving/server.py) or, when the
    # servicer is registered with the generated stubs, as messages.
    async def GetFeatures(
        self, request: pb.GetFeaturesRequest | bytes, context: Context[pb.GetFeaturesRequest]
    ) -> pb.GetFeaturesResponse:
        started = time.perf_counter_ns()
        calls = self.calls
        try:
            remaining = context.time_remaining()
            calls.enter("GetFeatures", remaining)  # (Admission.track, inlined: per-call cost)
            try:
                store_s = self._store_seconds(remaining)
                budget_end = time.perf_counter_ns() + int(store_s * 1e9)
                # A hot single entity's kept answer (not under fault injection, which waits
                # between this check and the answer).
                kept = None if self._fault else self.single.answer(request)
                if kept is None:
                    message = wire.parsed(pb.GetFeaturesRequest, request)
                    asked = wire.feature_request(message)
                else:
                    found = time.perf_counter_ns()  # its "store reply", for the margin
                    asked = kept.request
                if self._fault:
                    await self._fault.wait(asked)
                self._authorise_read(asked.features)
                if kept is None:
                    before = self.single.before(request, asked)
                    budget = Budget(store_s, deadline_bound=store_s < self._cap)
                    result = await self.engine.get_features(asked, budget)
                    response = wire.feature_response(result, message.typed_values)
                    store_end = result.timings.store_ended_ns or budget_end
                    if before is not None:
                        self.single.learn(before, result, response)
                else:
                    result, response = kept.result, kept.response
                    store_end = found
                notices = self._deprecations.notices(self.engine.registry, result)
                metadata = context.invocation_metadata() or ()  # read once: a copy each time
                # Sampled for the served-feature log: its request id goes back to the caller.
                sampled = self.telemetry.sample(metadata, result)
                if sampled is not None:
                    notices.append((REQUEST_ID_HEADER, sampled[0]))
                if notices:
                    context.set_trailing_metadata(notices)
                # What the answer needed after the store's reply or budget: the margin to keep.
                answered = time.perf_counter_ns() - min(store_end, budget_end)
                calls.margin.answered(answered / 1e9, timed_out=store_end >= budget_end)
            except asyncio.CancelledError:
                calls.was_cancelled()
                raise
            finally:
                calls.leave(started)
        except Exception as exc:
            await self._abort("GetFeatures", exc, context, started)
        if kept is not None and sampled is None and self.telemetry.tracing is None:
            # A kept answer's calls are counted together (telemetry/alike.py): a few dict
            # operations now, the rest once per flush.
            try:
                seconds = (time.perf_counter_ns() - started) / 1e9
                if self.telemetry.read_alike(result, seconds, metadata, auth.principal()):
                    self._after_answer(self.telemetry.record_alike)
                self._after_answer.flush_soon()
            except Exception:  # telemetry never fails an answered call
                log.exception("telemetry of an answered call failed")
            return response
        # Telemetry runs once the call has ended (its answer sent), not inside its time.
        self._after_answer(
            self.telemetry.read_done,
            result,
            started,
            time.perf_counter_ns(),
            metadata,  # always: it names the caller (lineage)
            auth.principal(),
            None if sampled is None else (sampled, asked.entities),
        )
        return response

    async def WriteFeatures(
        self, request: pb.WriteFeaturesRequest | bytes, context: Context[pb.WriteFeaturesRequest]
    ) -> pb.WriteFeaturesResponse:
        started = time.perf_counter_ns()
        try:
            with self.calls.track("WriteFeatures"):
                asked_write = wire.write_request(request)
                self._authorise_write(asked_write.view)
                result = await self.engine.write(asked_write)
                written_us = time.time_ns() // 1000  # the rows' `created` in the history
        except Exception as exc:
            await self._abort("WriteFeatures", exc, context, started)
        self._after_answer(
            self.telemetry.write_done,
            result,
            started,
            time.perf_counter_ns(),
            self._trace(context),
            (asked_write, written_us),
        )
        return wire.write_response(result)

    async def ListFeatures(
        self, request: pb.ListFeaturesRequest | bytes, context: Context[pb.ListFeaturesRequest]
    ) -> pb.ListFeaturesResponse:
        started = time.perf_counter_ns()
        try:
            response = self._catalog(wire.catalog_filter(request))
        except Exception as exc:
            await self._abort("ListFeatures", exc, context, started)
        self.telemetry.call_done(
            "ListFeatures",
            grpc.StatusCode.OK,
            started,
            time.perf_counter_ns(),
            self._trace(context),
        )
        return response

    async def SubscribeInvalidations(  # type: ignore[override]  # answers with context.write
        self,
        request: pb.SubscribeInvalidationsRequest | bytes,
        context: Context[pb.SubscribeInvalidationsRequest],
    ) -> None:
        """A near cache's feed of written rows (serving/invalidations.py); a server-streaming
        call answered with `context.write`."""
        started = time.perf_counter_ns()
        try:
            await self.invalidations.serve(request, context)
        except Exception as exc:
            await self._abort("SubscribeInvalidations", exc, context, started)

    # -- authorisation (serving/authz.py): the call's principal was set by serving/auth.py --

    # (On parsed requests, so they hold however wire receives them.)

    def _authorise_read(self, features: Sequence[str]) -> None:
        self.access.check_read(self.engine.registry, auth.principal(), features)

    def _authorise_write(self, view: str) -> None:
        self.access.check_write(self.engine.registry, auth.principal(), view)

    def _catalog(self, wanted: wire.CatalogFilter) -> pb.ListFeaturesResponse:
        registry = self.engine.registry
        granted = self.access.readable(registry, auth.principal())
        return wire.catalog(registry, granted.can_read if granted is not None else None, wanted)

    def _trace(self, context: Context[Any]) -> Metadata | None:
        """The call's metadata when tracing needs it (read now: it is gone once the call ends)."""
        return context.invocation_metadata() if self.telemetry.tracing is not None else None

    async def _abort(
        self, method: str, error: Exception, context: Context[Any], started: int
    ) -> NoReturn:
        """Answer a failed call with its status (the one place errors become gRPC codes)."""
        code, message = status_for(error, method)
        self.telemetry.call_done(
            method, code, started, time.perf_counter_ns(), self._trace(context), error=message
        )
        if context.cancelled() or context.done():
            # The caller is gone (its deadline passed while the call queued): no status can be
            # sent, and trying makes gRPC log a traceback per call, costly in an overload.
            raise asyncio.CancelledError
        await context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")
