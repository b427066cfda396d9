"""`featurewell list` and `featurewell get` under authentication: the CLI takes the client's
TLS, mTLS and bearer-token options, and ListFeatures' filters keep hiding what the principal may
not read (serving/authz.py). Against the real servers of tests/auth_tools.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from featurewell import cli
from featurewell.devcluster import LocalCluster
from featurewell.serving import wire
from tests import auth_tools, defs_catalog
from tests.auth_tools import RANKER, AuthStack


@pytest.fixture(scope="module")
def stack(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthStack]:
    yield from auth_tools.auth_stack(cluster, tmp_path_factory.mktemp("list-auth"))


def _ca(stack: AuthStack, folder: Path) -> str:
    path = folder / "roots.pem"
    path.write_bytes(stack.pki.roots)
    return str(path)


def _listed(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, list[str]]:
    cli.main(["list", "--json", *args])
    views = json.loads(capsys.readouterr().out).get("views", [])
    return {v["name"]: [f["name"] for f in v["features"]] for v in views}


def test_list_with_a_token_shows_what_its_principal_may_read(
    stack: AuthStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "token").write_text("tok-auditor\n")
    auditor = [
        "--server", f"localhost:{stack.token.server.port}",
        "--ca-file", _ca(stack, tmp_path), "--token-file", str(tmp_path / "token"),
    ]  # fmt: skip
    assert _listed(capsys, *auditor)["secret"] == ["score", "ssn"]
    assert _listed(capsys, *auditor, "--prefix", "sec") == {"secret": ["score", "ssn"]}
    with pytest.raises(SystemExit) as raised:  # no token: refused, not an empty catalog
        cli.main(["list", *auditor[:4]])
    assert raised.value.code == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err.upper()


def test_list_and_get_over_mtls_keep_hidden_features_hidden(
    stack: AuthStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = stack.pki.client(uri=RANKER)
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    ranker = [
        "--server", f"localhost:{stack.mtls.server.port}", "--ca-file", _ca(stack, tmp_path),
        "--cert-file", str(tmp_path / "c.pem"), "--key-file", str(tmp_path / "k.pem"),
    ]  # fmt: skip
    assert _listed(capsys, *ranker, "--entity", "user")["secret"] == ["score"]  # no ssn
    cli.main(["get", *ranker, "--features", "secret:score", "--entity", "user_id=u1"])
    assert "NOT_FOUND" in capsys.readouterr().out
    with pytest.raises(SystemExit) as raised:
        cli.main(["get", *ranker, "--features", "secret:ssn", "--entity", "user_id=u1"])
    assert raised.value.code == 2
    assert "ssn" in capsys.readouterr().err


def test_cli_client_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in [
        (["--cert-file", "x.pem"], "go together"),
        (["--token-file", "/nonexistent/t"], "cannot read /nonexistent/t"),
    ]:
        with pytest.raises(SystemExit) as raised:
            cli.main(["list", "--server", "127.0.0.1:1", *args])
        assert raised.value.code == 2
        assert message in capsys.readouterr().err


def test_filters_and_grants_combine() -> None:
    registry = defs_catalog.registry()

    def can_read(view: object, feature: str) -> bool:
        return getattr(view, "ref", "") != "cat_ranking@v1" and feature != "ctr"

    response = wire.catalog(registry, can_read, wire.CatalogFilter(owner="team-rank"))
    listed = {f"{v.name}@v{v.version}": v for v in response.views}
    assert sorted(listed) == ["cat_forgotten@v1", "cat_ranking@v2"]
    assert [f.name for f in listed["cat_ranking@v2"].features] == ["clicks"]
    assert list(listed["cat_ranking@v2"].versions) == [2]  # v1 is not the caller's to know
