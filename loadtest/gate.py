"""The latency gate: a fixed-throughput Locust run that fails when a budget is broken.

    python loadtest/gate.py --host 127.0.0.1:50051 [--metrics http://127.0.0.1:9464/metrics]
        [--single-rps 150] [--ranker-rps 10] [--writer-rps 10] [--duration 20] [--warmup 3]
        [--budget-single-ms 5] [--budget-ranker-ms 20] [--out loadtest/reports]

Locust drives the model-server, ranker and writer users of `locustfile.py` together at fixed
total rates against a server holding the example repo's data. After a warm-up, the gate reads
the server's own latency histogram (`featurewell_request_duration_seconds`, scraped before and
after the measured window) and exits 1 when the single-entity or the ranker p99 exceeds its
budget, when any call failed, or when the generator fell more than 10% short of a rate asked
(then the run proves nothing).

Why the server's histogram judges: on a 2-core machine the load generator shares the CPU with
Redis and the server, and a Python generator's own scheduling shows up in any time it takes,
even the exact per-call times measured on the calling thread (reported beside, as "client").
The server's time is the part a featurewell change can make slower, so that is what the gate
holds to the budget; budgets are histogram bucket edges, so the check is exact.
Writes `<out>/gate_stats.csv`, `gate_failures.csv` and `gate_report.html` (Locust's own).
"""

from __future__ import annotations

import argparse
import csv
import faulthandler
import math
import os
import sys
from pathlib import Path
from typing import Any

PER_USER_RPS = {"single": 50.0, "ranker": 5.0, "writer": 10.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1:50051", help="featurewell gRPC address")
    parser.add_argument(
        "--metrics", help="the server's /metrics URL (default: the host's name, port 9464)"
    )
    parser.add_argument("--single-rps", type=float, default=150.0)
    parser.add_argument("--ranker-rps", type=float, default=10.0)
    parser.add_argument("--writer-rps", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds, after warm-up")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--probe-single-rps", type=float, default=40.0)
    parser.add_argument("--probe-ranker-rps", type=float, default=4.0)
    parser.add_argument("--budget-single-ms", type=float, default=5.0)
    parser.add_argument("--budget-ranker-ms", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("loadtest/reports"))
    parser.add_argument(
        "--local",
        action="store_true",
        help="start `featurewell demo` (local cluster + example data + server) and test it",
    )
    parser.add_argument("--local-users", type=int, default=5000)
    parser.add_argument("--local-items", type=int, default=2000)
    parser.add_argument("--local-server-args", default="", help="extra flags for the server")
    args = parser.parse_args(argv)
    # Never hang CI: past any sane run time, print every thread's stack and exit 1.
    faulthandler.dump_traceback_later(args.warmup + args.duration + 180, exit=True)
    if args.local:
        return _with_local_server(args)
    return _gate(args)


def _with_local_server(args: argparse.Namespace) -> int:
    import shlex
    import signal
    import subprocess
    import time

    from featurewell.devcluster import free_ports

    port, metrics_port = free_ports(2)
    # The demo's output goes to a file, not a pipe: nothing here could keep reading a pipe once
    # Locust has monkey-patched threading (a reader thread would deadlock its import).
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "demo.log"
    log = log_path.open("w")
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "featurewell.cli",
            "demo",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            "--users",
            str(args.local_users),
            "--items",
            str(args.local_items),
            "--log-level",
            "WARNING",
            *shlex.split(args.local_server_args),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # (This process must not import grpc before Locust has patched it for gevent.)
        args.host = f"127.0.0.1:{port}"
        args.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 120
        # Ready once it prints how to call it: every view loaded, the stream up. (Its /metrics
        # answers earlier, while it still loads.)
        while "Ctrl-C stops it all" not in log_path.read_text():
            if demo.poll() is not None:
                raise SystemExit(f"featurewell demo exited with {demo.returncode}: see {log_path}")
            if time.monotonic() > deadline:
                raise SystemExit(f"featurewell demo was not ready within 120 s: see {log_path}")
            time.sleep(0.2)
        os.environ["FEATUREWELL_LOAD_USERS"] = str(args.local_users)
        os.environ["FEATUREWELL_LOAD_ITEMS"] = str(args.local_items)
        return _gate(args)
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()  # its Redis nodes die with it (PR_SET_PDEATHSIG)
            raise SystemExit("featurewell demo ignored SIGTERM for 30 s") from None
        finally:
            log.close()


def _gate(args: argparse.Namespace) -> int:
    rates = {"single": args.single_rps, "ranker": args.ranker_rps, "writer": args.writer_rps}
    users = {name: max(1, math.ceil(rps / PER_USER_RPS[name])) for name, rps in rates.items()}
    # The locustfile reads each user's pace from the environment at import.
    for name, rps in rates.items():  # a scenario switched off keeps a valid (unused) pace
        pace = rps / users[name] if rps > 0 else PER_USER_RPS[name]
        os.environ[f"FEATUREWELL_{name.upper()}_RATE"] = str(pace)
    metrics = args.metrics or f"http://{args.host.rsplit(':', 1)[0]}:9464/metrics"
    # Started now, before Locust patches this process for gevent (a child spawned through the
    # patched subprocess module broke grpc's poller); it waits out the warm-up itself.
    probe = _start_probe(args)
    figures, env = _run(args, rates, users, metrics, probe)
    verdicts = _judge(figures, rates, args)
    _report(env, figures, verdicts, args)
    return 1 if verdicts else 0


def _run(
    args: argparse.Namespace,
    rates: dict[str, float],
    users: dict[str, int],
    metrics: str,
    probe: Any,
) -> Any:
    import gevent  # imported here: Locust monkey-patches the process on import
    import numpy as np
    from locust import User, events
    from locust.env import Environment

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import locustfile

    classes = {
        "single": locustfile.ModelServerUser,
        "ranker": locustfile.RankerUser,
        "writer": locustfile.WriterUser,
    }
    chosen: list[type[User]] = [cls for name, cls in classes.items() if rates[name] > 0]
    for name, cls in classes.items():
        cls.fixed_count = users[name] if rates[name] > 0 else 0
        cls.host = args.host
    timings: dict[str, list[float]] = {name: [] for name in classes}
    failures: dict[str, int] = dict.fromkeys(classes, 0)
    measuring = [False]

    def record(name: str, response_time: float, exception: Any = None, **_: Any) -> None:
        if measuring[0]:
            timings[name].append(response_time)
            failures[name] += exception is not None

    events.request.add_listener(record)  # type: ignore[no-untyped-call]  # untyped in Locust

    env = Environment(user_classes=chosen, events=events, host=args.host)
    runner = env.create_local_runner()
    runner.start(sum(cls.fixed_count for cls in chosen), spawn_rate=100)
    gevent.sleep(args.warmup)
    env.stats.reset_all()
    before = _scrape(metrics)
    measuring[0] = True
    gevent.sleep(args.duration)
    measuring[0] = False
    after = _scrape(metrics)
    _step("measured")
    probed = _finish_probe(probe)
    _step("probe collected")
    runner.quit()
    _step("locust stopped")
    shapes = {"single": "single", "ranker": "batch"}
    figures = {}
    for name, values in timings.items():
        if rates[name] <= 0:
            continue
        array = np.asarray(values) if values else np.zeros(1)
        figures[name] = {
            "calls": len(values),
            "rps": len(values) / args.duration,
            "failures": failures[name],
            "client_p50": float(np.percentile(array, 50)),
            "client_p99": float(np.percentile(array, 99)),
            "client_max": float(array.max()),
        }
        if name in shapes:
            figures[name] |= _server_quantiles(before, after, shapes[name])
            probe_times = np.asarray(probed[name]) if probed[name] else np.full(1, np.inf)
            figures[name] |= {
                "probe_calls": len(probed[name]),
                "probe_p50": float(np.percentile(probe_times, 50)),
                "probe_p99": float(np.percentile(probe_times, 99)),
            }
    return figures, env


def _step(what: str) -> None:
    print(f"gate: {what}", file=sys.stderr, flush=True)


def _start_probe(args: argparse.Namespace) -> Any:
    import subprocess

    return subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve().parent / "probe.py"),
            "--host",
            args.host,
            "--delay",
            str(args.warmup + 0.5),
            "--duration",
            str(max(1.0, args.duration - 1.0)),
            "--single-rps",
            str(args.probe_single_rps),
            "--ranker-rps",
            str(args.probe_ranker_rps),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def _finish_probe(probe: Any) -> dict[str, list[float]]:
    import json

    out, _ = probe.communicate(timeout=120)
    if probe.returncode != 0:
        raise SystemExit(f"the probe failed (exit {probe.returncode})")
    result: dict[str, list[float]] = json.loads(out)
    return result


def _scrape(url: str) -> dict[tuple[str, float], float]:
    """GetFeatures latency buckets: (shape, upper bound in ms) -> cumulative count."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    buckets: dict[tuple[str, float], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "featurewell_request_duration_seconds_bucket"
                and labels.get("method") == "GetFeatures"
            ):
                bound = float(labels["le"]) * 1000
                buckets[(labels["shape"], bound)] = sample.value
    return buckets


def _server_quantiles(
    before: dict[tuple[str, float], float], after: dict[tuple[str, float], float], shape: str
) -> dict[str, float]:
    """The bucket edges at or below which 50% and 99% of the window's calls finished."""
    bounds = sorted(b for s, b in after if s == shape)
    counts = [after[(shape, b)] - before.get((shape, b), 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    out = {"server_calls": total}
    for name, q in (("server_p50", 0.5), ("server_p99", 0.99)):
        out[name] = next(
            (b for b, c in zip(bounds, counts, strict=True) if c >= q * total), float("inf")
        )
    return out


def _judge(figures: dict[str, Any], rates: dict[str, float], args: argparse.Namespace) -> list[str]:
    verdicts = []
    budgets = {"single": args.budget_single_ms, "ranker": args.budget_ranker_ms}
    for name, figure in figures.items():
        if figure["failures"]:
            verdicts.append(f"{name}: {figure['failures']} calls failed")
        if figure["rps"] < 0.9 * rates[name]:
            verdicts.append(
                f"{name}: sustained {figure['rps']:.0f}/s of the {rates[name]:.0f}/s asked: "
                "the machine cannot generate this load, the run proves nothing"
            )
        budget = budgets.get(name)
        if budget is None:
            continue
        if figure["server_calls"] < 0.9 * figure["calls"]:
            verdicts.append(f"{name}: the server's histogram saw too few calls: wrong --metrics?")
        elif figure["server_p99"] > budget:
            verdicts.append(
                f"{name}: server p99 above {budget:.1f} ms (at most {figure['server_p99']:g} ms)"
            )
    return verdicts


def _report(
    env: Any, figures: dict[str, Any], verdicts: list[str], args: argparse.Namespace
) -> None:
    from locust.html import get_html_report
    from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter

    args.out.mkdir(parents=True, exist_ok=True)
    writer = StatsCSVFileWriter(env, PERCENTILES_TO_REPORT, str(args.out / "gate"))
    with open(args.out / "gate_stats.csv", "w", newline="") as stats_file:
        writer.requests_csv(csv.writer(stats_file))
    with open(args.out / "gate_failures.csv", "w", newline="") as failures_file:
        writer.failures_csv(csv.writer(failures_file))
    html: str = get_html_report(env)  # type: ignore[no-untyped-call]  # Locust leaves it untyped
    (args.out / "gate_report.html").write_text(html)
    print(f"\n{args.host}, {args.duration:.0f} s after {args.warmup:.0f} s of warm-up")
    print(
        "| scenario | calls | rate /s | failures | probe p50 ms | probe p99 ms "
        "| server p50 ≤ ms | server p99 ≤ ms | locust p50 ms | locust p99 ms "
        "| locust max ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        server = (
            f"{f['probe_p50']:.2f} | {f['probe_p99']:.2f} | {f['server_p50']:g} "
            f"| {f['server_p99']:g}"
            if "server_p99" in f
            else "- | - | - | -"
        )
        client = f"{f['client_p50']:.2f} | {f['client_p99']:.2f} | {f['client_max']:.2f}"
        print(f"| {name} | {f['calls']} | {f['rps']:.0f} | {f['failures']} | {server} | {client} |")
    print("\n" + ("GATE RED:\n  " + "\n  ".join(verdicts) if verdicts else "GATE GREEN"))
    print(f"reports in {args.out}/")


if __name__ == "__main__":
    sys.exit(main())
