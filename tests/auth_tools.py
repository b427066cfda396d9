"""What the authentication tests share: a throwaway PKI (trustme CA, client certificates with a
SPIFFE URI, DNS or CN identity), a JWKS with its signing key, a tokens file, the definitions
with access policies, and servers on the shared cluster that use them."""

from __future__ import annotations

import datetime
import functools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from featurewell.client import ClientOptions, FeatureClient
from featurewell.definitions import (
    Access,
    Count,
    EventSource,
    Feature,
    FeatureView,
    Float32,
    Int64,
    Registry,
    String,
    Team,
    on_demand,
)
from featurewell.devcluster import LocalCluster
from featurewell.serving.auth import token_digest
from tests import defs
from tests.tools import ServerThread, make_settings

RANKER = "spiffe://team/ranker"  # URI SAN (its certificate also has a DNS SAN)
WRITER = "writer.example"  # DNS SAN only
PIPELINE = "pipeline"  # CN only
AUDITOR = "auditor"  # a bearer token's principal
JWT_USER = "jwt-user"
ISSUER, AUDIENCE = "https://issuer.test", "featurewell"

ranking = Team("ranking", members=[RANKER, JWT_USER])
secret = FeatureView(
    "secret",
    entity=defs.user,
    features=[Feature("score", Float32), Feature("ssn", String)],
    access=Access(read=["team:ranking", AUDITOR], write=[WRITER], features={"ssn": [AUDITOR]}),
)
clicks = EventSource("clicks", keys={"user_id": String})
click_counts = FeatureView(
    "click_counts",
    entity=defs.user,
    events=clicks,
    features=[Feature("clicks_7d", Int64, computed=Count(window=timedelta(days=7)))],
)
piped_counts = FeatureView(
    "piped_counts",
    entity=defs.user,
    events=clicks,
    features=[Feature("clicks_1d", Int64, computed=Count(window=timedelta(days=1)))],
    access=Access(write=[PIPELINE]),
)


@on_demand(inputs={"score": "secret:score"}, outputs=[Feature("doubled", Float32)])
def double(x: Any) -> Any:
    return {"doubled": x["score"] * 2}


def registry() -> Registry:
    return Registry.build(
        [defs.user, defs.profile, ranking, secret, click_counts, piped_counts, double]
    )


def _pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclass
class Pki:
    ca: trustme.CA
    folder: Path

    def client(self, *, uri: str = "", dns: str = "", cn: str = "") -> tuple[bytes, bytes]:
        """(certificate, key) PEMs naming a client (trustme cannot put URI SANs in)."""
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = []
        if uri:
            names.append(x509.UniformResourceIdentifier(uri))
        if dns:
            names.append(x509.DNSName(dns))
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(hours=1))
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        return cert.public_bytes(serialization.Encoding.PEM), _pem(key)

    @property
    def roots(self) -> bytes:
        return bytes(self.ca.cert_pem.bytes())


def make_pki(folder: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(folder / "server.crt")
    server.private_key_pem.write_to_path(folder / "server.key")
    ca.cert_pem.write_to_path(folder / "ca.crt")
    return Pki(ca, folder)


@dataclass
class Jwks:
    key: rsa.RSAPrivateKey
    path: Path

    def token(self, sub: str = JWT_USER, *, expires_in: float = 300, **claims: Any) -> str:
        body = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time() + expires_in)}
        body.update(claims)
        return jwt.encode(body, _pem(self.key), algorithm="RS256", headers={"kid": "k1"})


def make_jwks(folder: Path) -> Jwks:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    path = folder / "jwks.json"
    path.write_text(json.dumps({"keys": [{**public, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    return Jwks(key, path)


def write_tokens(path: Path, tokens: dict[str, str]) -> None:
    lines = ["# sha256(token) principal"] + [f"{token_digest(t)} {p}" for t, p in tokens.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class AuthStack:
    pki: Pki
    jwks: Jwks
    tokens_file: Path
    mtls: ServerThread  # mTLS required, policies enforced
    token: ServerThread  # TLS + bearer tokens (file and JWT), policies enforced
    off: ServerThread  # authentication off, same definitions

    @functools.cached_property
    def ranker_cert(self) -> tuple[bytes, bytes]:
        """A client certificate naming RANKER (made once)."""
        return self.pki.client(uri=RANKER)

    def mtls_client(self, cert: tuple[bytes, bytes] | None, caller: str = "") -> FeatureClient:
        options = ClientOptions(
            tls=self.pki.roots,
            client_cert=cert[0] if cert else None,
            client_key=cert[1] if cert else None,
            caller=caller,
            timeout=5.0,
            read_attempts=1,
        )
        return FeatureClient(f"localhost:{self.mtls.server.port}", options=options)

    def token_client(self, token: Any) -> FeatureClient:
        options = ClientOptions(tls=self.pki.roots, token=token, timeout=5.0, read_attempts=1)
        return FeatureClient(f"localhost:{self.token.server.port}", options=options)


def auth_stack(cluster: LocalCluster, folder: Path) -> Iterator[AuthStack]:
    pki, jwks = make_pki(folder), make_jwks(folder)
    tokens_file = folder / "tokens.txt"
    write_tokens(tokens_file, {"tok-auditor": AUDITOR})
    tls = {
        "tls_cert_file": str(folder / "server.crt"),
        "tls_key_file": str(folder / "server.key"),
    }
    servers: list[ServerThread] = []
    try:
        servers.append(
            ServerThread(
                make_settings(
                    cluster, tls_client_ca_file=str(folder / "ca.crt"), auth_required=True, **tls
                ),
                registry(),
            )
        )
        servers.append(
            ServerThread(
                make_settings(
                    cluster,
                    auth_required=True,
                    auth_tokens_file=str(tokens_file),
                    auth_jwks_file=str(jwks.path),
                    auth_jwt_issuer=ISSUER,
                    auth_jwt_audience=AUDIENCE,
                    **tls,
                ),
                registry(),
            )
        )
        servers.append(ServerThread(make_settings(cluster), registry()))
        yield AuthStack(pki, jwks, tokens_file, *servers)
    finally:
        for server in servers:
            server.stop()
