"""featurewell-client installs on its own: its wheel holds the client and the stubs only, needs
only grpcio, protobuf and numpy, and works with no server code importable."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_client_wheel_stands_alone(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT / "client")],
        check=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("featurewell_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
        archive.extractall(tmp_path / "site")
    packages = {name.split("/")[1] for name in names if name.startswith("featurewell/")}
    assert packages == {"client", "v1"}
    assert "featurewell/__init__.py" not in names  # a namespace shared with the server
    assert "featurewell/client/py.typed" in names
    assert "featurewell/v1/py.typed" in names
    assert "featurewell/v1/columns.py" in names  # the wire format both ends import
    requires = sorted(
        line.split(":", 1)[1].strip().split(">")[0].split(";")[0].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    )
    assert requires == ["grpcio", "numpy", "protobuf"]

    # -S: no site processing, so the editable server install is invisible; only the unpacked
    # wheel and the third-party packages are on the path.
    script = (
        "import sys, importlib.util\n"
        "from featurewell.client import FeatureClient, AsyncFeatureClient, Status\n"
        "assert importlib.util.find_spec('featurewell.serving') is None\n"
        "with FeatureClient('127.0.0.1:1') as c: assert c.timeout == 1.0\n"
        "print('ok')\n"
    )
    path = f"{tmp_path / 'site'}:{sysconfig.get_paths()['purelib']}"
    done = subprocess.run(
        [sys.executable, "-S", "-c", script], env={"PYTHONPATH": path},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
