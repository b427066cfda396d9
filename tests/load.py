"""Steady background load for resilience tests: threads calling a real server, every call kept."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from featurewell.client import FeatureClient, FeatureClientError, Status


@dataclass
class Call:
    started: float  # time.monotonic()
    seconds: float
    error: FeatureClientError | None = None
    ages: list[int] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    reasons: set[str] = field(default_factory=set)

    @property
    def all_present(self) -> bool:
        return self.error is None and set(self.statuses) == {Status.PRESENT}


class Load:
    """`threads` clients each reading `feature` (an int64) for all `users` in one call, back to
    back, until stopped. Use as a context manager; read `calls` afterwards."""

    def __init__(
        self,
        address: str,
        users: Sequence[str],
        threads: int = 2,
        feature: str = "profile:age",
        **kw: Any,
    ) -> None:
        self._address = address
        self._feature = feature
        self._users = list(users)
        self._kw = kw
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.calls: list[Call] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self) -> None:
        with FeatureClient(self._address, timeout=1.0) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    result = client.get_features(
                        [self._feature], entities={"user_id": self._users}, **self._kw
                    )
                except FeatureClientError as exc:
                    call = Call(started, time.monotonic() - started, exc)
                else:
                    call = Call(
                        started,
                        time.monotonic() - started,
                        ages=result.values(self._feature).tolist(),
                        statuses=result.statuses(self._feature).tolist(),
                        reasons={f.reason.name for f in result.fallbacks},
                    )
                with self._lock:
                    self.calls.append(call)

    def between(self, start: float, end: float) -> list[Call]:
        return [c for c in self.calls if start <= c.started < end]

    @property
    def errors(self) -> list[Call]:
        return [c for c in self.calls if c.error is not None]


def median_ms(calls: Sequence[Call]) -> float:
    ordered = sorted(c.seconds for c in calls)
    return ordered[len(ordered) // 2] * 1000 if ordered else float("nan")


def scrape(port: int) -> dict[str, float]:
    """A real server's /metrics as {'name{label="v",...}': value} (counters keep `_total`)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def scrape_until(
    port: int, check: Callable[[dict[str, float]], bool], timeout: float = 3.0
) -> dict[str, float]:
    """Scrape until `check(metrics)` holds (telemetry is recorded just after each answer, so
    a scrape may come a moment early); returns the last scrape either way, for the assert."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(port)
        if check(metrics) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.02)


def sleep_node(port: int, seconds: float) -> threading.Thread:
    """Block a Redis node with DEBUG SLEEP from a background thread; return once the node has
    stopped answering (a PING on another connection goes unanswered), so tests never race it."""
    from featurewell.devcluster import call

    thread = threading.Thread(target=call, args=(port, "DEBUG", "SLEEP", str(seconds)))
    thread.start()
    wait_asleep(port)
    return thread


def wait_asleep(port: int) -> None:
    """Until a Redis node stops answering PING (a DEBUG SLEEP sent elsewhere has begun)."""
    import socket

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
            probe.settimeout(0.02)
            probe.sendall(b"PING\r\n")
            try:
                probe.recv(16)
            except TimeoutError:
                return  # asleep
        time.sleep(0.005)
    raise AssertionError(f"node {port} never went to sleep")
