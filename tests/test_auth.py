"""Identity: mTLS (certificates from a throwaway CA), bearer tokens from a tokens file and JWTs
from a JWKS file, against real gRPC servers on the shared Redis Cluster. Which principal a call
gets is seen through the policies (tests/auth_tools.py): only team `ranking` may read `secret`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from featurewell.client import (
    AsyncFeatureClient,
    ClientOptions,
    FeatureClient,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from featurewell.devcluster import LocalCluster
from featurewell.errors import ConfigError
from featurewell.serving.auth import certificate_principal
from tests import auth_tools
from tests.auth_tools import AUDITOR, RANKER, WRITER, AuthStack, _pem, write_tokens
from tests.tools import ServerThread, make_settings, wait_until


@pytest.fixture(scope="module")
def stack(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthStack]:
    yield from auth_tools.auth_stack(cluster, tmp_path_factory.mktemp("auth"))


def _read_secret(client: FeatureClient, user: str = "u1") -> None:
    client.get_features(["secret:score"], entities={"user_id": [user]})


def test_mtls_principal_from_uri_san(stack: AuthStack) -> None:
    # The ranker's certificate has a URI SAN and a DNS SAN: the URI is the principal (team
    # ranking names it), so reading `secret` is allowed.
    with stack.mtls_client(stack.pki.client(uri=RANKER, dns="ranker.example")) as client:
        result = client.get_features(["secret:score"], entities={"user_id": ["u1"]})
        assert result.rows == 1


def test_mtls_principal_from_dns_san_then_cn(stack: AuthStack) -> None:
    denied = pytest.raises(PermissionDenied, match=f"principal '{WRITER}'.*'secret@v1'")
    with stack.mtls_client(stack.pki.client(dns=WRITER, cn="ignored")) as client, denied:
        _read_secret(client)
    denied = pytest.raises(PermissionDenied, match="principal 'cn-only'")
    with stack.mtls_client(stack.pki.client(cn="cn-only")) as client, denied:
        _read_secret(client)


def test_certificate_principal_order() -> None:
    auth = {
        "x509_pem_cert": [b"pem"],
        "peer_uri": [b"spiffe://a/b"],
        "peer_dns": [b"b.example"],
        "x509_common_name": [b"cn"],
    }
    assert certificate_principal(auth) == "spiffe://a/b"
    assert certificate_principal({**auth, "peer_uri": []}) == "b.example"
    assert certificate_principal({"x509_pem_cert": [b"pem"], "x509_common_name": [b"cn"]}) == "cn"
    assert certificate_principal({"peer_dns": [b"x"]}) is None  # no certificate: no principal


def test_mtls_without_certificate_or_from_another_ca_fails_the_handshake(
    stack: AuthStack, tmp_path: Path
) -> None:
    with stack.mtls_client(None) as client, pytest.raises(Unavailable):
        _read_secret(client)
    stranger = auth_tools.make_pki(tmp_path).client(uri=RANKER)  # same name, foreign CA
    with stack.mtls_client(stranger) as client, pytest.raises(Unavailable):
        _read_secret(client)


def test_token_from_the_tokens_file(stack: AuthStack) -> None:
    with stack.token_client("tok-auditor") as client:  # AUDITOR may read secret, even ssn
        result = client.get_features(["secret:*"], entities={"user_id": ["u1"]})
        assert "secret:ssn" in set(result.columns)


def test_jwt_accepted_and_cached(stack: AuthStack) -> None:
    token = stack.jwks.token()
    with stack.token_client(token) as client:
        _read_secret(client)  # jwt-user is in team ranking
        _read_secret(client)  # the second call is answered from the verified-token cache
    denied = pytest.raises(PermissionDenied, match=f"principal '{WRITER}'")
    with stack.token_client(lambda: stack.jwks.token(sub=WRITER)) as client, denied:  # callable
        _read_secret(client)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("absent", "requires authentication: send a client certificate"),
        ("unknown", "not known to this server"),
        ("expired", "expired"),
        ("bad signature", "Signature verification failed"),
        ("wrong audience", "Audience doesn.t match"),
        ("unknown kid", "key id 'k2'"),
    ],
)
def test_bad_or_missing_credentials_are_unauthenticated(
    stack: AuthStack, case: str, message: str
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens = {
        "absent": None,
        "unknown": "tok-nobody",
        "expired": stack.jwks.token(expires_in=-60),
        "bad signature": jwt.encode(
            {"sub": RANKER, "iss": auth_tools.ISSUER, "aud": auth_tools.AUDIENCE, "exp": 2**31},
            _pem(other),
            algorithm="RS256",
            headers={"kid": "k1"},
        ),
        "wrong audience": stack.jwks.token(aud="another-service"),
        "unknown kid": jwt.encode(
            {"sub": RANKER}, _pem(other), algorithm="RS256", headers={"kid": "k2"}
        ),
    }
    options = ClientOptions(tls=stack.pki.roots, token=tokens[case], read_attempts=1)
    with FeatureClient(f"localhost:{stack.token.server.port}", options=options) as client:
        with pytest.raises(Unauthenticated, match=message):
            _read_secret(client)
        with pytest.raises(Unauthenticated):
            client.list_features()


def test_refused_calls_are_counted(stack: AuthStack) -> None:
    metrics = stack.token.server.telemetry.metrics.registry
    labels = {"method": "GetFeatures", "code": "UNAUTHENTICATED"}
    before = metrics.get_sample_value("featurewell_requests_total", labels) or 0.0
    with stack.token_client("tok-nobody") as client, pytest.raises(Unauthenticated):
        _read_secret(client)
    assert metrics.get_sample_value("featurewell_requests_total", labels) == before + 1


def test_health_and_reflection_stay_open(stack: AuthStack) -> None:
    credentials = grpc.ssl_channel_credentials(stack.pki.roots)
    with grpc.secure_channel(f"localhost:{stack.token.server.port}", credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        asked = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(reflection.ServerReflectionInfo(iter([asked]), timeout=5))
        names = {s.name for s in answer.list_services_response.service}
        assert "featurewell.v1.FeatureService" in names


async def test_async_client_with_mtls_and_token(stack: AuthStack) -> None:
    cert, key = stack.pki.client(uri=RANKER)
    mtls = ClientOptions(tls=stack.pki.roots, client_cert=cert, client_key=key, timeout=5.0)
    async with AsyncFeatureClient(f"localhost:{stack.mtls.server.port}", options=mtls) as client:
        result = await client.get_features(["secret:score"], entities={"user_id": ["u1"]})
        assert result.rows == 1
    token = ClientOptions(tls=stack.pki.roots, token=stack.jwks.token(), timeout=5.0)
    async with AsyncFeatureClient(f"localhost:{stack.token.server.port}", options=token) as client:
        assert [v.name for v in (await client.list_features()).views if v.name == "secret"]


def test_tokens_rotate_through_the_file(stack: AuthStack) -> None:
    with stack.token_client("tok-auditor-2") as client, pytest.raises(Unauthenticated):
        _read_secret(client)
    write_tokens(stack.tokens_file, {"tok-auditor-2": AUDITOR})  # the old one is revoked

    def rotated() -> bool:
        with stack.token_client("tok-auditor-2") as client:
            try:
                _read_secret(client)
            except Unauthenticated:
                return False
        return True

    wait_until(rotated, 30, "the new token to be accepted", interval=0.2)
    with stack.token_client("tok-auditor") as client, pytest.raises(Unauthenticated):
        _read_secret(client)
    write_tokens(stack.tokens_file, {"tok-auditor": AUDITOR})
    time.sleep(1.1)  # let the next test start from the original file


def test_auth_off_is_unchanged(stack: AuthStack) -> None:
    with FeatureClient(stack.off.address, timeout=5.0) as client:
        assert client.get_features(["secret:*"], entities={"user_id": ["u1"]}).rows == 1
        names = {v.name for v in client.list_features().views}
        assert {"secret", "profile", "click_counts"} <= names
    assert stack.off.server.grpc_server is not None


def test_required_auth_needs_a_way_to_authenticate(cluster: LocalCluster) -> None:
    with pytest.raises(ConfigError, match="auth_required is on but no caller could"):
        ServerThread(make_settings(cluster, auth_required=True), auth_tools.registry())


def test_client_options_refuse_credentials_without_tls() -> None:
    with pytest.raises(ValueError, match="need tls"):
        ClientOptions(token="t")
    with pytest.raises(ValueError, match="go together"):
        ClientOptions(tls=True, client_cert=b"x")
    assert ClientOptions(tls=True, token=lambda: "abc").bearer() == "Bearer abc"
