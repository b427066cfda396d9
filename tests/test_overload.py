"""Overload control (serving/overload.py): calls past gRPC's concurrency limit are refused before
they queue, the adaptive limit sheds when handlers slow down, calls whose deadline cannot be met
are dropped before any work, and the answer margin follows what answers measure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml

from featurewell.client import ClientOptions, FeatureClient, FeatureClientError
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster
from featurewell.errors import ConfigError, DeadlineExceeded
from featurewell.serving.grpc_options import GRPC_THREADS
from featurewell.serving.overload import (
    MIN_LIMIT,
    TIMEOUT_PRIOR_S,
    AdaptiveLimit,
    Admission,
    AnswerMargin,
)
from featurewell.settings import Settings
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc
from tests.tools import ServerThread, make_settings, scrape


def _request(user: str) -> pb.GetFeaturesRequest:
    return pb.GetFeaturesRequest(
        features=["profile:age"],
        entities={"user_id": pb.Values(strings=pb.StringList(values=[user]))},
    )


def _concurrent(
    address: str, calls: int, timeout: float, before: Callable[[], None] | None = None
) -> list[tuple[float, str, str]]:
    """`calls` GetFeatures at once, one attempt each (raw stubs: no client retries); returns
    (answered at, status code name, details) sorted by answer time. `before` runs once every
    caller is connected, just before they all call."""
    outcomes: list[tuple[float, str, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(calls, action=before)

    def one(i: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.FeatureServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=5)
            start.wait()
            try:
                stub.GetFeatures(_request(f"u{i}"), timeout=timeout)
                outcome = ("OK", "")
            except grpc.RpcError as exc:
                outcome = (exc.code().name, exc.details() or "")
        with lock:
            outcomes.append((time.monotonic(), *outcome))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes)


def test_calls_past_max_concurrent_rpcs_are_refused_before_they_queue(
    cluster: LocalCluster, registry: Registry
) -> None:
    # Every call spends 400 ms in its handler; 4 may be held at once. The other 8 must be
    # answered RESOURCE_EXHAUSTED at once, not queued behind the 4 (which would answer them
    # OK 400 ms later, or let them miss their deadline).
    server = ServerThread(
        make_settings(
            cluster,
            max_concurrent_rpcs=4,
            fault_delay="single:400ms",
            overload_latency_ms=0.0,
            cache_entries=0,
        ),
        registry,
    )
    try:
        outcomes = _concurrent(server.address, 12, timeout=5.0)
    finally:
        server.stop()
    codes = [code for _, code, _ in outcomes]
    assert codes.count("OK") == 4
    assert codes.count("RESOURCE_EXHAUSTED") == 8
    # Refused before the admitted calls answered: they never waited for a slot.
    assert codes[:8] == ["RESOURCE_EXHAUSTED"] * 8
    # Refused by gRPC itself, before the handler: the handler's counters never saw them.
    assert server.server.service.calls.shed == 0


def _during_a_stall(server: ServerThread, calls: int, stall_s: float) -> list[str]:
    """`calls` GetFeatures sent at once while the server's event loop is blocked for `stall_s`
    (as a saturated loop, a GC pause or a preempted process is): their status code names, in
    answer order. The stall begins once every caller is connected, so it is spent on the calls
    alone (connecting them inside it let a slow machine send the last ones after it)."""
    blocked = threading.Event()

    def busy() -> None:
        blocked.set()
        time.sleep(stall_s)

    def stall() -> None:
        server.loop.call_soon_threadsafe(busy)
        assert blocked.wait(30)
        time.sleep(0.05)

    outcomes = _concurrent(server.address, calls, timeout=5.0, before=stall)
    return [code for _, code, _ in outcomes]


def test_calls_past_max_pending_calls_are_refused_while_the_server_is_busy(
    cluster: LocalCluster, registry: Registry
) -> None:
    # A CPU-bound server's queue is in gRPC's core, before Python takes calls up. With the
    # server's loop blocked (as a saturated one is), calls past max_pending_calls are refused
    # by the core at once; the ones within it are served once the loop is free.
    server = ServerThread(
        make_settings(cluster, max_pending_calls=3, max_concurrent_rpcs=0, cache_entries=0),
        registry,
    )
    try:
        codes = _during_a_stall(server, 10, stall_s=1.5)
    finally:
        server.stop()
    refused = codes.count("CANCELLED")
    # 3 wait in the core; gRPC's Python server also holds a couple it asked for in advance.
    assert refused >= 4
    assert codes.count("OK") == 10 - refused
    assert codes[:refused] == ["CANCELLED"] * refused  # refused while the loop was blocked


def test_a_burst_within_max_pending_calls_is_served_not_refused(
    cluster: LocalCluster, registry: Registry
) -> None:
    # Light load is not smooth: an open-loop (Poisson) schedule clumps, and a server's loop
    # stalls now and then (GC, a preempted process). Calls that arrive meanwhile wait in gRPC's
    # core, up to max_pending_calls of them: a burst that size, arriving all at once while the
    # loop is blocked, is served in full once it runs again. (The default bound, so a change to
    # it that would refuse such bursts fails here; bench/overload.py measures the rest.)
    settings = make_settings(cluster, cache_entries=0)
    burst = settings.serving.max_pending_calls
    assert burst >= 16  # a Poisson schedule at half capacity bunches well below this
    server = ServerThread(settings, registry)
    try:
        codes = _during_a_stall(server, burst, stall_s=0.5)
    finally:
        server.stop()
    assert codes == ["OK"] * burst


CHART = Path(__file__).resolve().parents[1] / "helm" / "featurewell"


def _chart_settings(cluster: LocalCluster) -> Settings:
    """The server settings the Helm chart deploys (values.yaml, with the production profile's
    overrides on top, as Helm merges them), on a test cluster."""
    environ: dict[str, str] = {}
    for values in ("values.yaml", "values-production.yaml"):
        environ.update(yaml.safe_load((CHART / values).read_text()).get("settings") or {})
    deployed = Settings.load(environ=environ).serving
    return make_settings(
        cluster,
        max_pending_calls=deployed.max_pending_calls,
        grpc_threads_nice=deployed.grpc_threads_nice,
        cache_entries=0,
    )


def test_the_charts_pending_bound_serves_its_burst_and_refuses_the_rest(
    cluster: LocalCluster, registry: Registry
) -> None:
    # The chart bounds gRPC core's pending queue by the latency budget (a few calls, not the
    # server default's 16): past capacity answered calls wait behind at most that many. During
    # a stall a burst of that size is served in full; a larger one is refused at once in C
    # (CANCELLED), apart from the bound and the couple gRPC's Python server asked for early.
    settings = _chart_settings(cluster)
    bound = settings.serving.max_pending_calls
    assert 0 < bound < Settings.load(environ={}).serving.max_pending_calls
    server = ServerThread(settings, registry)
    try:
        within = _during_a_stall(server, bound, stall_s=0.5)
        beyond = _during_a_stall(server, 4 * bound, stall_s=1.0)
    finally:
        server.stop()
        _restore_grpc_threads()
    assert within == ["OK"] * bound
    refused = beyond.count("CANCELLED")
    assert refused >= 4 * bound - bound - 3
    assert beyond == ["CANCELLED"] * refused + ["OK"] * (4 * bound - refused)


def test_the_adaptive_limit_sheds_when_handlers_slow_down(
    cluster: LocalCluster, registry: Registry
) -> None:
    # Handlers take 300 ms against a 5 ms latency target: the limit backs off from 8 towards
    # MIN_LIMIT, and calls beyond it are shed at once with RESOURCE_EXHAUSTED.
    server = ServerThread(
        make_settings(
            cluster,
            max_in_flight=8,
            max_concurrent_rpcs=0,
            fault_delay="single:300ms",
            overload_latency_ms=5.0,
            cache_entries=0,
            metrics_port=0,
        ),
        registry,
    )
    try:
        calls = server.server.service.calls
        for _ in range(3):  # slow calls one after another: each shrinks the limit
            _concurrent(server.address, 1, timeout=5.0)
        assert calls.adaptive.limit < 6
        outcomes = _concurrent(server.address, 16, timeout=5.0)
        assert server.server.metrics_port is not None
        metrics = scrape(server.server.metrics_port)
    finally:
        server.stop()
    codes = [code for _, code, _ in outcomes]
    shed = codes.count("RESOURCE_EXHAUSTED")
    assert shed >= 16 - 6
    assert codes.count("OK") >= MIN_LIMIT
    assert codes[:shed] == ["RESOURCE_EXHAUSTED"] * shed  # answered before the served ones
    assert all("adaptive limit" in details for _, code, details in outcomes if code != "OK")
    assert calls.shed_by_reason["adaptive_limit"] >= shed
    key = 'featurewell_shed_calls_total{method="GetFeatures",reason="adaptive_limit"}'
    assert metrics[key] == calls.shed_by_reason["adaptive_limit"]


def test_calls_that_cannot_meet_their_deadline_are_dropped_before_any_work(
    cluster: LocalCluster, registry: Registry
) -> None:
    # The server needs 4 s to answer (its margin) and would then wait 3 s (injected): a 2 s
    # call is refused by the server at once, not left to expire in the client. (Seconds, not
    # milliseconds: a 50 ms call could expire on a loaded machine before reaching the server.)
    server = ServerThread(
        make_settings(
            cluster,
            deadline_margin_ms=4000.0,
            fault_delay="single:3000ms",
            cache_entries=0,
            metrics_port=0,
        ),
        registry,
    )
    try:
        outcomes = [_concurrent(server.address, 1, timeout=2.0)[0] for _ in range(3)]
        calls = server.server.service.calls
        assert server.server.metrics_port is not None
        metrics = scrape(server.server.metrics_port)
    finally:
        server.stop()
    for _, code, details in outcomes:
        assert code == "DEADLINE_EXCEEDED"
        assert "the server needs to answer" in details  # the server's answer, not the client's
    assert calls.shed_by_reason["deadline"] == 3
    assert metrics['featurewell_shed_calls_total{method="GetFeatures",reason="deadline"}'] == 3


def test_adaptive_limit_backs_off_on_slow_calls_and_grows_back() -> None:
    limit = AdaptiveLimit(ceiling=100, target_s=0.010)
    now = 0.0
    for _ in range(10):
        now += 0.01
        limit.done(0.050, in_flight=100, now=now)
    assert limit.limit == pytest.approx(100 * 0.9**10)
    # Slow calls finishing together are one signal, not many.
    limit.done(0.050, in_flight=100, now=now + 0.001)
    assert limit.limit == pytest.approx(100 * 0.9**10)
    for _ in range(1000):
        now += 0.01
        limit.done(0.050, in_flight=100, now=now)
    assert limit.limit == MIN_LIMIT
    for _ in range(200):
        limit.done(0.001, in_flight=100, now=now)
    assert limit.limit == 100
    idle = AdaptiveLimit(ceiling=100, target_s=0.010)
    idle.limit = 50
    idle.done(0.001, in_flight=1, now=0.0)  # not using the limit: no evidence it may grow
    assert idle.limit == 50


def test_answer_margin_keeps_the_slow_answers_and_decays() -> None:
    margin = AnswerMargin(base_s=0.001)
    assert margin.seconds == 0.001 + TIMEOUT_PRIOR_S  # the first timeout is covered
    margin.answered(0.004)
    margin.answered(0.0005)
    assert margin.seconds == pytest.approx(0.001 + 0.004 * 0.995)
    for _ in range(2000):
        margin.answered(0.0005)
    assert margin.seconds == pytest.approx(0.001 + TIMEOUT_PRIOR_S)
    margin.answered(5.0)  # a pause: capped, so one freak sample cannot eat whole deadlines
    assert margin.seconds == pytest.approx(0.011)
    # A timeout's answer raises its own peak, which ordinary answers do not wear down.
    slow_timeout = AnswerMargin(base_s=0.001)
    slow_timeout.answered(0.003, timed_out=True)
    for _ in range(2000):
        slow_timeout.answered(0.0001)
    assert slow_timeout.seconds == pytest.approx(0.004)
    for _ in range(100):
        slow_timeout.answered(0.0001, timed_out=True)
    assert slow_timeout.seconds == pytest.approx(0.001 + 0.0001)


def test_the_client_retries_a_read_the_busy_core_refused(
    cluster: LocalCluster, registry: Registry
) -> None:
    """A read refused by the core (CANCELLED, before any work) is repeated by the client within
    its deadline, so a moment's stall costs callers latency, not errors; with one attempt the
    same refusal reaches the caller."""
    server = ServerThread(
        make_settings(cluster, max_pending_calls=1, max_concurrent_rpcs=0, cache_entries=0),
        registry,
    )
    retried = ClientOptions(timeout=5.0, read_attempts=5, retry_backoff_s=0.1)
    once = ClientOptions(timeout=5.0, read_attempts=1)
    outcomes: dict[str, list[str]] = {"retried": [], "once": []}
    lock = threading.Lock()
    try:
        blocked = threading.Event()

        def busy() -> None:
            blocked.set()
            time.sleep(0.4)

        threads_n = 12
        connected = threading.Barrier(threads_n + 1)

        def call(kind: str, options: ClientOptions, user: str) -> None:
            with FeatureClient(server.address, options=options) as client:
                grpc.channel_ready_future(client._channel).result(timeout=30)
                connected.wait(60)
                blocked.wait(30)
                try:
                    client.get_features(["profile:age"], entities={"user_id": [user]})
                    outcome = "OK"
                except FeatureClientError as exc:
                    outcome = exc.code.name
            with lock:
                outcomes[kind].append(outcome)

        threads = [
            threading.Thread(target=call, args=(kind, options, f"u{i}"))
            for i in range(threads_n // 2)
            for kind, options in (("retried", retried), ("once", once))
        ]
        for thread in threads:
            thread.start()
        connected.wait(60)  # every client connected (a fixed 0.5 s once was not enough)
        server.loop.call_soon_threadsafe(busy)
        for thread in threads:
            thread.join(30)
    finally:
        server.stop()
    assert outcomes["retried"] == ["OK"] * 6
    assert "CANCELLED" in outcomes["once"]  # the refusal the retries absorbed


def test_a_call_past_its_deadline_is_dropped_without_a_status() -> None:
    # A call taken up after its deadline passed (it waited in a busy server's queue) has no
    # caller left to answer, and gRPC's core is cancelling it: sending a status would race that
    # (and log a traceback per call when it loses). It is counted and ended without one; a call
    # with a little time left still gets its DEADLINE_EXCEEDED.
    calls = Admission(8, margin_s=0.002)
    with pytest.raises(asyncio.CancelledError):
        calls.admit("GetFeatures", 0.0)
    with pytest.raises(DeadlineExceeded, match="server needs to answer"):
        calls.admit("GetFeatures", 0.001)
    calls.admit("GetFeatures", None)  # no deadline: served
    calls.admit("GetFeatures", 1.0)
    assert calls.shed_by_reason["deadline"] == 2
    assert calls.in_flight == 0  # refused calls never count as running


def _restore_grpc_threads() -> None:
    """The test process's gRPC threads serve later tests' clients too: after a server that
    demoted them, put them back to the process's niceness (needs the privilege to raise a
    priority; without it they stay a little lower, harmlessly)."""
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    for tid, (name, _) in _niceness().items():
        if name in GRPC_THREADS:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, base)


def _until_grpc_threads_at(nice: int) -> dict[int, tuple[str, int]]:
    """This process's threads once every gRPC thread runs at `nice`, or after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        threads = _niceness()
        at = [n == nice for name, n in threads.values() if name in GRPC_THREADS]
        if (at and all(at)) or time.monotonic() > deadline:
            return threads
        time.sleep(0.1)


def _niceness() -> dict[int, tuple[str, int]]:
    """This process's threads: (Linux name, niceness) by thread id."""
    threads = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            name = (task / "comm").read_text().strip()
            threads[int(task.name)] = (name, os.getpriority(os.PRIO_PROCESS, int(task.name)))
    return threads


def test_grpc_threads_nice_must_be_a_niceness() -> None:
    settings = Settings.load(environ={})
    assert settings.with_changes(grpc_threads_nice=19).serving.grpc_threads_nice == 19
    for wrong in (-1, 20):
        with pytest.raises(ConfigError, match="grpc_threads_nice must be 0-19"):
            settings.with_changes(grpc_threads_nice=wrong)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux's /proc names threads")
def test_grpc_threads_nice_demotes_grpc_cores_threads_and_no_others(
    cluster: LocalCluster, registry: Registry
) -> None:
    # Past capacity gRPC core's threads take the event loop's core to refuse calls; demoted, they
    # take it in fewer, larger turns. Only they: the loop's thread (and any other Python thread,
    # which would hold the GIL at a low priority) keeps its niceness.
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    demoted = min(base + 3, 19)
    server = ServerThread(make_settings(cluster, grpc_threads_nice=3, cache_entries=0), registry)
    try:
        threads = _until_grpc_threads_at(demoted)
        if os.geteuid() == 0:  # may raise a priority back: as a thread gRPC starts later is
            _restore_grpc_threads()  # (its timer pool grows), undemoted...
            assert all(nice == base for name, nice in _niceness().values() if name in GRPC_THREADS)
            threads = _until_grpc_threads_at(demoted)  # ...and demoted within a second or so
    finally:
        server.stop()
        _restore_grpc_threads()
    grpc_threads = [nice for name, nice in threads.values() if name in GRPC_THREADS]
    assert grpc_threads
    assert all(nice == demoted for nice in grpc_threads)
    others = [nice for name, nice in threads.values() if name not in GRPC_THREADS]
    assert others
    assert all(nice == base for nice in others)
    assert threads[threading.get_native_id()][1] == base
    assert threads[server._thread.native_id or 0][1] == base  # the server's event loop
