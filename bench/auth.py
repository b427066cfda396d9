"""Authentication's cost: the same GetFeatures calls with auth off, over TLS, over mTLS and with
bearer tokens (a tokens-file token and a JWT), measured side by side in one run.

Starts a local 3+3 Redis Cluster, loads the example repo's sample data (bench/e2e.py's), and runs
one `featurewell serve` process per mode on it, hot-key cache off as in bench/e2e.py:

    off     plaintext, no authentication (today's default)
    tls     TLS, no authentication: what encryption alone costs
    mtls    mTLS required (`tls_client_ca_file`), `auth_required`: principal from the certificate
    token   TLS + `auth_required` with `auth_tokens_file` and `auth_jwks_file`, called with a
            tokens-file token
    jwt     the same server settings, called with a JWT (verified once, then cached)

Certificates come from a throwaway CA (trustme), the JWKS from a fresh RSA key. One client per
mode times single-entity and ranking (1 user + 500 items) calls OPEN LOOP: calls are scheduled
on a fixed clock (a slot per call, longer for ranking) and each is timed from its scheduled
send, so a slow call's delay to the next ones counts (no coordinated omission). Modes and
kinds are interleaved in a shuffled order each round, so machine noise hits all alike.
Reported: p50/p99 per mode and the ratios to `off` (and, for the authenticated modes, to `tls`:
the cost of authentication itself on top of encryption), each call's own service time (from
its actual send), and the share of late sends (a stall that every mode's p99 then carries).

    python bench/auth.py [--rounds 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from e2e import ITEMS, USERS, example_repo, get_features, percentiles

from featurewell.client import ClientOptions, FeatureClient, FeatureClientError
from featurewell.devcluster import free_ports, start_local_cluster
from featurewell.serving.auth import token_digest

MODES = ("off", "tls", "mtls", "token", "jwt")
KINDS = ("single", "ranking")
SLOT_S = {"single": 0.004, "ranking": 0.012}  # scheduled gap after each call of a kind
ISSUER, AUDIENCE, TOKEN = "https://bench.issuer", "featurewell", "bench-token"


def credentials(folder: Path) -> dict[str, Any]:
    """Server and client certificates, a tokens file and a JWKS, written to `folder`."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("bench-client.example")
    server.cert_chain_pems[0].write_to_path(folder / "server.crt")
    server.private_key_pem.write_to_path(folder / "server.key")
    ca.cert_pem.write_to_path(folder / "ca.crt")
    (folder / "tokens.txt").write_text(f"{token_digest(TOKEN)} bench-token-user\n")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (folder / "jwks.json").write_text(
        json.dumps({"keys": [{**public, "kid": "k", "alg": "RS256"}]})
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    claims = {"sub": "bench-jwt-user", "iss": ISSUER, "aud": AUDIENCE, "exp": time.time() + 3600}
    return {
        "roots": ca.cert_pem.bytes(),
        "client_cert": client.cert_chain_pems[0].bytes(),
        "client_key": client.private_key_pem.bytes(),
        "jwt": jwt.encode(claims, pem, algorithm="RS256", headers={"kid": "k"}),
    }


def server_flags(folder: Path) -> dict[str, list[str]]:
    tls = [
        "--tls-cert-file",
        str(folder / "server.crt"),
        "--tls-key-file",
        str(folder / "server.key"),
    ]
    tokens = [
        *tls,
        "--auth-required",
        "true",
        "--auth-tokens-file",
        str(folder / "tokens.txt"),
        "--auth-jwks-file",
        str(folder / "jwks.json"),
        "--auth-jwt-issuer",
        ISSUER,
        "--auth-jwt-audience",
        AUDIENCE,
    ]
    # One server per mode, token and jwt too: a server answering twice the calls would run
    # warmer than the others and flatter its modes.
    return {
        "off": [],
        "tls": tls,
        "mtls": [*tls, "--tls-client-ca-file", str(folder / "ca.crt"), "--auth-required", "true"],
        "token": tokens,
        "jwt": tokens,
    }


def clients(ports: dict[str, int], creds: dict[str, Any]) -> dict[str, FeatureClient]:
    roots = creds["roots"]
    options = {
        "off": ClientOptions(timeout=5),
        "tls": ClientOptions(timeout=5, tls=roots),
        "mtls": ClientOptions(
            timeout=5, tls=roots, client_cert=creds["client_cert"], client_key=creds["client_key"]
        ),
        "token": ClientOptions(timeout=5, tls=roots, token=TOKEN),
        "jwt": ClientOptions(timeout=5, tls=roots, token=creds["jwt"]),
    }
    return {
        mode: FeatureClient(f"localhost:{ports[mode]}", options=options[mode]) for mode in MODES
    }


def run(rounds: int, warmup: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="featurewell-auth-bench-"))
    creds = credentials(folder)
    data = example_repo(Path(os.environ.get("FEATUREWELL_BENCH_DATA", "/tmp/featurewell-bench")))
    cli = [sys.executable, "-m", "featurewell.cli"]
    with start_local_cluster(3, 1) as cluster:
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        subprocess.run(
            [*cli, "materialize", "--repo", str(data), "--redis", seeds],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        flags = server_flags(folder)
        ports = dict(zip(flags, free_ports(len(flags)), strict=True))
        common = ["--repo", str(data), "--redis", seeds, "--log-level", "WARNING"]
        common += ["--cache-entries", "0", "--metrics-port", "-1"]
        servers = [
            subprocess.Popen([*cli, "serve", *common, "--port", str(ports[name]), *extra])
            for name, extra in flags.items()
        ]
        try:
            by_mode = clients(ports, creds)
            for client in by_mode.values():
                ready(client)
            return measure(by_mode, rounds, warmup)
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
            for server in servers:
                server.wait(timeout=30)


def ready(client: FeatureClient, timeout: float = 30.0) -> None:
    """Until the client's server answers it (its credentials accepted)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_features()
            return
        except FeatureClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def measure(by_mode: dict[str, FeatureClient], rounds: int, warmup: int) -> dict[str, Any]:
    """Single and ranking calls to every server of `by_mode`, interleaved in a shuffled order
    each round, open loop: each timed from its scheduled send (and, as `service_p50`, from its
    actual one). bench/served_log.py measures its servers the same way."""
    calls = [(mode, kind) for mode in by_mode for kind in KINDS]
    scenarios = {mode: get_features(client) for mode, client in by_mode.items()}
    samples: dict[tuple[str, str], list[float]] = {call: [] for call in calls}
    service: dict[tuple[str, str], list[float]] = {call: [] for call in calls}
    late = 0  # sends that left over 1 ms after their slot: the machine (or a call) stalled
    rng, order = random.Random(1), random.Random(2)
    gc.collect()
    gc.freeze()
    scheduled = time.perf_counter()
    for n in range(warmup + rounds):
        user = f"u{rng.randrange(USERS):06d}"
        items = [f"i{i:06d}" for i in rng.sample(range(ITEMS), 500)]
        order.shuffle(calls)
        for mode, kind in calls:
            while (wait := scheduled - time.perf_counter()) > 0:
                time.sleep(wait if wait > 0.0005 else 0)
            sent = time.perf_counter()
            scenarios[mode][kind](user, items)
            if n >= warmup:
                done = time.perf_counter()
                samples[(mode, kind)].append(done - scheduled)
                service[(mode, kind)].append(done - sent)
                late += sent - scheduled > 0.001
            scheduled += SLOT_S[kind]
        if n == warmup - 1:
            scheduled = time.perf_counter()  # measured rounds start on time
    for client in by_mode.values():
        client.close()
    results: dict[str, Any] = {
        f"{mode} {kind}": percentiles(values)
        | {"service_p50": percentiles(service[(mode, kind)])["p50"]}
        for (mode, kind), values in samples.items()
    }
    results["machine"] = {
        "cores": os.cpu_count(),
        "rounds": rounds,
        "warmup": warmup,
        "late_sends": late / (rounds * len(calls)),
    }
    return results


def report(results: dict[str, Any]) -> None:
    print(
        "\n| mode | kind | p50 ms | p99 ms | p50 / off | p99 / off | p50 / tls "
        "| service p50 ms |\n|---|---|---|---|---|---|---|---|"
    )
    for kind in KINDS:
        off, tls = results[f"off {kind}"], results[f"tls {kind}"]
        for mode in MODES:
            row = results[f"{mode} {kind}"]
            over_tls = f"{row['p50'] / tls['p50']:.3f}" if mode not in ("off", "tls") else ""
            print(
                f"| {mode} | {kind} | {row['p50']:.3f} | {row['p99']:.3f} "
                f"| {row['p50'] / off['p50']:.3f} | {row['p99'] / off['p99']:.3f} | {over_tls} "
                f"| {row['service_p50']:.3f} |"
            )
    late = results["machine"]["late_sends"]
    print(
        f"\n{late:.1%} of sends left over 1 ms after their slot (a stall: every mode's p99 "
        "then carries it, so compare p99s within a run only when this is small); service p50 "
        "is timed from the actual send"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400, help="measured rounds (10 calls each)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print("starting a 3+3 Redis Cluster, sample data and five servers...", flush=True)
    results = run(args.rounds, args.warmup)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
