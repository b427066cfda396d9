"""The image definition passes hadolint, and hadolint is a check that can fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[1]


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    return subprocess.run(
        [binary, "--no-color", str(path)], capture_output=True, text=True, check=False
    )


def test_dockerfile_is_lint_clean_and_declares_ports_user_and_health() -> None:
    done = _hadolint(ROOT / "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "EXPOSE 50051 9464" in text
    assert "USER 10001" in text
    assert "HEALTHCHECK" in text
    assert "HealthCheckRequest" in text


def test_hadolint_fails_on_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nRUN cd /srv\n"
    )
    done = _hadolint(careless)
    assert done.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3003"):  # latest tag, unpinned apt, cd in RUN
        assert rule in done.stdout
