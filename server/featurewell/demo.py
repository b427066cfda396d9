"""`featurewell demo`, the README's first command: a local Redis Cluster, the example repo's sample
data loaded (catalog from Parquet, computed views from the event log by the batch engine), the
server, and `featurewell stream` in its own process keeping computed views fresh. It appends one
event and shows the feature it changes, servable within a fraction of a second. The skew loop runs
too (demo_skew.py): served values logged, history kept, `featurewell skew --every` comparing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from featurewell.app import start_server
from featurewell.client import AsyncFeatureClient
from featurewell.compute.redis_streams import append, checked_event
from featurewell.definitions import EventSource, Registry, load_repo
from featurewell.demo_skew import (
    backfill_with_history,
    skew_command,
    start_skew_check,
    with_offline_store,
)
from featurewell.devcluster import DIE_WITH_PARENT, start_local_cluster
from featurewell.errors import ConfigError, DefinitionError
from featurewell.ingest.materialize import materialize
from featurewell.serving.gc_pacing import trim_heap
from featurewell.serving.server import Server
from featurewell.settings import Settings
from featurewell.telemetry.report import compute_baselines

_READY = re.compile(r"featurewell stream: consuming .*; metrics (\S+)")
_ECHOES: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class DemoOptions:
    users: int = 5000
    items: int = 2000
    replicas: int = 0  # per master
    workdir: Path | None = None  # where the example and its data go; None: a temporary folder


def example_repo() -> Path:
    """The streaming_media example: shipped inside the wheel (featurewell/_examples), or in the
    source checkout an editable install runs from."""
    for candidate in (
        Path(__file__).parent / "_examples" / "streaming_media",
        Path(__file__).resolve().parents[2] / "examples" / "streaming_media",
    ):
        if (candidate / "repo.py").is_file():
            return candidate
    raise ConfigError("the example repo is not installed with featurewell: pass --repo")


def run_demo(settings: Settings, options: DemoOptions) -> None:
    """Serve `settings.repo` in place, or a copy of the example (and its generated data) in
    `options.workdir`, from a local Redis Cluster until SIGTERM or Ctrl-C."""
    with contextlib.ExitStack() as cleanup:
        if not settings.repo:
            workdir = options.workdir
            if workdir is None:
                workdir = Path(tempfile.mkdtemp(prefix="featurewell-demo-"))
                cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
            workdir.mkdir(parents=True, exist_ok=True)
            for name in ("repo.py", "generate.py"):
                shutil.copyfile(example_repo() / name, workdir / name)
            settings = settings.with_changes(repo=str(workdir))
        repo = Path(settings.repo)
        print(
            f"starting a local Redis Cluster (3 masters, {options.replicas} replicas each)...",
            flush=True,
        )
        cluster = cleanup.enter_context(start_local_cluster(3, options.replicas))
        settings = settings.with_changes(redis=tuple(cluster.seeds))
        print(f"Redis Cluster up: {_seeds(settings)} (data in {cluster.workdir})", flush=True)
        generator = _load_module(repo / "generate.py")
        if generator is not None:
            rows = generator.generate(options.users, options.items, repo / "data")
            print(f"generated sample data in {repo / 'data'}: {rows}", flush=True)
        settings = with_offline_store(with_drift_baselines(settings, repo), repo)
        uvloop.run(_serve(settings, generator))


# The demo watches drift closely, so its dashboard's drift panels fill within a minute of
# traffic: every call sampled, compared every 15 s (production: 1% of calls, every 5 minutes).
DEMO_DRIFT = {"drift_sample_rate": 1.0, "drift_window_s": 15.0}


def with_drift_baselines(settings: Settings, repo: Path) -> Settings:
    """`settings` with drift baselines from the sample data, as `featurewell baseline` makes
    them (each Parquet-sourced view's own file; the definitions' Stats cover the computed
    views), saved beside the repo; and the demo's drift pace where the user set none."""
    changes: dict[str, object] = {
        name: value for name, value in DEMO_DRIFT.items() if name not in settings.given
    }
    if not settings.telemetry.drift_baseline:
        out = repo / "baseline.json"
        try:
            found = compute_baselines(load_repo(settings.repo), None, out)
        except DefinitionError as exc:  # no Parquet-sourced view: the Stats alone
            print(f"drift baselines: the definitions' Stats only ({exc})", flush=True)
        else:
            print(f"drift baselines: {len(found)} from the sample data in {out}", flush=True)
            changes["drift_baseline"] = str(out)
    return settings.with_changes(**changes)


async def _serve(settings: Settings, generator: Any) -> None:
    registry = load_repo(settings.repo)
    # Handlers first: a SIGTERM that arrives while the sample data loads must still stop us.
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    server = await start_server(settings, registry)
    streams: list[asyncio.subprocess.Process] = []
    try:
        setup = asyncio.ensure_future(
            _load_and_stream(settings, registry, server, generator, streams)
        )
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({setup, stop}, return_when=asyncio.FIRST_COMPLETED)
        if setup.done():
            setup.result()
            await stop
        else:  # stopped while loading
            setup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await setup
    finally:
        print(
            "stopping: the stream and the skew check, then draining calls, then the local cluster",
            flush=True,
        )
        for process in streams:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            await process.wait()
        await server.stop(grace=1.0)


async def _load_and_stream(
    settings: Settings,
    registry: Registry,
    server: Server,
    generator: Any,
    streams: list[asyncio.subprocess.Process],
) -> None:
    engine = server.service.engine
    started = time.perf_counter()
    loaded = sum(load.rows for load in await materialize(engine))
    print(f"materialized {loaded:,} rows from Parquet in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    computed = await backfill_with_history(settings, registry, engine)
    if computed:
        print(
            f"computed {sum(c.entities for c in computed):,} rows of {len(computed)} views "
            f"from their event logs in {time.perf_counter() - started:.1f} s "
            f"({sum(c.history_rows for c in computed):,} history rows in {settings.offline.dir})",
            flush=True,
        )
    # Loading the sample data freed much memory: back to the OS now, not inside a call
    # (gc_pacing.trim_heap).
    gc.collect()
    trim_heap()
    address = f"{settings.listen.host}:{server.port}"
    for source in _sources(registry):
        await _start_stream(settings, source, streams)
    if streams and hasattr(generator, "live_event"):
        live = generator.live_event(Path(settings.repo) / "data")
        await _show_live_update(server, registry, address, *live)
    skew_metrics = await start_skew_check(settings, streams)
    metrics = f"http://{settings.listen.host}:{server.metrics_port}/metrics"
    print(
        _HOW_TO_CALL.format(
            address=address,
            metrics=metrics if server.metrics_port else "off",
            repo=settings.repo,
            redis=_seeds(settings),
            skew=" ".join(skew_command(settings)),
            skew_metrics=skew_metrics,
        ),
        flush=True,
    )


def _sources(registry: Registry) -> list[EventSource]:
    found = {v.events.name: v.events for v in registry.views.values() if v.events is not None}
    return list(found.values())


async def _start_stream(
    settings: Settings, source: EventSource, started: list[asyncio.subprocess.Process]
) -> None:
    """`featurewell stream` for one source, as its own process (as deployed: the engine's CPU
    never competes with serving), added to `started`; returns once it is consuming."""
    process = await asyncio.create_subprocess_exec(
        *DIE_WITH_PARENT,
        sys.executable,
        "-m",
        "featurewell.cli",
        "stream",
        "--repo",
        settings.repo,
        "--redis",
        _seeds(settings),
        "--source",
        source.name,
        "--offline-dir",  # its history: what it writes online, for training and the skew check
        settings.offline.dir,
        "--metrics-port",
        "0",
        "--log-level",
        settings.log_level,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    started.append(process)
    assert process.stderr is not None
    async with asyncio.timeout(60):
        while line := (await process.stderr.readline()).decode():
            if ready := _READY.search(line):
                print(
                    f"streaming {source.name}: featurewell stream (pid {process.pid}), "
                    f"metrics {ready.group(1)}",
                    flush=True,
                )
                break
        else:
            raise RuntimeError(f"featurewell stream --source {source.name} exited at start-up")
    echo = asyncio.get_running_loop().create_task(_echo(process.stderr, f"[stream {source.name}] "))
    _ECHOES.add(echo)  # the loop keeps only weak references to tasks
    echo.add_done_callback(_ECHOES.discard)


async def _echo(lines: asyncio.StreamReader, prefix: str) -> None:
    while line := await lines.readline():
        print(prefix + line.decode().rstrip(), flush=True)


async def _show_live_update(
    server: Server,
    registry: Registry,
    address: str,
    feature: str,
    entities: dict[str, list[Any]],
    raw: dict[str, Any],
) -> None:
    """Append the example's live event and time how soon the feature it changes is served."""
    view = registry.view(feature.split(":", 1)[0])
    assert view.events is not None
    event = checked_event(view.events, raw, time.time_ns() // 1000)
    async with AsyncFeatureClient(address) as client:
        before = (await client.get_features([feature], entities=entities))[feature].values[0]
        appended = time.perf_counter()
        await append(server.service.engine.store.cluster, view.events, [event])
        now = before
        while now == before and time.perf_counter() - appended < 10:
            await asyncio.sleep(0.005)
            now = (await client.get_features([feature], entities=entities))[feature].values[0]
    waited = time.perf_counter() - appended
    who = ", ".join(f"{k}={v[0]}" for k, v in entities.items())
    if now == before:
        print(f"live: appended an event for {who}; {feature} still {before} after 10 s (!)")
        return
    print(
        f"live: appended a {view.events.name} event for {who}: {feature} went {before} -> {now}, "
        f"servable {waited * 1000:.0f} ms after the append",
        flush=True,
    )


def _seeds(settings: Settings) -> str:
    return ",".join(f"{h}:{p}" for h, p in settings.redis.seeds)


def _load_module(path: Path) -> Any:
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"featurewell_demo_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_HOW_TO_CALL = """
featurewell is serving the streaming_media example on {address} (Ctrl-C stops it all).
Metrics: {metrics}    drift report: featurewell drift --metrics-url {metrics}
Training/serving skew: every answer is logged to the offline store and compared every 15 s with
what a training set would hold (ratio 0 when clean; gauges {skew_metrics}). The report now:
    {skew}
Web UI (catalog, views, live health; docs/ui.md), then open http://127.0.0.1:8080/:
    featurewell ui --repo {repo} --redis {redis} --metrics-url {metrics}

  Python:
    from featurewell.client import FeatureClient
    client = FeatureClient("{address}")
    result = client.get_features(
        ["user_activity:*", "item_stats:popularity_score", "user_item_affinity:genre_affinity"],
        entities={{"user_id": ["u000042"], "item_id": [f"i{{n:06d}}" for n in range(500)]}},
    )
    matrix, names = result.to_numpy()      # 500 x 6 float32, user features broadcast

  grpcurl (reflection is on):
    grpcurl -plaintext -d '{{"features": ["user_activity:*"],
      "entities": {{"user_id": {{"strings": {{"values": ["u000042"]}}}}}}}}' \\
      {address} featurewell.v1.FeatureService/GetFeatures

  Append a watch and see user_activity:watch_count_7d move (the stream computes it):
    featurewell append --repo {repo} --redis {redis} --source watches \\
      --event '{{"user_id": "u000042", "item_id": "i000007", "minutes": 30,
                 "title_min": 45, "genre": 2}}'
"""
