"""`featurewell probe` (the Helm chart's TLS probe) against a real server serving TLS with a
certificate from a throwaway CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from featurewell.cli import main
from featurewell.commands.probe import NotServing, check
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster
from tests.tools import ServerThread, make_settings

NAME = "features-featurewell.default.svc"


@pytest.fixture(scope="module")
def tls_server(
    cluster: LocalCluster, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, Path]]:
    import trustme

    folder = tmp_path_factory.mktemp("probe")
    ca = trustme.CA()
    cert = ca.issue_cert(NAME)
    cert.cert_chain_pems[0].write_to_path(folder / "tls.crt")
    cert.private_key_pem.write_to_path(folder / "tls.key")
    ca.cert_pem.write_to_path(folder / "ca.crt")
    trustme.CA().cert_pem.write_to_path(folder / "other-ca.crt")
    settings = make_settings(
        cluster, tls_cert_file=str(folder / "tls.crt"), tls_key_file=str(folder / "tls.key")
    )
    server = ServerThread(settings, registry)
    yield server, folder
    server.stop()


def test_probe_over_tls(tls_server: tuple[ServerThread, Path]) -> None:
    server, folder = tls_server
    ca = (folder / "ca.crt").read_bytes()
    for service in ("", "featurewell.v1.FeatureService"):
        check(server.address, service, ca=ca, server_name=NAME)
    with pytest.raises(NotServing, match="UNAVAILABLE"):  # a CA that did not sign it
        check(server.address, ca=(folder / "other-ca.crt").read_bytes(), server_name=NAME)
    with pytest.raises(NotServing, match="UNAVAILABLE"):  # a name the certificate lacks
        check(server.address, ca=ca, server_name="elsewhere.example", timeout=1.0)
    with pytest.raises(NotServing, match="UNAVAILABLE"):  # plaintext to a TLS port
        check(server.address, timeout=1.0)
    with pytest.raises(NotServing, match=r"SERVICE_UNKNOWN|NOT_FOUND"):
        check(server.address, "no.such.Service", ca=ca, server_name=NAME)


def test_probe_command_line_exit_status(tls_server: tuple[ServerThread, Path]) -> None:
    server, folder = tls_server
    base = ["probe", f"--address={server.address}", f"--server-name={NAME}"]
    main([*base, f"--ca-file={folder / 'ca.crt'}"])  # returns: exit status 0
    with pytest.raises(SystemExit) as failed:
        main([*base, f"--ca-file={folder / 'other-ca.crt'}"])
    assert failed.value.code == 2
    with pytest.raises(SystemExit) as refused:
        main([*base, f"--cert-file={folder / 'tls.crt'}", f"--key-file={folder / 'tls.key'}"])
    assert refused.value.code == 2  # a client certificate without a CA: refused, not guessed
