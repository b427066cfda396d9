"""Garbage collection paced to idle moments (serving/gc_pacing.py): passes run when no call is
in a handler, follow CPython's generation counts, and every pass is timed for
`featurewell_gc_pause_seconds`, paced or automatic."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Iterator

import pytest

from featurewell.client import FeatureClient
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster
from featurewell.serving.gc_pacing import (
    AUTOMATIC,
    FULL_PASS_EVERY_S,
    PACED,
    YOUNG_PASSES_PER_FULL,
    GcPacer,
    due_generation,
    older_thresholds,
    trim_heap,
)
from featurewell.serving.overload import Admission
from featurewell.settings import Settings
from tests.tools import ServerThread, free_port, make_settings, scrape, scrape_until

PAUSES = "featurewell_gc_pause_seconds_count"


def _garbage(cycles: int) -> None:
    """`cycles` reference cycles nobody holds: only the collector frees them."""
    for _ in range(cycles):
        a: list[object] = []
        a.append(a)


@pytest.fixture
def thresholds() -> Iterator[None]:
    """The process's collector as tests left it: thresholds restored, automatic passes kept
    away (a test's counts must not be reset by one in the middle)."""
    before = gc.get_threshold()
    gc.set_threshold(1_000_000, 1_000, 1_000)
    gc.collect()
    yield
    gc.set_threshold(*before)


async def _idle(pacer: GcPacer) -> None:
    pacer.idle()
    await asyncio.sleep(0.05)  # the pass runs as a timer callback, `after_s` later


def test_a_pass_runs_at_an_idle_moment_once_enough_young_objects_wait(thresholds: None) -> None:
    busy = [False]
    pacer = GcPacer(500, lambda: busy[0], after_s=0.002)
    try:

        async def scenario() -> list[tuple[int, str]]:
            _garbage(100)
            await _idle(pacer)  # 100 < 500: nothing to do
            assert pacer.drain() == []
            _garbage(600)
            busy[0] = True  # a call came in between the hint and the pass: not now
            await _idle(pacer)
            assert pacer.drain() == []
            assert gc.get_count()[0] >= 600
            busy[0] = False
            await _idle(pacer)
            return [(generation, trigger) for generation, trigger, _ in pacer.drain()]

        assert asyncio.run(scenario()) == [(0, PACED)]
        assert gc.get_count()[0] < 500  # the pass freed them
    finally:
        pacer.close()


def test_older_generations_follow_cpythons_counts(thresholds: None) -> None:
    gc.set_threshold(1_000_000, 3, 2)
    for _ in range(3):  # each young pass adds one to generation 1's count
        gc.collect(0)
    assert due_generation() == 0  # CPython: due once the count is above the threshold
    gc.collect(0)
    assert due_generation() == 1
    for _ in range(3):  # and each generation-1 pass one to generation 2's
        gc.collect(1)
    assert due_generation() == 2
    gc.collect(2)
    assert due_generation() == 0


def test_full_passes_are_spaced_whatever_the_counts(thresholds: None) -> None:
    gc.set_threshold(1_000_000, 0, 0)  # every pass would be a full one by the counts
    pacer = GcPacer(100, lambda: False)
    try:

        async def passes() -> list[int]:
            for _ in range(3):
                _garbage(200)
                await _idle(pacer)
            return [generation for generation, trigger, _ in pacer.drain() if trigger == PACED]

        # By the counts: young, then generation 1, then full. But the server's start-up has just
        # run a full pass, so the third waits FULL_PASS_EVERY_S: generation 1 instead.
        assert asyncio.run(passes()) == [0, 1, 1]
        assert due_generation() == 2
        pacer._last_full -= FULL_PASS_EVERY_S
        assert asyncio.run(passes()) == [2, 0, 1]
    finally:
        pacer.close()


def test_every_pass_is_timed_and_closing_stops_it(thresholds: None) -> None:
    pacer = GcPacer(0, lambda: False)  # pacing off: passes still timed
    try:
        gc.collect(1)  # a pass the pacer did not start: CPython's or anyone else's
        timed = pacer.drain()  # (another thread's automatic pass may be among them)
        assert (1, AUTOMATIC) in [(generation, trigger) for generation, trigger, _ in timed]
        assert all(0 < seconds < 5 for _, _, seconds in timed)
        asyncio.run(_idle(pacer))
        assert pacer.drain() == []  # off: idle moments collect nothing
    finally:
        pacer.close()
    gc.collect()
    assert pacer.drain() == []
    assert pacer._timed not in gc.callbacks


def test_the_admission_says_when_the_last_call_in_flight_left() -> None:
    calls = Admission(8)
    idle: list[int] = []
    calls.on_idle = lambda: idle.append(calls.in_flight)
    calls.enter("GetFeatures")
    calls.enter("GetFeatures")
    calls.leave(0)
    assert idle == []  # one still in a handler
    calls.leave(0)
    assert idle == [0]


@pytest.mark.parametrize(("pace", "paced"), [(200, True), (0, False)])
def test_a_serving_server_collects_between_calls_and_exports_its_passes(
    cluster: LocalCluster, registry: Registry, pace: int, paced: bool
) -> None:
    metrics_port = free_port()
    settings = make_settings(cluster, metrics_port=metrics_port, gc_pace_objects=pace)
    server = ServerThread(settings, registry)
    try:
        before = scrape(metrics_port)
        # Every label is exported from the start, at 0 (no pass has been drained yet).
        for generation in ("0", "1", "2"):
            for trigger in (PACED, AUTOMATIC):
                assert f'{PAUSES}{{generation="{generation}",trigger="{trigger}"}}' in before
        young = f'{PAUSES}{{generation="0",trigger="paced"}}'
        with FeatureClient(server.address, timeout=5.0) as client:
            for i in range(300):  # each call leaves gRPC's cycle behind (and the test's own)
                client.get_features(["profile:age"], {"user_id": [f"gc-{i}"]})
                _garbage(5)
        after = scrape_until(metrics_port, lambda m: m[young] > before[young], timeout=5.0)
        assert (after[young] > before[young]) is paced
    finally:
        server.stop()


@pytest.mark.parametrize(("every", "full"), [(20, 100), (5, 400), (7, 285), (3000, 1)])
def test_full_passes_stay_as_rare_when_generation_one_passes_come_oftener(
    every: int, full: int
) -> None:
    serving = Settings.load({"gc_gen1_every": str(every)}, environ={}).serving
    assert older_thresholds(serving) == (every, full)
    # By the counts, a full pass is due after about as many young passes whatever `every` is
    # (never fewer than one generation-1 pass between two full ones).
    assert every * full <= max(YOUNG_PASSES_PER_FULL, every)
    assert every * (full + 1) > YOUNG_PASSES_PER_FULL


def test_a_starting_server_sets_the_collector_and_the_gil_turns_from_its_settings(
    cluster: LocalCluster, registry: Registry, thresholds: None
) -> None:
    switch_interval = sys.getswitchinterval()
    settings = make_settings(
        cluster,
        metrics_port=-1,
        gc_gen0_threshold=40_000,
        gc_gen1_every=7,
        gil_switch_interval_ms=2.0,
    )
    server = ServerThread(settings, registry)
    try:
        assert gc.get_threshold() == (40_000, 7, 285)
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        server.stop()
        sys.setswitchinterval(switch_interval)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trimming_hands_freed_heap_pages_back_to_the_os() -> None:
    # 64 MB in 64 KB blocks (malloc's heap: under its 128 KB mmap threshold), then every other
    # one freed: holes that no automatic trim of the heap's top gives back, only a walk.
    blocks = [bytes(65_536) for _ in range(1_000)]
    del blocks[::2]
    gc.collect()
    before = _rss_bytes()
    seconds = trim_heap()
    after = _rss_bytes()
    assert seconds > 0.0
    assert before - after > 20 * 1024 * 1024, (before, after)
    assert len(blocks) == 500  # what is still held stays
