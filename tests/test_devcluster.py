"""The local cluster launcher used by `make run`, the benchmark and these tests."""

from __future__ import annotations

import subprocess
import sys

import pytest

from featurewell.devcluster import LocalCluster, _is_free, call
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
