"""The latency gate: Locust generates a fixed mix of load, independent open-loop probes judge
what clients see, and the gate exits 1 when a budget is broken.

    python loadtest/gate.py --local                   # what `make gate` (and CI) runs
    python loadtest/gate.py --host HOST:50051 --metrics http://HOST:9464/metrics

Load (Locust, `locustfile.py`, fixed throughput): 300 single-entity + 20 ranking (1 user + 500
items) + 10 write calls/s by default. Judge (`probe.py`): one process per kind, 60 single and
15 ranking calls/s on a fixed schedule on top of that load, each call timed from its scheduled
send time (no coordinated omission), over a 40 s window after a 5 s warm-up: 2,400 single and
600 ranking samples. Red (exit 1) when:
- a probe's client p99 is above its budget (5 ms single, 5 ms ranking);
- any call failed, the probes' or Locust's;
- a probe gathered fewer samples than --min-single-samples / --min-ranking-samples (2,000 /
  500: fewer and its p99 means little), or Locust fell 10% short of a rate asked (the run
  proves nothing).
- with --server-budget-single-ms / --server-budget-ranker-ms, the server's own histogram p99
  is above it.
A run red only for p99s (or Locust short of its rate) while the hypervisor took at least 1% of
the serving or the probes' core proves nothing about the server: it exits 3 (inconclusive), and
the gate measures again in a fresh process, `--attempts` (3) runs at most; none judged is red.
The server's own histogram is a second column: it is a part of what the probes time (it leaves
out queueing before the handler, the network and the client), so a client p99 within budget
holds it within budget too; beside the client's, it says whether time went in the handler or
around it. `make gate` (CI) judges both, with a client budget above the 5 ms target for now:
on CI's two shared cores clients see 5-9 ms p99 (single) and 8-12 ms (ranking) at this mix
(loadtest/README.md says where it goes).

`--local` starts `featurewell demo` and places it (cores.py): the server and its Redis nodes on
core 0, Locust and the probes on core 1, the probes at real-time priority when allowed. Writes
`<out>/gate_summary.json` and Locust's `gate_stats.csv`, `gate_failures.csv`, `gate_report.html`.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cores
import verdict

HERE = Path(__file__).resolve().parent
PER_USER_RPS = {"single": 50.0, "ranker": 5.0, "writer": 10.0}
PROBE_FIFO_PRIORITY = 10  # any real-time priority beats every normal task (Locust)
INCONCLUSIVE = 3  # one run's exit code: red, but the hypervisor's (verdict.inconclusive)
_ONE_RUN = "FEATUREWELL_GATE_ONE_RUN"  # set for the runs `--attempts` makes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1:50051", help="featurewell gRPC address")
    parser.add_argument(
        "--metrics", help="the server's /metrics URL (default: the host's name, port 9464)"
    )
    parser.add_argument("--single-rps", type=float, default=300.0, help="Locust's load")
    parser.add_argument("--ranker-rps", type=float, default=20.0, help="Locust's load")
    parser.add_argument("--writer-rps", type=float, default=10.0, help="Locust's load")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds, after warm-up")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--probe-single-rps", type=float, default=60.0)
    parser.add_argument("--probe-ranker-rps", type=float, default=15.0)
    parser.add_argument(
        "--load-arrivals",
        choices=("poisson", "grid"),
        default="poisson",
        help="Locust users' due times: random (default), or fixed grids, every kind's from the "
        "same instant (locustfile.py)",
    )
    parser.add_argument(
        "--probe-arrivals",
        choices=("poisson", "grid"),
        default="poisson",
        help="the probes' due times: random (default) or a fixed grid, which locks in phase "
        "with Locust's grid (probe.py)",
    )
    parser.add_argument("--budget-single-ms", type=float, default=5.0, help="client p99")
    parser.add_argument("--budget-ranker-ms", type=float, default=5.0, help="client p99")
    parser.add_argument(
        "--server-budget-single-ms", type=float, help="server histogram p99 (default: reported)"
    )
    parser.add_argument(
        "--server-budget-ranker-ms", type=float, help="server histogram p99 (default: reported)"
    )
    parser.add_argument("--min-single-samples", type=int, default=2000)
    parser.add_argument("--min-ranking-samples", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("loadtest/reports"))
    parser.add_argument(
        "--local",
        action="store_true",
        help="start `featurewell demo` (local cluster + example data + server) and test it",
    )
    parser.add_argument("--local-users", type=int, default=5000)
    parser.add_argument("--local-items", type=int, default=2000)
    parser.add_argument("--local-server-args", default="", help="extra flags for the server")
    parser.add_argument(
        "--no-pin", action="store_true", help="--local: leave every process on every core"
    )
    parser.add_argument(
        "--serving-cpu",
        type=int,
        help="--local: the core for the server and Redis (default: the first; Locust and the "
        "probes take the next)",
    )
    parser.add_argument(
        "--redis-priority",
        choices=("fifo", "nice", "none"),
        default="none",
        help="--local: the Redis nodes' priority on the serving core",
    )
    parser.add_argument(
        "--serving-nice",
        type=int,
        default=0,
        help="--local: lower the serving side's niceness by this much",
    )
    parser.add_argument(
        "--attempts",
        type=int,
        default=3,
        help="runs at most, while a red run is the hypervisor's (it took at least 1%% of the "
        "serving or the probes' core in the window): each in a fresh process",
    )
    args = parser.parse_args(argv)
    if args.attempts < 1:
        parser.error(f"--attempts must be at least 1, got {args.attempts}")
    if args.attempts > 1 and not os.environ.get(_ONE_RUN):
        command = [sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:])]
        environment = {**os.environ, _ONE_RUN: "1"}
        return attempts(
            lambda: subprocess.run(command, env=environment).returncode,
            args.attempts,
            lambda line: print(line, flush=True),
        )
    # Never hang CI: past any sane run time, print every thread's stack and exit 1.
    faulthandler.dump_traceback_later(args.warmup + args.duration + 240, exit=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.local:
        return _with_local_server(args)
    return _gate(args, cores.Placement(None, None, "remote server: nothing pinned"), None)


def attempts(run: Callable[[], int], most: int, say: Callable[[str], None]) -> int:
    """Run the gate until a run can be judged, `most` times at most; its exit code. Only a
    run the hypervisor made red (`INCONCLUSIVE`) is measured again: a green, a red the server
    made, or a failed call ends it at once, and so the budgets are never retried away."""
    for attempt in range(1, most + 1):
        code = run()
        if code != INCONCLUSIVE:
            return code
        if attempt < most:
            say(f"gate: run {attempt} of {most} could not be judged; measuring again")
    say(
        f"GATE RED: none of {most} runs could be judged: in each the hypervisor took at least "
        f"{verdict.MAX_STOLEN_SHARE:.0%} of a core the gate measures with (the machine is too "
        "busy to tell what the server does)"
    )
    return 1


def _with_local_server(args: argparse.Namespace) -> int:
    from featurewell.devcluster import free_ports

    placement = cores.plan(not args.no_pin, args.serving_cpu)
    port, metrics_port = free_ports(2)
    # The demo's output goes to a file, not a pipe: nothing here could keep reading a pipe once
    # Locust has monkey-patched threading (a reader thread would deadlock its import).
    log_path = args.out / "demo.log"
    log = log_path.open("w")
    command = [
        *(sys.executable, "-m", "featurewell.cli", "demo"),
        *("--port", str(port), "--metrics-port", str(metrics_port)),
        *("--users", str(args.local_users), "--items", str(args.local_items)),
        # Production's sampling, not the demo's: the demo logs and drift-samples every answer
        # so its skew and drift panels fill within a minute, which at this mix cost the server
        # as much CPU as serving (21 s against 13 s of its core per 40 s window, measured).
        *("--served-log-rate", "0.01", "--drift-sample-rate", "0.01"),
        *("--log-level", "WARNING", *shlex.split(args.local_server_args)),
    ]
    # Pinned before it starts: the demo's Redis nodes, server and stream process inherit it.
    cores.move_to(placement.serving)
    demo = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    cores.move_to(placement.client)  # this process runs Locust
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
        moved = cores.move_helpers(demo.pid, placement.client)
        note = placement.note + (f" ({', '.join(moved)} too)" if moved else "")
        if cores.can_use_fifo():
            note += "; " + cores.raise_serving(demo.pid, args.serving_nice)
            note += "; " + cores.prioritise_redis(demo.pid, args.redis_priority)
        placement = dataclasses.replace(placement, note=note)
        os.environ["FEATUREWELL_LOAD_USERS"] = str(args.local_users)
        os.environ["FEATUREWELL_LOAD_ITEMS"] = str(args.local_items)
        return _gate(args, placement, demo.pid)
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()  # its Redis nodes die with it (PR_SET_PDEATHSIG)
            raise SystemExit("featurewell demo ignored SIGTERM for 30 s") from None
        finally:
            log.close()


def _gate(args: argparse.Namespace, placement: cores.Placement, serving: int | None) -> int:
    rates = {"single": args.single_rps, "ranker": args.ranker_rps, "writer": args.writer_rps}
    users = {name: max(1, math.ceil(rps / PER_USER_RPS[name])) for name, rps in rates.items()}
    # The locustfile reads each user's pace and arrivals from the environment at import.
    os.environ["FEATUREWELL_LOAD_ARRIVALS"] = args.load_arrivals
    for name, rps in rates.items():  # a scenario switched off keeps a valid (unused) pace
        pace = rps / users[name] if rps > 0 else PER_USER_RPS[name]
        os.environ[f"FEATUREWELL_{name.upper()}_RATE"] = str(pace)
    metrics = args.metrics or f"http://{args.host.rsplit(':', 1)[0]}:9464/metrics"
    # The probes' window opens once Locust has run its warm-up (they take ~1 s to start).
    window_start = time.monotonic() + 1.5 + args.warmup
    # Started now, before Locust patches this process for gevent (a child spawned through the
    # patched subprocess module broke grpc's poller).
    probes = {
        kind: _start_probe(args, placement, kind, rate, window_start)
        for kind, rate in (("single", args.probe_single_rps), ("ranker", args.probe_ranker_rps))
    }
    figures, env, waits = _run(
        args,
        rates,
        users,
        metrics,
        probes,
        window_start,
        (serving, placement.serving, placement.client),
    )
    verdicts = verdict.judge(figures, rates, args)
    unjudged = verdict.inconclusive(verdicts, waits, args.duration)
    verdict.report(env, figures, verdicts, args, placement.note, waits, unjudged)
    if not verdicts:
        return 0
    return INCONCLUSIVE if unjudged is not None else 1


def _start_probe(
    args: argparse.Namespace,
    placement: cores.Placement,
    kind: str,
    rate: float,
    start_at: float,
) -> subprocess.Popen[str]:
    fifo = PROBE_FIFO_PRIORITY if cores.can_use_fifo() else 0
    # The single-entity probe a step above the ranking one: one's 500-row decode never
    # delays the other's send on their shared core.
    fifo += kind == "single" and fifo > 0
    command = [
        *(sys.executable, str(HERE / "probe.py"), "--kind", kind, "--host", args.host),
        *("--rate", str(rate), "--start-at", repr(start_at), "--duration", str(args.duration)),
        *("--cpus", placement.client_cpus, "--fifo", str(fifo)),
        *("--arrivals", args.probe_arrivals),
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def _run(
    args: argparse.Namespace,
    rates: dict[str, float],
    users: dict[str, int],
    metrics: str,
    probes: dict[str, subprocess.Popen[str]],
    window_start: float,
    cpus: tuple[int | None, frozenset[int] | None, frozenset[int] | None],
) -> tuple[dict[str, dict[str, Any]], Any, dict[str, Any]]:
    import gevent  # imported here: Locust monkey-patches the process on import
    import locustfile
    from locust import User, events
    from locust.env import Environment

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
    failures: dict[str, list[str]] = {name: [] for name in classes}
    measuring = [False]

    def record(name: str, response_time: float, exception: Any = None, **_: Any) -> None:
        if measuring[0]:
            timings[name].append(response_time)
            if exception is not None:
                failures[name].append(f"{type(exception).__name__}: {exception}")

    events.request.add_listener(record)  # type: ignore[no-untyped-call]  # untyped in Locust

    env = Environment(user_classes=chosen, events=events, host=args.host)
    runner = env.create_local_runner()
    runner.start(sum(cls.fixed_count for cls in chosen), spawn_rate=100)
    gevent.sleep(max(0.0, window_start - time.monotonic()))
    env.stats.reset_all()
    before = verdict.scrape(metrics)
    serving, serving_cpus, client_cpus = cpus  # (the server's pid, its cores, the probes')
    waited = (
        cores.cpu_pressure_us(),
        cores.tree_times(serving),
        cores.core_times(serving_cpus),
        cores.core_times(client_cpus),
    )
    measuring[0] = True
    gevent.sleep(max(0.0, window_start + args.duration - time.monotonic()))
    measuring[0] = False
    waits = verdict.waits(
        waited,
        (
            cores.cpu_pressure_us(),
            cores.tree_times(serving),
            cores.core_times(serving_cpus),
            cores.core_times(client_cpus),
        ),
    )
    _step("measured")
    probed = {kind: _finish_probe(probe) for kind, probe in probes.items()}
    _keep(args.out, probed)
    after = verdict.scrape(metrics)  # (once the probes' last calls are in)
    _step("probes collected")
    runner.quit()
    _step("locust stopped")
    figures = verdict.figures(timings, failures, probed, before, after, rates, args.duration)
    return figures, env, waits


def _step(what: str) -> None:
    print(f"gate: {what}", file=sys.stderr, flush=True)


def _finish_probe(probe: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = probe.communicate(timeout=120)
    if probe.returncode != 0:
        raise SystemExit(f"a probe failed (exit {probe.returncode}): {probe.args!r}")
    result: dict[str, Any] = json.loads(out)
    return result


def _keep(out: Path, probed: dict[str, dict[str, Any]]) -> None:
    """Every probe call's time, in schedule order, for a look at where a p99 came from."""
    for kind, result in probed.items():
        (out / f"gate_probe_{kind}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
