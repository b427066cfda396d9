"""The latency gate is real: green against the server as it is, red when the server is made
slow. Locust runs in its own process (it monkey-patches everything it imports). Model-server
and writer traffic only: a few seconds hold too few ranking calls for a stable p99 (CI's full
`make gate` run judges the ranker over 20 s)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# The gate's --local stack starts its own Redis Cluster.
pytestmark = [pytest.mark.perf, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[1]


def _gate(tmp_path: Path, *server_args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "loadtest" / "gate.py"),
            "--local",
            "--local-users",
            "500",
            "--local-items",
            "600",
            "--duration",
            "6",
            "--warmup",
            "2",
            "--ranker-rps",
            "0",
            "--out",
            str(tmp_path),
            "--local-server-args",
            " ".join(server_args),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.mark.timeout(400)
def test_gate_is_green_then_red_when_the_server_is_slowed(tmp_path: Path) -> None:
    green = _gate(tmp_path / "green")
    red = _gate(tmp_path / "red", "--inject-delay-ms", "6")

    assert green.returncode == 0, green.stdout + green.stderr
    assert "GATE GREEN" in green.stdout
    assert "| single | " in green.stdout
    for report in ("gate_stats.csv", "gate_failures.csv", "gate_report.html"):
        assert (tmp_path / "green" / report).stat().st_size > 0
    assert "single" in (tmp_path / "green" / "gate_stats.csv").read_text()

    assert red.returncode == 1, red.stdout + red.stderr
    assert "single: server p99 above 5.0 ms" in red.stdout
