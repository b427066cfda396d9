"""How to find 500 requested entities among N cached ones: the alternatives docs/caching.md
weighed for the columnar cache's lookup, timed on fresh tag objects as a request brings them
(their hashes not yet computed), 15% of them not cached.

    python bench/cache_lookup.py [--cached 2000 20000 100000] [--repeats 400]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

Lookup = Callable[[list[bytes]], Any]


def alternatives(cached: int) -> dict[str, Lookup]:
    keys = [b"i%06d" % i for i in range(cached)]
    index = {key: slot for slot, key in enumerate(keys)}
    labels = pd.Index(keys)
    hashes = np.fromiter(map(hash, keys), np.int64, cached)
    order = np.argsort(hashes)
    ordered = hashes[order]

    def by_hash(tags: list[bytes]) -> Any:  # still needs a check of the tag on a match
        wanted = np.fromiter(map(hash, tags), np.int64, len(tags))
        at = np.minimum(np.searchsorted(ordered, wanted), cached - 1)
        return np.where(ordered[at] == wanted, order[at], -1)

    return {
        "dict get, np.fromiter": lambda t: np.fromiter(map(index.get, t, repeat(-1)), np.intp),
        "pandas Index.get_indexer": labels.get_indexer,
        "sorted hashes, np.searchsorted": by_hash,
        "hashing the tags alone": lambda t: np.fromiter(map(hash, t), np.int64, len(t)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cached", type=int, nargs="+", default=[2000, 20_000, 100_000])
    parser.add_argument("--repeats", type=int, default=400)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| cached | lookup | p50 µs | p99 µs |\n|---|---|---|---|")
    for cached in args.cached:
        for name, lookup in alternatives(cached).items():
            samples = []
            for _ in range(args.repeats):
                tags = [b"i%06d" % i for i in rng.integers(0, int(cached * 1.15), 500)]
                started = time.perf_counter()
                lookup(tags)
                samples.append(time.perf_counter() - started)
            p50, p99 = np.percentile(np.asarray(samples) * 1e6, [50, 99])
            print(f"| {cached} | {name} | {p50:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
