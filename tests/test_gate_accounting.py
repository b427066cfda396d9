"""The gate's account of the serving core (loadtest/cores.py, verdict.py): the time other
programs took from it is the core's busy time less the serving side's own, and the serving
side's priority changes reach every thread of the server and of its Redis nodes only."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loadtest"))
import cores  # noqa: E402
import verdict  # noqa: E402


def test_others_on_the_serving_core_are_its_busy_time_less_the_serving_sides() -> None:
    before: verdict.Times = (
        0,
        {"featurewell demo": (1000.0, 0.0), "redis-server": (100.0, 0.0)},
        (5000.0, 10.0),
        None,
    )
    after: verdict.Times = (
        4_000_000,
        {
            "featurewell demo": (15000.0, 7000.0),
            "redis-server": (1200.0, 900.0),
            "featurewell stream": (900.0, 500.0),  # runs on the client core: not subtracted
        },
        (25000.0, 60.0),
        None,
    )
    waits = verdict.waits(before, after)
    assert waits["serving_core"] == {"busy_ms": 20000.0, "others_ms": 4900.0, "steal_ms": 50.0}
    assert waits["cpu_pressure_ms"] == 4000.0
    assert "client_core" not in waits  # not pinned there: not known


def test_the_probes_core_is_accounted_too() -> None:
    before: verdict.Times = (0, {}, (1000.0, 100.0), (2000.0, 10.0))
    after: verdict.Times = (0, {}, (1500.0, 600.0), (2900.0, 30.0))
    waits = verdict.waits(before, after)
    assert waits["serving_core"]["steal_ms"] == 500.0
    assert waits["client_core"] == {"busy_ms": 900.0, "steal_ms": 20.0}


def test_core_times_count_a_busy_core() -> None:
    cpu = min(os.sched_getaffinity(0))
    first = cores.core_times(frozenset({cpu}))
    assert first is not None
    allowed = os.sched_getaffinity(0)
    until = time.monotonic() + 0.3
    os.sched_setaffinity(0, {cpu})
    try:
        while time.monotonic() < until:
            pass
    finally:
        os.sched_setaffinity(0, allowed)
    second = cores.core_times(frozenset({cpu}))
    assert second is not None
    assert second[0] - first[0] >= 200  # ms: the spin's 300 ms, at a 10 ms tick
    assert cores.core_times(None) is None


@pytest.mark.skipif(not cores.can_use_fifo(), reason="needs CAP_SYS_NICE")
def test_raise_serving_lowers_the_niceness_of_the_server_and_its_redis_alone() -> None:
    # A stand-in tree: a parent (the server), a child named redis-server and another child.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "subprocess.Popen(['bash', '-c', 'exec -a redis-server sleep 30'])\n"
            "subprocess.Popen(['sleep', '30'])\n"
            "time.sleep(30)\n",
        ]
    )
    try:
        # Until both children run under their names: bash is named bash until it has exec'd
        # `sleep` as redis-server, which a loaded machine may not have done when both exist.
        def children() -> dict[str, int]:
            found = {}
            for pid in cores._descendants(parent.pid):
                with contextlib.suppress(OSError):
                    found[cores._name(pid)] = pid
            return found

        deadline = time.monotonic() + 30
        while set(children()) != {"redis-server", "sleep"} and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = children()
        assert set(kids) == {"redis-server", "sleep"}
        was = os.getpriority(os.PRIO_PROCESS, 0)  # the children's, inherited
        cores.raise_serving(parent.pid, 5)
        assert os.getpriority(os.PRIO_PROCESS, parent.pid) == max(-20, was - 5)
        assert os.getpriority(os.PRIO_PROCESS, kids["redis-server"]) == max(-20, was - 5)
        assert os.getpriority(os.PRIO_PROCESS, kids["sleep"]) == was
    finally:
        for pid in cores._descendants(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
