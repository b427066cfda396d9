"""Skew, continuously: `featurewell skew --every` (a real process) exports per-feature gauges
that go red on injected skew and stay green on clean features; the alert rule pages on them
(and its promtool tests fail when the rule is broken)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featurewell.devcluster import LocalCluster
from tests.test_skew import build_served_stack
from tests.tools import RULES, free_port, promtool, scrape_until

pytestmark = pytest.mark.deploy


def test_continuous_mode_exports_red_and_green_gauges(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    stack = build_served_stack(cluster, tmp_path)
    name, port = stack["name"], free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "featurewell.cli",
            "skew",
            "--repo",
            str(stack["repo"]),
            "--offline-dir",
            str(stack["store"].root),
            "--every",
            "500ms",
            "--window",
            "1d",
            "--lag",
            "0s",
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def gauge(metric: str, table: str, version: str, feature: str) -> str:
        labels = f'against="offline",feature="{feature}",version="{version}",view="{table}"'
        return f"featurewell_skew_{metric}{{{labels}}}"

    red = gauge("mismatch_ratio", f"{name}_scaled", "", "scaled")
    deadline = time.monotonic() + 60
    while True:  # the process imports, reads the repo, then listens
        try:
            metrics = scrape_until(port, lambda m: red in m, timeout=30.0)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(process.communicate()[0]) from None
            time.sleep(0.2)
    try:
        assert metrics[red] == pytest.approx(15 / 18)  # the transform changed on the server
        assert metrics[gauge("compared_rows", f"{name}_scaled", "", "scaled")] == 18
        assert metrics[gauge("mismatch_ratio", f"{name}_doubled", "", "doubled")] == 0.0
        for feature in ("score", "clicks", "tier", "taste"):
            assert metrics[gauge("mismatch_ratio", name, "1", feature)] == 0.0
            assert metrics[gauge("compared_rows", name, "1", feature)] == 18
        assert metrics["featurewell_skew_last_run_timestamp_seconds"] > 0
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert "SKEW" in output


def _broken(tmp_path: Path, old: str, new: str) -> subprocess.CompletedProcess[str]:
    text = RULES.read_text()
    assert old in text
    (tmp_path / "rules.yml").write_text(text.replace(old, new))
    (tmp_path / "rules.test.yml").write_text((RULES.parent / "rules.test.yml").read_text())
    return promtool("test", "rules", "rules.test.yml", cwd=tmp_path)


@pytest.mark.parametrize(
    ("old", "new", "alert"),
    [
        # A threshold typo: 23% of served values skewed would not page.
        (
            "(featurewell_skew_mismatch_ratio) > 0.01",
            "(featurewell_skew_mismatch_ratio) > 0.5",
            "FeaturewellTrainingServingSkew",
        ),
        # Without the sample-size guard, 5 of 10 values page.
        (
            "(featurewell_skew_compared_rows) >= 100",
            "(featurewell_skew_compared_rows) >= 1",
            "FeaturewellTrainingServingSkew",
        ),
        # A stopped check that never warns.
        (
            "featurewell_skew_last_run_timestamp_seconds) > 900",
            "featurewell_skew_last_run_timestamp_seconds) > 9000",
            "FeaturewellSkewCheckStopped",
        ),
    ],
)
def test_the_skew_alert_tests_catch_a_broken_rule(
    tmp_path: Path, old: str, new: str, alert: str
) -> None:
    tested = _broken(tmp_path, old, new)
    assert tested.returncode != 0
    assert alert in tested.stdout + tested.stderr
