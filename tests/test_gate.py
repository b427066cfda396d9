"""The latency gate is real: run as CI runs it (`loadtest/gate.py --local`, a demo stack, Locust
load, the open-loop probes), it goes red naming the kind of call the server was slowed on
(`fault_delay`, serving/fault.py), and only that kind.

Short windows keep these to about half a minute each. The kind not slowed gets a budget no
noise reaches (1 s), so each test shows the gate telling the two kinds apart, whatever else
runs on the machine; the slowed kind keeps the real 5 ms budget, under an 8 ms delay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# The gate's --local stack starts its own Redis Cluster.
pytestmark = [pytest.mark.perf, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[1]


def _gate(out: Path, fault_delay: str, *budgets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, str(ROOT / "loadtest" / "gate.py"), "--local"),
            *("--local-users", "500", "--local-items", "600"),
            *("--duration", "6", "--warmup", "2"),
            *("--single-rps", "100", "--ranker-rps", "5", "--writer-rps", "5"),
            *("--min-single-samples", "300", "--min-ranking-samples", "75"),
            *budgets,
            *("--out", str(out), "--local-server-args", f"--fault-delay {fault_delay}"),
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


def _verdicts(stdout: str) -> list[str]:
    assert "GATE RED:" in stdout, stdout
    return [line.strip() for line in stdout.split("GATE RED:")[1].splitlines()[1:-1]]


@pytest.mark.timeout(200)
def test_gate_goes_red_naming_single_when_single_calls_are_slowed(tmp_path: Path) -> None:
    run = _gate(tmp_path, "single:8ms", "--budget-ranker-ms", "1000")

    assert run.returncode == 1, run.stdout + run.stderr
    verdicts = _verdicts(run.stdout)
    assert any(v.startswith("single: client p99") for v in verdicts), verdicts
    assert not any(v.startswith("ranking:") for v in verdicts), verdicts
    for report in ("gate_stats.csv", "gate_report.html", "gate_summary.json"):
        assert (tmp_path / report).stat().st_size > 0
    assert "| single | 360 |" in run.stdout  # every scheduled probe call made: 60/s for 6 s


@pytest.mark.timeout(200)
def test_gate_goes_red_naming_ranking_when_batch_calls_are_slowed(tmp_path: Path) -> None:
    run = _gate(tmp_path, "batch:8ms", "--budget-single-ms", "1000")

    assert run.returncode == 1, run.stdout + run.stderr
    verdicts = _verdicts(run.stdout)
    assert any(v.startswith("ranking: client p99") for v in verdicts), verdicts
    assert not any(v.startswith("single:") for v in verdicts), verdicts
    assert "| ranking | 90 |" in run.stdout
