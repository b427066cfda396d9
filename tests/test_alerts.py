"""deploy/prometheus/rules.yml: promtool accepts it, its unit tests pass, and both checks fail
on a broken copy (so neither is a check that cannot fail)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.tools import RULES, alert_test, promtool

pytestmark = pytest.mark.deploy


def test_rules_are_valid() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_rules_unit_tests_pass() -> None:
    tested = promtool("test", "rules", "rules.test.yml", cwd=RULES.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_rejects_an_invalid_rule(tmp_path: Path) -> None:
    broken = tmp_path / "rules.yml"
    broken.write_text(RULES.read_text().replace("> 0.25", "> > 0.25"))
    checked = promtool("check", "rules", str(broken))
    assert checked.returncode != 0
    assert "parse error" in checked.stdout + checked.stderr


def test_the_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    # A budget typo (50 ms instead of 5 ms) must turn the unit tests red.
    (tmp_path / "rules.yml").write_text(
        RULES.read_text().replace('shape="single"} > 0.005', 'shape="single"} > 0.05')
    )
    (tmp_path / "rules.test.yml").write_text((RULES.parent / "rules.test.yml").read_text())
    tested = promtool("test", "rules", "rules.test.yml", cwd=tmp_path)
    assert tested.returncode != 0
    assert "FeaturewellSingleEntityLatencyOverBudget" in tested.stdout + tested.stderr


def test_alert_test_helper_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    # The generated tests in test_telemetry.py use this helper: a wrong expectation is red.
    series = {'featurewell_redis_circuit_open{node="n:1"}': "1x20"}
    assert (
        alert_test(
            tmp_path, series, "FeaturewellRedisNodeDown", [("5m", [{"node": "n:1"}])]
        ).returncode
        == 0
    )
    assert alert_test(tmp_path, series, "FeaturewellRedisNodeDown", [("5m", [])]).returncode != 0


# Each pipeline alert broken the way it could plausibly go wrong: the unit tests turn red.
_BROKEN_PIPELINE_RULES = [
    (  # the watermark alone: a quiet partition (nothing unread) would page
        "FeaturewellStreamBehind",
        """
          and on (source, partition)
          max by (source, partition) (featurewell_stream_unread_entries) > 0
        for: 5m""",
        "\n        for: 5m",
    ),
    (  # refused events not counted as read: a source refusing everything would page
        "FeaturewellStreamStopped",
        "featurewell_stream_events_total|featurewell_stream_dead_letters_total",
        "featurewell_stream_events_total",
    ),
    (
        "FeaturewellStreamRowsRefused",
        "(increase(featurewell_stream_rows_refused_total[10m])) > 0",
        "(increase(featurewell_stream_rows_refused_total[10m])) > 5",
    ),
    (  # any failed Job in the cluster
        "FeaturewellPipelineJobFailed",
        'job_name=~".*featurewell-(materialize|backfill).*"',
        'job_name=~".*"',
    ),
]


@pytest.mark.parametrize(
    ("alert", "right", "wrong"),
    _BROKEN_PIPELINE_RULES,
    ids=[a for a, _, _ in _BROKEN_PIPELINE_RULES],
)
def test_the_unit_tests_catch_a_broken_pipeline_alert(
    tmp_path: Path, alert: str, right: str, wrong: str
) -> None:
    rules = RULES.read_text()
    assert rules.count(right) == 1, right  # the mutation hits exactly the rule meant
    (tmp_path / "rules.yml").write_text(rules.replace(right, wrong))
    (tmp_path / "rules.test.yml").write_text((RULES.parent / "rules.test.yml").read_text())
    assert promtool("check", "rules", str(tmp_path / "rules.yml")).returncode == 0  # still valid
    tested = promtool("test", "rules", "rules.test.yml", cwd=tmp_path)
    assert tested.returncode != 0
    assert alert in tested.stdout + tested.stderr


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def broken_runbooks(rules_text: str) -> list[str]:
    """Runbook annotations (docs/<file>.md#<anchor>) whose file or heading does not exist."""
    root = RULES.parents[2]
    broken = []
    for group in yaml.safe_load(rules_text)["groups"]:
        for rule in group["rules"]:
            runbook = rule.get("annotations", {}).get("runbook")
            if runbook is None:
                continue
            path, _, anchor = runbook.partition("#")
            doc = root / path
            headings = (
                {
                    _slug(line.lstrip("#"))
                    for line in doc.read_text().splitlines()
                    if line.startswith("#")
                }
                if doc.is_file()
                else set()
            )
            if anchor not in headings:
                broken.append(f"{rule['alert']}: {runbook}")
    return broken


def test_every_runbook_link_resolves() -> None:
    assert broken_runbooks(RULES.read_text()) == []
    # A runbook whose doc moved (main's docs were renamed twice while the alerts stayed).
    stale = RULES.read_text().replace(
        "docs/security.md#dead-letters", "docs/security-deadletters.md#dead-letters"
    )
    assert broken_runbooks(stale) == [
        "FeaturewellStreamDeadLetters: docs/security-deadletters.md#dead-letters"
    ]
