"""Getting features into the online store: materialize, stream, append, backfill, parity."""

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

import pyarrow as pa

from featurewell.app import connected
from featurewell.commands._command import Command, event_source, number, registry_of, run
from featurewell.commands.progress import Progress
from featurewell.compute.backfill import backfill, backfill_logs, read_log
from featurewell.compute.kafka import KafkaSource
from featurewell.compute.metrics import stream_registry
from featurewell.compute.parity import FeatureParity, parity, render
from featurewell.compute.redis_streams import append, checked_event
from featurewell.compute.runner import StreamRunner
from featurewell.definitions import EventSource, Registry
from featurewell.engine.engine import FeatureEngine
from featurewell.engine.validation import WriteRules
from featurewell.errors import ConfigError, InvalidRequest
from featurewell.ingest.materialize import materialize
from featurewell.offline.store import OfflineStore
from featurewell.settings import ListenSettings, OfflineSettings, RedisSettings, Settings
from featurewell.telemetry import exposition

log = logging.getLogger("featurewell")


def _materialize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--views", help="comma-separated view names (default: all with a source or event log)"
    )
    parser.add_argument("--batch-rows", type=int, default=2000)
    parser.add_argument(
        "--max-rows-per-second",
        type=number(),
        help="pace the load to protect serving (0 or none: unpaced)",
    )


def _materialize(settings: Settings, args: argparse.Namespace) -> None:
    registry = registry_of(settings)
    names = set(args.views.split(",")) if args.views else None

    async def load(progress: Progress) -> None:
        async with connected(settings.redis) as store:
            engine = FeatureEngine(registry, store, settings.serving)  # its write rules too
            views = None  # every view with a ParquetSource; computed views from their logs
            if names is not None:
                views = [v for v in registry.views.values() if v.name in names and v.source]
            loads = await materialize(
                engine,
                views,
                batch_rows=args.batch_rows,
                max_rows_per_second=args.max_rows_per_second,
                progress=progress.update,
            )
            for summary in loads:
                print(
                    f"{summary.view}: {summary.rows} rows in {summary.seconds:.2f} s "
                    f"({summary.rows / max(summary.seconds, 1e-9):,.0f} rows/s), "
                    f"{summary.skipped_older} skipped as older than stored"
                )
            computed = await backfill_logs(
                registry,
                engine,
                as_of_us=time.time_ns() // 1000,
                views=names,
                max_rows_per_second=args.max_rows_per_second,
                progress=progress.update,
            )
            for done in computed:
                print(
                    f"{done.view}: {done.entities} rows computed from {done.source} "
                    f"in {done.seconds:.2f} s"
                )

    with Progress("materialize") as progress:
        run(load(progress))


def _source_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="the EventSource's name")


def _stream_arguments(parser: argparse.ArgumentParser) -> None:
    _source_argument(parser)
    parser.add_argument("--group", default="featurewell", help="Redis consumer group")
    parser.add_argument("--consumer", default="stream-0", help="this consumer's name")
    parser.add_argument("--partitions", help="comma-separated partitions (default: all)")
    parser.add_argument(
        "--kafka-bootstrap",
        metavar="HOST:PORT,...",
        help="read the source's Kafka topic instead of its Redis Streams",
    )
    parser.add_argument("--allowed-lateness-s", type=number(), default=3600.0)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--checkpoint-s", type=number(positive=True), default=5.0)
    parser.add_argument("--refresh-s", type=number(positive=True), default=60.0)
    parser.add_argument(
        "--lease-s",
        type=number(),
        default=0.0,
        help="share the source's partitions with the group's other consumers (Redis Streams): "
        "each partition leased to one at a time for this long, renewed every third of it; a "
        "dead consumer's partitions move when its leases run out. 0: read --partitions alone",
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="Kafka: other workers of the group share the topic's partitions (Kafka rebalances "
        "them; each is checkpointed and committed before it moves). Views must then be keyed "
        "by the source's partition key. Redis Streams share by --lease-s",
    )
    parser.add_argument(
        "--kafka-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka consumer setting, e.g. session.timeout.ms=10000 (how soon a dead "
        "worker's partitions move) or security settings; repeatable",
    )
    parser.add_argument(
        "--dead-letter-topic",
        default="",
        help="Kafka: where refused events go (default: the source's topic + '.dead-letters'; "
        "Redis Streams: always the source's dead-letter stream)",
    )
    parser.add_argument(
        "--dead-letter-kb",
        type=int,
        default=64,
        help="payload kept of a refused event, in KiB (the rest is cut, and the cut recorded)",
    )


def _stream(settings: Settings, args: argparse.Namespace) -> None:
    registry = registry_of(settings)
    source = event_source(registry, args.source)
    partitions = [int(p) for p in args.partitions.split(",")] if args.partitions else None
    listen, offline = settings.listen, settings.offline
    # Events are screened by the rules writes are (max_future_skew_s, max_event_age_days,
    # max_entity_key_bytes: FEATUREWELL_* variables).
    rules = WriteRules.from_settings(settings.serving)
    if args.shared and not args.kafka_bootstrap:
        raise ConfigError(
            "featurewell stream: --shared is for Kafka sources (--kafka-bootstrap); Redis "
            "Streams workers share partitions by --lease-s"
        )
    kafka_config = {"bootstrap.servers": args.kafka_bootstrap, **_kafka_options(args)}

    async def consume() -> None:
        async with connected(settings.redis) as store:
            kafka = None
            if args.kafka_bootstrap:
                kafka = KafkaSource(
                    source,
                    kafka_config,
                    args.group,
                    rules=rules,
                    dead_letter_topic=args.dead_letter_topic,
                    dead_letter_kb=args.dead_letter_kb,
                )
            runner = StreamRunner(
                registry,
                source,
                FeatureEngine(registry, store),
                group=args.group,
                consumer=args.consumer,
                partitions=partitions,
                allowed_lateness_s=args.allowed_lateness_s,
                batch_size=args.batch_size,
                checkpoint_s=args.checkpoint_s,
                refresh_s=args.refresh_s,
                events=kafka,
                freeze_gc=True,
                history=OfflineStore(offline.dir, offline.format) if offline.dir else None,
                rules=rules,
                dead_letter_kb=args.dead_letter_kb,
                lease_s=args.lease_s,
                shared=args.shared,
            )
            metrics = "off"
            if listen.metrics_port >= 0:
                port = exposition.serve(stream_registry(runner), listen.host, listen.metrics_port)
                metrics = f"http://{listen.host}:{port}/metrics"
            stopping = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
            # At any log level: `featurewell demo` (and scripts) wait for this line.
            print(
                f"featurewell stream: consuming {args.source} as {args.group}/{args.consumer}; "
                f"metrics {metrics}",
                file=sys.stderr,
                flush=True,
            )
            try:
                await runner.run(stopping)
            finally:
                if kafka is not None:
                    kafka.close()
        log.info(
            "stopped after %d events, %d rows written",
            runner.stats.events,
            runner.stats.rows_written,
        )

    run(consume())


def _kafka_options(args: argparse.Namespace) -> dict[str, str]:
    options = {}
    for option in args.kafka_option:
        key, equals, value = option.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"featurewell stream: --kafka-option {option!r}: give KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


def _backfill_arguments(parser: argparse.ArgumentParser) -> None:
    _source_argument(parser)
    parser.add_argument("--log", help="Parquet event log (default: the source's parquet=)")
    parser.add_argument(
        "--max-rows-per-second", type=number(), help="pace online writes (0 or none: unpaced)"
    )
    parser.add_argument("--history-out", help="write the values as of every step here (Parquet)")
    parser.add_argument("--history-step-h", type=number(positive=True), default=24.0)
    parser.add_argument("--allowed-lateness-s", type=number(), default=3600.0)
    parser.add_argument(
        "--group",
        default="featurewell",
        help="consumer group whose streaming state to seed ('' to skip)",
    )


def _source_and_log(
    settings: Settings, args: argparse.Namespace
) -> tuple[Registry, EventSource, pa.Table]:
    """The repo, its `--source` and that source's event log (`--log` or its parquet=)."""
    registry = registry_of(settings)
    source = event_source(registry, args.source)
    return registry, source, read_log(source, registry, args.log)


def _backfill(settings: Settings, args: argparse.Namespace) -> None:
    registry, source, log_table = _source_and_log(settings, args)
    history = args.history_out or settings.offline.dir

    async def fill(progress: Progress) -> None:
        async with connected(settings.redis) as store:
            done = await backfill(
                registry,
                source,
                FeatureEngine(registry, store),
                log_table,
                as_of_us=time.time_ns() // 1000,
                allowed_lateness_s=args.allowed_lateness_s,
                max_rows_per_second=args.max_rows_per_second,
                history_dir=Path(history) if history else None,
                history_step=timedelta(hours=args.history_step_h),
                history_format=settings.offline.format,
                seed_group=args.group or None,
                progress=progress.update,
            )
        for view in done:
            print(
                f"{view.view}: {view.entities:,} entities online in {view.seconds:.1f} s, "
                f"{view.history_rows:,} history rows"
            )

    with Progress("backfill") as progress:
        run(fill(progress))


def _parity_arguments(parser: argparse.ArgumentParser) -> None:
    _source_argument(parser)
    parser.add_argument("--log", help="Parquet event log (default: the source's parquet=)")
    parser.add_argument("--sample", type=int, default=200, help="entities per view")
    parser.add_argument("--allowed-lateness-s", type=number(), default=3600.0)
    parser.add_argument(
        "--fail-above",
        type=number(),
        default=0.0,
        metavar="RATE",
        help="exit 1 when a feature's mismatch rate is above this",
    )


def _parity(settings: Settings, args: argparse.Namespace) -> None:
    registry, source, log_table = _source_and_log(settings, args)

    async def check() -> list[FeatureParity]:
        async with connected(settings.redis) as store:
            return await parity(
                registry,
                source,
                FeatureEngine(registry, store),
                log_table,
                sample=args.sample,
                allowed_lateness_s=args.allowed_lateness_s,
            )

    results = run(check())
    print(render(results))
    if any(r.rate > args.fail_above for r in results):
        raise SystemExit(1)


def _append_arguments(parser: argparse.ArgumentParser) -> None:
    _source_argument(parser)
    parser.add_argument(
        "--event",
        action="append",
        metavar="JSON",
        help="an event as a JSON object of the source's columns (event_id and event_time, µs, "
        "default to a fresh id and now); repeatable; without it, JSON lines from stdin",
    )


def _append(settings: Settings, args: argparse.Namespace) -> None:
    """Events as JSON objects (each --event, or one per line of stdin) onto the source's streams."""
    registry = registry_of(settings)
    source = event_source(registry, args.source)
    texts = args.event or [line for line in sys.stdin if line.strip()]
    if not texts:
        raise InvalidRequest("no events: pass --event JSON, or JSON lines on stdin")
    now_us = time.time_ns() // 1000
    rules = WriteRules.from_settings(settings.serving)  # what the stream would refuse
    events = []
    for n, text in enumerate(texts, 1):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"event {n} is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise InvalidRequest(f"event {n} must be a JSON object, got {text.strip()[:60]!r}")
        events.append(checked_event(source, parsed, now_us, rules))

    async def send() -> list[str]:
        async with connected(settings.redis) as store:
            return await append(store.cluster, source, events)

    for event, entry in zip(events, run(send()), strict=True):
        print(f"{event[source.id_field]} -> {entry}")


COMMANDS = (
    Command(
        "materialize",
        "load Parquet sources into Redis, and computed views from their event logs",
        _materialize,
        (RedisSettings,),
        _materialize_arguments,
    ),
    Command(
        "stream",
        "compute features from an event source's Redis Streams, continuously",
        _stream,
        (RedisSettings, ListenSettings, OfflineSettings),
        _stream_arguments,
    ),
    Command(
        "append",
        "append events to an event source's Redis Streams, for the stream to compute",
        _append,
        (RedisSettings,),
        _append_arguments,
    ),
    Command(
        "backfill",
        "an event source's log through the batch engine: online values, history, and the "
        "streaming state",
        _backfill,
        (RedisSettings, OfflineSettings),
        _backfill_arguments,
    ),
    Command(
        "parity",
        "live online values of computed views vs the batch engine on the log",
        _parity,
        (RedisSettings,),
        _parity_arguments,
    ),
)
