"""Steady background load for resilience tests: threads calling a real server, every call kept."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from featurewell.client import FeatureClient, FeatureClientError, Status
from tests.tools import wait_until


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

    def wait_calls(self, count: int, since: float = 0.0, timeout: float = 60.0) -> None:
        """Until `count` calls started at or after `since` (a time.monotonic()) have been
        answered: the load has run through the current phase of a test. (The timeout is only
        spent when calls stop: generous, as a loaded 2-core machine answers slowly.)"""
        wait_until(
            lambda: len(self.between(since, float("inf"))) >= count,
            timeout,
            f"{count} calls answered since the phase began",
        )

    @property
    def errors(self) -> list[Call]:
        return [c for c in self.calls if c.error is not None]


def median_ms(calls: Sequence[Call]) -> float:
    ordered = sorted(c.seconds for c in calls)
    return ordered[len(ordered) // 2] * 1000 if ordered else float("nan")
