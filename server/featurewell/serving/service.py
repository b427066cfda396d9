"""The FeatureService gRPC servicer: wire in, engine, wire out, telemetry after. No logic of its
own beyond turning the call's deadline into a store budget and an error into its status."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc

from featurewell.engine.calls import Budget
from featurewell.engine.engine import FeatureEngine
from featurewell.errors import DeadlineExceeded, Overloaded
from featurewell.offline.served import REQUEST_ID_HEADER
from featurewell.serving import auth, wire
from featurewell.serving.authz import Authoriser
from featurewell.serving.deprecation import DeprecationNotices
from featurewell.serving.status import status_for
from featurewell.settings import ServingSettings
from featurewell.telemetry.hub import Metadata, Telemetry
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc

Request = TypeVar("Request")
Context: TypeAlias = grpc.aio.ServicerContext[Request, Any]


# Telemetry for a call runs this long after its answer. gRPC is still sending the answer when
# the handler returns, and Python work on the loop in that window delays it: recording a
# ranking call's metrics right away (or in a done-callback) cost callers +0.2 ms p50 on a 75 KB
# answer (bench/telemetry.py); 2 ms later it costs them nothing measurable.
AFTER_ANSWER_S = 0.002


def _after_answer(record: Callable[..., None], *args: Any) -> None:
    asyncio.get_running_loop().call_later(AFTER_ANSWER_S, record, *args)


class CallCounter:
    """Calls inside a handler now (at most `limit`: beyond it calls are shed at once rather
    than queued behind the others until every one is late), calls shed, handlers cancelled
    before they finished (`cancelled`: any reason, a client's expired deadline included), and
    of those the ones cut off by a shutdown's grace period (`cut_off`: cancelled at or after
    `cut_off_at`, which shutdown sets to the end of its grace). Shutdown reports the last, so
    "drained" is a measured claim."""

    def __init__(self, limit: int, on_shed: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self._on_shed = on_shed
        self.in_flight = 0
        self.shed = 0
        self.cancelled = 0
        self.cut_off = 0
        self.cut_off_at: float | None = None  # time.monotonic() when the grace period ends

    @contextlib.contextmanager
    def track(self, method: str) -> Iterator[None]:
        if self.in_flight >= self.limit:
            self.shed += 1
            if self._on_shed is not None:
                self._on_shed(method)
            raise Overloaded(
                f"server busy: {self.in_flight} calls in flight (max_in_flight {self.limit}); "
                "retry with backoff or add replicas"
            )
        self.in_flight += 1
        try:
            yield
        except asyncio.CancelledError:
            self.cancelled += 1
            # gRPC cancels every handler still running when the grace ends; a client whose
            # deadline expires cancels its handler too, but before that (or with no shutdown).
            if self.cut_off_at is not None and time.monotonic() >= self.cut_off_at - 0.001:
                self.cut_off += 1
            raise
        finally:
            self.in_flight -= 1


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
        self.calls = CallCounter(settings.max_in_flight, lambda method: shed.labels(method).inc())
        self._cap = settings.store_timeout_ms / 1000
        self._injected_delay = settings.inject_delay_ms / 1000
        self._margin = settings.deadline_margin_ms / 1000
        self._deprecations = DeprecationNotices(telemetry.metrics.deprecated_reads)

    def budget(self, remaining: float | None) -> Budget:
        """Store time for a call with `remaining` seconds left (None: no client deadline)."""
        if remaining is None or remaining - self._margin >= self._cap:
            return Budget(self._cap)
        seconds = remaining - self._margin
        if seconds <= 0:
            raise DeadlineExceeded(
                f"the call's deadline leaves {remaining * 1000:.2f} ms, less than the "
                f"{self._margin * 1000:.2f} ms the server needs to answer; raise the deadline"
            )
        return Budget(seconds, deadline_bound=True)

    # Requests arrive as bytes (parsed by serving/wire, see serving/server.py) or, when the
    # servicer is registered with the generated stubs, as messages.
    async def GetFeatures(
        self, request: pb.GetFeaturesRequest | bytes, context: Context[pb.GetFeaturesRequest]
    ) -> pb.GetFeaturesResponse:
        started = time.perf_counter_ns()
        try:
            with self.calls.track("GetFeatures"):
                if self._injected_delay:
                    await asyncio.sleep(self._injected_delay)
                budget = self.budget(context.time_remaining())
                message = wire.parsed(pb.GetFeaturesRequest, request)
                asked = wire.feature_request(message)
                self._authorise_read(asked.features)
                result = await self.engine.get_features(asked, budget)
                response = wire.feature_response(result, message.typed_values)
                notices = self._deprecations.notices(self.engine.registry, result)
                # Sampled for the served-feature log: its request id goes back to the caller.
                sampled = self.telemetry.sample(context.invocation_metadata() or (), result)
                if sampled is not None:
                    notices.append((REQUEST_ID_HEADER, sampled[0]))
                if notices:
                    context.set_trailing_metadata(notices)
        except Exception as exc:
            await self._abort("GetFeatures", exc, context, started)
        # Telemetry runs once the call has ended (its answer sent), not inside its time.
        _after_answer(
            self.telemetry.read_done,
            result,
            started,
            time.perf_counter_ns(),
            context.invocation_metadata(),  # always: it names the caller (lineage)
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
        _after_answer(
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
        await context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")
