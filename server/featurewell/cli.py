"""The `featurewell` command: serve, materialize, stream, append, backfill, parity, training-set,
promote, rollback, versions, lineage, validate, baseline, drift, cluster, demo."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import uvloop

from featurewell.compute.backfill import backfill_logs
from featurewell.compute.commands import append as commands_append
from featurewell.compute.commands import backfill as commands_backfill
from featurewell.compute.commands import parity as commands_parity
from featurewell.compute.commands import stream as commands_stream
from featurewell.definitions import load_repo
from featurewell.demo import run_demo
from featurewell.devcluster import start_local_cluster
from featurewell.engine.engine import FeatureEngine
from featurewell.errors import FeaturewellError
from featurewell.ingest.materialize import materialize
from featurewell.lifecycle import commands as lifecycle
from featurewell.offline.commands import training_set
from featurewell.serving.server import node_access, serve
from featurewell.settings import Settings
from featurewell.store.online import OnlineStore
from featurewell.telemetry import baseline, report

EXAMPLE_REPO = Path(__file__).resolve().parents[2] / "examples" / "streaming_media"
log = logging.getLogger("featurewell")


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    overrides = {s.name: getattr(args, s.name, None) for s in fields(Settings)}
    try:
        settings = Settings.load(overrides)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        args.run(settings, args)
    except FeaturewellError as exc:
        print(f"featurewell: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featurewell", description="low-latency feature server")
    commands = parser.add_subparsers(required=True, metavar="command")

    run = commands.add_parser("serve", help="serve a feature repo over gRPC")
    _settings_flags(run)
    run.set_defaults(run=_serve)

    load = commands.add_parser(
        "materialize",
        help="load Parquet sources into Redis, and computed views from their event logs",
    )
    _settings_flags(load)
    load.add_argument(
        "--views", help="comma-separated view names (default: all with a source or event log)"
    )
    load.add_argument("--batch-rows", type=int, default=2000)
    load.add_argument("--max-rows-per-second", type=float, help="pace the load to protect serving")
    load.set_defaults(run=_materialize)

    stream = commands.add_parser(
        "stream", help="compute features from an event source's Redis Streams, continuously"
    )
    _settings_flags(stream)
    stream.add_argument("--source", required=True, help="the EventSource's name")
    stream.add_argument("--group", default="featurewell", help="Redis consumer group")
    stream.add_argument("--consumer", default="stream-0", help="this consumer's name")
    stream.add_argument("--partitions", help="comma-separated partitions (default: all)")
    stream.add_argument(
        "--kafka-bootstrap",
        metavar="HOST:PORT,...",
        help="read the source's Kafka topic instead of its Redis Streams",
    )
    stream.add_argument("--allowed-lateness-s", type=float, default=3600.0)
    stream.add_argument("--batch-size", type=int, default=1000)
    stream.add_argument("--checkpoint-s", type=float, default=5.0)
    stream.add_argument("--refresh-s", type=float, default=60.0)
    stream.set_defaults(run=commands_stream)

    fill = commands.add_parser(
        "backfill", help="an event source's log through the batch engine: online values, "
        "history, and the streaming state"
    )  # fmt: skip
    _settings_flags(fill)
    fill.add_argument("--source", required=True, help="the EventSource's name")
    fill.add_argument("--log", help="Parquet event log (default: the source's parquet=)")
    fill.add_argument("--max-rows-per-second", type=float, help="pace online writes")
    fill.add_argument("--history-out", help="write the values as of every step here (Parquet)")
    fill.add_argument("--history-step-h", type=float, default=24.0)
    fill.add_argument("--allowed-lateness-s", type=float, default=3600.0)
    fill.add_argument(
        "--group",
        default="featurewell",
        help="consumer group whose streaming state to seed ('' to skip)",
    )
    fill.set_defaults(run=commands_backfill)

    train = commands.add_parser(
        "training-set", help="point-in-time-correct features for labelled rows, from history"
    )
    _settings_flags(train)
    train.add_argument("--labels", required=True, help="Parquet: entity keys + a timestamp")
    train.add_argument("--features", required=True, help="comma-separated references")
    train.add_argument("--timestamp-column", default="event_timestamp")
    train.add_argument("--out", required=True, help="Parquet file to write")
    train.set_defaults(run=training_set)

    _lifecycle_parsers(commands)

    add = commands.add_parser(
        "append", help="append events to an event source's Redis Streams, for the stream to compute"
    )
    _settings_flags(add)
    add.add_argument("--source", required=True, help="the EventSource's name")
    add.add_argument(
        "--event", action="append", metavar="JSON",
        help="an event as a JSON object of the source's columns (event_id and event_time, µs, "
        "default to a fresh id and now); repeatable; without it, JSON lines from stdin",
    )  # fmt: skip
    add.set_defaults(run=commands_append)

    check = commands.add_parser(
        "parity", help="live online values of computed views vs the batch engine on the log"
    )
    _settings_flags(check)
    check.add_argument("--source", required=True, help="the EventSource's name")
    check.add_argument("--log", help="Parquet event log (default: the source's parquet=)")
    check.add_argument("--sample", type=int, default=200, help="entities per view")
    check.add_argument("--allowed-lateness-s", type=float, default=3600.0)
    check.add_argument(
        "--fail-above",
        type=float,
        default=0.0,
        metavar="RATE",
        help="exit 1 when a feature's mismatch rate is above this",
    )
    check.set_defaults(run=commands_parity)

    base = commands.add_parser(
        "baseline", help="compute drift baselines from training data (for --drift-baseline)"
    )
    base.add_argument("--repo", help="feature repo (default: FEATUREWELL_REPO)")
    base.add_argument(
        "--data",
        action="append",
        metavar="VIEW=PARQUET",
        help="training data of a view (default: each view's ParquetSource)",
    )
    base.add_argument("--out", default="baseline.json", help="where to write the baselines")
    base.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="VIEW:FEATURE",
        help="a feature not to monitor (timestamps drift by nature)",
    )
    base.set_defaults(run=_baseline)

    drift = commands.add_parser(
        "drift", help="drift report from a server's /metrics, or from Parquet data offline"
    )
    drift.add_argument("--metrics-url", default="http://127.0.0.1:9464/metrics")
    drift.add_argument("--repo", help="offline: the feature repo (with --data)")
    drift.add_argument(
        "--data",
        action="append",
        metavar="VIEW=PARQUET",
        help="offline: values to compare with the baselines",
    )
    drift.add_argument("--baseline", dest="drift_baseline", help="offline: a baseline JSON")
    drift.add_argument(
        "--fail-above",
        type=float,
        metavar="PSI",
        help="exit 1 when any feature's PSI is above this (for CI)",
    )
    drift.set_defaults(run=_drift)

    cluster = commands.add_parser("cluster", help="run a local Redis Cluster until Ctrl-C")
    cluster.add_argument("--masters", type=int, default=3)
    cluster.add_argument("--replicas", type=int, default=0, help="replicas per master")
    cluster.set_defaults(run=_cluster)

    demo = commands.add_parser(
        "demo", help="local Redis Cluster + example repo + sample data, serving on :50051"
    )
    _settings_flags(demo, repo_default=str(EXAMPLE_REPO))
    demo.add_argument("--users", type=int, default=5000)
    demo.add_argument("--items", type=int, default=2000)
    demo.add_argument("--replicas", type=int, default=0, help="replicas per master")
    demo.set_defaults(run=run_demo)
    return parser


def _lifecycle_parsers(commands: Any) -> None:
    """promote, rollback, versions, lineage, validate."""

    def verb(name: str, what: str, handler: Callable[[Settings, argparse.Namespace], None],
             *, view: bool = True) -> argparse.ArgumentParser:  # fmt: skip
        parser: argparse.ArgumentParser = commands.add_parser(name, help=what)
        _settings_flags(parser)
        if view:
            parser.add_argument("--view", required=True, help="the feature view's name")
        parser.set_defaults(run=handler)
        return parser

    promote = verb("promote", "make VERSION the default of VIEW on every server, live",
                   lifecycle.promote)  # fmt: skip
    promote.add_argument("--version", type=int, required=True)
    verb("rollback", "restore VIEW's default from before its last promote", lifecycle.rollback)
    verb("versions", "every view's versions, default and promote history", lifecycle.versions,
         view=False)  # fmt: skip
    lineage = verb("lineage", "every view: source, definition, default, transforms, callers",
                   lifecycle.lineage, view=False)  # fmt: skip
    lineage.add_argument("--json", action="store_true", help="machine-readable, for audits")
    check = verb("validate", "compare a new version's served values with the current one's",
                 lifecycle.validate)  # fmt: skip
    check.add_argument("--from", type=int, required=True, help="the version serving now")
    check.add_argument("--to", type=int, required=True, help="the version to promote")
    check.add_argument("--sample", type=int, default=1000, help="entities to compare")
    check.add_argument("--fail-above", type=float, default=0.25, help="largest PSI allowed")


def _settings_flags(parser: argparse.ArgumentParser, repo_default: str | None = None) -> None:
    group = parser.add_argument_group("settings (also FEATUREWELL_<NAME> environment variables)")
    for spec in fields(Settings):
        default = repo_default if spec.name == "repo" else None
        group.add_argument(
            f"--{spec.name.replace('_', '-')}", dest=spec.name, default=default,
            help=f"{spec.metadata['doc']} (default: {_show(spec.default)})",
        )  # fmt: skip


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{h}:{p}" for h, p in value)
    return repr(value)


def _serve(settings: Settings, _args: argparse.Namespace) -> None:
    settings.required_repo()
    serve(settings)


def _materialize(settings: Settings, args: argparse.Namespace) -> None:
    registry = load_repo(settings.required_repo())
    names = set(args.views.split(",")) if args.views else None

    async def load() -> None:
        store = await OnlineStore.connect(
            settings.redis,
            connect_timeout=settings.connect_timeout_s,
            connections_per_node=settings.connections_per_node,
            access=node_access(settings),
        )
        try:
            engine = FeatureEngine(registry, store, settings)
            views = None  # every view with a ParquetSource; computed views from their logs
            if names is not None:
                views = [v for v in registry.views.values() if v.name in names and v.source]
            for summary in await materialize(
                engine, views, batch_rows=args.batch_rows,
                max_rows_per_second=args.max_rows_per_second, progress=_progress_printer(),
            ):  # fmt: skip
                print(
                    f"{summary.view}: {summary.rows} rows in {summary.seconds:.2f} s "
                    f"({summary.rows / max(summary.seconds, 1e-9):,.0f} rows/s), "
                    f"{summary.skipped_older} skipped as older than stored"
                )
            for computed in await backfill_logs(
                registry, engine, as_of_us=time.time_ns() // 1000, views=names,
                max_rows_per_second=args.max_rows_per_second,
            ):  # fmt: skip
                print(
                    f"{computed.view}: {computed.entities} rows computed from {computed.source} "
                    f"in {computed.seconds:.2f} s"
                )
        finally:
            await store.close()

    uvloop.run(load())


def _progress_printer(every: int = 50_000) -> Callable[[str, int], None]:
    """Prints a line to stderr each time a view's load passes another `every` rows."""
    last: dict[str, int] = {}

    def report(view: str, rows: int) -> None:
        if rows // every > last.get(view, 0) // every:
            print(f"  {view}: {rows:,} rows sent...", file=sys.stderr, flush=True)
        last[view] = rows

    return report


def _baseline(settings: Settings, args: argparse.Namespace) -> None:
    registry = load_repo(settings.required_repo())
    found = report.compute_baselines(registry, _pairs(args.data), args.out, args.exclude)
    print(report.describe(found))
    print(f"wrote {len(found)} baselines to {args.out}; serve with --drift-baseline {args.out}")


def _drift(settings: Settings, args: argparse.Namespace) -> None:
    if args.data:
        registry = load_repo(settings.required_repo())
        computed = baseline.load(settings.drift_baseline) if settings.drift_baseline else None
        known = baseline.for_registry(registry, computed)
        reports = report.from_data(registry, known, _pairs(args.data) or {})
    else:
        try:
            reports = report.from_metrics(args.metrics_url)
        except OSError as exc:
            raise SystemExit(f"featurewell: cannot read {args.metrics_url}: {exc}") from None
    print(report.render(reports))
    if args.fail_above is not None and any(r.psi > args.fail_above for r in reports):
        raise SystemExit(1)


def _pairs(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    pairs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"featurewell: --data takes VIEW=PARQUET, got {item!r}")
        pairs[name] = path
    return pairs


def _cluster(_settings: Settings, args: argparse.Namespace) -> None:
    with start_local_cluster(args.masters, args.replicas) as cluster:
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        print(f"Redis Cluster up: masters {seeds}; replicas {cluster.replicas}", flush=True)
        print(f"  export FEATUREWELL_REDIS={seeds}", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
