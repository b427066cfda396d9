"""Start and stop a local Redis Cluster of real `redis-server` processes on free ports.

Used by `featurewell demo` (the README's run command), the benchmark and the test fixtures. The
cluster is formed with CLUSTER ADDSLOTSRANGE / MEET / REPLICATE directly (no `redis-cli
--cluster create`, which sleeps a second per step), and torn down by pid.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hiredis

from featurewell.errors import ConfigError
from featurewell.store.connection import Address, encode_command
from featurewell.store.keys import SLOTS

HOST = "127.0.0.1"
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@dataclass
class LocalCluster:
    """A running local cluster. `stop()` kills every node it started."""

    masters: list[int]
    replicas: list[int]
    workdir: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    owns_workdir: bool = True
    node_timeout_ms: int = 2000
    redis_server: str = "redis-server"
    tls: TlsFiles | None = None
    tls_ports: dict[int, int] = field(default_factory=dict)  # plaintext port -> its TLS port
    aclfile: Path | None = None  # Redis ACL users every node loads (`featurewell redis-acl`)

    @property
    def seeds(self) -> list[Address]:
        return [(HOST, port) for port in self.masters]

    @property
    def tls_seeds(self) -> list[Address]:
        """The masters' TLS ports (plaintext ports stay open for administration)."""
        return [(HOST, self.tls_ports[port]) for port in self.masters]

    @property
    def ports(self) -> list[int]:
        return [*self.masters, *self.replicas]

    def kill(self, port: int) -> None:
        """SIGKILL one node by pid (a crash: no shutdown, no failover handshake)."""
        process = self.processes[port]
        process.kill()
        process.wait(timeout=10)

    def restart(self, port: int) -> None:
        """Start a killed node again on its port; it rejoins with its saved cluster config."""
        self.processes[port] = _spawn(
            self.redis_server,
            port,
            self.workdir,
            self.node_timeout_ms,
            self.tls,
            self.tls_ports.get(port),
            self.aclfile,
        )
        _wait_for(lambda: call(port, "PING") == b"PONG", f"node {port} to restart")

    def owner(self, slot: int) -> int:
        """Port of the master serving `slot`, as a live node reports it."""
        for port in self.ports:
            if self.processes[port].poll() is not None:
                continue
            for start, end, master, *_ in call(port, "CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise RuntimeError(f"no live node knows who owns slot {slot}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_cluster(
    masters: int = 3,
    replicas_per_master: int = 0,
    *,
    node_timeout_ms: int = 2000,
    workdir: Path | None = None,
    redis_server: str = "redis-server",
    tls: TlsFiles | None = None,
    aclfile: Path | None = None,
    ports: Sequence[int] | None = None,
) -> LocalCluster:
    """Start `masters` masters (+ replicas), assign all slots, wait until the cluster is ok.
    `ports`: the nodes' ports, masters first (then, with TLS, their TLS ports); default: free
    ones outside the ephemeral range (see `free_ports`).
    With `tls`, every node also listens for TLS on its own port and the cluster bus runs TLS;
    Redis reports TLS ports to TLS clients and plaintext ports to the rest. With `aclfile`,
    every node loads its ACL users (keep `default` usable: this module administers the nodes
    as the default user)."""
    if shutil.which(redis_server) is None:
        raise RuntimeError(
            f"{redis_server!r} not found: install Redis (apt-get install redis-server)"
        )
    nodes = masters * (1 + replicas_per_master)
    if ports is None:
        ports = free_ports(nodes * (2 if tls else 1))
    else:
        ports = list(ports)
        _check_ports(ports, nodes * (2 if tls else 1))
    directory = workdir or Path(tempfile.mkdtemp(prefix="featurewell-cluster-"))
    cluster = LocalCluster(
        ports[:masters],
        ports[masters:nodes],
        directory,
        owns_workdir=workdir is None,
        node_timeout_ms=node_timeout_ms,
        redis_server=redis_server,
        tls=tls,
        tls_ports=dict(zip(ports[:nodes], ports[nodes:], strict=True)) if tls else {},
        aclfile=aclfile,
    )
    try:
        for port in ports[:nodes]:
            cluster.processes[port] = _spawn(
                redis_server,
                port,
                directory,
                node_timeout_ms,
                tls,
                cluster.tls_ports.get(port),
                aclfile,
            )
        for port in ports[:nodes]:
            _wait_for(lambda p=port: call(p, "PING") == b"PONG", f"node {port} to start")
        _form(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS nodes: the node's certificate and key, and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def _spawn(
    binary: str,
    port: int,
    directory: Path,
    node_timeout_ms: int,
    tls: TlsFiles | None = None,
    tls_port: int | None = None,
    aclfile: Path | None = None,
) -> subprocess.Popen[bytes]:
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        HOST,
        "--protected-mode",
        "no",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        f"nodes-{port}.conf",
        "--cluster-node-timeout",
        str(node_timeout_ms),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
        "--logfile",
        str(directory / f"redis-{port}.log"),
        # Replicas sync at once instead of waiting 5 s for more replicas to share a transfer.
        "--repl-diskless-sync-delay",
        "0",
        # CLUSTER SLOTS hides a replica until its replication offset moves; with no writes that
        # happens only at the master's replica ping, every 10 s by default.
        "--repl-ping-replica-period",
        "1",
        # While a master is down, the other masters keep serving their own slots instead of
        # answering CLUSTERDOWN for everything (the default): what a feature store wants.
        "--cluster-require-full-coverage",
        "no",
        # Tests make a node slow with DEBUG SLEEP; only from local connections.
        "--enable-debug-command",
        "local",
    ]
    if tls is not None and tls_port is not None:
        args += [
            "--tls-port",
            str(tls_port),
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
            "--tls-cert-file",
            str(tls.cert),
            "--tls-key-file",
            str(tls.key),
            "--tls-ca-cert-file",
            str(tls.ca),
            "--tls-auth-clients",
            "optional",
        ]
    if aclfile is not None:
        args += ["--aclfile", str(aclfile.resolve())]
    return subprocess.Popen(
        [*DIE_WITH_PARENT, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


# Ask Linux to SIGKILL each node when the process that started it dies, so a killed test run or
# demo leaves no orphaned redis-server behind. util-linux's setpriv sets it before exec'ing the
# node; a Python preexec_fn would run Python in a forked child of a threaded process (gRPC's),
# which can crash or deadlock.
DIE_WITH_PARENT = (
    ["setpriv", "--pdeathsig", "KILL", "--"]
    if sys.platform.startswith("linux") and shutil.which("setpriv")
    else []
)


def _form(cluster: LocalCluster) -> None:
    masters = cluster.masters
    share = SLOTS // len(masters)
    for n, port in enumerate(masters):
        last = SLOTS - 1 if n == len(masters) - 1 else (n + 1) * share - 1
        _check(call(port, "CLUSTER", "ADDSLOTSRANGE", n * share, last))
    # With TLS the cluster bus speaks TLS: nodes meet on the first master's TLS port.
    meet = cluster.tls_ports.get(masters[0], masters[0])
    for port in cluster.ports[1:]:
        _check(call(port, "CLUSTER", "MEET", HOST, meet))
    everyone = len(cluster.ports)
    for port in cluster.ports:
        _wait_for(lambda p=port: _known_nodes(p) == everyone, f"node {port} to see all nodes")
    ids = {port: call(port, "CLUSTER", "MYID").decode() for port in masters}
    for n, port in enumerate(cluster.replicas):
        master = masters[n % len(masters)]
        _wait_for(
            lambda p=port, m=master: call(p, "CLUSTER", "REPLICATE", ids[m]) == b"OK",
            f"node {port} to replicate {master}",
        )
    for port in cluster.ports:
        _wait_for(lambda p=port: b"cluster_state:ok" in call(p, "CLUSTER", "INFO"), "cluster ok")
    for port in cluster.replicas:
        _wait_for(
            lambda p=port: b"master_link_status:up" in call(p, "INFO", "replication"),
            f"replica {port} to sync",
        )
    replicas = len(cluster.replicas) // len(masters)
    for port in cluster.ports:  # gossip done: every node reports every range with its replicas
        _wait_for(lambda p=port: _sees_topology(p, len(masters), replicas), "topology to settle")


def _sees_topology(port: int, masters: int, replicas: int) -> bool:
    ranges = call(port, "CLUSTER", "SLOTS")
    return len({r[2][1] for r in ranges}) == masters and all(len(r) == 3 + replicas for r in ranges)


def _known_nodes(port: int) -> int:
    lines = call(port, "CLUSTER", "NODES").decode().splitlines()
    return sum(1 for line in lines if "handshake" not in line and "noaddr" not in line)


def _check(reply: Any) -> None:
    if isinstance(reply, hiredis.ReplyError):
        raise RuntimeError(f"forming the local cluster failed: {reply}")


def call(port: int, *args: bytes | str | int) -> Any:
    """Send one command to the local node on `port` over a fresh connection and return the
    reply as hiredis decodes it (an error reply is returned as a `hiredis.ReplyError`, not
    raised). Blocking: the launcher runs before any event loop exists, and tests and benchmarks
    use it to administer nodes (CLUSTER, DEBUG SLEEP, CLIENT KILL) beside the store under test.
    Raises OSError when the node cannot be reached or closes the connection."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(encode_command(*args))
        reader = hiredis.Reader()
        while (reply := reader.gets()) is False:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"node {port} closed the connection")
            reader.feed(chunk)
        return reply


def _wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, ConnectionError) as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}" + (f": {last}" if last else ""))


BUS_OFFSET = 10000  # Redis's cluster bus listens on port + 10000


def free_ports(count: int) -> list[int]:
    """Ports free both for clients and for the cluster bus (port + 10000), both outside the
    kernel's ephemeral range: there an outgoing connection may take a killed node's port (or
    its bus port) before it restarts, and the node fails with "Address already in use"."""
    low, high = usable_range()
    chosen: list[int] = []
    for _ in range(100_000):
        if len(chosen) == count:
            return chosen
        port = random.randint(low, high)
        if port in chosen or not (_is_free(port) and _is_free(port + BUS_OFFSET)):
            continue
        chosen.append(port)
    raise RuntimeError(f"cannot find {count} free ports (with bus ports) in {low}-{high}")


def usable_range() -> tuple[int, int]:
    """Ports whose bus port (port + 10000) is below the ephemeral range too (Linux's
    /proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default: 10000-22767), or above it
    when the range starts too low for that."""
    try:
        first, last = map(int, EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        first, last = 32768, 60999  # Linux's default; other systems differ but rarely matter
    if first - 1 - BUS_OFFSET >= 11000:
        return 10000, first - 1 - BUS_OFFSET
    if 65535 - BUS_OFFSET - (last + 1) >= 1000:
        return last + 1, 65535 - BUS_OFFSET
    raise RuntimeError(
        f"the ephemeral port range {first}-{last} leaves no room for local cluster ports and "
        "their bus ports (port + 10000); pass ports explicitly"
    )


def _check_ports(ports: list[int], needed: int) -> None:
    if len(ports) != needed or len(set(ports)) != needed:
        raise ConfigError(f"the local cluster needs {needed} distinct ports, got {ports}")
    for port in ports:
        if not 1 <= port <= 65535 - BUS_OFFSET:
            raise ConfigError(
                f"port {port} out of range: a node's bus port (port + 10000) must be <= 65535"
            )
        for taken in (port, port + BUS_OFFSET):
            if not _is_free(taken):
                what = "its cluster bus port" if taken != port else "it"
                raise ConfigError(f"port {port} is not free ({what}, {taken}, is in use)")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True
