"""When a red gate run is the hypervisor's, not the server's (loadtest/verdict.inconclusive), and
how the gate measures again (gate.attempts): only such runs are retried, never a red the server
made or a failed call."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest"))
import gate
import verdict

P99 = "single: client p99 8.91 ms above the 5 ms budget"
SERVER_P99 = "ranking: server p99 above 10 ms (at most 15 ms, its histogram's bucket edge)"
FAILED = "single: 2 calls failed (UNAVAILABLE ...)"
SHORT = f"single: Locust sustained 203/s of the 300/s asked: {verdict.SHORT_OF_LOAD}, ..."
FEW = "single: 1800 probe calls, fewer than the 2000 a p99 needs: raise the duration ..."


def _waited(serving_steal_ms: float, client_steal_ms: float | None = None) -> dict[str, Any]:
    waited: dict[str, Any] = {
        "serving": {},
        "serving_core": {"busy_ms": 20_000.0, "others_ms": 0.0, "steal_ms": serving_steal_ms},
    }
    if client_steal_ms is not None:
        waited["client_core"] = {"busy_ms": 30_000.0, "steal_ms": client_steal_ms}
    return waited


def test_a_p99_red_is_inconclusive_once_the_hypervisor_took_a_percent_of_a_core() -> None:
    # 40 s window: 1% is 400 ms.
    assert verdict.inconclusive([P99], _waited(390.0, 390.0), 40.0) is None
    serving = verdict.inconclusive([P99, SERVER_P99], _waited(1110.0), 40.0)
    assert serving is not None
    assert "1110 ms of the serving core" in serving
    assert "2.8%" in serving
    probes = verdict.inconclusive([P99], _waited(60.0, 400.0), 40.0)
    assert probes is not None
    assert "of the probes' core" in probes
    # A generator the hypervisor stalls falls behind its rate: the same machine's doing.
    assert verdict.inconclusive([SHORT, P99], _waited(1900.0, 3130.0), 40.0) is not None
    assert verdict.inconclusive([SHORT], _waited(100.0, 100.0), 40.0) is None


def test_failed_calls_a_short_probe_a_green_run_or_no_accounting_are_never_excused() -> None:
    stolen = _waited(4400.0, 4400.0)
    assert verdict.inconclusive([P99, FAILED], stolen, 40.0) is None
    assert verdict.inconclusive([P99, FEW], stolen, 40.0) is None
    assert verdict.inconclusive([], stolen, 40.0) is None  # green stays green
    assert verdict.inconclusive([P99], {"serving": {}}, 40.0) is None  # not pinned: unknown


def _runs(*codes: int) -> tuple[list[int], list[str], Callable[[], int]]:
    left, said = list(codes), list[str]()

    def run() -> int:
        return left.pop(0)

    return left, said, run


def test_only_runs_the_hypervisor_made_red_are_measured_again() -> None:
    left, said, run = _runs(gate.INCONCLUSIVE, gate.INCONCLUSIVE, 0, 1)
    assert gate.attempts(run, 3, said.append) == 0
    assert left == [1]  # stopped at the first judged run
    assert said == [
        "gate: run 1 of 3 could not be judged; measuring again",
        "gate: run 2 of 3 could not be judged; measuring again",
    ]
    # A red the server made, or any other failure, ends it: budgets are never retried away.
    for code in (1, 2):
        left, said, run = _runs(code, 0)
        assert gate.attempts(run, 3, said.append) == code
        assert left == [0]
        assert said == []
    left, said, run = _runs(gate.INCONCLUSIVE, 1, 0)
    assert gate.attempts(run, 3, said.append) == 1
    assert left == [0]


def test_a_machine_too_busy_in_every_run_fails_the_gate() -> None:
    left, said, run = _runs(*[gate.INCONCLUSIVE] * 3)
    assert gate.attempts(run, 3, said.append) == 1
    assert left == []
    assert said[-1].startswith("GATE RED: none of 3 runs could be judged")


def test_the_judges_own_words_are_what_can_be_excused() -> None:
    """`inconclusive` recognises the verdicts by `judge`'s wording: reworded, this fails."""
    args = argparse.Namespace(
        budget_single_ms=5.0,
        budget_ranker_ms=5.0,
        server_budget_single_ms=5.0,
        server_budget_ranker_ms=10.0,
        min_single_samples=2000,
        min_ranking_samples=500,
    )
    slow = {
        "locust_failures": 0,
        "locust_rps": 200.0,  # of 300 asked
        "probe_calls": 2400,
        "probe_failures": 0,
        "client_p99": 9.0,
        "server_p99": 7.5,
    }
    verdicts = verdict.judge({"single": slow}, {"single": 300.0}, args)
    assert len(verdicts) == 3  # short of load, client p99, server p99
    assert verdict.inconclusive(verdicts, _waited(800.0), 40.0) is not None
    failing = {**slow, "probe_failures": 1, "probe_errors": ["UNAVAILABLE"]}
    verdicts = verdict.judge({"single": failing}, {"single": 300.0}, args)
    assert verdict.inconclusive(verdicts, _waited(800.0), 40.0) is None
