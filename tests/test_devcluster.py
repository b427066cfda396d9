"""The local cluster launcher used by `make run`, the benchmark and these tests."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from featurewell.devcluster import (
    BUS_OFFSET,
    EPHEMERAL_RANGE_FILE,
    LocalCluster,
    _is_free,
    call,
    free_ports,
)
from tests.tools import wait_until


def test_topology_has_every_slot_and_a_replica_per_master(cluster: LocalCluster) -> None:
    slots = call(cluster.masters[0], "CLUSTER", "SLOTS")
    owners = {int(entry[2][1]) for entry in slots}
    assert owners == set(cluster.masters)
    assert sum(end - start + 1 for start, end, *_ in slots) == 16384
    for entry in slots:
        assert len(entry) == 4, "each slot range has exactly one replica"
    for port in cluster.replicas:
        assert b"role:slave" in call(port, "INFO", "replication")


@pytest.mark.redis
def test_nodes_die_with_a_killed_parent() -> None:
    script = (
        "import os\n"
        "from featurewell.devcluster import start_local_cluster\n"
        "c = start_local_cluster(3, 0)\n"
        "print(','.join(map(str, c.ports)), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    ports = [int(p) for p in done.stdout.strip().split(",")]
    assert len(ports) == 3
    wait_until(
        lambda: all(_is_free(p) for p in ports), 10, f"the nodes on {ports} to die", interval=0.1
    )


def test_ports_and_bus_ports_are_outside_the_ephemeral_range(cluster: LocalCluster) -> None:
    first, last = map(int, EPHEMERAL_RANGE_FILE.read_text().split())
    for port in [*cluster.ports, *free_ports(200)]:
        for used in (port, port + BUS_OFFSET):
            assert not first <= used <= last, (port, used, first, last)


def _cluster_command(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "featurewell.cli", "cluster", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.redis
def test_cluster_command_takes_ports_prints_json_and_cleans_up_on_sigterm() -> None:
    base = free_ports(1)[0]
    while not all(_is_free(p) and _is_free(p + BUS_OFFSET) for p in range(base, base + 2)):
        base = free_ports(1)[0]  # two consecutive free ports (and bus ports)
    process = _cluster_command("--masters", "2", "--port-base", str(base), "--json")
    assert process.stdout is not None
    line = json.loads(process.stdout.readline())
    ports = [base, base + 1]
    assert line["event"] == "cluster"
    assert line["masters"] == [f"127.0.0.1:{p}" for p in ports]
    assert line["redis"] == f"127.0.0.1:{base},127.0.0.1:{base + 1}"
    assert line["replicas"] == []
    workdir = Path(line["workdir"])
    assert workdir.is_dir()
    assert b"cluster_state:ok" in call(base + 1, "CLUSTER", "INFO")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert not workdir.exists()  # before the fix: left behind
    assert all(_is_free(p) for p in ports)
    # --ports: a taken port (here its bus port) or a wrong count is refused, saying which
    (port,) = free_ports(1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port + BUS_OFFSET))
        taken = _cluster_command("--masters", "1", "--ports", str(port))
        _, err = taken.communicate(timeout=30)
    assert taken.returncode == 2
    assert f"port {port} is not free (its cluster bus port, {port + BUS_OFFSET}, is in use)" in err
    wrong = _cluster_command("--masters", "2", "--ports", str(port))
    _, err = wrong.communicate(timeout=30)
    assert wrong.returncode == 2
    assert "needs 2 distinct ports" in err
