"""The gate's measuring instrument: one sequential client in its own process, calling at a
steady pace while Locust generates the load, and timing each call from send to decoded matrix.

It shares no interpreter, GIL or event loop with the load generator, so its times hold what a
model server or ranker would see (network, server queueing, server work, client decoding) and
nothing of Locust's own scheduling. Prints {"single": [ms...], "ranker": [ms...]} as JSON.

    python loadtest/probe.py --host 127.0.0.1:50051 --duration 20 [--single-rps 40]
        [--ranker-rps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from featurewell.client import ClientOptions, FeatureClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenarios import RANKING, SINGLE, items_for, zipf_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1:50051")
    parser.add_argument("--delay", type=float, default=0.0, help="wait this long first")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--single-rps", type=float, default=40.0)
    parser.add_argument("--ranker-rps", type=float, default=4.0)
    args = parser.parse_args()
    time.sleep(args.delay)

    next_user = zipf_ids("u", int(os.environ.get("FEATUREWELL_LOAD_USERS", "5000")), seed=7)
    rng = np.random.default_rng(8)
    items = int(os.environ.get("FEATUREWELL_LOAD_ITEMS", "2000"))
    # A steady schedule: every call has its slot; a late call is not made up for later.
    slots = sorted(
        [(i / args.single_rps, "single") for i in range(int(args.duration * args.single_rps))]
        + [(i / args.ranker_rps, "ranker") for i in range(int(args.duration * args.ranker_rps))]
    )
    times: dict[str, list[float]] = {"single": [], "ranker": []}
    options = ClientOptions(timeout=2.0, read_attempts=1)
    with FeatureClient(args.host, options=options) as client:
        start = time.perf_counter()
        for offset, kind in slots:
            pause = start + offset - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            user = next_user()
            began = time.perf_counter()
            if kind == "single":
                client.get_features(SINGLE, {"user_id": [user]}).to_numpy()
            else:
                entities = {"user_id": [user], "item_id": items_for(rng, items)}
                client.get_features(RANKING, entities).to_numpy()
            times[kind].append((time.perf_counter() - began) * 1000)
    json.dump(times, sys.stdout)


if __name__ == "__main__":
    main()
