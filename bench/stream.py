"""Streaming engine figures: throughput draining a backlog, and appended-to-servable latency
while a producer process appends events at a fixed rate (default 5,000 events/s).

Latency is measured per event: a Redis Stream entry id starts with the millisecond Redis
appended it at, and the engine notes the time once the event's entity row is written
(`featurewell_stream_visible_seconds`). The views are the streaming-media repo's behavioural
features: counts, means, a mode, a 16-dim duration-weighted genre vector, a last value, a
decayed popularity and per user-item progress, over 4 partitions.

    python bench/stream.py [--rate 5000] [--seconds 20] [--runs 3] [--backlog 100000]
        [--checkpoint-s 5] [--refresh-s 15]

Scale-out, instead: `--workers N` drains a backlog with N `featurewell stream` processes sharing
the partitions by lease (`--lease-s`), `--runs` times, and reports events/s in all and per
worker. Its views are the user and user-item ones: the item view hears from every partition
(events are partitioned by user), so workers cannot share it (docs/computed.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from featurewell.compute.backfill import backfill
from featurewell.compute.redis_streams import append
from featurewell.compute.runner import StreamRunner
from featurewell.definitions import EventSource, load_repo
from featurewell.devcluster import start_local_cluster
from featurewell.engine.engine import FeatureEngine
from featurewell.settings import Settings
from featurewell.store.cluster import ClusterClient
from featurewell.store.online import OnlineStore

REPO = """
from datetime import timedelta
import numpy as np
import pyarrow as pa
from featurewell.definitions import (Count, DecayedSum, Embedding, Entity, EventSource, Feature,
    FeatureView, Float32, Float64, Int64, Last, Mean, Mode, String)

GENRES = np.random.default_rng(0).normal(size=(12, 16))
user = Entity("user", join_keys={"user_id": String})
item = Entity("item", join_keys={"item_id": String})
user_item = Entity.composite("user_item", user, item)
watches = EventSource("bench_watches", keys={"user_id": String, "item_id": String},
    fields={"duration_min": Float64, "hour": Int64, "genre_id": Int64, "progress": Float64},
    partitions=4)
user_activity = FeatureView("bench_user_activity", entity=user, events=watches,
    tile=timedelta(hours=1), features=[
    Feature("watch_count_7d", Int64, computed=Count(window=timedelta(days=7))),
    Feature("avg_watch_min_30d", Float32, computed=Mean("duration_min", window=timedelta(days=30))),
    Feature("preferred_hour", Int64, default=20,
            computed=Mode("hour", categories=24, window=timedelta(days=30))),
    Feature("genre_preference", Embedding(16), computed=Mean(
        lambda e: GENRES[e["genre_id"]], weight="duration_min", window=timedelta(days=30))),
    Feature("last_item", String, computed=Last("item_id")),
])
"""
ITEM_VIEW = """
item_stats = FeatureView("bench_item_stats", entity=item, events=watches,
    tile=timedelta(hours=1), features=[
    Feature("popularity", Float64, computed=DecayedSum(half_life=timedelta(days=1),
                                                       window=timedelta(days=14))),
    Feature("watch_count_24h", Int64, computed=Count(window=timedelta(hours=24))),
])
"""
PROGRESS_VIEW = """
progress = FeatureView("bench_progress", entity=user_item, events=watches,
    features=[Feature("progress", Float32, computed=Last("progress"))])
"""
REPO_HEAD = REPO
REPO = REPO_HEAD + ITEM_VIEW + PROGRESS_VIEW
USERS, ITEMS = 20_000, 5_000


def events(rng: np.random.Generator, count: int, start_id: int, times: Any) -> list[dict[str, Any]]:
    users = rng.integers(0, USERS, count)
    items = rng.zipf(1.3, count) % ITEMS
    return [
        {
            "event_id": f"e{start_id + n}",
            "event_time": int(times[n]),
            "user_id": f"u{u}",
            "item_id": f"i{i}",
            "duration_min": float(d),
            "hour": int(h),
            "genre_id": int(g),
            "progress": float(p),
        }
        for n, (u, i, d, h, g, p) in enumerate(
            zip(
                users,
                items,
                rng.gamma(2.0, 20.0, count).round(1),
                rng.integers(0, 24, count),
                rng.integers(0, 12, count),
                rng.random(count).round(3),
                strict=True,
            )
        )
    ]


async def produce(seeds: list[tuple[str, int]], repo: Path, rate: float, seconds: float) -> None:
    """Append `rate` events a second for `seconds`, in 10 ms slices (its own process)."""
    source = _source(repo)
    cluster = ClusterClient(seeds, connections_per_node=1)
    await cluster.start()
    rng = np.random.default_rng(int(time.time()))
    per_slice = max(1, int(rate / 100))
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        now_us = time.time_ns() // 1000
        await append(cluster, source, events(rng, per_slice, sent + 10**9, [now_us] * per_slice))
        sent += per_slice
        ahead = sent / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
    await cluster.close()
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - started}), flush=True)


def _source(repo: Path) -> EventSource:
    registry = load_repo(str(repo))
    return next(v.events for v in registry.views.values() if v.events is not None)


async def _runner(
    seeds: list[tuple[str, int]],
    repo: Path,
    group: str,
    checkpoint_s: float = 5.0,
    refresh_s: float = 60.0,
) -> StreamRunner:
    registry = load_repo(str(repo))
    settings = Settings.load(environ={}).with_changes(redis=tuple(seeds))
    store = await OnlineStore.connect(seeds, connect_timeout=2, connections_per_node=2)
    # Configured as `featurewell stream` runs it.
    runner = StreamRunner(
        registry,
        _source(repo),
        FeatureEngine(registry, store, settings.serving),
        group=group,
        batch_size=2000,
        checkpoint_s=checkpoint_s,
        refresh_s=refresh_s,
        freeze_gc=True,
    )
    await runner.start()
    return runner


async def throughput(seeds: list[tuple[str, int]], repo: Path, backlog: int) -> dict[str, float]:
    """Append a backlog (a week of history, in time order), then time draining it."""
    source = _source(repo)
    cluster = ClusterClient(seeds, connections_per_node=1)
    await cluster.start()
    rng = np.random.default_rng(1)
    now_us = time.time_ns() // 1000
    times = np.sort(rng.integers(now_us - 7 * 86_400_000_000, now_us, backlog))
    for start in range(0, backlog, 5000):
        chunk = times[start : start + 5000]
        await append(cluster, source, events(rng, len(chunk), start, chunk))
    await cluster.close()
    runner = await _runner(seeds, repo, "bench-backlog")
    started = time.perf_counter()
    while runner.stats.events < backlog:
        await runner.step()
    await runner.checkpoint()
    seconds = time.perf_counter() - started
    return {
        "events": backlog,
        "seconds": seconds,
        "events_per_s": backlog / seconds,
        "rows_written": runner.stats.rows_written,
    }


async def backfill_throughput(
    seeds: list[tuple[str, int]], repo: Path, count: int
) -> dict[str, float]:
    """Time `featurewell backfill` (batch engine, online rows, stream state) over a week's
    log of `count` events."""
    registry = load_repo(str(repo))
    source = next(v.events for v in registry.views.values() if v.events is not None)
    rng = np.random.default_rng(2)
    now_us = time.time_ns() // 1000
    times = np.sort(rng.integers(now_us - 7 * 86_400_000_000, now_us, count))
    rows = events(rng, count, 0, times)
    log = pa.table({name: [row[name] for row in rows] for name in rows[0]})
    settings = Settings.load(environ={}).with_changes(redis=tuple(seeds))
    store = await OnlineStore.connect(seeds, connect_timeout=2, connections_per_node=2)
    started = time.perf_counter()
    done = await backfill(
        registry,
        source,
        FeatureEngine(registry, store, settings.serving),
        log,
        as_of_us=now_us,
        seed_group="bench-backfill",
    )
    seconds = time.perf_counter() - started
    await store.close()
    return {
        "events": count,
        "seconds": seconds,
        "events_per_s": count / seconds,
        "entities": sum(d.entities for d in done),
    }


async def latency(
    seeds: list[tuple[str, int]],
    repo: Path,
    rate: float,
    seconds: float,
    group: str,
    checkpoint_s: float,
    refresh_s: float,
) -> dict[str, float]:
    runner = await _runner(seeds, repo, group, checkpoint_s, refresh_s)
    while await runner.step():  # start from the stream's end: drain what is there
        pass
    await runner.flush()
    runner.stats.visible_recent_ms = deque()  # keep every event's figure for this run
    consumed_before = runner.stats.events
    producer = subprocess.Popen(  # noqa: ASYNC220 (started once; Popen does not wait)
        [
            sys.executable,
            __file__,
            "--produce",
            "--repo",
            str(repo),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--seeds",
            ",".join(f"{h}:{p}" for h, p in seeds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    started = time.perf_counter()
    while producer.poll() is None:
        if not await runner.step():
            await asyncio.sleep(0.005)
    while await runner.step():
        pass
    await runner.flush()
    elapsed = time.perf_counter() - started
    assert producer.stdout is not None
    sent = json.loads(producer.stdout.read().strip().splitlines()[-1])
    samples = np.concatenate(list(runner.stats.visible_recent_ms))
    return {
        "rate_sent": sent["sent"] / sent["seconds"],
        "rate_consumed": (runner.stats.events - consumed_before) / elapsed,
        "p50_ms": float(np.percentile(samples, 50)),
        "p99_ms": float(np.percentile(samples, 99)),
        "max_ms": float(samples.max()),
        "events": len(samples),
    }


def scaleout(
    seeds: list[tuple[str, int]], folder: Path, workers: int, backlog: int, run: int
) -> dict[str, Any]:
    """Append a backlog (a week, in time order) to a source of its own, start `workers`
    processes sharing its partitions, and time them from the first event applied to the last."""
    repo = folder / f"shared_{workers}_{run}.py"
    repo.write_text((REPO_HEAD + PROGRESS_VIEW).replace("bench_", f"bench{workers}x{run}_"))
    source = _source(repo)

    async def fill() -> None:
        cluster = ClusterClient(seeds, connections_per_node=1)
        await cluster.start()
        rng = np.random.default_rng(1)
        now_us = time.time_ns() // 1000
        times = np.sort(rng.integers(now_us - 7 * 86_400_000_000, now_us, backlog))
        for start in range(0, backlog, 5000):
            chunk = times[start : start + 5000]
            await append(cluster, source, events(rng, len(chunk), start, chunk))
        await cluster.close()

    asyncio.run(fill())
    ports = [_free_port() for _ in range(workers)]
    command = [sys.executable, "-m", "featurewell.cli", "stream", "--repo", str(repo)]
    command += ["--source", source.name, "--redis", ",".join(f"{h}:{p}" for h, p in seeds)]
    command += ["--lease-s", "1.5", "--batch-size", "2000"]
    processes = [
        subprocess.Popen(
            [*command, "--consumer", f"w{n}", "--metrics-port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n, port in enumerate(ports)
    ]
    first = last = 0.0
    counts = [0] * workers
    cpu_first: list[float] = []
    try:
        deadline = time.monotonic() + 600
        while sum(counts) < backlog and time.monotonic() < deadline:
            time.sleep(0.05)
            counts = [_consumed(port, source.name) for port in ports]
            if not first and any(counts):
                first = time.monotonic()
                cpu_first = [_cpu_s(p.pid) for p in processes]
            last = time.monotonic()
        cpu = sum(_cpu_s(p.pid) for p in processes) - sum(cpu_first)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(60)
    seconds = last - first
    return {
        "events": sum(counts),
        "seconds": seconds,
        "events_per_s": sum(counts) / seconds,
        "per_worker": [c / seconds for c in counts],
        "per_cpu_s": sum(counts) / cpu,
    }


def _cpu_s(pid: int) -> float:
    """CPU seconds a process used so far (Linux: utime + stime, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _consumed(port: int, source: str) -> int:
    """Events whose rows a worker wrote (each once: the appended-to-servable histogram's count;
    the events counter counts an event once per view)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return 0  # not up yet
    line = f'featurewell_stream_visible_seconds_count{{source="{source}"}} '
    for row in text.splitlines():
        if row.startswith(line):
            return int(float(row[len(line) :]))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--checkpoint-s", type=float, default=5.0)
    # Every run passes through a refresh (a visit of every entity in memory), at 4x the CLI's
    # default frequency: its stall, if any, shows in the p99.
    parser.add_argument("--refresh-s", type=float, default=15.0)
    parser.add_argument("--workers", type=int, help="measure N workers sharing the partitions")
    parser.add_argument("--produce", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repo", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.produce:
        seeds = [(h, int(p)) for h, p in (s.split(":") for s in args.seeds.split(","))]
        asyncio.run(produce(seeds, Path(args.repo), args.rate, args.seconds))
        return
    with tempfile.TemporaryDirectory() as folder, start_local_cluster(3) as cluster:
        if args.workers:
            drains, per_cpu = [], []
            for n in range(args.runs):
                got = scaleout(cluster.seeds, Path(folder), args.workers, args.backlog, n)
                drains.append(got["events_per_s"])
                per_cpu.append(got["per_cpu_s"])
                shares = ", ".join(f"{rate:,.0f}" for rate in got["per_worker"])
                print(
                    f"run {n + 1}: {args.workers} workers drained {got['events']:,} events in "
                    f"{got['seconds']:.1f} s = {got['events_per_s']:,.0f} events/s "
                    f"({got['events_per_s'] / args.workers:,.0f} per worker; each: {shares}); "
                    f"{got['per_cpu_s']:,.0f} events per worker CPU-second",
                    flush=True,
                )
            median = float(np.median(drains))
            print(
                f"median of {len(drains)} runs, {args.workers} workers: {median:,.0f} events/s, "
                f"{median / args.workers:,.0f} per worker (spread {min(drains):,.0f}-"
                f"{max(drains):,.0f}); {float(np.median(per_cpu)):,.0f} events per worker "
                "CPU-second"
            )
            return
        repo = Path(folder) / "repo.py"
        repo.write_text(REPO)
        drained = asyncio.run(throughput(cluster.seeds, repo, args.backlog))
        print(
            f"backlog: {drained['events']:,} events in {drained['seconds']:.1f} s = "
            f"{drained['events_per_s']:,.0f} events/s ({drained['rows_written']:,} rows)"
        )
        filled = asyncio.run(backfill_throughput(cluster.seeds, repo, args.backlog))
        print(
            f"backfill: {filled['events']:,} events in {filled['seconds']:.1f} s = "
            f"{filled['events_per_s']:,.0f} events/s ({filled['entities']:,.0f} entity rows "
            "online, streaming state seeded)"
        )
        runs = []
        for n in range(args.runs):
            got = asyncio.run(
                latency(
                    cluster.seeds,
                    repo,
                    args.rate,
                    args.seconds,
                    f"live-{n}",
                    args.checkpoint_s,
                    args.refresh_s,
                )
            )
            runs.append(got)
            print(
                f"run {n + 1}: sent {got['rate_sent']:,.0f}/s, consumed "
                f"{got['rate_consumed']:,.0f}/s; appended -> servable p50 "
                f"{got['p50_ms']:.0f} ms, p99 {got['p99_ms']:.0f} ms, max "
                f"{got['max_ms']:.0f} ms over {got['events']:,} events"
            )
        if not runs:
            return
        p50 = float(np.median([r["p50_ms"] for r in runs]))
        p99 = float(np.median([r["p99_ms"] for r in runs]))
        print(
            f"median of {len(runs)} runs at {args.rate:,.0f} events/s: p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms (aim: p99 <= 1000 ms)"
        )


if __name__ == "__main__":
    main()
