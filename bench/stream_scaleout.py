"""Streaming scale-out (`bench/stream.py --workers N`): N `featurewell stream` processes share one
source's partitions by lease and drain a backlog; events/s in all, per worker, per CPU-second.

Its views are the user and user-item ones: the item view hears from every partition (events are
partitioned by user), so workers cannot share it (docs/computed.md). Progress is read from each
worker's /metrics, so the figures are the processes' own, as deployed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from stream_events import PROGRESS_VIEW, REPO_HEAD, append_backlog, source

from featurewell.devcluster import free_ports


def report(
    seeds: list[tuple[str, int]], folder: Path, workers: int, backlog: int, runs: int
) -> None:
    """`runs` drains, a line each, then their median."""
    drains, per_cpu = [], []
    for n in range(runs):
        got = scaleout(seeds, folder, workers, backlog, n)
        drains.append(got["events_per_s"])
        per_cpu.append(got["per_cpu_s"])
        shares = ", ".join(f"{rate:,.0f}" for rate in got["per_worker"])
        print(
            f"run {n + 1}: {workers} workers drained {got['events']:,} events in "
            f"{got['seconds']:.1f} s = {got['events_per_s']:,.0f} events/s "
            f"({got['events_per_s'] / workers:,.0f} per worker; each: {shares}); "
            f"{got['per_cpu_s']:,.0f} events per worker CPU-second",
            flush=True,
        )
    median = float(np.median(drains))
    print(
        f"median of {len(drains)} runs, {workers} workers: {median:,.0f} events/s, "
        f"{median / workers:,.0f} per worker (spread {min(drains):,.0f}-"
        f"{max(drains):,.0f}); {float(np.median(per_cpu)):,.0f} events per worker "
        "CPU-second"
    )


def scaleout(
    seeds: list[tuple[str, int]], folder: Path, workers: int, backlog: int, run: int
) -> dict[str, Any]:
    """Append a backlog (a week, in time order) to a source of its own, start `workers`
    processes sharing its partitions, and time them from the first event applied to the last."""
    repo = folder / f"shared_{workers}_{run}.py"
    repo.write_text((REPO_HEAD + PROGRESS_VIEW).replace("bench_", f"bench{workers}x{run}_"))
    shared = source(repo)
    asyncio.run(append_backlog(seeds, shared, backlog))
    ports = free_ports(workers)
    command = [sys.executable, "-m", "featurewell.cli", "stream", "--repo", str(repo)]
    command += ["--source", shared.name, "--redis", ",".join(f"{h}:{p}" for h, p in seeds)]
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
            counts = [_consumed(port, shared.name) for port in ports]
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
    if seconds <= 0 or cpu <= 0:  # drained between two polls: nothing to divide by
        raise SystemExit(
            f"{sum(counts):,} events were consumed before the first 50 ms poll could time them: "
            "measure with a larger --backlog (100,000 is the documented one)"
        )
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


def _consumed(port: int, source_name: str) -> int:
    """Events whose rows a worker wrote (each once: the appended-to-servable histogram's count;
    the events counter counts an event once per view)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return 0  # not up yet
    line = f'featurewell_stream_visible_seconds_count{{source="{source_name}"}} '
    for row in text.splitlines():
        if row.startswith(line):
            return int(float(row[len(line) :]))
    return 0
