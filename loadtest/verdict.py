"""The gate's figures, its verdicts and its report (gate.py runs the load and the probes).

Kinds: `single` (one user per call) and `ranker` (1 user + 500 items, shown as "ranking");
Locust's `writer` is load only (its failures and rate are judged, its times reported)."""

from __future__ import annotations

import argparse
import csv
import json
from typing import Any

import numpy as np

SHOWN = {"single": "single", "ranker": "ranking", "writer": "write"}
SHAPES = {"single": "single", "ranker": "batch"}  # the server histogram's `shape` label


def figures(
    timings: dict[str, list[float]],
    failures: dict[str, list[str]],
    probed: dict[str, dict[str, Any]],
    before: dict[tuple[str, float], float],
    after: dict[tuple[str, float], float],
    rates: dict[str, float],
    duration: float,
) -> dict[str, dict[str, Any]]:
    """Per kind: the probe's client figures (judged), the server's histogram, Locust's."""
    out: dict[str, dict[str, Any]] = {}
    for name, values in timings.items():
        if rates[name] <= 0 and name not in probed:
            continue
        locust = np.asarray(values) if values else np.full(1, np.nan)
        figure: dict[str, Any] = {
            "locust_calls": len(values),
            "locust_rps": len(values) / duration,
            "locust_failures": len(failures[name]),
            "locust_errors": failures[name][:5],
            "locust_p50": float(np.percentile(locust, 50)),
            "locust_p99": float(np.percentile(locust, 99)),
        }
        if name in probed:
            probe = probed[name]
            times = np.asarray(probe["latency_ms"]) if probe["latency_ms"] else np.full(1, np.inf)
            lag = np.asarray(probe["lag_ms"]) if probe["lag_ms"] else np.zeros(1)
            figure |= {
                "probe_calls": len(probe["latency_ms"]),
                "probe_failures": probe["failures"],
                "probe_errors": probe["errors"],
                "probe_scheduling": probe["scheduling"],
                "client_p50": float(np.percentile(times, 50)),
                "client_p99": float(np.percentile(times, 99)),
                "client_max": float(times.max()),
                "send_lag_p99": float(np.percentile(lag, 99)),
            }
            figure |= server_quantiles(before, after, SHAPES[name])
        out[name] = figure
    return out


def judge(
    figures: dict[str, dict[str, Any]], rates: dict[str, float], args: argparse.Namespace
) -> list[str]:
    """What breaks the gate, one line each, naming the kind of call."""
    verdicts = []
    budgets = {"single": args.budget_single_ms, "ranker": args.budget_ranker_ms}
    server_budgets = {
        "single": args.server_budget_single_ms,
        "ranker": args.server_budget_ranker_ms,
    }
    least = {"single": args.min_single_samples, "ranker": args.min_ranking_samples}
    for name, f in figures.items():
        shown = SHOWN[name]
        if f["locust_failures"]:
            verdicts.append(
                f"{shown}: {f['locust_failures']} Locust calls failed ({f['locust_errors'][0]})"
            )
        if rates[name] > 0 and f["locust_rps"] < 0.9 * rates[name]:
            verdicts.append(
                f"{shown}: Locust sustained {f['locust_rps']:.0f}/s of the {rates[name]:.0f}/s "
                f"asked: {SHORT_OF_LOAD}, the run proves nothing"
            )
        if "probe_calls" not in f:
            continue
        if f["probe_failures"]:
            verdicts.append(
                f"{shown}: {f['probe_failures']} probe calls failed ({f['probe_errors'][0]})"
            )
        if f["probe_calls"] < least[name]:
            verdicts.append(
                f"{shown}: {f['probe_calls']} probe calls, fewer than the {least[name]} a p99 "
                "needs: raise the duration or the probe's rate"
            )
        if f["client_p99"] > budgets[name]:
            verdicts.append(
                f"{shown}: client p99 {f['client_p99']:.2f} ms above the "
                f"{budgets[name]:g} ms budget"
            )
        server_budget = server_budgets[name]
        if server_budget is not None and f["server_p99"] > server_budget:
            verdicts.append(
                f"{shown}: server p99 above {server_budget:g} ms (at most {f['server_p99']:g} ms, "
                "its histogram's bucket edge)"
            )
    return verdicts


Times = tuple[
    int | None,
    dict[str, tuple[float, float]],
    tuple[float, float] | None,
    tuple[float, float] | None,
]
ON_SERVING_CORE = ("featurewell demo", "redis-server")  # the helpers run on the client core
MAX_STOLEN_SHARE = 0.01  # of a core's window: the p99 judged is the slowest 1% of calls
SHORT_OF_LOAD = "the machine cannot generate this load"
TOO_SLOW = (": client p99 ", ": server p99 above ")  # the budget verdicts, as judge words them


def inconclusive(verdicts: list[str], waited: dict[str, Any], window_s: float) -> str | None:
    """Why a red run proves nothing about the server, else None: every verdict is a p99
    above its budget or Locust short of its rate, and the hypervisor took at least
    `MAX_STOLEN_SHARE` of the window from the serving core or the probes' core. A p99 is the
    slowest 1% of calls: with that much of the time taken from a core, it can be the
    hypervisor's stalls alone, whatever the server did; and a generator it stalls falls behind.
    A failed call, or a probe short of calls, is never excused."""
    excused = (*TOO_SLOW, SHORT_OF_LOAD)
    if not verdicts or not all(any(part in v for part in excused) for v in verdicts):
        return None
    for key, label in (("serving_core", "the serving core"), ("client_core", "the probes' core")):
        core = waited.get(key)
        if core is None:
            continue
        share = core["steal_ms"] / (window_s * 1000)
        if share >= MAX_STOLEN_SHARE:
            return (
                f"the hypervisor took {core['steal_ms']:.0f} ms of {label} in the "
                f"{window_s:g} s window ({share:.1%}, at least {MAX_STOLEN_SHARE:.0%}): the "
                "p99 can be its stalls alone"
            )
    return None


def waits(before: Times, after: Times) -> dict[str, Any]:
    """The window's CPU accounting (cores.py): machine-wide CPU pressure, and per serving-side
    process the CPU it used and the time its threads waited for one, in ms."""
    out: dict[str, Any] = {}
    if before[0] is not None and after[0] is not None:
        out["cpu_pressure_ms"] = (after[0] - before[0]) / 1000
    out["serving"] = {}
    for name, (ran, waited) in after[1].items():
        ran_before, waited_before = before[1].get(name, (0.0, 0.0))
        out["serving"][name] = [ran - ran_before, waited - waited_before]
    if before[2] is not None and after[2] is not None:
        busy, steal = (a - b for a, b in zip(after[2], before[2], strict=True))
        ours = sum(out["serving"].get(name, (0.0, 0.0))[0] for name in ON_SERVING_CORE)
        out["serving_core"] = {
            "busy_ms": busy,
            "others_ms": max(0.0, busy - ours),
            "steal_ms": steal,
        }
    if before[3] is not None and after[3] is not None:
        busy, steal = (a - b for a, b in zip(after[3], before[3], strict=True))
        out["client_core"] = {"busy_ms": busy, "steal_ms": steal}
    return out


def scrape(url: str) -> dict[tuple[str, float], float]:
    """GetFeatures latency buckets: (shape, upper bound in ms) -> cumulative count."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    # Generous: a server starved of CPU (a neighbour's load) answers /metrics late, and the
    # second column is worth waiting for; the probes have already judged.
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    buckets: dict[tuple[str, float], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "featurewell_request_duration_seconds_bucket"
                and labels.get("method") == "GetFeatures"
            ):
                buckets[(labels["shape"], float(labels["le"]) * 1000)] = sample.value
    return buckets


def server_quantiles(
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


def report(
    env: Any,
    figures: dict[str, dict[str, Any]],
    verdicts: list[str],
    args: argparse.Namespace,
    placement: str,
    waited: dict[str, Any],
    unjudged: str | None = None,
) -> None:
    from locust.html import get_html_report
    from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter

    writer = StatsCSVFileWriter(env, PERCENTILES_TO_REPORT, str(args.out / "gate"))
    with open(args.out / "gate_stats.csv", "w", newline="") as stats_file:
        writer.requests_csv(csv.writer(stats_file))
    with open(args.out / "gate_failures.csv", "w", newline="") as failures_file:
        writer.failures_csv(csv.writer(failures_file))
    html: str = get_html_report(env)  # type: ignore[no-untyped-call]  # Locust leaves it untyped
    (args.out / "gate_report.html").write_text(html)
    arrivals = {"load": args.load_arrivals, "probes": args.probe_arrivals}
    summary = {
        "placement": placement,
        "arrivals": arrivals,
        "waits": waited,
        "figures": figures,
        "verdicts": verdicts,
        "inconclusive": unjudged,
    }
    (args.out / "gate_summary.json").write_text(json.dumps(summary, indent=1, default=str))

    print(f"\n{args.host}, {args.duration:g} s after {args.warmup:g} s of warm-up; {placement}")
    probe: list[str] = next(
        (f["probe_scheduling"] for f in figures.values() if "probe_scheduling" in f), []
    )
    print(f"probes: {', '.join(probe) or 'not pinned, normal priority'}")
    print(f"arrivals: Locust's users {args.load_arrivals}, the probes {args.probe_arrivals}")
    # Time other programs took from this run: a red gate on a busy machine says so here.
    window_ms = args.duration * 1000
    if "cpu_pressure_ms" in waited:
        share = waited["cpu_pressure_ms"] / window_ms
        print(f"CPU pressure in the window: some task waited for a CPU {share:.0%} of the time")
    if waited["serving"]:
        used = ", ".join(
            f"{name} {ran:.0f}/{queued:.0f}"
            for name, (ran, queued) in sorted(waited["serving"].items(), key=lambda i: -i[1][0])
        )
        print(f"serving side, ms on a CPU / ms waiting for one in the window: {used}")
    core = waited.get("serving_core")
    if core is not None:  # what the serving side did not get of its own core
        print(
            f"serving core: busy {core['busy_ms']:.0f} ms, {core['others_ms']:.0f} of it other "
            f"programs'; {core['steal_ms']:.0f} ms taken by the hypervisor"
        )
    client = waited.get("client_core")
    if client is not None:
        print(
            f"probes' core: busy {client['busy_ms']:.0f} ms; {client['steal_ms']:.0f} ms taken "
            "by the hypervisor"
        )
    print(
        "| kind | probe calls | client p50 ms | client p99 ms | client max ms | send lag p99 ms "
        "| server p50 ≤ ms | server p99 ≤ ms | Locust calls/s | Locust p99 ms | failures |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        judged = (
            f"{f['probe_calls']} | {f['client_p50']:.2f} | {f['client_p99']:.2f} "
            f"| {f['client_max']:.1f} | {f['send_lag_p99']:.2f} | {f['server_p50']:g} "
            f"| {f['server_p99']:g}"
            if "probe_calls" in f
            else "- | - | - | - | - | - | -"
        )
        failed = f["locust_failures"] + f.get("probe_failures", 0)
        print(
            f"| {SHOWN[name]} | {judged} | {f['locust_rps']:.0f} | {f['locust_p99']:.2f} "
            f"| {failed} |"
        )
    budgets = f"budgets: client p99 ≤ {args.budget_single_ms:g} ms single"
    budgets += f", ≤ {args.budget_ranker_ms:g} ms ranking"
    if args.server_budget_single_ms is not None or args.server_budget_ranker_ms is not None:
        budgets += (
            f"; server p99 ≤ {args.server_budget_single_ms or '-'} ms single, "
            f"≤ {args.server_budget_ranker_ms or '-'} ms ranking"
        )
    print(f"{budgets}; no failed call")
    if unjudged is not None:
        print(f"\nGATE INCONCLUSIVE: {unjudged}. Red, were it judged:\n  " + "\n  ".join(verdicts))
    else:
        print("\n" + ("GATE RED:\n  " + "\n  ".join(verdicts) if verdicts else "GATE GREEN"))
    print(f"reports in {args.out}/")
