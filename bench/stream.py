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

The repo and its events are bench/stream_events.py's; scale-out is bench/stream_scaleout.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import pyarrow as pa

from featurewell.compute.backfill import backfill
from featurewell.compute.runner import StreamRunner
from featurewell.definitions import load_repo
from featurewell.devcluster import start_local_cluster
from featurewell.engine.engine import FeatureEngine
from featurewell.settings import Settings
from featurewell.store.online import OnlineStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_events import REPO, WEEK_US, append_backlog, events, produce, source
from stream_scaleout import report as scaleout_report


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
        source(repo),
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
    await append_backlog(seeds, source(repo), backlog)
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
    events_from = next(v.events for v in registry.views.values() if v.events is not None)
    rng = np.random.default_rng(2)
    now_us = time.time_ns() // 1000
    times = np.sort(rng.integers(now_us - WEEK_US, now_us, count))
    rows = events(rng, count, 0, times)
    log = pa.table({name: [row[name] for row in rows] for name in rows[0]})
    settings = Settings.load(environ={}).with_changes(redis=tuple(seeds))
    store = await OnlineStore.connect(seeds, connect_timeout=2, connections_per_node=2)
    started = time.perf_counter()
    done = await backfill(
        registry,
        events_from,
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
            scaleout_report(cluster.seeds, Path(folder), args.workers, args.backlog, args.runs)
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
