"""The `featurewell stream`, `backfill`, `parity` and `append` commands (argument parsing is the
CLI's)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import uvloop

from featurewell.compute.backfill import backfill as run_backfill
from featurewell.compute.backfill import read_log
from featurewell.compute.kafka import KafkaSource
from featurewell.compute.metrics import stream_registry
from featurewell.compute.parity import FeatureParity
from featurewell.compute.parity import parity as run_parity
from featurewell.compute.parity import render as render_parity
from featurewell.compute.redis_streams import append as append_events
from featurewell.compute.redis_streams import checked_event
from featurewell.compute.runner import StreamRunner
from featurewell.definitions import EventSource, Registry, load_repo
from featurewell.engine.engine import FeatureEngine
from featurewell.errors import InvalidRequest
from featurewell.offline.store import OfflineStore
from featurewell.serving.server import open_store
from featurewell.settings import Settings
from featurewell.telemetry import exposition

log = logging.getLogger("featurewell")


def stream(settings: Settings, args: argparse.Namespace) -> None:
    registry = load_repo(settings.required_repo())
    source = _event_source(registry, args.source)
    partitions = [int(p) for p in args.partitions.split(",")] if args.partitions else None

    async def run() -> None:
        store = await open_store(settings.with_changes(cache_entries=0))
        kafka = None
        if args.kafka_bootstrap:
            config = {"bootstrap.servers": args.kafka_bootstrap}
            kafka = KafkaSource(source, config, args.group)
        runner = StreamRunner(
            registry, source, FeatureEngine(registry, store, settings),
            group=args.group, consumer=args.consumer, partitions=partitions,
            allowed_lateness_s=args.allowed_lateness_s, batch_size=args.batch_size,
            checkpoint_s=args.checkpoint_s, refresh_s=args.refresh_s, events=kafka,
            freeze_gc=True,
            history=(
                OfflineStore(settings.offline_dir, settings.offline_format)
                if settings.offline_dir else None
            ),
        )  # fmt: skip
        metrics = "off"
        if settings.metrics_port >= 0:
            port = exposition.serve(stream_registry(runner), settings.host, settings.metrics_port)
            metrics = f"http://{settings.host}:{port}/metrics"
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
        # At any log level: `featurewell demo` (and scripts) wait for this line.
        print(f"featurewell stream: consuming {args.source} as {args.group}/{args.consumer}; "
              f"metrics {metrics}", file=sys.stderr, flush=True)  # fmt: skip
        try:
            await runner.run(stopping)
        finally:
            if kafka is not None:
                kafka.close()
            await store.close()
        log.info("stopped after %d events, %d rows written", runner.stats.events,
                 runner.stats.rows_written)  # fmt: skip

    uvloop.run(run())


def backfill(settings: Settings, args: argparse.Namespace) -> None:
    registry = load_repo(settings.required_repo())
    source = _event_source(registry, args.source)
    log_table = read_log(source, registry, args.log)

    async def run() -> None:
        store = await open_store(settings.with_changes(cache_entries=0))
        try:
            done = await run_backfill(
                registry, source, FeatureEngine(registry, store, settings), log_table,
                as_of_us=time.time_ns() // 1000, allowed_lateness_s=args.allowed_lateness_s,
                max_rows_per_second=args.max_rows_per_second,
                history_dir=Path(history) if (history := args.history_out or settings.offline_dir)
                else None,
                history_step=timedelta(hours=args.history_step_h),
                history_format=settings.offline_format,
                seed_group=args.group or None,
            )  # fmt: skip
        finally:
            await store.close()
        for view in done:
            print(f"{view.view}: {view.entities:,} entities online in {view.seconds:.1f} s, "
                  f"{view.history_rows:,} history rows")  # fmt: skip

    uvloop.run(run())


def _event_source(registry: Registry, name: str) -> EventSource:
    sources = {v.events.name: v.events for v in registry.views.values() if v.events is not None}
    if name not in sources:
        raise SystemExit(f"featurewell: no event source {name!r}; known: {sorted(sources)}")
    return sources[name]


def parity(settings: Settings, args: argparse.Namespace) -> None:
    registry = load_repo(settings.required_repo())
    source = _event_source(registry, args.source)
    log_table = read_log(source, registry, args.log)

    async def run() -> list[FeatureParity]:
        store = await open_store(settings.with_changes(cache_entries=0))
        try:
            return await run_parity(
                registry, source, FeatureEngine(registry, store, settings), log_table,
                sample=args.sample, allowed_lateness_s=args.allowed_lateness_s,
            )  # fmt: skip
        finally:
            await store.close()

    results = uvloop.run(run())
    print(render_parity(results))
    if any(r.rate > args.fail_above for r in results):
        raise SystemExit(1)


def append(settings: Settings, args: argparse.Namespace) -> None:
    """Events as JSON objects (each --event, or one per line of stdin) onto the source's streams."""
    registry = load_repo(settings.required_repo())
    source = _event_source(registry, args.source)
    texts = args.event or [line for line in sys.stdin if line.strip()]
    if not texts:
        raise InvalidRequest("no events: pass --event JSON, or JSON lines on stdin")
    now_us = time.time_ns() // 1000
    events = []
    for n, text in enumerate(texts, 1):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"event {n} is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise InvalidRequest(f"event {n} must be a JSON object, got {text.strip()[:60]!r}")
        events.append(checked_event(source, parsed, now_us))

    async def run() -> list[str]:
        store = await open_store(settings.with_changes(cache_entries=0))
        try:
            return await append_events(store.cluster, source, events)
        finally:
            await store.close()

    for event, entry in zip(events, uvloop.run(run()), strict=True):
        print(f"{event[source.id_field]} -> {entry}")
