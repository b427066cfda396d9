"""OpenTelemetry traces of served calls, off (and free) until configured.

`Tracing.from_settings` returns None unless an exporter is configured (`OTEL_TRACES_EXPORTER`
= otlp or console, or an `OTEL_EXPORTER_OTLP_*ENDPOINT`), so a server without tracing runs no
OpenTelemetry code at all. When on, the SDK reads the rest of the standard variables itself:
endpoint, headers, `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`.

Spans are built after the call from the timings the engine recorded, so the serving path does
no tracing work: one server span per RPC (its parent from the caller's `traceparent`), a
`store.read` child with one `redis.pipeline` span per node batch, and one span per on-demand
transform.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import SpanKind, Status, StatusCode

from featurewell.engine.calls import CallTimings
from featurewell.settings import TelemetrySettings

SERVICE = "featurewell.v1.FeatureService"


class Tracing:
    def __init__(self, processor: SpanProcessor, sampler: Sampler | None = None) -> None:
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "featurewell"}))
        # Shut down by `shutdown` (bounded), not by an atexit hook that could wait on a dead
        # collector while the pod's grace period runs out.
        self.provider = TracerProvider(sampler=sampler, resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("featurewell.server")

    @classmethod
    def from_settings(cls, settings: TelemetrySettings) -> Tracing | None:
        if settings.traces_exporter in ("", "none"):
            return None
        exporter: SpanExporter
        if settings.traces_exporter == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        return cls(BatchSpanProcessor(exporter))

    def record(
        self,
        method: str,
        metadata: Iterable[tuple[str, str | bytes]],
        started_ns: int,
        ended_ns: int,
        code: int,
        *,
        timings: CallTimings | None = None,
        attributes: dict[str, int] | None = None,
        error: str = "",
    ) -> None:
        """One finished call as spans (times are `time.perf_counter_ns`; `code` is the gRPC
        status code's number)."""
        carrier = {key: value for key, value in metadata if isinstance(value, str)}
        parent = propagate.extract(carrier)
        to_wall = time.time_ns() - time.perf_counter_ns()
        span = self._tracer.start_span(
            f"{SERVICE}/{method}",
            parent,
            SpanKind.SERVER,
            start_time=started_ns + to_wall,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": SERVICE,
                "rpc.method": method,
                "rpc.grpc.status_code": code,
                **(attributes or {}),
            },
        )
        if not span.is_recording():  # not sampled
            return
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        if timings is not None:
            self._children(trace.set_span_in_context(span), timings, to_wall)
        span.end(end_time=ended_ns + to_wall)

    def _children(self, context: Context, timings: CallTimings, to_wall: int) -> None:
        tracer = self._tracer
        if timings.store_started_ns:
            store = tracer.start_span(
                "store.read",
                context,
                start_time=timings.store_started_ns + to_wall,
            )
            inner = trace.set_span_in_context(store)
            for node in timings.nodes:
                host, port = node.node
                batch = tracer.start_span(
                    "redis.pipeline",
                    inner,
                    SpanKind.CLIENT,
                    start_time=node.sent_ns + to_wall,
                    attributes={
                        "db.system": "redis",
                        "server.address": host,
                        "server.port": port,
                        "featurewell.commands": node.commands,
                    },
                )
                ended = node.answered_ns or timings.store_ended_ns
                if not node.answered_ns:
                    batch.set_status(Status(StatusCode.ERROR, "no reply within the budget"))
                batch.end(end_time=ended + to_wall)
            store.end(end_time=timings.store_ended_ns + to_wall)
        for name, started, ended in timings.transforms:
            span = tracer.start_span(f"transform {name}", context, start_time=started + to_wall)
            span.end(end_time=ended + to_wall)

    def shutdown(self, timeout: float = 2.0) -> None:
        """Flush what is buffered and stop exporting, giving up after `timeout` seconds: a
        collector that is down must not hold a draining server past its grace period."""
        worker = threading.Thread(target=self.provider.shutdown, daemon=True)
        worker.start()
        worker.join(timeout)
