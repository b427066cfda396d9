"""`featurewell skew`: served values against what training would hold (offline/skew.py), once
for a window, or every `--every` with the figures exported as Prometheus gauges."""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import pyarrow as pa

from featurewell.commands._command import Command, number, pairs, registry_of
from featurewell.commands.training import _served_defaults
from featurewell.compute.backfill import read_log
from featurewell.definitions import Registry
from featurewell.errors import ConfigError, FeaturewellError
from featurewell.offline import served, skew_report
from featurewell.offline.skew import FeatureSkew, Tolerance, measure
from featurewell.offline.store import OfflineStore
from featurewell.settings import OfflineSettings, RedisSettings, Settings
from featurewell.telemetry import exposition

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def duration_s(raw: str) -> float:
    """'90', '90s', '5m', '1h', '1d' as seconds (0 allowed: no lag)."""
    found = _DURATION.match(raw.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a duration like 60s, 5m or 1h")
    return float(found.group(1)) * _UNITS[found.group(2)]


def instant_us(raw: str) -> int:
    """An ISO-8601 time (UTC unless it says otherwise) or integer µs since the epoch."""
    text = raw.strip()
    if text.lstrip("-").isdigit():
        value = int(text)
        if not 10**14 <= value < 10**17:
            raise argparse.ArgumentTypeError(
                f"{raw!r}: integer times are µs since the epoch (16 digits today)"
            )
        return value
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a time: give ISO-8601 (2026-12-04T17:00:00Z) or µs"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=instant_us, help="first logging time (ISO-8601 or µs)")
    parser.add_argument("--until", type=instant_us, help="end, excluded (default: now - --lag)")
    parser.add_argument(
        "--window",
        type=duration_s,
        default=600.0,
        help="without --since: the window before --until (default 10m)",
    )
    parser.add_argument(
        "--lag",
        type=duration_s,
        default=60.0,
        help="without --until: leave the last LAG out, so history written a little after "
        "serving (a stream's --history-out) has landed (default 60s)",
    )
    parser.add_argument(
        "--every", type=duration_s, help="continuous: compare the last --window every EVERY"
    )
    parser.add_argument("--runs", type=int, help="continuous: stop after N runs")
    parser.add_argument(
        "--metrics-port", type=int, help="serve the gauges at :PORT/metrics (0: any free port)"
    )
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--threshold", type=number(), default=0.01, help="ratio marked SKEW")
    parser.add_argument(
        "--fail-above", type=number(), metavar="RATIO", help="exit 1 when a ratio is above this"
    )
    parser.add_argument("--rtol", type=number(), default=Tolerance.rtol, help="floats")
    parser.add_argument("--atol", type=number(), default=Tolerance.atol, help="floats near 0")
    parser.add_argument("--cosine", type=number(), default=Tolerance.cosine, help="embeddings")
    parser.add_argument(
        "--log",
        action="append",
        metavar="SOURCE=PARQUET",
        help="an event source's log: its computed views are also compared with the batch engine",
    )
    parser.add_argument(
        "--batch", action="store_true", help="compare computed views with their source's parquet="
    )
    parser.add_argument("--batch-times", type=int, default=50, help="distinct as-of times")
    parser.add_argument("--allowed-lateness-s", type=number(), default=3600.0)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--defaults", metavar="FILE", help="promoted defaults (transforms)")


def _events(registry: Registry, args: argparse.Namespace) -> dict[str, pa.Table]:
    sources = {v.events.name: v.events for v in registry.views.values() if v.events is not None}
    given = pairs(args.log, "--log") or {}
    unknown = sorted(set(given) - set(sources))
    if unknown:
        raise ConfigError(f"--log names no event source: {unknown}; known: {sorted(sources)}")
    chosen = dict(given)
    if args.batch:
        chosen.update({n: "" for n, s in sources.items() if n not in given and s.parquet})
    return {n: read_log(sources[n], registry, p or None) for n, p in chosen.items()}


def _skew(settings: Settings, args: argparse.Namespace) -> None:
    if not settings.offline.dir:
        raise ConfigError("skew reads the served-feature log and history: pass --offline-dir DIR")
    store = OfflineStore(settings.offline.dir, settings.offline.format)
    store.check_exists()
    registry = registry_of(settings)
    defaults = _served_defaults(settings, args)
    events = _events(registry, args)
    tolerance = Tolerance(args.rtol, args.atol, args.cosine)
    if not (store.root / served.SERVED).is_dir():
        print(
            f"warning: no served-feature log under {store.root / served.SERVED}: servers log "
            "what they serve only with a served-log rate above 0 and this --offline-dir"
        )

    def once(since_us: int | None, until_us: int) -> list[FeatureSkew]:
        started = time.perf_counter()
        results = measure(
            registry,
            store,
            since_us,
            until_us,
            defaults=defaults,
            events=events,
            allowed_lateness_s=args.allowed_lateness_s,
            batch_times=args.batch_times,
            tolerance=tolerance,
        )
        print(skew_report.render(results, args.threshold), flush=True)
        span = f"[{_show(since_us)}, {_show(until_us)})"
        print(
            f"compared the records logged in {span} in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        if args.json:
            Path(args.json).write_text(json.dumps(skew_report.as_json(results), default=str))
        return results

    def window() -> tuple[int | None, int]:
        until = args.until or int((time.time() - args.lag) * 1e6)
        return (args.since or until - int(args.window * 1e6)), until

    if args.every is not None and args.every <= 0:
        raise ConfigError("--every must be a positive duration, like 60s")
    if args.every is None:
        results = once(*window())
        if args.fail_above is not None and any(r.ratio > args.fail_above for r in results):
            raise SystemExit(1)
        return
    collector = skew_report.SkewCollector()
    if args.metrics_port is not None:
        registry_ = skew_report.skew_registry(collector)
        port = exposition.serve(registry_, args.metrics_host, args.metrics_port)
        print(f"skew gauges at http://{args.metrics_host}:{port}/metrics", flush=True)
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    runs = 0
    while not stop.is_set():
        try:
            collector.update(once(*window()), time.time())
        except (FeaturewellError, OSError, pa.ArrowException) as exc:
            # Keep going: the next run may read again (the gauges keep the last good run, and
            # featurewell_skew_last_run_timestamp_seconds ages, which FeaturewellSkewCheckStopped
            # watches).
            print(f"skew run failed: {exc}", flush=True)
        runs += 1
        if args.runs is not None and runs >= args.runs:
            break
        stop.wait(args.every)


def _show(us: int | None) -> str:
    if us is None:
        return "the start"
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat(timespec="seconds")


COMMANDS = (
    Command(
        "skew",
        "measure training/serving skew: served values against the point-in-time join",
        _skew,
        (OfflineSettings, RedisSettings),
        _arguments,
    ),
)
