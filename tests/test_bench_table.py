"""bench/table.py: the README's table is the recorded run's, its markers round-trip, the table's
ratios come from the same run's floors, the capacity search lands on the threshold, and (marked
perf) the measured parts run end to end against a real cluster and real servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from table_capacity import Probe, search  # noqa: E402
from table_latency import Scenario, spaced  # noqa: E402
from table_render import BEGIN, END, MarkersError, readme_block, render, with_block  # noqa: E402


def _figures(p50: float, p99: float, **more: float) -> dict[str, float]:
    return {"p50": p50, "p90": p99, "p99": p99, "n": 100, "rate_per_s": 28.6, **more}


def _results(**parts: Any) -> dict[str, Any]:
    latency = {
        "scenarios": {
            "grpc_floor": _figures(0.5, 1.0),
            "single": _figures(1.0, 3.0),
            "raw_redis_ranking": _figures(1.5, 3.0),
            "ranking_cache_off": _figures(4.0, 8.0),
            "ranking_cache_on": _figures(3.0, 6.0, hit_ratio=0.875),
            "raw_redis_single": _figures(0.2, 0.4) | {"failed": {"StoreTimeout": 2}},
        }
    }
    return {
        "command": "python bench/table.py",
        "machine": {
            "date": "2026-12-04 19:00 UTC",
            "cores": 2,
            "cpu": "a test CPU",
            "git": "abc1234",
            "load_before": [1.0, 2.0, 3.0],
            "load_after": [1.5, 2.0, 3.0],
        },
        "seconds_total": 99.0,
        "parts": {"latency": latency, **parts},
    }


def _row(table: str, measure: str) -> list[str]:
    found = [line for line in table.splitlines() if measure in line]
    assert len(found) == 1, table
    return [cell.strip() for cell in found[0].strip("|").split("|")]


def test_readme_table_is_the_recorded_run() -> None:
    """README.md's table is exactly what the recorded run renders (regenerate both with
    `python bench/table.py --readme`, or re-render with `--from-json bench/results/table.json
    --readme` after changing the renderer): hand-edited figures fail here."""
    recorded = json.loads((ROOT / "bench" / "results" / "table.json").read_text())
    assert readme_block((ROOT / "README.md").read_text()) == render(recorded)


def test_markers_round_trip_and_leave_the_rest_alone() -> None:
    text = f"# title\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n"
    once = with_block(text, "| new | table |\n")
    assert readme_block(once) == "| new | table |\n"
    assert with_block(once, "| new | table |\n") == once
    assert once.startswith(f"# title\n\nbefore\n{BEGIN}\n")
    assert once.endswith(f"{END}\nafter\n")


@pytest.mark.parametrize(
    "text",
    [
        "no markers at all\n",
        f"{BEGIN}\nonly the beginning\n",
        f"{END}\nend first\n{BEGIN}\n",
        f"{BEGIN}\n{BEGIN}\ntwice\n{END}\n",
    ],
)
def test_markers_missing_misordered_or_doubled_are_refused(text: str) -> None:
    with pytest.raises(MarkersError):
        with_block(text, "table\n")


def test_ratios_are_to_this_runs_floors() -> None:
    table = render(_results())
    single = _row(table, "GetFeatures, single entity")
    assert single[3:6] == ["1.00", "3.00", "2.00x / 3.00x gRPC"]
    # ranking against raw Redis + gRPC of the same run: 4 / (1.5 + 0.5), 8 / (3 + 1)
    assert _row(table, "cache off**")[5] == "2.00x / 2.00x gRPC + Redis"
    on = _row(table, "hot-key cache on")
    assert on[5] == "1.50x / 1.50x gRPC + Redis"
    assert "rows from the cache: 88%" in on[6]
    assert _row(table, "raw Redis, single")[6] == "**failed**: StoreTimeout 2"
    assert "2 cores (a test CPU), load average 1.00 / 2.00 / 3.00 before" in table


def test_parts_that_failed_or_did_not_run_say_so() -> None:
    table = render(_results(zipf={"error": "RuntimeError: zipf.py exited 1: a | b"}))
    assert _row(table, "zipf.py exited 1")[:2] == [
        "zipf",
        "failed: RuntimeError: zipf.py exited 1: a / b",
    ]
    for part in ("capacity", "overload"):
        assert f"| {part} | not run (see --parts) |" in table
    assert _row(table, "no bench/near_cache.py")[0] == "near cache"


def test_other_scripts_json_becomes_rows() -> None:
    overload = {
        "capacity_per_s": 2000,
        "levels": {
            "3.0x": {
                "offered_per_s": 6000,
                "goodput_per_s": 1900,
                "goodput_of_capacity": 0.95,
                "ok_p50_ms": 1.2,
                "ok_p99_ms": 4.5,
                "shed": 4000,
                "shed_p50_ms": 0.3,
                "shed_p99_ms": 0.9,
                "missed_deadline": 0,
                "other_errors": 0,
            }
        },
    }
    zipf = {  # bench/zipf.py's shape: its rows, each with its ratios to cache off
        "setup": {"s": 1.1, "items": 100_000, "steady_rate": 100.0},
        "rows": [
            {
                "phase": "zipf",
                "config": "raw_redis",
                "kind": "raw",
                "p50_ms": 1.5,
                "p99_ms": 3.0,
                "p50_vs_off": 0.5,
                "p99_vs_off": 0.5,
                "hit_ratio": None,
            },
            {
                "phase": "zipf",
                "config": "cache_on",
                "kind": "ranking",
                "p50_ms": 4.0,
                "p99_ms": 6.0,
                "p50_vs_off": 0.8,
                "p99_vs_off": 0.75,
                "hit_ratio": 0.83,
            },
            {  # the steady phase: ranking calls only, at a steady rate
                "phase": "steady",
                "config": "cache_on",
                "kind": "ranking",
                "p50_ms": 3.5,
                "p99_ms": 5.5,
                "p50_vs_off": 0.88,
                "p99_vs_off": 0.9,
                "hit_ratio": 0.93,
            },
        ],
    }
    near = {  # bench/near_cache.py's shape: phases of modes, a floor measured beside them
        "hot": {
            "floor": _figures(0.4, 0.8),
            "off": _figures(1.0, 2.0),
            "on": _figures(0.04, 0.4),
            "hit_rate": 0.99,
            "on_hit_service": {"p50_ms": 0.02, "p99_ms": 0.05},
        },
        "setup": {"rounds": 10},
    }
    table = render(_results(overload=overload, zipf=zipf, near_cache=near))
    level = _row(table, "3.0x capacity")
    assert level[2:5] == ["1,900", "1.20", "4.50"]
    assert "shed 4000 (p50 0.30 / p99 0.90 ms)" in level[6]
    cached = _row(table, "ranking, Zipf s=1.1 over 100,000 items: cache on")
    assert cached[3:7] == ["4.00", "6.00", "0.80x / 0.75x cache off", "rows from the cache: 83%"]
    steady = _row(table, "100,000 items, 100 calls/s steady: cache on")
    assert steady[3:7] == ["3.50", "5.50", "0.88x / 0.90x cache off", "rows from the cache: 93%"]
    assert _row(table, "raw Redis (its commands)")[5] == "floor"
    assert _row(table, "| hot / floor |")[5] == "floor"
    near_on = _row(table, "| hot / on |")
    assert near_on[3:6] == ["0.040", "0.40", "0.10x / 0.50x gRPC"]  # over its own floor
    assert near_on[6] == "hit rate 99%"
    assert _row(table, "hot / on_hit_service")[3:6] == ["0.020", "0.050", "0.05x / 0.06x gRPC"]


def _threshold(limit: float) -> Any:
    def probe(rate: float) -> Probe:
        return Probe(rate, 100, 0, 1.0, 1.0 if rate <= limit else 9.0, rate <= limit)

    return probe


@pytest.mark.parametrize(("limit", "start"), [(1234.0, 500.0), (300.0, 500.0), (9000.0, 500.0)])
def test_capacity_search_lands_just_under_the_threshold(limit: float, start: float) -> None:
    best, tried = search(_threshold(limit), start, steps=4)
    assert best is not None
    assert best.rate <= limit
    assert all(p.passed == (p.rate <= limit) for p in tried)
    failed_above = min(p.rate for p in tried if not p.passed)
    # four bisections of a doubling step leave at most 1/16 of it between pass and fail
    assert failed_above - best.rate <= max(start, limit) / 8


def test_capacity_search_reports_none_when_nothing_passes() -> None:
    best, tried = search(_threshold(0.0), 500.0, steps=3)
    assert best is None
    assert [p.rate for p in tried] == [500.0, 250, 125, 62]


async def _nothing(user: str, items: list[str]) -> None:
    """A call that is never made: the schedule only names it."""


def test_schedule_rotates_so_every_scenario_leads_in_turn() -> None:
    widths = (("a", 1.0), ("b", 2.0), ("c", 3.0))
    order = [Scenario(name, _nothing, width) for name, width in widths]
    plan = spaced(order, 3)
    assert [s.name for _, s, _ in plan] == list("abcbcacab")
    assert [offset for offset, _, _ in plan[:4]] == [0.0, 1.0, 3.0, 6.0]
    assert {n for _, _, n in plan} == {0, 1, 2}


@pytest.mark.perf
@pytest.mark.redis
@pytest.mark.timeout(400)
def test_measured_parts_run_end_to_end(tmp_path: Path) -> None:
    """A tiny run of the parts table.py measures itself (a real 3+3 cluster, real servers, the
    pinned generator): every latency row has figures, the capacity search's verdicts follow
    its rule, and the JSON holds what the table shows. Nothing here depends on how fast the
    machine is."""
    out = tmp_path / "table.json"
    command = [sys.executable, str(ROOT / "bench" / "table.py"), "--smoke"]
    done = subprocess.run(
        [*command, "--parts", "latency,capacity", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    results = json.loads(out.read_text())
    scenarios = results["parts"]["latency"]["scenarios"]
    assert set(scenarios) == {
        "grpc_floor",
        "raw_redis_single",
        "single",
        "raw_redis_ranking",
        "ranking_cache_off",
        "ranking_cache_on",
    }
    # every call answered and was timed, or failed and was counted (a busy box sheds some)
    assert all(f["n"] + sum(f["failed"].values()) == 20 for f in scenarios.values())
    assert all(0 < f["p50"] <= f["p99"] for f in scenarios.values() if f["n"])
    assert 0 < scenarios["ranking_cache_on"]["hit_ratio"] <= 1
    capacity = results["parts"]["capacity"]
    for kind in ("single", "health"):
        probes = capacity[kind]["probes"]
        assert probes, capacity
        assert all(p["calls"] > 0 for p in probes)
        # a probe passes exactly when every call answered and the p99 is within the budget,
        # and the reported rate is the best passing probe's (0 when none passed: a busy box)
        for p in probes:
            within = p["p99_ms"] is not None and p["p99_ms"] <= capacity["budget_ms"]
            assert p["passed"] == (p["failed"] == 0 and within), p
        passing = [p["rate"] for p in probes if p["passed"]]
        assert capacity[kind]["rate_per_s"] == max(passing, default=0.0)
    assert render(results) in done.stdout


def test_capacity_rows_divide_by_the_health_checks_rate() -> None:
    def found(rate: float, p99: float | None) -> dict[str, Any]:
        probe = {"rate": 125.0, "calls": 10, "failed": 0, "p50_ms": 1.0, "p99_ms": p99}
        return {"rate_per_s": rate, "p50_ms": 1.0, "p99_ms": p99, "probes": [probe]}

    part = {"budget_ms": 5.0, "seconds": 3.0, "pinning": "pinned", "single": found(1500.0, 4.0)}
    table = render(_results(capacity=part | {"health": found(2000.0, 3.0)}))
    assert _row(table, "single-entity calls per server core")[2:6] == [
        "1,500",
        "1.00",
        "4.00",
        "0.75x health",
    ]
    busy = render(_results(capacity=part | {"single": found(0.0, None)}))
    assert "none passed, down to 125/s" in _row(busy, "single-entity calls per server core")[6]
