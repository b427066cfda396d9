"""The README's examples, run: its Python blocks in order (one namespace, as a reader pastes
them) against `featurewell demo`, its grpcurl request (parsed as grpcurl does, with the proto
JSON mapping) and its `featurewell get` line. Claims written as comments are checked: the
matrix shape, and `# (2, 0)`-style results of the line they follow."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from featurewell import cli
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc
from tests.tools import free_port

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEFAULT_ADDRESS = "127.0.0.1:50051"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.DOTALL | re.MULTILINE)


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    """`featurewell demo` on a free port, with enough items for the README's 500."""
    port = free_port()
    env = {**os.environ, "FEATUREWELL_PORT": str(port), "FEATUREWELL_METRICS_PORT": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "featurewell.cli", "demo", "--users", "100", "--items", "500"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C stops it all" in line:
                break
        else:
            pytest.fail("the demo ended before serving:\n" + "".join(lines))
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def _claims(code: str) -> list[tuple[str, Any]]:
    """(expression, value) for each line `expr  # (literal)...` whose comment starts with a
    Python literal in parentheses."""
    out = []
    for line in code.splitlines():
        expression, sep, comment = line.partition("  # ")
        match = re.match(r"(\(.*?\))", comment.strip()) if sep else None
        if match is None:
            continue
        try:
            out.append((expression.strip(), ast.literal_eval(match.group(1))))
        except (ValueError, SyntaxError):
            continue
    return out


def test_readme_python_blocks_run_and_say_true(demo: str) -> None:
    python = blocks("python")
    assert len(python) >= 3, "the README's Python examples went missing"
    namespace: dict[str, Any] = {"__name__": "readme"}
    checked = 0
    for code in python:
        if "featurewell.definitions" in code and "FeatureClient" not in code:
            namespace_of_repo: dict[str, Any] = {"__name__": "readme_repo"}
            exec(compile(code, "README.md", "exec"), namespace_of_repo)  # definitions load
            continue
        exec(compile(code.replace(DEFAULT_ADDRESS, demo), "README.md", "exec"), namespace)
        for expression, value in _claims(code):
            assert eval(expression, namespace) == value, expression
            checked += 1
    assert checked >= 1  # `written.written, written.skipped_older  # (2, 0)`

    # "500 x 7 float32": the first example's shape claim, against the matrix it made.
    claim = re.search(r"# (\d+) x (\d+) (\w+):", README)
    assert claim is not None
    matrix = namespace["matrix"]
    assert matrix.shape == (int(claim[1]), int(claim[2]))
    assert str(matrix.dtype) == claim[3]
    assert matrix.shape[1] == len(namespace["names"])
    # The second example's claims, checked by running it: float64 is exact where float32 is not.
    assert namespace["exact"].dtype == "float64"
    left_out = namespace["result"].non_numeric
    assert set(left_out).isdisjoint(namespace["names"])
    assert namespace["every_name"] == [*namespace["names"], *left_out]  # the dict's order
    assert namespace["every"].shape == (500, len(namespace["every_name"]))


def test_readme_grpcurl_typed_example_answers_readable_values(demo: str) -> None:
    typed = [b for b in blocks("sh") if "typed_values" in b and b.lstrip().startswith("grpcurl")]
    assert len(typed) == 1
    body = re.search(r"-d '(.*?)'", typed[0], re.DOTALL)
    assert body is not None
    request = json_format.Parse(body[1], pb.GetFeaturesRequest())  # as grpcurl parses -d
    assert request.typed_values
    assert "featurewell.v1.FeatureService/GetFeatures" in typed[0]
    with grpc.insecure_channel(demo) as channel:
        response = pb_grpc.FeatureServiceStub(channel).GetFeatures(request, timeout=5)
    shown = json.loads(json_format.MessageToJson(response))  # as grpcurl prints the answer
    columns = {c["name"]: c for c in shown["columns"]}
    popularity = columns["item_stats:popularity_score"]
    assert "data" not in popularity
    assert len(popularity["typed"]["doubles"]["values"]) == 2
    assert all(isinstance(v, float) for v in popularity["typed"]["doubles"]["values"])
    assert popularity["typedStatuses"][0].startswith("FEATURE_STATUS_")
    count = columns["user_activity:watch_count_7d"]
    assert count["typed"]["int64s"]["values"][0].isdigit()  # int64 is a JSON string


def test_readme_featurewell_get_line_runs(demo: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = next(ln for b in blocks("sh") for ln in _joined(b) if ln.startswith("featurewell get "))
    args = [a for a in shlex.split(line)[1:] if a != "[--json]"]
    cli.main([*args, "--server", demo])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["entity", "feature", "value", "status", "age"]
    assert any("item_id=i000002" in ln and "item_stats:popularity_score" in ln for ln in out)


def _joined(block: str) -> list[str]:
    return block.replace("\\\n", " ").splitlines()
