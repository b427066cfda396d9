"""Telemetry: Prometheus metrics, OpenTelemetry traces, freshness and drift monitoring.

Everything here is recorded at the edges. The engine and the store record plain facts into
their results (per-view statuses and event times, per-node batch timings); the service hands
each finished call to `Telemetry`, which turns those facts into metrics, spans and drift
samples. Nothing here runs inside the store's loops, and tracing costs nothing until the
`OTEL_*` variables turn it on.
"""
