"""Offline work: training-set, baseline, drift."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from featurewell.app import connected
from featurewell.commands._command import Command, number, pairs, registry_of, run
from featurewell.commands.progress import Progress
from featurewell.definitions import Registry
from featurewell.errors import ConfigError, InvalidRequest, StoreUnavailable
from featurewell.offline import served_training, versions
from featurewell.offline.compact import compact
from featurewell.offline.store import OfflineStore
from featurewell.offline.training import STATUS_SUFFIX, get_historical_features
from featurewell.settings import OfflineSettings, RedisSettings, Settings, specs
from featurewell.store.versions import promoted
from featurewell.telemetry import baseline, report
from featurewell.values import Status


def _training_set_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, help="Parquet: entity keys + a timestamp")
    parser.add_argument("--features", required=True, help="comma-separated references")
    parser.add_argument("--timestamp-column", default="event_timestamp")
    parser.add_argument("--out", required=True, help="Parquet file to write")
    parser.add_argument(
        "--engine",
        choices=["duckdb", "spark"],
        default="duckdb",
        help="where the joins run: duckdb (this process) or spark (pip install "
        "'featurewell[spark]', Java 17); the same rule and the same result (default: duckdb)",
    )
    parser.add_argument(
        "--spark-master",
        metavar="URL",
        help="with --engine spark: the cluster to run on, e.g. spark://host:7077 "
        "(default: a local Spark on every core, local[*])",
    )
    parser.add_argument(
        "--defaults",
        metavar="FILE",
        help="promoted default versions from `featurewell versions --export FILE`, so view:* "
        "reads what servers serve (or give the cluster with --redis to read them there)",
    )
    parser.add_argument(
        "--from-served-log",
        nargs="?",
        const="request_id",
        choices=served_training.JOINS,
        metavar="JOIN",
        help="join the labels to the values servers logged (the served-feature log under "
        "--offline-dir), not to history: by request_id (labels carry request_id and row or the "
        "entity keys; the default) or by time (the latest record logged at or before the label)",
    )


def _served_defaults(
    settings: Settings, args: argparse.Namespace
) -> versions.ServedDefaults | None:
    """The promoted defaults servers follow: from --defaults FILE, or from the cluster when one
    was given (--redis or FEATUREWELL_REDIS); None when neither was."""
    default_seeds = next(s.default for s in specs(RedisSettings) if s.name == "redis")
    cluster_given = args.redis is not None or settings.redis.seeds != default_seeds
    if args.defaults and cluster_given:
        raise ConfigError("pass --defaults FILE or --redis, not both: one source of defaults")
    if args.defaults:
        return versions.load(args.defaults)

    async def read() -> dict[str, int]:
        async with connected(settings.redis) as store:
            return await promoted(store.cluster)

    if not cluster_given:
        return None
    seeds = ",".join(f"{host}:{port}" for host, port in settings.redis.seeds)
    return versions.ServedDefaults(run(read()), f"the cluster at {seeds}")


def _training_set(settings: Settings, args: argparse.Namespace) -> None:
    offline = settings.offline
    if not offline.dir:
        raise ConfigError("training-set reads the offline store: pass --offline-dir DIR")
    store = OfflineStore(offline.dir, offline.format)
    store.check_exists()
    registry = registry_of(settings)
    if args.spark_master and args.engine != "spark":
        raise ConfigError("--spark-master is for --engine spark")
    labels_path = Path(args.labels)
    if not labels_path.exists():
        raise InvalidRequest(f"label file {labels_path} does not exist")
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    if args.from_served_log:
        if args.engine != "duckdb":
            raise ConfigError("--from-served-log joins the log in this process: drop --engine")
        _from_served_log(store, registry, labels_path, features, args)
        return
    defaults = _served_defaults(settings, args)
    started = time.perf_counter()
    if args.engine == "spark":
        rows, names, counts, used = _on_spark(
            registry, store, labels_path, features, args, defaults
        )
    else:
        labels = pq.read_table(labels_path)
        with Progress("training-set") as progress:
            table = get_historical_features(
                registry,
                labels,
                features,
                store,
                timestamp_column=args.timestamp_column,
                defaults=defaults,
                progress=lambda done, total: progress.update(
                    f"{labels.num_rows:,} labels", done, total, "joined rows"
                ),
            )
        pq.write_table(table, args.out)
        rows, names, used = (
            table.num_rows,
            table.column_names,
            versions.recorded(table.schema.metadata),
        )
        counts = {
            n: table.column(n).value_counts().to_pylist()
            for n in names
            if n.endswith(STATUS_SUFFIX)
        }
    seconds = time.perf_counter() - started
    if defaults is None:
        print(
            "note: no promoted defaults given (--redis or --defaults FILE): view:* read each "
            "view's highest version in the repo, which servers serve only if none was promoted"
        )
    values = [n for n in names if ":" in n and not n.endswith(STATUS_SUFFIX)]
    print(
        f"{rows:,} rows x {len(values)} features -> {args.out} in {seconds:.1f} s "
        f"({rows / max(seconds, 1e-9):,.0f} rows/s)"
    )
    for name, found in counts.items():
        output = name.removesuffix(STATUS_SUFFIX)
        shown = ", ".join(f"{Status(c['values']).name.lower()} {c['counts']:,}" for c in found)
        entry = used.get(output, {})
        version = f" v{entry['version']} ({entry['how']})" if "version" in entry else ""
        print(f"  {output}{version}: {shown}")
        if all(c["values"] == Status.NOT_FOUND for c in found):
            print(
                f"  warning: every {output} value is NOT_FOUND: no history row was known at "
                "any label time; check --offline-dir, that the view's history was written, "
                "and that the label times are µs"
            )


def _on_spark(
    registry: Registry,
    store: OfflineStore,
    labels_path: Path,
    features: list[str],
    args: argparse.Namespace,
    defaults: versions.ServedDefaults | None,
) -> tuple[int, list[str], dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Labels read and the result written by Spark (offline/spark_frame.py): `--out` is a
    folder of Parquet files, with the versions used in `_featurewell_versions.json`."""
    from featurewell.offline import spark as spark_engine
    from featurewell.offline.spark_frame import training_frame

    out = Path(args.out)
    if out.exists() and not (out / "_SUCCESS").is_file():
        raise ConfigError(
            f"--out {out} exists and is not an earlier Spark output: with --engine spark, "
            "--out is a folder Spark writes (and replaces): choose a new path"
        )
    spark = spark_engine.session(args.spark_master)
    labels = spark.read.parquet(str(labels_path))
    frame, used = training_frame(
        registry, labels, features, store, timestamp_column=args.timestamp_column, defaults=defaults
    )
    frame.write.mode("overwrite").parquet(str(out))
    (out / "_featurewell_versions.json").write_text(json.dumps(used))
    written = spark.read.parquet(str(out))
    counts = {
        name: [
            {"values": row[0], "counts": row[1]}
            for row in sorted(written.groupBy(name).count().collect())
        ]
        for name in written.columns
        if name.endswith(STATUS_SUFFIX)
    }
    return written.count(), list(written.columns), counts, used


def _compact_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--view", required=True, help="VIEW or VIEW@vN (default: its highest)")
    parser.add_argument(
        "--before",
        metavar="YYYY-MM-DD",
        help="merge partitions dated before this and write the as-of snapshot for it "
        "(default: today, UTC: the partition the stream is still writing is left alone)",
    )
    parser.add_argument(
        "--settle-s",
        type=number(),
        default=60.0,
        help="leave files younger than this for the next run (default: 60)",
    )


def _compact(settings: Settings, args: argparse.Namespace) -> None:
    offline = settings.offline
    if not offline.dir:
        raise ConfigError("compact rewrites the offline store: pass --offline-dir DIR")
    store = OfflineStore(offline.dir, offline.format)
    store.check_exists()
    registry = registry_of(settings)
    name, _, version = args.view.partition("@v")
    if version and not version.isdigit():
        raise ConfigError(f"--view {args.view!r}: give VIEW or VIEW@vN")
    view = registry.view(name, int(version) if version else None)  # names the known views
    before = args.before or datetime.now(UTC).strftime("%Y-%m-%d")
    started = time.perf_counter()
    done = compact(store, view, before, settle_s=args.settle_s)
    print(
        f"{view.ref}: merged {done.files_in:,} files into {done.files_out:,} in "
        f"{done.partitions:,} partitions before {before} ({time.perf_counter() - started:.1f} s)"
    )
    for reason in done.skipped:
        print(f"  left as it was: {reason}")
    if done.snapshot is not None:
        print(f"  as-of snapshot {done.snapshot} ({done.snapshot_rows:,} rows)")


def _from_served_log(
    store: OfflineStore,
    registry: Registry,
    labels_path: Path,
    features: list[str],
    args: argparse.Namespace,
) -> None:
    """Log and wait: the labels joined to what was served (offline/served_training.py)."""
    started = time.perf_counter()
    table = served_training.from_served_log(
        registry,
        pq.read_table(labels_path),
        features,
        store.root,
        join=args.from_served_log,
        timestamp_column=args.timestamp_column,
    )
    pq.write_table(table, args.out)
    seconds = time.perf_counter() - started
    print(
        f"{table.num_rows:,} rows from the served-feature log (joined by "
        f"{args.from_served_log}) -> {args.out} in {seconds:.1f} s"
    )
    for name in (n for n in table.column_names if n.endswith(served_training.STATUS)):
        output = name.removesuffix(served_training.STATUS)
        column = table.column(name)
        unmatched = column.null_count
        counts = [c for c in column.value_counts().to_pylist() if c["values"] is not None]
        shown = ", ".join(f"{Status(c['values']).name.lower()} {c['counts']:,}" for c in counts)
        found = _versions_of(table.column(output + served_training.VERSION))
        print(f"  {output} (served {found}): {shown or 'nothing'}; no record {unmatched:,}")
        if unmatched == table.num_rows:
            print(
                f"  warning: no label matched a logged {output} record: check the join "
                "(request ids, entity keys, label times in µs) and that it was logged"
            )


def _versions_of(column: pa.ChunkedArray) -> str:
    versions_ = sorted(v for v in set(column.to_pylist()) if v is not None)
    return ", ".join(f"v{v}" for v in versions_) or "no version"


def _baseline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        action="append",
        metavar="VIEW=PARQUET",
        help="training data of a view (default: each view's ParquetSource)",
    )
    parser.add_argument("--out", default="baseline.json", help="where to write the baselines")
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="VIEW:FEATURE",
        help="a feature not to monitor (timestamps drift by nature)",
    )


def _baseline(settings: Settings, args: argparse.Namespace) -> None:
    registry = registry_of(settings)
    found = report.compute_baselines(registry, pairs(args.data), args.out, args.exclude)
    print(report.describe(found))
    print(f"wrote {len(found)} baselines to {args.out}; serve with --drift-baseline {args.out}")


def _drift_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-url", default="http://127.0.0.1:9464/metrics")
    parser.add_argument(
        "--data",
        action="append",
        metavar="VIEW=PARQUET",
        help="offline: values to compare with the baselines (needs --repo)",
    )
    parser.add_argument("--baseline", help="offline: a baseline JSON")
    parser.add_argument(
        "--fail-above",
        type=number(),
        metavar="PSI",
        help="exit 1 when any feature's PSI is above this (for CI)",
    )


def _drift(settings: Settings, args: argparse.Namespace) -> None:
    if args.data:
        if not settings.repo:
            raise ConfigError("featurewell drift --data needs --repo (or FEATUREWELL_REPO)")
        registry = registry_of(settings)
        chosen = args.baseline or settings.telemetry.drift_baseline
        computed = baseline.load(chosen) if chosen else None
        known = baseline.for_registry(registry, computed)
        reports = report.from_data(registry, known, pairs(args.data) or {})
    else:
        try:
            reports = report.from_metrics(args.metrics_url)
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {args.metrics_url}: {exc}") from None
    print(report.render(reports))
    if args.fail_above is not None and any(r.psi > args.fail_above for r in reports):
        raise SystemExit(1)


COMMANDS = (
    Command(
        "compact",
        "merge a view's small history files and write its as-of snapshot (faster training sets)",
        _compact,
        (OfflineSettings,),
        _compact_arguments,
    ),
    Command(
        "training-set",
        "point-in-time-correct features for labelled rows, from history",
        _training_set,
        (OfflineSettings, RedisSettings),
        _training_set_arguments,
    ),
    Command(
        "baseline",
        "compute drift baselines from training data (for --drift-baseline)",
        _baseline,
        arguments=_baseline_arguments,
    ),
    Command(
        "drift",
        "drift report from a server's /metrics, or from Parquet data offline",
        _drift,
        arguments=_drift_arguments,
        repo_optional=True,
    ),
)
