"""Helpers the tests share: a featurewell server on a thread of its own, settings for the shared
cluster, waiting for a condition with a deadline, Redis node helpers, /metrics scrapes, and the
external checkers the deploy tests run (promtool and the Grafana schema type check: `make test`
installs both; run directly without them, the tests fail saying how to get them)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest

from featurewell.app import start_server
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster
from featurewell.serving.server import Server
from featurewell.settings import Settings
from featurewell.store.connection import encode_command
from featurewell.telemetry.tracing import Tracing
from featurewell.values import ColumnValues

T = TypeVar("T")
# The `ids` fixture (conftest.py): entity ids unique to the test.
Ids = Callable[[str], str]

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "featurewell.json"
SCHEMA_CHECK = ROOT / ".venv" / "grafana-schema"


def fixed(values: ColumnValues) -> npt.NDArray[Any]:
    """A decoded fixed-width column, as the array it is (list features decode to Ragged)."""
    assert isinstance(values, np.ndarray), type(values)
    return values


# -- a server to call ---------------------------------------------------------------------------


def make_settings(cluster: LocalCluster, **changes: Any) -> Settings:
    """Settings for a test server on `cluster`: port 0, no /metrics unless asked for."""
    base = Settings.load(environ={}).with_changes(
        redis=tuple(cluster.seeds), port=0, metrics_port=-1, max_rows=2000, grace_period_s=1.0
    )
    return base.with_changes(**changes)


class ServerThread:
    """A featurewell server running on its own event loop in a background thread, so tests can
    call it with blocking clients."""

    def __init__(
        self, settings: Settings, registry: Registry | None, tracing: Tracing | None = None
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: Server = self.run(start_server(settings, registry, tracing))
        self.address = f"127.0.0.1:{self.server.port}"

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the server's loop and return its result (30 s at most)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=30)

    def stop(self) -> None:
        self.run(self.server.stop(grace=0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice), for a server or /metrics."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- waiting for a condition --------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.01,
    retry_on: tuple[type[Exception], ...] = (),
) -> T:
    """Call `predicate` every `interval` s until it returns something truthy, and return that.
    After `timeout` s fail the test saying `what` never happened. Exceptions of the `retry_on`
    types count as "not yet" (the last one is reported); any other propagates."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    problem: Exception | None = None
    while True:
        try:
            value = predicate()
        except retry_on as exc:
            problem = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = f" (last error: {problem!r})" if problem is not None else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")


async def wait_until_async(
    predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.01
) -> T:
    """`wait_until` for coroutines: sleeps with asyncio, so the loop runs what the predicate
    waits for (a connection noticed closed, a task's progress)."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
    return value


# -- Redis nodes ---------------------------------------------------------------------------------


class NodeSleep:
    """A DEBUG SLEEP in progress on one Redis node (see `sleep_node`)."""

    def __init__(self, port: int, seconds: float) -> None:
        self.port = port
        self._replies: list[Any] = []
        self.sent = threading.Event()  # the DEBUG SLEEP is on its way to the node
        self._thread = threading.Thread(target=self._sleep, args=(seconds,))
        self._thread.start()

    def _sleep(self, seconds: float) -> None:
        reply = b""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
                sock.sendall(encode_command("DEBUG", "SLEEP", str(seconds)))
                self.sent.set()
                while not reply.endswith(b"\r\n") and (chunk := sock.recv(64)):
                    reply += chunk  # a one-line reply: +OK once the node wakes, or an error
        finally:
            self._replies.append(reply)
            self.sent.set()  # (a failure shows in join)

    def join(self) -> None:
        """Until the node has woken up; fails when it refused to sleep (the test proved
        nothing)."""
        self._thread.join()
        assert self._replies == [b"+OK\r\n"], f"DEBUG SLEEP on {self.port}: {self._replies}"


def sleep_node(port: int, seconds: float) -> NodeSleep:
    """Block a Redis node with DEBUG SLEEP from a background thread; return once the node has
    stopped answering (a PING on another connection goes unanswered), so tests never race it.
    `join()` the result before the test ends."""
    sleeping = NodeSleep(port, seconds)
    # Probe only once the DEBUG SLEEP has been sent: on a loaded machine an awake node can
    # leave a PING unanswered for 20 ms too, and taken for asleep before the DEBUG SLEEP even
    # left, it would answer the test's own calls.
    assert sleeping.sent.wait(30), f"DEBUG SLEEP to {port} never sent"
    wait_asleep(port)
    return sleeping


def wait_asleep(port: int) -> None:
    """Until a Redis node stops answering PING (a DEBUG SLEEP sent elsewhere has begun)."""

    def asleep() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
            probe.settimeout(0.02)
            probe.sendall(b"PING\r\n")
            try:
                probe.recv(16)
            except TimeoutError:
                return True
        return False

    wait_until(asleep, 30, f"node {port} to go to sleep", interval=0.005)


# -- /metrics -------------------------------------------------------------------------------------


def metrics_text(port: int) -> str:
    """A real server's /metrics page, as Prometheus reads it."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def scrape(port: int) -> dict[str, float]:
    """A real server's /metrics as {'name{label="v",...}': value} (counters keep `_total`)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text(port)):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def scrape_until(
    port: int, check: Callable[[dict[str, float]], bool], timeout: float = 30.0
) -> dict[str, float]:
    """Scrape until `check(metrics)` holds (telemetry is recorded just after each answer, so
    a scrape may come a moment early); returns the last scrape either way, for the assert.
    The timeout is only spent when the check never holds: generous, for a loaded machine."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(port)
        if check(metrics) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.02)


# -- external checkers (the deploy tests) ---------------------------------------------------------


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is missing: run `make test` (installs it) or apt-get install prometheus"
        )
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def type_check_dashboard(
    dashboard: dict[str, object], workdir: Path
) -> subprocess.CompletedProcess[str]:
    """tsc on the dashboard as a literal of Grafana's `Dashboard` type (strict, excess
    properties rejected)."""
    tsc = SCHEMA_CHECK / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        pytest.fail("the Grafana schema check is not installed: run `make test` (npm ci)")
    template = (ROOT / "deploy" / "grafana" / "schema-check" / "check.ts.in").read_text()
    # Inside the install folder, so `@grafana/schema` resolves from its node_modules.
    source = SCHEMA_CHECK / f"check-{workdir.name}.ts"
    source.write_text(template.replace("__DASHBOARD__", json.dumps(dashboard, indent=1)))
    config = SCHEMA_CHECK / f"tsconfig-{workdir.name}.json"
    config.write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "strict": True,
                    "noEmit": True,
                    "module": "esnext",
                    "moduleResolution": "bundler",
                    "target": "es2022",
                    "skipLibCheck": True,
                },
                "files": [source.name],
            }
        )
    )
    try:
        return subprocess.run(
            [str(tsc), "-p", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=SCHEMA_CHECK,
        )
    finally:
        source.unlink()
        config.unlink()


def alert_test(
    tmp_path: Path,
    series: dict[str, str],
    alert: str,
    expectations: list[tuple[str, list[dict[str, str]]]],
) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` of deploy/'s rules on `series` ({series: values}): at each
    (eval_time, alerts) the rule `alert` must fire exactly with those label sets (the rule's
    own labels and annotations are added here)."""
    import yaml

    rule = next(
        r
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
        if r.get("alert") == alert
    )

    def expected(labels: dict[str, str]) -> dict[str, object]:
        annotations = {
            key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
            for key, text in rule["annotations"].items()
        }
        return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}

    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": alert,
                        "exp_alerts": [expected(labels) for labels in alerts],
                    }
                    for at, alerts in expectations
                ],
            }
        ],
    }
    path = tmp_path / f"{alert}.test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return promtool("test", "rules", str(path))
