"""What telemetry costs: serving latency of the server before telemetry existed (a git worktree
of `--before`, the last commit without it), the default (metrics, freshness, 1% drift
sampling; tracing off), and tracing on with 10% and 100% of calls sampled, exported over
OTLP/gRPC to a local collector stand-in. One run, one cluster, calls interleaved in rotating
order so machine noise hits every server alike.

Also times, inside one process, the work `Telemetry` does after each answer (metrics, drift
sampling, spans) per call shape, which runs 2 ms after the answer, off the call's path.

    python bench/telemetry.py [--iterations 1500] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from e2e import ITEMS, RANKING, SINGLE, USERS, example_repo, percentiles
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2 as otlp,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2_grpc as otlp_grpc,
)

from featurewell.client import FeatureClient
from featurewell.devcluster import free_ports, start_local_cluster

BEFORE = "746a5b2"  # the last commit before the telemetry package
CONFIGS = {
    # name: extra environment of the server process ("before" runs the old tree)
    "before telemetry": {},
    "tracing off": {},
    "tracing 10%": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
    "tracing 100%": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
}
ROOT = Path(__file__).resolve().parents[1]


class Collector(otlp_grpc.TraceServiceServicer):
    """Accepts OTLP span batches and counts them (a collector that exports nowhere)."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(  # noqa: N802
        self, request: otlp.ExportTraceServiceRequest, context: Any
    ) -> otlp.ExportTraceServiceResponse:
        count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self._lock:
            self.spans += count
        return otlp.ExportTraceServiceResponse()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--before", default=BEFORE, help="git revision without telemetry")
    args = parser.parse_args()
    before = Path("/tmp/featurewell-before")
    if not before.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    data = example_repo(Path(os.environ.get("FEATUREWELL_BENCH_DATA", "/tmp/featurewell-bench")))
    collector = Collector()
    sink = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    # opentelemetry-proto's generated gRPC module is untyped.
    otlp_grpc.add_TraceServiceServicer_to_server(collector, sink)  # type: ignore[no-untyped-call]
    sink_port = sink.add_insecure_port("127.0.0.1:0")
    sink.start()
    try:
        with start_local_cluster(3, 1) as cluster:
            results = measure(cluster.seeds, data, sink_port, args.iterations, args.warmup, before)
            results["after_answer_us"] = after_answer_cost(data, cluster.seeds)
    finally:
        sink.stop(None)
    results["spans_exported"] = collector.spans
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def measure(
    seeds: list[tuple[str, int]],
    repo: Path,
    sink_port: int,
    iterations: int,
    warmup: int,
    before: Path,
) -> dict[str, Any]:
    seeds_arg = ",".join(f"{h}:{p}" for h, p in seeds)
    cli = [sys.executable, "-m", "featurewell.cli"]
    subprocess.run(
        [*cli, "materialize", "--repo", str(repo), "--redis", seeds_arg],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    servers: dict[str, tuple[subprocess.Popen[bytes], FeatureClient]] = {}
    try:
        for name, extra in CONFIGS.items():
            (port,) = free_ports(1)
            env = {**os.environ, **extra}
            if extra:
                env |= {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
                    "OTEL_EXPORTER_OTLP_INSECURE": "true",
                }
            served = repo
            if name == "before telemetry":  # its tree shadows the installed one
                env["PYTHONPATH"] = f"{before / 'server'}:{before / 'client'}"
                served = _old_repo(before, repo)
            process = subprocess.Popen(
                [
                    *cli,
                    "serve",
                    "--repo",
                    str(served),
                    "--redis",
                    seeds_arg,
                    "--port",
                    str(port),
                    "--metrics-port",
                    "0",
                    "--log-level",
                    "WARNING",
                    "--cache-entries",
                    "0",
                ],
                env=env,
            )
            address = f"127.0.0.1:{port}"
            grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=30)
            servers[name] = (process, FeatureClient(address, timeout=5))
        rng = random.Random(3)
        samples: dict[str, list[float]] = {
            f"{name} {shape}": [] for name in CONFIGS for shape in ("single", "ranking")
        }
        order = list(CONFIGS)
        gc.collect()
        gc.freeze()
        for n in range(warmup + iterations):
            user = f"u{rng.randrange(USERS):06d}"
            items = [f"i{i:06d}" for i in rng.sample(range(ITEMS), 500)]
            order = order[1:] + order[:1]  # rotate: no configuration always goes first
            for name in order:
                client = servers[name][1]
                started = time.perf_counter()
                client.get_features(SINGLE, entities={"user_id": [user]})
                single = time.perf_counter() - started
                started = time.perf_counter()
                client.get_features(RANKING, entities={"user_id": [user], "item_id": items})
                ranking = time.perf_counter() - started
                if n >= warmup:
                    samples[f"{name} single"].append(single)
                    samples[f"{name} ranking"].append(ranking)
    finally:
        for process, client in servers.values():
            client.close()
            process.send_signal(signal.SIGTERM)
        for process, _ in servers.values():
            process.wait(timeout=30)
    return {name: percentiles(values) for name, values in samples.items()}


def _old_repo(before: Path, repo: Path) -> Path:
    """The example repo as the old tree defined it (its definitions API), on the same data."""
    old = repo.parent / f"{repo.name}-before"
    old.mkdir(exist_ok=True)
    (old / "repo.py").write_bytes(
        (before / "examples" / "streaming_media" / "repo.py").read_bytes()
    )
    if not (old / "data").exists():
        (old / "data").symlink_to(repo / "data")
    return old


def after_answer_cost(repo: Path, seeds: list[tuple[str, int]]) -> dict[str, float]:
    """µs per call of `Telemetry.read_done` (runs after the answer), tracing off and on."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from featurewell.definitions import Kind, load_repo
    from featurewell.engine.calls import Budget, FeatureRequest, InputColumn
    from featurewell.engine.engine import FeatureEngine
    from featurewell.settings import Settings
    from featurewell.store.online import OnlineStore
    from featurewell.telemetry.hub import Telemetry
    from featurewell.telemetry.tracing import Tracing

    registry = load_repo(str(repo))
    out: dict[str, float] = {}

    async def run() -> None:
        settings = Settings.load(environ={}).with_changes(redis=tuple(seeds))
        store = await OnlineStore.connect(seeds, connect_timeout=2, connections_per_node=1)
        engine = FeatureEngine(registry, store, settings.serving)
        items = [f"i{i:06d}" for i in range(500)]
        user = {"user_id": InputColumn(Kind.STRING, ["u000001"])}
        shapes = {
            "single": FeatureRequest(tuple(SINGLE), user, {}),
            "ranking": FeatureRequest(
                tuple(RANKING), {**user, "item_id": InputColumn(Kind.STRING, items)}, {}
            ),
        }
        for traced in (False, True):
            tracing = Tracing(SimpleSpanProcessor(InMemorySpanExporter())) if traced else None
            telemetry = Telemetry(settings.telemetry, store, registry, tracing)
            for shape, request in shapes.items():
                result = await engine.get_features(request, Budget(1.0))
                times = []
                for _ in range(2000):
                    started = time.perf_counter_ns()
                    telemetry.read_done(result, started, started + 1000, ())
                    times.append(time.perf_counter_ns() - started)
                key = f"{shape}, tracing {'on' if traced else 'off'}"
                out[key] = float(np.median(times)) / 1000
        await store.close()

    asyncio.run(run())
    return out


def report(results: dict[str, Any]) -> None:
    print("\n| server | shape | p50 ms | p99 ms | p50 vs before | p99 vs before |")
    print("|---|---|---|---|---|---|")
    for shape in ("single", "ranking"):
        base = results[f"before telemetry {shape}"]
        for name in CONFIGS:
            got = results[f"{name} {shape}"]
            print(
                f"| {name} | {shape} | {got['p50']:.3f} | {got['p99']:.3f} | "
                f"{got['p50'] / base['p50']:.2f}x | {got['p99'] / base['p99']:.2f}x |"
            )
    print(f"\nspans exported to the OTLP stand-in: {results['spans_exported']:,}")
    print("\nwork after each answer (median µs per call, in process, off the call's path):")
    for key, micros in results["after_answer_us"].items():
        print(f"  {key}: {micros:.1f} µs")


if __name__ == "__main__":
    main()
