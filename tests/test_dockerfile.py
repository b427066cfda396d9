"""The image definition passes hadolint, and hadolint is a check that can fail; its base is
pinned by digest and its Python packages come from hash-locked files that cover pyproject."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
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


_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9._-]+)")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_problems(lock: str, required: list[str]) -> list[str]:
    """What is wrong with a pip-compile --generate-hashes lock: a pin without a sha256 hash, a
    requirement (PEP 508 string) not pinned in it."""
    problems: list[str] = []
    pinned: dict[str, int] = {}
    current = ""
    for line in lock.splitlines():
        pin = _PIN.match(line)
        if pin:
            current = _normal(pin.group(1))
            pinned[current] = 0
        elif "--hash=sha256:" in line and current:
            pinned[current] += 1
    problems += [f"{name} has no hash" for name, hashes in pinned.items() if not hashes]
    for requirement in required:
        match = _REQUIREMENT_NAME.match(requirement)
        assert match is not None, requirement
        if _normal(match.group(1)) not in pinned:
            problems.append(f"{match.group(1)} is not locked")
    return problems


def base_problems(dockerfile: str) -> list[str]:
    """FROM lines whose image is not pinned by a sha256 digest (stages named earlier aside)."""
    stages: set[str] = set()
    problems = []
    for line in dockerfile.splitlines():
        words = line.split()
        if not words or words[0].upper() != "FROM":
            continue
        image = words[1]
        if len(words) >= 4 and words[2].upper() == "AS":
            stages.add(words[3])
        if image not in stages and not re.search(r"@sha256:[0-9a-f]{64}$", image):
            problems.append(image)
    return problems


def test_image_base_is_pinned_and_packages_are_hash_locked() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert base_problems(dockerfile) == []
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = (ROOT / "requirements.lock").read_text()
    build = (ROOT / "requirements-build.lock").read_text()
    assert lock_problems(runtime, pyproject["project"]["dependencies"]) == []
    assert lock_problems(build, pyproject["build-system"]["requires"]) == []
    for lock in ("requirements.lock", "requirements-build.lock"):
        assert re.search(rf"--require-hashes --only-binary=:all: -r \S*{lock}", dockerfile), lock
    # The wheel itself brings nothing unlocked, and is built by the locked build tools.
    assert "pip install --no-cache-dir --no-deps /wheels/*.whl" in dockerfile
    assert "--no-build-isolation" in dockerfile


def test_pin_and_lock_checks_fail_on_broken_input() -> None:
    assert base_problems("FROM python:3.11-slim AS build\nFROM build\n") == ["python:3.11-slim"]
    lock = "numpy==2.0 \\\n    --hash=sha256:ab\nduckdb==1.0\n"
    assert lock_problems(lock, ["numpy>=1.26", "hiredis>=3"]) == [
        "duckdb has no hash",
        "hiredis is not locked",
    ]
