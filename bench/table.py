"""One table from one run: floors, single entity, ranking with the cache off and on, capacity per
core at the budget, the caches under Zipf load, and the overload curve.

Starts one local 3+3 Redis Cluster with the example data (5,000 users, 2,000 items) for the parts
it measures itself, then runs the parts other scripts own as subprocesses through their `--json`
output (each starts what it needs):

    latency     floors, single, ranking cache off/on: one open-loop client (table_latency)
    capacity    highest open-loop single-entity rate at client p99 <= 5 ms, server and Redis
                pinned to one core, the generator to another; the health check's rate the same
                way (table_capacity)
    zipf        bench/zipf.py --json: ranking under Zipf-popular items, raw Redis / cache off / on
    near_cache  bench/near_cache.py --json, when this tree has it
    overload    bench/overload.py --json: 0.5x/1x/1.5x/3x capacity, goodput, answered p99, shed

Prints one markdown table (table_render) headed by the machine's facts.

    python bench/table.py [--quick] [--parts latency,capacity,...] [--json out.json]
    python bench/table.py --readme                 # measure, then rewrite README.md's table
    python bench/table.py --from-json out.json [--readme]   # render a saved run again
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from e2e import example_repo
from table_capacity import capacity, pin, pin_self
from table_latency import measure, setup
from table_render import render, with_block

from featurewell.devcluster import LocalCluster, free_ports, start_local_cluster

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
README = ROOT / "README.md"
RECORD = BENCH / "results" / "table.json"  # the run README.md's table was rendered from
PARTS = ("latency", "capacity", "zipf", "near_cache", "overload")
BUDGET_MS = 5.0
CLI = [sys.executable, "-m", "featurewell.cli"]


@dataclass(frozen=True)
class Plan:
    """How long each part runs."""

    iterations: int  # latency: measured iterations (each sends every scenario once)
    warmup: int
    probe_s: float  # capacity: seconds per probed rate
    steps: int  # capacity: bisections after the doubling
    zipf: tuple[str, ...]  # extra flags for the subprocess parts
    overload: tuple[str, ...]


FULL = Plan(1500, 200, 3.0, 3, ("--iterations", "800", "--warmup", "200"), ("--seconds", "4"))
QUICK = Plan(
    300,
    100,
    1.5,
    2,
    ("--iterations", "200", "--warmup", "100", "--items", "20000", "--steady-rounds", "200"),
    ("--seconds", "1.5"),
)
SMOKE = Plan(20, 5, 0.4, 0, QUICK.zipf, QUICK.overload)  # for tests: does every part run at all


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "git": git or "unknown",
        "python": platform.python_version(),
        "load_before": list(os.getloadavg()),
    }


def serve(repo: Path, seeds: str, port: int, *flags: str, core: int | None = None) -> Any:
    """`featurewell serve` in its own process; with `core`, it (and any worker it forks) runs
    on that core only (taskset sets it before exec: no preexec_fn in a process with threads)."""
    command = [*CLI, "serve", "--repo", str(repo), "--redis", seeds, "--log-level", "WARNING"]
    command += ["--port", str(port), *flags]
    pinned = ["taskset", "--cpu-list", str(core)] if core is not None else []
    return subprocess.Popen([*pinned, *command])


@contextlib.contextmanager
def servers(*processes: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)


def ready(port: int) -> str:
    address = f"127.0.0.1:{port}"
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
    return address


def latency_part(cluster: LocalCluster, repo: Path, seeds: str, plan: Plan) -> dict[str, Any]:
    off_port, on_port, metrics_port = free_ports(3)
    off = serve(repo, seeds, off_port, "--cache-entries", "0", "--metrics-port", "-1")
    on = serve(repo, seeds, on_port, "--metrics-port", str(metrics_port))
    with servers(off, on):
        off_address, on_address = ready(off_port), ready(on_port)
        figures = measure(
            cluster.seeds, off_address, on_address, metrics_port, plan.iterations, plan.warmup
        )
    return {"setup": setup(plan.iterations, plan.warmup), "scenarios": figures}


def idle_ticks() -> dict[int, int]:
    """Each CPU's idle + iowait ticks so far (/proc/stat)."""
    ticks = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks[int(name[3:])] = int(fields[3]) + int(fields[4])
    return ticks


def cores() -> tuple[int, int] | None:
    """(the serving core, the generator's core): the two idlest over the last half second (on a
    shared box others pin work too), or None on a one-core machine or without taskset."""
    usable = os.sched_getaffinity(0)
    if len(usable) < 2 or not shutil.which("taskset"):
        return None
    before = idle_ticks()
    time.sleep(0.5)
    after = idle_ticks()
    idlest = sorted(usable, key=lambda cpu: before.get(cpu, 0) - after.get(cpu, 0))
    return idlest[0], idlest[1]


def capacity_part(cluster: LocalCluster, repo: Path, seeds: str, plan: Plan) -> dict[str, Any]:
    pair = cores()
    if pair:
        for node in cluster.processes.values():
            pin(node.pid, {pair[0]})
        pinning = f"server + Redis on core {pair[0]}, generator on core {pair[1]}"
    else:
        pinning = "nothing pinned (one core, or no taskset)"
    port = free_ports(1)[0]
    flags = ("--cache-entries", "0", "--metrics-port", "-1")
    server = serve(repo, seeds, port, *flags, core=pair[0] if pair else None)
    found: dict[str, Any] = {"budget_ms": BUDGET_MS, "seconds": plan.probe_s, "pinning": pinning}
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(1, pin_self, (pair[1],)) if pair else context.Pool(1)
    with servers(server), pool:
        address = ready(port)
        for kind in ("single", "health"):
            found[kind] = capacity(pool, address, kind, BUDGET_MS, plan.probe_s, 500, plan.steps)
    return found


def guarded(name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A part's figures, or {"error": ...}: one failing part leaves the rest of the table."""
    print(f"[table] {name}...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        found = run()
    except Exception as exc:
        traceback.print_exc()
        found = {"error": f"{type(exc).__name__}: {exc}"}
    found.setdefault("elapsed_s", round(time.monotonic() - started, 1))
    return found


def cluster_parts(wanted: list[str], plan: Plan, workdir: Path) -> dict[str, Any]:
    print("[table] a 3+3 Redis Cluster and the example data...", file=sys.stderr, flush=True)
    repo = example_repo(workdir / "example")
    found: dict[str, Any] = {}
    # A node timeout far above any stall a loaded box causes: a failover mid-run is not what
    # the table measures (with the default 2 s, a shared box failed nodes over, 4 s stalls).
    with start_local_cluster(3, 1, node_timeout_ms=15_000) as cluster:
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        subprocess.run(
            [*CLI, "materialize", "--repo", str(repo), "--redis", seeds],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        if "latency" in wanted:
            found["latency"] = guarded("latency", lambda: latency_part(cluster, repo, seeds, plan))
        if "capacity" in wanted:
            found["capacity"] = guarded(
                "capacity", lambda: capacity_part(cluster, repo, seeds, plan)
            )
    return found


def script_part(script: str, flags: list[str], workdir: Path) -> dict[str, Any]:
    """Runs bench/<script> --json and reads what it wrote; its own output goes to a log."""
    out, log = workdir / f"{script}.json", workdir / f"{script}.log"
    env = os.environ | {"FEATUREWELL_BENCH_DATA": str(workdir / f"{script}-data")}
    with log.open("w") as sink:
        done = subprocess.run(
            [sys.executable, str(BENCH / script), "--json", str(out), *flags],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=1800,
        )
    if done.returncode != 0 or not out.exists():
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{script} exited {done.returncode}: {' | '.join(tail)}")
    found: dict[str, Any] = json.loads(out.read_text())
    return found


def script_flags(part: str, plan: Plan) -> list[str]:
    quick = plan is not FULL
    if part == "zipf":
        return list(plan.zipf)
    if part == "overload":
        pair = cores()
        return [*plan.overload, *(("--pin", str(pair[1])) if pair else ())]
    # near_cache.py is another helper's: shorten it only through flags its --help offers.
    helped = subprocess.run(
        [sys.executable, str(BENCH / "near_cache.py"), "--help"], capture_output=True, text=True
    ).stdout
    if not quick:
        return []
    if "--quick" in helped:
        return ["--quick"]
    return ["--rounds", "600", "--warmup", "100"] if "--rounds" in helped else []


def run(wanted: list[str], plan: Plan, command: str) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {"command": command, "machine": machine(), "parts": {}}
    with tempfile.TemporaryDirectory(prefix="featurewell-table-") as tmp:
        workdir = Path(tmp)
        results["parts"] |= cluster_parts(wanted, plan, workdir)
        for part in ("zipf", "near_cache", "overload"):
            script = f"{part}.py"
            if part in wanted and (BENCH / script).exists():
                flags = script_flags(part, plan)
                results["parts"][part] = guarded(part, partial(script_part, script, flags, workdir))
    results["machine"]["load_after"] = list(os.getloadavg())
    results["seconds_total"] = round(time.monotonic() - started, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs of every part (~2.5 min)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests only
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated, of " + ", ".join(PARTS)
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--readme", action="store_true", help=f"rewrite {README.name}'s table")
    parser.add_argument(
        "--force", action="store_true", help="--readme even when a part failed (its row says so)"
    )
    parser.add_argument("--from-json", type=Path, help="render a saved run instead of measuring")
    args = parser.parse_args()
    wanted = [p for p in args.parts.split(",") if p]
    unknown = set(wanted) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        plan = SMOKE if args.smoke else QUICK if args.quick else FULL
        command = "python bench/table.py" + (" --quick" if args.quick else "")
        command += f" --parts {','.join(wanted)}" if wanted != list(PARTS) else ""
        results = run(wanted, plan, command)
    table = render(results)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    failed = [name for name, part in results["parts"].items() if "error" in part]
    if args.readme and failed and not args.force:
        sys.exit(f"[table] {', '.join(failed)} failed: README.md left as it was (see --force)")
    if args.readme:
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(results, indent=2) + "\n")
        README.write_text(with_block(README.read_text(), table))
        print(f"[table] rewrote {README.name}'s table; its run is {RECORD.relative_to(ROOT)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
