"""The demo's training/serving skew loop (docs/skew.md): an offline store in the demo's workdir
that the server logs what it serves to and the stream writes history to, the computed views'
starting history from the batch engine, and `featurewell skew --every` as its own process
exporting the gauges the dashboard's "Training/serving skew" row charts. A clean demo shows
ratio 0: what was served is what training would hold.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from datetime import timedelta
from pathlib import Path

from featurewell.compute.backfill import Backfilled, backfill, read_log
from featurewell.definitions import Registry
from featurewell.devcluster import DIE_WITH_PARENT
from featurewell.engine.engine import FeatureEngine
from featurewell.settings import Settings

# Every answer logged (production samples, e.g. 0.01) and written each second (production: 5 s),
# so the skew check sees ordinary demo traffic within seconds.
DEMO_SERVED_LOG = {"served_log_rate": 1.0, "served_log_flush_s": 1.0}
# The check's pace: every 15 s (production: every minute) over the last 10 minutes, leaving out
# the last 10 s, longer than the served log's flush and the stream's 5 s history checkpoints.
SKEW_EVERY, SKEW_WINDOW, SKEW_LAG = "15s", "10m", "10s"
_READY = re.compile(r"skew gauges at (\S+)")
_WEEK_US = 7 * 86_400 * 1_000_000
_TASKS: set[asyncio.Task[None]] = set()


def with_offline_store(settings: Settings, repo: Path) -> Settings:
    """`settings` with an offline store (the user's `offline_dir`, else `repo`/offline) and the
    demo's served-feature log where the user set none."""
    changes: dict[str, object] = {
        name: value for name, value in DEMO_SERVED_LOG.items() if name not in settings.given
    }
    offline = Path(settings.offline.dir or repo / "offline")
    offline.mkdir(parents=True, exist_ok=True)
    return settings.with_changes(offline_dir=str(offline), **changes)


async def backfill_with_history(
    settings: Settings, registry: Registry, engine: FeatureEngine
) -> list[Backfilled]:
    """Every event source's Parquet log through the batch engine, online (as `featurewell
    materialize` does) and into the offline history, ending with a snapshot at the very as-of
    time the online rows are written at, so the history holds what the store serves."""
    # Snapshots fall on multiples of the step after the first event: a step of about a week
    # (daily ones took seconds more to start) that divides the as-of time (within a few ms of
    # now) makes the last snapshot the online rows.
    now_us = time.time_ns() // 1000
    steps = now_us // _WEEK_US
    step_us = now_us // steps
    as_of_us = steps * step_us
    sources = {v.events.name: v.events for v in registry.views.values() if v.events is not None}
    done: list[Backfilled] = []
    for source in sources.values():
        if not source.parquet:
            continue
        done += await backfill(
            registry,
            source,
            engine,
            read_log(source, registry, None),
            as_of_us=as_of_us,
            history_dir=Path(settings.offline.dir),
            history_step=timedelta(microseconds=step_us),
            history_format=settings.offline.format,
            seed_group="featurewell",  # the group the demo's stream consumes as
        )
    return done


async def start_skew_check(settings: Settings, started: list[asyncio.subprocess.Process]) -> str:
    """`featurewell skew --every` as its own process (as deployed), added to `started`; returns
    its metrics URL once it serves the gauges. Its reports go to skew.log in the offline store;
    the demo prints only runs that find skew or fail."""
    process = await asyncio.create_subprocess_exec(
        *DIE_WITH_PARENT,
        sys.executable,
        "-m",
        "featurewell.cli",
        *skew_command(settings)[1:],
        "--every",
        SKEW_EVERY,
        "--metrics-port",
        "0",
        "--log-level",
        settings.log_level,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    started.append(process)
    assert process.stdout is not None
    log = Path(settings.offline.dir) / "skew.log"
    async with asyncio.timeout(60):
        while line := (await process.stdout.readline()).decode():
            if ready := _READY.search(line):
                break
        else:
            raise RuntimeError("featurewell skew --every exited at start-up")
    task = asyncio.get_running_loop().create_task(_keep(process.stdout, log))
    _TASKS.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(_TASKS.discard)
    url = ready.group(1)
    print(
        f"skew check: featurewell skew (pid {process.pid}) every {SKEW_EVERY}, "
        f"metrics {url}, reports in {log}",
        flush=True,
    )
    return url


def skew_command(settings: Settings) -> list[str]:
    """`featurewell skew` over the demo's window, once: the check's command line without
    `--every`, for the summary (it prints the report, examples of any mismatch included)."""
    return [
        "featurewell",
        "skew",
        "--repo",
        settings.repo,
        "--offline-dir",
        settings.offline.dir,
        "--redis",
        ",".join(f"{h}:{p}" for h, p in settings.redis.seeds),
        "--window",
        SKEW_WINDOW,
        "--lag",
        SKEW_LAG,
    ]


async def _keep(lines: asyncio.StreamReader, log: Path) -> None:
    """Every report line into `log`; the lines that need a look (SKEW, a failed run) printed."""
    with log.open("a") as out:
        while line := (await lines.readline()).decode():
            out.write(line)
            out.flush()
            if "SKEW" in line or "skew run failed" in line:
                print("[skew] " + line.rstrip(), flush=True)
