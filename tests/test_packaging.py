"""featurewell-client installs on its own: its wheel holds the client and the stubs only, needs
only grpcio, protobuf and numpy, and works with no server code importable. The featurewell wheel
runs `featurewell demo` with no source checkout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_client_wheel_stands_alone(tmp_path: Path) -> None:
    wheel = _build_wheel(ROOT / "client", tmp_path)
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
        [sys.executable, "-S", "-c", script],
        env={"PYTHONPATH": path},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_server_wheel_runs_the_demo_from_another_directory(tmp_path: Path) -> None:
    """`pip install featurewell`, then `featurewell demo` anywhere: the example repo ships inside
    the wheel, so nothing is looked up in a source checkout."""
    wheel = _build_wheel(ROOT, tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    assert "featurewell/_examples/streaming_media/repo.py" in names
    assert "featurewell/_examples/streaming_media/generate.py" in names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = _free_port()
    # -S: the editable install is invisible; the wheel's featurewell and third-party packages only.
    env = {
        "PYTHONPATH": f"{tmp_path / 'site'}:{sysconfig.get_paths()['purelib']}",
        "PATH": os.environ["PATH"],
        "FEATUREWELL_PORT": str(port),
        "FEATUREWELL_METRICS_PORT": "-1",
    }
    demo = subprocess.Popen(
        [sys.executable, "-S", "-m", "featurewell.cli", "demo", "--users", "50", "--items", "20"],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if "Ctrl-C stops it all" in line:
                break
        from featurewell.client import FeatureClient

        with FeatureClient(f"127.0.0.1:{port}") as client:
            result = client.get_features(["user_activity:*"], entities={"user_id": ["u000001"]})
        assert result.rows == 1
    finally:
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=60)
    text = "".join(lines) + out
    assert demo.returncode == 0, text
    served = next(ln for ln in text.splitlines() if "generated sample data in" in ln)
    workdir = Path(served.split(" in ", 1)[1].split(":", 1)[0])
    assert str(workdir).startswith(tempfile.gettempdir()), served  # not in the wheel, not here
    assert not workdir.exists()  # the temporary example copy is removed at exit
    assert list(elsewhere.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _build_wheel(source: Path, into: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(into),
            str(source),
        ],
        check=True,
    )
    (wheel,) = into.glob("*.whl")
    return wheel
