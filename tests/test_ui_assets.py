"""The UI's browser libraries: the built files checked in under featurewell/ui/static are
exactly what the pinned npm lock installs (`npm ci`, then the package's `vendor` script), so
nobody edits them by hand and an upgrade is a lock change plus `npm run vendor`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.tools import ROOT

pytestmark = pytest.mark.deploy  # needs npm and the npm registry

UI = ROOT / "server" / "featurewell" / "ui"
VENDORED = ("chart.umd.min.js", "htmx.min.js")


def test_checked_in_builds_match_the_npm_lock(tmp_path: Path) -> None:
    work = tmp_path / "ui"
    (work / "assets").mkdir(parents=True)
    (work / "static").mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(UI / "assets" / name, work / "assets" / name)
    for command in (
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        ["npm", "run", "--silent", "vendor"],
    ):
        done = subprocess.run(
            command, cwd=work / "assets", capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
    for name in VENDORED:
        assert (work / "static" / name).read_bytes() == (UI / "static" / name).read_bytes(), name
