"""`featurewell skew` as a command: the report, --fail-above, --json, and each bad flag or
missing log named with its fix."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from featurewell.cli import main
from featurewell.devcluster import LocalCluster
from tests.test_skew import build_served_stack, write_repo


@pytest.fixture
def served_stack(cluster: LocalCluster, tmp_path: Path) -> dict[str, Any]:
    return build_served_stack(cluster, tmp_path)


def test_the_cli_reports_and_fails_above_a_ratio(
    served_stack: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    name = served_stack["name"]
    args = [
        "skew",
        "--repo",
        str(served_stack["repo"]),
        "--offline-dir",
        str(served_stack["store"].root),
        "--since",
        "2000-01-01T00:00:00Z",
        "--until",
        str(time.time_ns() // 1000 + 1),
        "--json",
        str(tmp_path / "skew.json"),
    ]
    main(args)
    shown = capsys.readouterr().out
    lines = {line.split()[0]: line for line in shown.splitlines() if line and line[0] != " "}
    assert lines[f"{name}_scaled:scaled"].endswith("SKEW")
    assert not lines[f"{name}@v1:score"].endswith("SKEW")
    with pytest.raises(SystemExit) as failed:
        main([*args, "--fail-above", "0.5"])
    assert failed.value.code == 1
    main([*args, "--fail-above", "0.9"])  # 15/18 = 0.83: under


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--since", "yesterday"], "'yesterday' is not a time: give ISO-8601"),
        (["--since", "1700000000"], "integer times are µs since the epoch"),
        (["--every", "soon"], "'soon' is not a duration like 60s"),
        (["--every", "0s"], "--every must be a positive duration"),
        (["--log", "nope=x.parquet"], "--log names no event source: ['nope']"),
        (["--offline-dir", "/nonexistent-skew"], "offline store /nonexistent-skew does not exist"),
    ],
)
def test_bad_flags_say_what_to_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], complaint: str
) -> None:
    repo = write_repo(tmp_path / "repo.py", f"bf_{uuid.uuid4().hex[:6]}", 1.0)
    with pytest.raises(SystemExit) as failed:
        main(["skew", "--repo", str(repo), "--offline-dir", str(tmp_path), *flags])
    assert failed.value.code == 2
    assert complaint in capsys.readouterr().err


def test_no_log_at_all_is_a_warning_not_silence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = write_repo(tmp_path / "repo.py", f"nl_{uuid.uuid4().hex[:6]}", 1.0)
    main(["skew", "--repo", str(repo), "--offline-dir", str(tmp_path)])
    shown = capsys.readouterr().out
    assert f"warning: no served-feature log under {tmp_path / '_served'}" in shown
    assert "no served records in the window: nothing to compare" in shown
