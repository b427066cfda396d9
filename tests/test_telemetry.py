"""Metrics, freshness, drift and traces of a real server, read the way Prometheus and an
OpenTelemetry collector would: /metrics over HTTP, spans from the SDK's in-memory exporter."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from featurewell.client import (
    ClientOptions,
    FeatureClient,
    FeatureClientError,
    NotFound,
)
from featurewell.definitions import (
    Entity,
    Feature,
    FeatureView,
    Float64,
    Kind,
    Registry,
    Stats,
    String,
)
from featurewell.devcluster import LocalCluster
from featurewell.engine.calls import Budget, FeatureRequest, InputColumn
from featurewell.telemetry import report
from featurewell.telemetry._histogram import Tally
from featurewell.telemetry.tracing import Tracing
from tests import defs
from tests.tools import (
    Ids,
    ServerThread,
    alert_test,
    free_port,
    make_settings,
    scrape,
    scrape_until,
    wait_until,
)

customer = Entity("customer", join_keys={"customer_id": String})
orders = FeatureView(
    "orders",
    entity=customer,
    max_age=timedelta(hours=2),
    freshness_sla=timedelta(minutes=10),
    features=[
        Feature("amount", Float64, expected=Stats(mean=100.0, std=10.0)),
        Feature(
            "channel", String, default="none", expected=Stats(categories={"web": 0.6, "app": 0.3})
        ),
    ],
)
ONE_CLIENT = ClientOptions(read_attempts=1)


def telemetry_registry() -> Registry:
    return Registry.build(
        [
            defs.user,
            defs.item,
            defs.user_item,
            defs.profile_v1,
            defs.profile,
            defs.item_stats,
            defs.pair,
            defs.affinity,
            defs.birth,
            customer,
            orders,
        ]
    )


@pytest.fixture(scope="module")
def observed(cluster: LocalCluster) -> Iterator[ServerThread]:
    settings = make_settings(
        cluster,
        metrics_port=0,
        freshness_interval_s=0.1,
        drift_sample_rate=1.0,
        drift_window_s=0.3,
        cache_entries=0,
    )
    running = ServerThread(settings, telemetry_registry())
    yield running
    running.stop()


@pytest.fixture(scope="module")
def observed_client(observed: ServerThread) -> Iterator[FeatureClient]:
    with FeatureClient(observed.address, timeout=5.0, options=ONE_CLIENT) as connected:
        yield connected


def metrics_port(server: ServerThread) -> int:
    assert server.server.metrics_port is not None
    return server.server.metrics_port


def write_orders(
    client: FeatureClient, ids: list[str], amounts: Any, channels: list[str], at_us: int
) -> None:
    for start in range(0, len(ids), 1000):
        part = slice(start, start + 1000)
        client.write_features(
            "orders",
            entities={"customer_id": ids[part]},
            event_timestamps_us=[at_us] * len(ids[part]),
            features={
                "amount": np.asarray(amounts[part], dtype=np.float64),
                "channel": channels[part],
            },
        )


def read_orders(client: FeatureClient, ids: list[str]) -> None:
    for start in range(0, len(ids), 500):
        client.get_features(
            ["orders:amount", "orders:channel"], entities={"customer_id": ids[start : start + 500]}
        )


def test_tallied_observations_match_prometheus_one_by_one() -> None:
    values = np.array([0.5, 1.0, 1.0, 3.0, 7.5, 1e9, 0.0, 2.0])
    one, many = CollectorRegistry(), CollectorRegistry()
    single, bulk = (
        Histogram("age_seconds", "x", ["view"], buckets=(1, 2, 5), registry=registry)
        for registry in (one, many)
    )
    counted, tallied = (Counter("rows", "x", registry=registry) for registry in (one, many))
    for value in values:
        single.labels("v").observe(float(value))
    counted.inc(3)
    counted.inc(4)
    tally = Tally()
    pending, rows = tally.histogram(bulk.labels("v")), tally.counter(tallied)
    pending.observe_many(values[:5])
    for value in values[5:]:
        pending.observe(float(value))  # one by one and in bulk alike
    rows.inc(3)
    tally.flush()
    rows.inc(4)  # pending until the next flush
    assert b"rows_total 3.0" in generate_latest(many)
    tally.flush()
    tally.flush()  # nothing pending: adds nothing
    created = (b"_created", b"# ")  # creation timestamps differ by design
    lines = [
        [
            line
            for line in generate_latest(r).splitlines()
            if not line.split(b"{")[0].split(b" ")[0].endswith(created[0])
        ]
        for r in (one, many)
    ]
    assert lines[0] == lines[1]
    assert b'age_seconds_bucket{le="1.0",view="v"} 4.0' in lines[1]


def test_tallied_repeats_match_observing_each_value_that_many_times() -> None:
    # Calls answered alike are recorded as one group (telemetry/alike.py): `times` repeats.
    values = np.array([0.5, 1.0, 3.0, 7.5])
    one, many = CollectorRegistry(), CollectorRegistry()
    single, bulk = (
        Histogram("age_seconds", "x", buckets=(1, 2, 5), registry=registry)
        for registry in (one, many)
    )
    for value in [*values.tolist() * 3, 2.0, 2.0]:
        single.observe(float(value))
    tally = Tally()
    pending = tally.histogram(bulk)
    pending.observe_many(values, times=3)
    pending.observe_times(2.0, 2)
    pending.observe_times(9.0, 0)  # no calls: nothing
    pending.observe_many(values, times=0)
    tally.flush()
    exported = [
        [line for line in generate_latest(r).splitlines() if b"_created" not in line]
        for r in (one, many)
    ]
    assert exported[0] == exported[1]


def test_calls_move_the_rpc_store_and_view_metrics(
    observed: ServerThread, observed_client: FeatureClient, cluster: LocalCluster, ids: Ids
) -> None:
    port = metrics_port(observed)
    before = scrape(port)
    users = [ids(f"u{i}") for i in range(40)]
    old = defs.now_us() - 2 * 3600 * 1_000_000 - 60_000_000  # past profile's 1 h max age
    defs.write_profiles(observed_client, users[:20], ages=list(range(20)))
    defs.write_profiles(observed_client, users[20:30], ages=list(range(10)), at_us=old)
    # 40 users: 20 present, 10 stale, 10 never written; then one single-entity call.
    observed_client.get_features(["profile:age", "profile:country"], entities={"user_id": users})
    observed_client.get_features(["profile:age"], entities={"user_id": users[:1]})
    with pytest.raises(NotFound):
        observed_client.get_features(["profile:nope"], entities={"user_id": users[:1]})

    def delta(key: str, metrics: dict[str, float]) -> float:
        return metrics.get(key, 0.0) - before.get(key, 0.0)

    ok = 'featurewell_requests_total{code="OK",method="GetFeatures"}'
    after = scrape_until(port, lambda m: delta(ok, m) >= 2)
    assert delta(ok, after) == 2
    assert delta('featurewell_requests_total{code="NOT_FOUND",method="GetFeatures"}', after) == 1
    assert delta('featurewell_requests_total{code="OK",method="WriteFeatures"}', after) == 2
    served = 'featurewell_served_rows_total{status="%s",view="profile@v2"}'
    assert delta(served % "present", after) == 21
    assert delta(served % "stale", after) == 10
    assert delta(served % "not_found", after) == 10
    # Ages are recorded for rows with a value: 21 present + 10 stale, 10 of them over 2 h old.
    age = 'featurewell_served_value_age_seconds_%s{view="profile@v2"}'
    assert delta(age % "count", after) == 31
    over_2h = delta(age % "count", after) - delta(
        'featurewell_served_value_age_seconds_bucket{le="7200.0",view="profile@v2"}', after
    )
    assert over_2h == 10
    rows = 'featurewell_request_rows_%s{method="GetFeatures"}'
    assert delta(rows % "sum", after) == 41
    assert delta("featurewell_request_features_sum", after) == 3
    assert (
        delta(
            'featurewell_request_duration_seconds_count{method="GetFeatures",shape="single"}', after
        )
        == 1
    )
    assert delta('featurewell_written_rows_total{outcome="written",view="profile@v2"}', after) == 30
    # 40 users spread over the 3 masters: each node's batch time was recorded.
    for host, node_port in cluster.seeds:
        key = f'featurewell_store_duration_seconds_count{{node="{host}:{node_port}"}}'
        assert delta(key, after) >= 1, key


def test_an_older_event_is_counted_as_skipped(
    observed: ServerThread, observed_client: FeatureClient, ids: Ids
) -> None:
    port = metrics_port(observed)
    key = 'featurewell_written_rows_total{outcome="skipped_older",view="profile@v2"}'
    before = scrape(port).get(key, 0.0)
    user = [ids("late")]
    defs.write_profiles(observed_client, user, ages=[30])
    defs.write_profiles(observed_client, user, ages=[31], at_us=defs.now_us() - 10_000_000)
    assert scrape_until(port, lambda m: m.get(key, 0) > before)[key] == before + 1


def test_freshness_gauges_follow_the_newest_write(
    observed: ServerThread, observed_client: FeatureClient, ids: Ids
) -> None:
    port = metrics_port(observed)
    newest = 'featurewell_view_newest_event_timestamp_seconds{view="orders@v1"}'
    event_us = defs.now_us() - 5_000_000
    write_orders(observed_client, [ids("f1")], [100.0], ["web"], event_us)
    metrics = scrape_until(port, lambda m: m.get(newest) == event_us / 1e6)
    assert metrics[newest] == event_us / 1e6
    # An older event does not move the marker back; the time of the last write does move.
    # (Its bounds are taken around the write, not from the clock at scrape time: a slow
    # machine may scrape seconds later.)
    writing = time.time()
    write_orders(observed_client, [ids("f2")], [100.0], ["web"], event_us - 60_000_000)
    written = 'featurewell_view_last_write_timestamp_seconds{view="orders@v1"}'
    metrics = scrape_until(port, lambda m: m.get(written, 0) >= writing)
    assert metrics[newest] == event_us / 1e6
    assert writing <= metrics[written] <= time.time() + 1
    assert metrics['featurewell_view_freshness_sla_seconds{view="orders@v1"}'] == 600
    assert metrics['featurewell_view_max_age_seconds{view="orders@v1"}'] == 7200
    # A view with no SLA and no max age has no SLA gauge (nothing to alert on).
    assert 'featurewell_view_freshness_sla_seconds{view="pair@v1"}' not in metrics


@pytest.mark.deploy  # promtool
def test_a_stopped_writer_fires_the_freshness_alert(
    observed: ServerThread, observed_client: FeatureClient, ids: Ids, tmp_path: Path
) -> None:
    port = metrics_port(observed)
    newest = 'featurewell_view_newest_event_timestamp_seconds{view="orders@v1"}'
    sla = 'featurewell_view_freshness_sla_seconds{view="orders@v1"}'
    event_us = defs.now_us() + 3_000_000  # newer than any other test's orders
    write_orders(observed_client, [ids("w")], [100.0], ["web"], event_us)
    metrics = scrape_until(port, lambda m: m.get(newest) == event_us / 1e6)
    scraped_at = time.time()
    # The writer stops here. promtool's clock starts at 0, so the gauge goes in relative to
    # the scrape: the newest event stays where it was while time moves on.
    relative = metrics[newest] - scraped_at
    labels = '{view="orders@v1",instance="s"}'
    newest_series = f"featurewell_view_newest_event_timestamp_seconds{labels}"
    series = {
        newest_series: f"{relative:.3f}x40",
        f"featurewell_view_freshness_sla_seconds{labels}": f"{metrics[sla]:g}x40",
    }
    # SLA 10 minutes, `for: 2m`: quiet at 8 minutes, paging by 15.
    tested = alert_test(
        tmp_path,
        series,
        "FeaturewellFreshnessSLABroken",
        [("8m", []), ("15m", [{"view": "orders@v1"}])],
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Had the writer kept going (one event a minute), nothing would fire.
    running = {**series, newest_series: f"{relative:.3f}+60x40"}
    quiet = alert_test(tmp_path, running, "FeaturewellFreshnessSLABroken", [("30m", [])])
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr


def test_drift_sampling_takes_only_the_features_a_call_asked_for(
    observed: ServerThread, ids: Ids, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, drift = observed.server.service.engine, observed.server.telemetry.drift
    request = FeatureRequest(
        ("orders:amount",), {"customer_id": InputColumn(Kind.STRING, [ids("nobody")])}, {}
    )
    result = observed.run(engine.get_features(request, Budget(1.0)))
    amount, channel = (drift._reservoirs[("orders@v1", f)] for f in ("amount", "channel"))
    before = (amount.defaults, channel.defaults)
    drift.observe(result)  # the sample rate is 1: every call is sampled
    assert (amount.defaults, channel.defaults) == (before[0] + 1, before[1])
    drift.observe(result, calls=3)  # three calls answered alike: each one sampled
    assert (amount.defaults, channel.defaults) == (before[0] + 4, before[1])
    # Each call of a group draws on its own: at half the calls, two of these three.
    monkeypatch.setattr(drift, "sample_rate", 0.5)
    monkeypatch.setattr(drift, "_draw", iter([0.0, 0.9, 0.2]).__next__)
    drift.observe(result, calls=3)
    assert (amount.defaults, channel.defaults) == (before[0] + 6, before[1])


PSI = 'featurewell_feature_drift_psi{feature="%s",view="orders@v1"}'


@pytest.fixture(scope="module")
def drift(
    observed: ServerThread, observed_client: FeatureClient
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """The drift gauges `observed` exports while served values are as expected (calm), and
    once they have shifted (drifted), with the shifted customers' ids."""
    port = metrics_port(observed)
    rng = np.random.default_rng(3)
    run = uuid.uuid4().hex[:8]
    now = defs.now_us()
    usual = [f"d{i}-{run}" for i in range(1500)]
    channels = rng.choice(["web", "app", "tv"], size=len(usual), p=[0.6, 0.3, 0.1]).tolist()
    write_orders(observed_client, usual, rng.normal(100, 10, len(usual)), channels, now)
    read_orders(observed_client, usual)
    calm = scrape_until(port, lambda m: PSI % "amount" in m and PSI % "channel" in m)
    # Every calm value compared before the shift: a window holding the last calm reads and the
    # first shifted ones reads as partial drift (a mean shift of 1.8 once failed below).
    reservoirs = observed.server.telemetry.drift._reservoirs
    wait_until(
        lambda: all(len(r.values()) == 0 for r in reservoirs.values()), 30, "calm values compared"
    )
    # The upstream job now emits amounts 30% higher and mostly "tv" (a new client shipped).
    shifted = [f"s{i}-{run}" for i in range(1500)]
    channels = rng.choice(["web", "app", "tv"], size=len(shifted), p=[0.2, 0.1, 0.7]).tolist()
    write_orders(observed_client, shifted, rng.normal(130, 10, len(shifted)), channels, now)
    read_orders(observed_client, shifted)
    drifted = scrape_until(port, lambda m: m.get(PSI % "amount", 0) > 0.25)
    return calm, drifted, shifted


def test_drift_gauges_rise_when_served_values_shift(
    observed: ServerThread,
    observed_client: FeatureClient,
    drift: tuple[dict[str, float], dict[str, float], list[str]],
    ids: Ids,
) -> None:
    port = metrics_port(observed)
    calm, drifted, shifted = drift
    shift = 'featurewell_feature_mean_shift{feature="amount",view="orders@v1"}'
    assert calm[PSI % "amount"] < 0.1
    assert calm[PSI % "channel"] < 0.1
    assert abs(calm[shift]) < 0.3
    assert drifted[PSI % "amount"] > 0.25
    assert drifted[shift] > 2.5
    assert scrape_until(port, lambda m: m.get(PSI % "channel", 0) > 0.25)[PSI % "channel"] > 0.25

    # The drift report an on-call engineer runs against the server.
    reports = {
        (r.view, r.feature): r for r in report.from_metrics(f"http://127.0.0.1:{port}/metrics")
    }
    assert reports[("orders@v1", "amount")].psi > 0.25
    assert "orders@v1:amount" in report.render(list(reports.values())).split("major drift")[0]

    # Unknown customers are served defaults: that shows as the default rate, not as drift.
    read_orders(observed_client, [ids(f"x{i}") for i in range(400)] + shifted[:400])
    rate = 'featurewell_feature_default_rate{feature="amount",view="orders@v1"}'
    assert 0.4 < scrape_until(port, lambda m: 0.4 < m.get(rate, 0) < 0.6)[rate] < 0.6


@pytest.mark.deploy  # promtool
def test_the_drift_alert_pages_on_the_gauges_a_server_exported(
    drift: tuple[dict[str, float], dict[str, float], list[str]], tmp_path: Path
) -> None:
    """The alert rule, fed the gauges the server exported: the shifted feature pages after its
    15 minutes, the calm one never does."""
    calm, drifted, _ = drift
    amount = 'featurewell_feature_drift_psi{view="orders@v1",feature="amount",instance="s"}'
    calm_series = {amount: f"{calm[PSI % 'amount']}x40"}
    drifted_series = {amount: f"{calm[PSI % 'amount']}x5 {drifted[PSI % 'amount']}x40"}
    labels = {"view": "orders@v1", "feature": "amount"}
    quiet = alert_test(tmp_path, calm_series, "FeaturewellFeatureDrift", [("30m", [])])
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    fired = alert_test(
        tmp_path, drifted_series, "FeaturewellFeatureDrift", [("15m", []), ("25m", [labels])]
    )
    assert fired.returncode == 0, fired.stdout + fired.stderr


# -- tracing ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def traced(cluster: LocalCluster, spans: InMemorySpanExporter) -> Iterator[ServerThread]:
    running = ServerThread(
        make_settings(cluster), defs.registry(), Tracing(SimpleSpanProcessor(spans))
    )
    yield running
    running.stop()


def finished(exporter: InMemorySpanExporter, count: int) -> list[Any]:
    """The finished spans, once there are at least `count` (a call's spans are recorded just
    after its answer)."""
    wait_until(lambda: len(exporter.get_finished_spans()) >= count, 30, f"{count} finished spans")
    return list(exporter.get_finished_spans())


def test_a_call_is_traced_under_the_callers_trace(
    traced: ServerThread, spans: InMemorySpanExporter, cluster: LocalCluster, ids: Ids
) -> None:
    caller = TracerProvider().get_tracer("ranker")
    users = [ids(f"t{i}") for i in range(30)]
    with FeatureClient(traced.address, timeout=5.0, options=ONE_CLIENT) as client:
        defs.write_profiles(client, users, ages=list(range(30)))
        defs.write_items(client, [1, 2, 3])
        spans.clear()
        with caller.start_as_current_span("rank") as parent:
            client.get_features(
                ["profile:age", "affinity:affinity"],
                entities={"user_id": users[:1], "item_id": [1, 2, 3]},
            )
    got = finished(spans, 4)
    by_name = {span.name: span for span in got}
    rpc = by_name["featurewell.v1.FeatureService/GetFeatures"]
    assert rpc.context.trace_id == parent.get_span_context().trace_id
    assert rpc.parent is not None
    assert rpc.parent.span_id == parent.get_span_context().span_id
    assert rpc.attributes["featurewell.rows"] == 3
    store = by_name["store.read"]
    assert store.parent.span_id == rpc.context.span_id
    batches = [s for s in got if s.name == "redis.pipeline"]
    assert batches
    assert all(b.parent.span_id == store.context.span_id for b in batches)
    masters = {f"{h}:{p}" for h, p in cluster.seeds}
    assert {
        f"{b.attributes['server.address']}:{b.attributes['server.port']}" for b in batches
    } <= masters
    assert sum(b.attributes["featurewell.commands"] for b in batches) == 4  # 1 user + 3 items
    transform = by_name["transform affinity"]
    assert transform.parent.span_id == rpc.context.span_id
    for child in (store, transform, *batches):
        assert rpc.start_time <= child.start_time <= child.end_time <= rpc.end_time


def test_an_error_is_traced_with_its_status(
    traced: ServerThread, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    with (
        FeatureClient(traced.address, timeout=5.0, options=ONE_CLIENT) as client,
        pytest.raises(NotFound),
    ):
        client.get_features(["profile:nope"], entities={"user_id": ["a"]})
    (span,) = finished(spans, 1)
    assert span.attributes["rpc.grpc.status_code"] == 5  # NOT_FOUND
    assert "profile" in (span.status.description or "")


def test_unsampled_calls_record_no_spans(cluster: LocalCluster) -> None:
    exporter = InMemorySpanExporter()
    running = ServerThread(
        make_settings(cluster),
        defs.registry(),
        Tracing(SimpleSpanProcessor(exporter), sampler=ALWAYS_OFF),
    )
    try:
        with FeatureClient(running.address, timeout=5.0) as client:
            client.get_features(["profile:age"], entities={"user_id": ["a"]})
    finally:
        running.stop()  # runs the last call's telemetry, then shuts the tracer down
    assert exporter.get_finished_spans() == ()


def test_tracing_is_off_unless_the_environment_turns_it_on() -> None:
    from featurewell.errors import ConfigError
    from featurewell.settings import Settings

    assert Settings.load(environ={}).telemetry.traces_exporter == "none"
    assert Tracing.from_settings(Settings.load(environ={}).telemetry) is None
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    assert Settings.load(environ=endpoint).telemetry.traces_exporter == "otlp"
    assert (
        Settings.load(environ={**endpoint, "OTEL_SDK_DISABLED": "true"}).telemetry.traces_exporter
        == "none"
    )
    assert (
        Settings.load(environ={"OTEL_TRACES_EXPORTER": "console"}).telemetry.traces_exporter
        == "console"
    )
    with pytest.raises(ConfigError, match="otlp, console or none"):
        Settings.load(environ={"OTEL_TRACES_EXPORTER": "zipkin"})


# -- several worker processes, one /metrics ----------------------------------------------------


def test_workers_metrics_are_aggregated_on_one_port(cluster: LocalCluster) -> None:
    port, metrics = free_port(), free_port()
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    command = [
        sys.executable,
        "-m",
        "featurewell.cli",
        "serve",
        "--repo",
        str(defs.__file__),
        "--workers",
        "2",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics),
        "--redis",
        seeds,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        calls = 24

        def served() -> bool:
            # A new connection per call: SO_REUSEPORT spreads connections over the workers.
            with FeatureClient(f"127.0.0.1:{port}", timeout=10.0) as client:
                client.get_features(["profile:age"], entities={"user_id": ["w"]})
            return True

        for _ in range(calls):  # the first calls wait for the workers to start
            wait_until(
                served, 30, "the workers to serve", interval=0.2, retry_on=(FeatureClientError,)
            )
        ok = 'featurewell_requests_total{code="OK",method="GetFeatures"}'
        timed = 'featurewell_request_duration_seconds_count{method="GetFeatures",shape="single"}'
        # Both at once: a worker writes the counter, then the histogram, while the parent reads.
        got = scrape_until(metrics, lambda m: m.get(ok) == calls and m.get(timed) == calls)
        # Each worker counts its own calls; the parent's endpoint shows their sum.
        assert got[ok] == calls
        assert got[timed] == calls
        assert got['featurewell_build_info{version="0.1.0"}'] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors.decode()[-2000:]


def test_a_dead_collector_does_not_hold_up_shutdown(cluster: LocalCluster) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:1", insecure=True)
    running = ServerThread(
        make_settings(cluster), defs.registry(), Tracing(BatchSpanProcessor(exporter))
    )
    with FeatureClient(running.address, timeout=5.0) as client:
        for _ in range(5):
            client.get_features(["profile:age"], entities={"user_id": ["a"]})
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 5.0
