"""A ranker's call with the client's HTTP/2 stream window as gRPC sets it by default (64 KB,
grown by BDP probing) and as featurewell's client sets it (a fixed 4 MB window, no probing),
interleaved call by call against one running server.

    python bench/window.py --host 127.0.0.1:50051 [--calls 1500]

Load the example repo's data first (`make run`, or `featurewell demo`). Prints p50/p90/p99 per
channel. Raw bytes in and out: the client's own work is left out, so only the transport differs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from featurewell.client._channel import RECEIVE_WINDOW_BYTES
from featurewell.v1 import feature_service_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest"))
from scenarios import RANKING, items_for

METHOD = "/featurewell.v1.FeatureService/GetFeatures"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1:50051")
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--items", type=int, default=2000)
    args = parser.parse_args()
    fixed = [("grpc.http2.lookahead_bytes", RECEIVE_WINDOW_BYTES), ("grpc.http2.bdp_probe", 0)]
    channels = {
        "gRPC default window": grpc.insecure_channel(args.host),
        "fixed 4 MB window": grpc.insecure_channel(args.host, options=fixed),
    }
    calls: dict[str, grpc.UnaryUnaryMultiCallable[bytes, bytes]] = {
        name: channel.unary_unary(METHOD) for name, channel in channels.items()
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    rng = np.random.default_rng(1)
    for i in range(args.calls):
        entities = {"user_id": [f"u{i % 5000:06d}"], "item_id": items_for(rng, args.items)}
        request = pb.GetFeaturesRequest(
            features=RANKING,
            entities={k: pb.Values(strings=pb.StringList(values=v)) for k, v in entities.items()},
        ).SerializeToString()
        for name in list(calls) if i % 2 else list(calls)[::-1]:
            began = time.perf_counter()
            calls[name](request, timeout=2)
            times[name].append(time.perf_counter() - began)
            time.sleep(0.003)
    for name, values in times.items():
        ms = np.asarray(values[100:]) * 1000  # the first calls warm both channels
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        print(f"{name:>20}: p50 {p50:.2f} p90 {p90:.2f} p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
