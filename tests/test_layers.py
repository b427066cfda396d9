"""The store stays the one place that talks to Redis: keys are built in store/keys.py only, raw
commands are sent from store/ only, and store/ depends on no layer above it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "server" / "featurewell"
STORE = PACKAGE / "store"
ABOVE_THE_STORE = ("compute", "engine", "ingest", "lifecycle", "offline", "serving", "telemetry")
# Starts and forms local clusters over plain sockets (tests, the demo): not a store client.
NOT_A_CLIENT = {PACKAGE / "devcluster.py"}


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_store_depends_on_no_layer_above_it() -> None:
    for path, tree in _modules():
        if path.is_relative_to(STORE):
            above = [
                name
                for name in _imports(tree)
                if name.startswith(tuple(f"featurewell.{layer}" for layer in ABOVE_THE_STORE))
            ]
            assert above == [], path


def test_serving_reads_promoted_defaults_from_the_store() -> None:
    tree = ast.parse((PACKAGE / "serving" / "server.py").read_text())
    assert not [name for name in _imports(tree) if name.startswith("featurewell.lifecycle")]


def test_raw_redis_commands_are_sent_from_the_store_only() -> None:
    for path, tree in _modules():
        if path.is_relative_to(STORE) or path in NOT_A_CLIENT:
            continue
        assert "featurewell.store.connection.encode_command" not in _imports(tree), path
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("execute", "call"):
                owner = ast.unparse(node.value)  # e.g. "self.cluster", "store.cluster"
                assert not any(name in owner for name in ("cluster", "store")), (path, node.lineno)


def test_keys_are_spelled_in_store_keys_only() -> None:
    for path, tree in _modules():
        if path == STORE / "keys.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
                text = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
                assert "fw:" not in text, (path, node.lineno, text)


# Above the gRPC adapter: only the composition root and the command line wire it up.
_TOP = {PACKAGE / "app.py", PACKAGE / "cli.py", PACKAGE / "demo.py"}
_COMMANDS = PACKAGE / "commands"


def test_nothing_below_serving_imports_it() -> None:
    for path, tree in _modules():
        if path.is_relative_to(PACKAGE / "serving") or path in _TOP:
            continue
        if path.is_relative_to(_COMMANDS):
            continue
        used = [n for n in _imports(tree) if n.startswith("featurewell.serving")]
        if path.is_relative_to(PACKAGE / "ui"):  # beside the API: it applies the API's own
            used = [n for n in used if not n.startswith(_UI_MAY_USE)]  # identity and grants
        assert not used, path


_UI_MAY_USE = ("featurewell.serving.auth", "featurewell.serving.authz")


def test_the_engine_knows_no_grpc_or_protobuf() -> None:
    for path, tree in _modules():
        if path.is_relative_to(PACKAGE / "engine"):
            wire = [n for n in _imports(tree) if n.startswith(("grpc", "featurewell.v1"))]
            assert wire == [], path


def test_only_the_composition_root_opens_stores() -> None:
    for path, tree in _modules():
        if path in (PACKAGE / "app.py", STORE / "online.py"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "connect":
                assert ast.unparse(node.value) != "OnlineStore", (path, node.lineno)


def test_argparse_and_exits_stay_in_the_command_line() -> None:
    for path, tree in _modules():
        if path == PACKAGE / "cli.py" or path.is_relative_to(_COMMANDS):
            continue
        assert "argparse" not in _imports(tree), path
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                assert "SystemExit" not in ast.unparse(node.exc), (path, node.lineno)
