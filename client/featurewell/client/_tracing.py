"""Metadata of outgoing calls: the caller's name (`ClientOptions.caller`), and trace context.
When the caller uses OpenTelemetry and a span is active, its W3C `traceparent` (and whatever
else the configured propagators carry) goes out too, so the server's spans join the caller's
trace. Without OpenTelemetry installed that part is a no-op and the client does not need it.
Incoming: the deprecation notices a call's trailing metadata carries."""

from __future__ import annotations

from collections.abc import Iterable

try:
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - the client runs without OpenTelemetry
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]


def trace_metadata() -> tuple[tuple[str, str | bytes], ...] | None:
    """Metadata carrying the current span's context, or None when there is none."""
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items()) or None


CALLER_HEADER = "x-featurewell-model"


def call_metadata(
    caller: str, bearer: str | None = None
) -> tuple[tuple[str, str | bytes], ...] | None:
    """The caller's name, its bearer token (`authorization`) and the current span's context,
    or None when there is none of them."""
    traced = trace_metadata() or ()
    if bearer is not None:
        traced = (("authorization", bearer), *traced)
    if not caller:
        return traced or None
    return ((CALLER_HEADER, caller), *traced)


DEPRECATED_HEADER = "x-featurewell-deprecated"


def deprecations_of(trailing: Iterable[tuple[str, str | bytes]] | None) -> list[str]:
    """The deprecation notices of a call's trailing metadata (server: serving/deprecation.py)."""
    return [
        value if isinstance(value, str) else value.decode()
        for key, value in trailing or ()
        if key == DEPRECATED_HEADER
    ]


REQUEST_ID_HEADER = "x-featurewell-request-id"


def request_id_of(trailing: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The id under which the server logged the call's answer (its served-feature log), "" when
    the call was not sampled: attach it to impressions and labels to train on what was served."""
    for key, value in trailing or ():
        if key == REQUEST_ID_HEADER:
            return value if isinstance(value, str) else value.decode()
    return ""
