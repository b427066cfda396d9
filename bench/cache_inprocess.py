"""The server's side of a ranking call, cache off and on, without gRPC or a client: the engine
(plan, store read, decode, statuses, transforms) and the response's protobuf, in one process,
calls to both alternating. What bench/zipf.py's end-to-end figures contain of the cache's work.

    python bench/cache_inprocess.py [--items 100000] [--trending] [--admit-after 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from e2e import RANKING, example_repo, percentiles
from zipf import TRENDING, USERS, zipf_candidates

from featurewell.definitions import Kind, load_repo
from featurewell.devcluster import LocalCluster, start_local_cluster
from featurewell.engine.calls import Budget, FeatureRequest, InputColumn
from featurewell.engine.engine import FeatureEngine
from featurewell.serving.wire import feature_response
from featurewell.store.cache import CachePolicy
from featurewell.store.columnar import ColumnarCache
from featurewell.store.online import OnlineStore


async def measure(
    cluster: LocalCluster, repo: Path, candidates: list[list[str]], warmup: int, admit: int
) -> dict[str, dict[str, float]]:
    registry = load_repo(str(repo))
    engines = {}
    for name, cache in (("off", None), ("on", ColumnarCache(CachePolicy(admit_after=admit)))):
        store = await OnlineStore.connect(
            cluster.seeds, connect_timeout=2.0, connections_per_node=1, cache=cache
        )
        engines[name] = FeatureEngine(registry, store)
    samples: dict[str, list[float]] = {name: [] for name in engines}
    rng = np.random.default_rng(1)
    try:
        for n, items in enumerate(candidates):
            user = f"u{int(rng.integers(USERS)):06d}"
            request = FeatureRequest(
                tuple(RANKING),
                {
                    "user_id": InputColumn(Kind.STRING, [user]),
                    "item_id": InputColumn(Kind.STRING, items),
                },
                {},
            )
            for name in ("off", "on") if n % 2 else ("on", "off"):
                started = time.perf_counter()
                result = await engines[name].get_features(request, Budget(1.0))
                feature_response(result).SerializeToString()
                if n >= warmup:
                    samples[name].append(time.perf_counter() - started)
        cache = engines["on"].store.cache
        assert cache is not None
        out = {name: percentiles(values) for name, values in samples.items()}
        out["on"]["hit_ratio"] = cache.stats.hit_ratio
        return out
    finally:
        for engine in engines.values():
            await engine.store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--trending", action="store_true", help=f"the {TRENDING} most popular")
    parser.add_argument("--admit-after", type=int, default=2)
    args = parser.parse_args()
    folder = Path(os.environ.get("FEATUREWELL_BENCH_DATA", "/tmp/featurewell-zipf"))
    repo = example_repo(folder, args.items)
    population = TRENDING if args.trending else args.items
    candidates = zipf_candidates(args.calls, population, 1.1, 500, seed=3)
    with start_local_cluster(3, 0) as cluster:
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        materialize = [sys.executable, "-m", "featurewell.cli", "materialize"]
        subprocess.run(
            [*materialize, "--repo", str(repo), "--redis", seeds],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        results = asyncio.run(measure(cluster, repo, candidates, args.warmup, args.admit_after))
    off, on = results["off"], results["on"]
    print(
        f"row hit ratio {on['hit_ratio']:.1%}; cache off p50 {off['p50']:.3f} p99 "
        f"{off['p99']:.3f} ms; on p50 {on['p50']:.3f} p99 {on['p99']:.3f} ms; on / off p50 "
        f"{on['p50'] / off['p50']:.2f}, p99 {on['p99'] / off['p99']:.2f}"
    )


if __name__ == "__main__":
    main()
