"""The gate's measuring instrument: one kind of call (single or ranking) on a fixed open-loop
schedule, in its own process, each call timed from its *scheduled* send time to its decoded
answer.

    python loadtest/probe.py --kind single --rate 60 --start-at MONOTONIC --duration 40
        [--host 127.0.0.1:50051] [--cpus 1] [--fifo 10] [--seed 7] [--arrivals poisson|grid]

Why each choice:
- Open loop, from the scheduled time (no coordinated omission). When the probe sends late (its
  previous call was slow, or it woke late), the lateness is in that call's time, as it would be
  for a client that sent on time and waited in a queue. Every scheduled call is made: behind
  schedule, the next ones go back to back until the probe is on time again, each timed from its
  own due time.
- Random arrival times (`--arrivals poisson`, the default), so the probe sees the server at
  every moment alike. Calls on a fixed grid (`grid`: call i at start + i/rate) lock in phase
  with the load, which is on a grid too: at 60/s the single probe's period is a third of the
  50 ms between two of Locust's 20 rankings/s, so a whole run sampled the same three moments of
  that cycle, and whether one of them fell just after a ranking decided the run (measured, see
  `due_offsets`). Gaps are exponential above a floor of a quarter of the mean gap: no phase is
  favoured, and the probe's own previous call is rarely still running when the next is due.
- Its own process, one per kind. It shares no GIL or event loop with Locust, and a ranking
  call's client work (building 500 keys, decoding a 500-row matrix) never delays a single-entity
  call's send, as it would in one sequential client.
- Scheduling (set here, before grpc starts any thread, so every thread inherits it): pinned to
  `--cpus` and, with `--fifo N`, real-time priority N (SCHED_FIFO). On the generator's core the
  probe is the instrument, and the load generator must not decide when it wakes: a Locust
  greenlet busy for a millisecond would otherwise be measured as server latency. It holds
  that core for microseconds per call (it waits on the server, asleep), so Locust keeps its rate.
- Waking: it sleeps until ~200 us before a call is due and spins the rest, since a sleep's
  wake-up is late by 50-100 us (more on a busy vCPU), which would land in every measurement.
- GC off during the window (after a collection and a freeze): a collection pass in the
  instrument is time no server spent.
- Arguments for every call (ids, item lists) are drawn before the window; what is timed is what
  a client does per call: build the request, call, decode to numpy.

Prints JSON: {"kind", "scheduling", "start_at", "rate", "arrivals", "due_s": [...],
"latency_ms": [...], "lag_ms": [...], "failures": n, "errors": [...]}
(`lag_ms`: how late each call was sent, part of its latency, reported to tell instrument
trouble from server trouble).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

SPIN_S = 200e-6  # spin this long before a due call instead of trusting sleep's wake-up


def due_offsets(calls: int, rate: float, arrivals: str, seed: int) -> list[float]:
    """Each call's due time in seconds after the first, which is due at 0; the last is due at
    (calls - 1) / rate, as on the grid.

    `poisson`: gaps drawn by `scenarios.random_gaps`, scaled to end on time.
    Any gap law that is not a lattice spreads a long run's calls evenly over the phases of
    every periodic load; the floor keeps the probe, one call at a time, from being its own
    queue."""
    if calls <= 1:
        return [0.0] * calls
    if arrivals == "grid":
        return [i / rate for i in range(calls)]
    import numpy as np
    from scenarios import random_gaps  # on the path: main() put it there, or the caller

    mean = 1 / rate
    gaps = random_gaps(np.random.default_rng(seed), mean, calls - 1)
    offsets = np.concatenate(([0.0], np.cumsum(gaps)))
    scaled: list[float] = (offsets * ((calls - 1) * mean / offsets[-1])).tolist()
    return scaled


def _schedule(cpus: str, fifo: int) -> list[str]:
    """Pin this process and set its priority (before any thread starts); says what it did."""
    done = []
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
        done.append(f"cpus {cpus}")
    if fifo:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(fifo))
            done.append(f"SCHED_FIFO {fifo}")
        except PermissionError:
            done.append("no real-time priority (not permitted)")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("single", "ranker"), required=True)
    parser.add_argument("--host", default="127.0.0.1:50051")
    parser.add_argument("--rate", type=float, required=True, help="calls per second")
    parser.add_argument(
        "--start-at", type=float, help="time.monotonic() of the first call (default: in 1 s)"
    )
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--cpus", default="", help="pin to these cpus (comma-separated)")
    parser.add_argument("--fifo", type=int, default=0, help="SCHED_FIFO priority (0: none)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--arrivals",
        choices=("poisson", "grid"),
        default="poisson",
        help="random due times (default) or a fixed grid, which locks in phase with grid load",
    )
    args = parser.parse_args()
    scheduling = _schedule(args.cpus, args.fifo)

    import numpy as np

    from featurewell.client import ClientOptions, FeatureClient

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from scenarios import RANKING, SINGLE, items_for, zipf_ids

    calls = int(args.duration * args.rate)
    next_user = zipf_ids("u", int(os.environ.get("FEATUREWELL_LOAD_USERS", "5000")), seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    items = int(os.environ.get("FEATUREWELL_LOAD_ITEMS", "2000"))
    features = SINGLE if args.kind == "single" else RANKING
    entities: list[dict[str, list[str]]] = [
        {"user_id": [next_user()]}
        if args.kind == "single"
        else {"user_id": [next_user()], "item_id": items_for(rng, items)}
        for _ in range(calls)
    ]
    # Each kind its own draw: the two probes' gaps are not one sequence at two scales.
    due = due_offsets(
        calls, args.rate, args.arrivals, args.seed + (2 if args.kind == "single" else 3)
    )
    latency: list[float] = []
    lag: list[float] = []
    errors: list[str] = []
    # One attempt, no retries: a retried call would hide a failure from the gate.
    options = ClientOptions(timeout=2.0, read_attempts=1)
    with FeatureClient(args.host, options=options) as client:
        for warm in entities[:5]:  # connect and warm up before the window, untimed
            client.get_features(features, warm).to_numpy()
        start = args.start_at if args.start_at is not None else time.monotonic() + 1.0
        gc.collect()
        gc.freeze()
        gc.disable()
        for offset, asked in zip(due, entities, strict=True):
            due_at = start + offset
            pause = due_at - time.monotonic() - SPIN_S
            if pause > 0:
                time.sleep(pause)
            while time.monotonic() < due_at:
                pass
            sent = time.monotonic()
            try:
                client.get_features(features, asked).to_numpy()
            except Exception as exc:  # counted and named, never swallowed
                errors.append(f"{type(exc).__name__}: {exc}")
            latency.append((time.monotonic() - due_at) * 1000)
            lag.append((sent - due_at) * 1000)
        gc.enable()
    json.dump(
        {
            "kind": args.kind,
            "scheduling": scheduling,
            "start_at": start,  # time.monotonic() of call 0's due time
            "rate": args.rate,
            "arrivals": args.arrivals,
            "due_s": due,  # each call's due time after call 0's
            "latency_ms": latency,
            "lag_ms": lag,
            "failures": len(errors),
            "errors": errors[:5],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
