"""Locust users speaking gRPC to featurewell, against the example repo's data
(`featurewell demo` or `featurewell materialize --repo examples/streaming_media`).

    ModelServerUser   one user per call, ids skewed (Zipf): a model server scoring a request
    RankerUser        1 user + 500 items per call: a ranker scoring candidates
    WriterUser        a player service pushing session features (user_session rows, 20 per call)

Run all three (the mixed scenario) or pick with Locust's class arguments:

    locust -f loadtest/locustfile.py --host 127.0.0.1:50051 --headless -u 10 -r 10 -t 30s
    locust -f loadtest/locustfile.py --host 127.0.0.1:50051 RankerUser

Why the calls run in a thread: Locust's documented gRPC pattern (gevent-patched grpc) adds
2.5-8 ms to every call on small machines, so its percentiles could not judge a 5 ms p99. Here
each call runs on a real OS thread (gevent's thread pool) with the plain grpc client, and its
time is taken inside that thread, around the call alone: the generator's own scheduling is not
in it. Each user keeps a fixed schedule, so a run is a fixed-throughput test.

Why each user's calls come at random moments (FEATUREWELL_LOAD_ARRIVALS=poisson, the default):
users on fixed grids lock in phase with one another. N users of a kind started together stayed
in step (the gate's 20 rankings/s came as 4 at once every 200 ms); users spread over their
kind's period fixed that, but every kind's grid still started at the same instant, so the
writer's call (every 100 ms) and a ranking (every 50 ms) reached the server together 10 times a
second for a whole run, and the single calls beside them took the slowest 2% of the gate's
samples (loadtest/README.md). Clients in production are independent: each user here starts at
a random moment of its period and draws its gaps like the probes (scenarios.schedule), each
block of gaps scaled to its mean, so a user keeps its rate exactly while no two users,
of a kind or of two kinds, keep a phase. `grid` keeps the fixed grids (user k of N at k/N of
its kind's period, every kind from the same instant), to compare.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import numpy as np
from locust import User, task

from featurewell.client import ClientOptions, FeatureClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenarios import RANKING, SINGLE, items_for, schedule, zipf_ids

USERS = int(os.environ.get("FEATUREWELL_LOAD_USERS", "5000"))
ITEMS = int(os.environ.get("FEATUREWELL_LOAD_ITEMS", "2000"))
# Calls per second per simulated user; the gate sets them to reach a fixed total rate.
SINGLE_RATE = float(os.environ.get("FEATUREWELL_SINGLE_RATE", "50"))
RANKER_RATE = float(os.environ.get("FEATUREWELL_RANKER_RATE", "5"))
WRITER_RATE = float(os.environ.get("FEATUREWELL_WRITER_RATE", "10"))
ARRIVALS = os.environ.get("FEATUREWELL_LOAD_ARRIVALS", "poisson")
if ARRIVALS not in ("poisson", "grid"):
    raise SystemExit(f"FEATUREWELL_LOAD_ARRIVALS is {ARRIVALS!r}: poisson or grid")
DEVICES = np.array(["tv", "phone", "tablet", "web"], dtype=object)


class GrpcUser(User):
    """A user whose calls run on a real thread and are timed there (see the module doc)."""

    abstract = True
    rate = 1.0  # calls per second per user

    def on_start(self) -> None:
        # One attempt: a retried call would hide a failure from the gate.
        options = ClientOptions(timeout=2.0, read_attempts=1)
        self.client = FeatureClient(self.host or "127.0.0.1:50051", options=options)
        self._due, self._gaps = _schedule(type(self))
        gevent.sleep(max(0.0, self._due - time.monotonic()))

    def wait_time(self) -> float:
        """Until this user's next call is due. Behind (a slow call), the next call goes at
        once, and the schedule moves rather than bursting."""
        now = time.monotonic()
        self._due = max(self._due + next(self._gaps), now)
        return self._due - now

    def on_stop(self) -> None:
        self.client.close()

    def timed(self, name: str, call: Callable[[], Any]) -> None:
        def run() -> tuple[float, Exception | None]:
            started = time.perf_counter()
            try:
                call()
            except Exception as exc:  # reported to Locust as a failure, never swallowed
                return time.perf_counter() - started, exc
            return time.perf_counter() - started, None

        seconds, error = gevent.get_hub().threadpool.apply(run)
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=seconds * 1000,
            response_length=0,
            exception=error,
            context={},
        )


_STARTED: dict[type[GrpcUser], int] = {}


def _schedule(cls: type[GrpcUser]) -> tuple[float, Iterator[float]]:
    """The next user of `cls` to start: its first due time (monotonic) and gaps after it."""
    index = _STARTED.get(cls, 0)
    _STARTED[cls] = index + 1
    return schedule(cls.__name__, index, cls.fixed_count, cls.rate, ARRIVALS, time.monotonic())


class ModelServerUser(GrpcUser):
    rate = SINGLE_RATE
    next_user = staticmethod(zipf_ids("u", USERS, seed=1))

    @task
    def single_entity(self) -> None:
        user = self.next_user()
        self.timed("single", lambda: self.client.get_features(SINGLE, {"user_id": [user]}))


class RankerUser(GrpcUser):
    rate = RANKER_RATE
    next_user = staticmethod(zipf_ids("u", USERS, seed=2))

    def on_start(self) -> None:
        super().on_start()
        self.rng = np.random.default_rng(3)

    @task
    def rank(self) -> None:
        user = self.next_user()
        items = items_for(self.rng, ITEMS)

        def call() -> None:
            result = self.client.get_features(RANKING, {"user_id": [user], "item_id": items})
            result.to_numpy()  # what a ranker does with it: part of the timed call

        self.timed("ranker", call)


class WriterUser(GrpcUser):
    rate = WRITER_RATE
    next_user = staticmethod(zipf_ids("u", USERS, seed=4))

    @task
    def write_sessions(self) -> None:
        """The player service pushing session features (the example's push-fed view)."""
        rng = np.random.default_rng()
        users = [self.next_user() for _ in range(20)]
        now_us = time.time_ns() // 1000
        features = {
            "device": rng.choice(DEVICES, size=20).astype(object),  # str: STRING
            "session_minutes": rng.gamma(2, 15, 20).astype(np.float32),  # float32: FLOAT32
        }
        self.timed(
            "writer",
            lambda: self.client.write_features(
                "user_session",
                {"user_id": users},
                [now_us] * 20,
                features,
            ),
        )
