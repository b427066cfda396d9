"""Start-up and outage, with real processes: a server started before its cluster waits NOT_SERVING
and serves once the cluster answers; a running server's full outage (health, answers, a log that
names the nodes and does not repeat every 100 ms); `serve --port 0` announces its addresses; the
shutdown count of calls cut off by the grace period."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featurewell.client import ClientOptions, FeatureClient, FeatureClientError, Status
from featurewell.devcluster import LocalCluster, free_ports, start_local_cluster
from tests import defs
from tests.tools import Ids, ServerThread, make_settings, wait_until

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "streaming_media"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Serve:
    """`featurewell serve` as a process: its JSON line from stdout, its log (stderr) read on a
    thread as it comes."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "featurewell.cli", "serve", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr:
            for line in self.process.stderr:
                self.log.append(line)

    def announced(self) -> dict[str, Any]:
        """The first stdout line, which must be the JSON announcement."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "".join(self.log)
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    def text(self) -> str:
        return "".join(list(self.log))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


def health(address: str, service: str = "featurewell.v1.FeatureService") -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


@pytest.mark.redis  # starts its own cluster, after the server
def test_server_started_before_its_cluster_serves_once_it_answers() -> None:
    ports = free_ports(3)
    nodes = [f"127.0.0.1:{port}" for port in ports]
    server = Serve(
        *("--repo", str(EXAMPLE), "--redis", ",".join(nodes), "--port", "0"),
        *("--metrics-port", "0", "--redis-retry-max-s", "0.5", "--connect-timeout-s", "0.5"),
    )
    try:
        line = server.announced()
        assert (line["event"], line["ready"]) == ("serving", False), line
        address = line["grpc"]
        assert health(address) == NOT_SERVING  # not ready: readiness probes keep calls away
        assert health(address, "") == SERVING  # alive: liveness probes do not restart it
        with (
            FeatureClient(address, timeout=5) as client,
            pytest.raises(FeatureClientError) as refused,
        ):
            client.get_features(["item_genre:*"], entities={"item_id": ["i000001"]})
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert "the feature store is not reachable yet" in str(refused.value)
        assert all(node in str(refused.value) for node in nodes), refused.value
        time.sleep(2.5)  # several attempts (0.2 s doubling to 0.5 s), one log line
        with start_local_cluster(3, ports=ports):
            wait_until(lambda: health(address) == SERVING, 30, "the server to turn SERVING")
            with FeatureClient(address, timeout=5) as client:
                result = client.get_features(["item_genre:*"], entities={"item_id": ["i000001"]})
            # Nothing was loaded: every value NOT_FOUND, none a fallback.
            assert result.count(Status.NOT_FOUND) == len(result.columns)
            assert server.stop() == 0
    finally:
        server.stop()
    log = server.text()
    assert f"Redis Cluster unreachable at start-up: {', '.join(nodes)} do not answer" in log, log
    assert "check the --redis addresses" not in log
    assert "still not ready" not in log  # rate-limited: the next line is due 30 s later
    assert "Redis Cluster answered after" in log


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    with start_local_cluster(masters=3, node_timeout_ms=1000) as running:
        yield running


def test_full_outage_of_a_running_server(
    own_cluster: LocalCluster, ids: Ids, caplog: pytest.LogCaptureFixture
) -> None:
    """All nodes down under a running server: health stays SERVING (every replica would go
    NOT_SERVING at once), reads answer their defaults flagged FALLBACK, writes UNAVAILABLE;
    the topology retry log names the nodes once, not every 100 ms; it serves again after."""
    caplog.set_level(logging.WARNING, logger="featurewell")
    running = ServerThread(make_settings(own_cluster), defs.registry())
    users = [ids("u1")]
    try:
        with FeatureClient(running.address, timeout=5) as client:
            defs.write_profiles(client, users, ages=[30])
            for port in own_cluster.masters:
                own_cluster.kill(port)
            time.sleep(2.0)  # about 20 retries of the topology at 0.1 s
            assert health(running.address) == SERVING
            result = client.get_features(["profile:age"], entities={"user_id": users})
            assert result.count(Status.FALLBACK) == 1, result
            with pytest.raises(FeatureClientError) as refused:
                defs.write_profiles(client, users, ages=[31])
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE

            def retries() -> list[str]:
                return [r.getMessage() for r in caplog.records if "topology" in r.getMessage()]

            wait_until(retries, 20, "a topology retry to be logged")
            time.sleep(2.0)  # 20 more retries at 0.1 s
            assert len(retries()) == 1, retries()
            versions = [r for r in caplog.records if "promoted versions" in r.getMessage()]
            assert len(versions) == 1, versions  # polled every second, logged once
            logged = retries()[0]
            assert "Redis Cluster unreachable" in logged
            assert all(str(port) in logged for port in own_cluster.masters), logged
            for port in own_cluster.masters:
                own_cluster.restart(port)

            def served() -> bool:
                answer = client.get_features(["profile:age"], entities={"user_id": users})
                return answer.count(Status.FALLBACK) == 0

            wait_until(served, 30, "reads to reach the restarted cluster")
        assert any("readable again" in r.getMessage() for r in caplog.records)
    finally:
        running.stop()


def test_shutdown_counts_only_calls_cut_off_by_the_grace_period(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="featurewell.server")
    # Each call waits 2 s in its handler; the short calls' deadline is 0.5 s (a 50 ms one could
    # expire on a loaded machine before its handler even began, and never count as cancelled).
    running = ServerThread(make_settings(cluster, fault_delay="single:2000ms"), defs.registry())
    calls = running.server.service.calls
    stopped = False
    try:
        with FeatureClient(
            running.address, options=ClientOptions(timeout=0.5, read_attempts=1)
        ) as client:
            for _ in range(3):  # deadline expires while the handler waits: the client cancels
                with pytest.raises(FeatureClientError):
                    client.get_features(["profile:age"], entities={"user_id": ["u"]})
        wait_until(lambda: calls.cancelled == 3 and calls.in_flight == 0, 30, "3 cancellations")
        outcome: list[str] = []

        def long_call() -> None:
            with FeatureClient(
                running.address, options=ClientOptions(timeout=10, read_attempts=1)
            ) as client:
                try:
                    client.get_features(["profile:age"], entities={"user_id": ["u"]})
                    outcome.append("answered")
                except FeatureClientError as exc:
                    outcome.append(exc.code.name)

        caller = threading.Thread(target=long_call)
        caller.start()
        wait_until(lambda: calls.in_flight == 1, 30, "the long call to be in flight")
        running.run(running.server.stop(grace=0.05))  # 0.05 s < the 2 s injected delay
        stopped = True
        caller.join(timeout=10)
        assert outcome in (["CANCELLED"], ["UNAVAILABLE"]), outcome
        assert (calls.cancelled, calls.cut_off) == (4, 1)
        assert "1 calls were in flight, 1 cut off by the grace period" in caplog.text
    finally:
        if not stopped:
            running.stop()
        else:
            running.loop.call_soon_threadsafe(running.loop.stop)
            running._thread.join(timeout=10)
            running.loop.close()


def test_serve_port_0_announces_its_addresses_and_servers_share_a_host(
    cluster: LocalCluster,
) -> None:
    seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
    common = ("--repo", str(EXAMPLE), "--redis", seeds, "--port", "0")
    first, second = Serve(*common, "--metrics-port", "0"), Serve(*common, "--metrics-port", "0")
    try:
        lines = [first.announced(), second.announced()]
        for line in lines:
            assert (line["event"], line["ready"]) == ("serving", True), line
            assert health(line["grpc"]) == SERVING
            with urllib.request.urlopen(f"http://{line['metrics']}/metrics", timeout=5) as page:
                assert b"featurewell_" in page.read()
        assert lines[0]["grpc"] != lines[1]["grpc"]
        assert lines[0]["metrics"] != lines[1]["metrics"]
        taken = lines[0]["metrics"].rpartition(":")[2]
        third = Serve(*common, "--metrics-port", taken)
        assert third.process.wait(timeout=30) == 2
        assert third.stop() == 2
        assert f"cannot serve /metrics on port {taken}" in third.text()
        assert "--metrics-port" in third.text()
    finally:
        assert first.stop() == 0
        assert second.stop() == 0
