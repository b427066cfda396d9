"""Local development: `featurewell cluster` and `featurewell demo`."""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

from featurewell.commands._command import Command
from featurewell.commands.serving import SERVER_GROUPS
from featurewell.demo import DemoOptions, run_demo
from featurewell.devcluster import HOST, LocalCluster, start_local_cluster
from featurewell.settings import RedisSettings, Settings


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=0, help="replicas per master")
    parser.add_argument(
        "--aclfile",
        type=Path,
        help="Redis ACL users for every node (`featurewell redis-acl --format aclfile`)",
    )
    ports = parser.add_mutually_exclusive_group()
    ports.add_argument(
        "--port-base",
        type=int,
        help="nodes on consecutive ports from this one, masters first (default: free ports "
        "outside the ephemeral range; each node's bus port is port + 10000)",
    )
    ports.add_argument(
        "--ports", type=_port_list, help="the nodes' ports, comma-separated, masters first"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print the nodes as one JSON line: {"event": "cluster", "redis": "h:p,...", '
        '"masters": [...], "replicas": [...], "workdir": ...}',
    )


def _port_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ports takes port numbers, got {text!r}") from None


def _cluster(_settings: Settings, args: argparse.Namespace) -> None:
    nodes = args.masters * (1 + args.replicas)
    ports = args.ports
    if args.port_base is not None:
        ports = list(range(args.port_base, args.port_base + nodes))
    # SIGTERM (a script's kill, `timeout`, Docker) ends like Ctrl-C: the block below exits,
    # the nodes are stopped and the temporary folder removed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with start_local_cluster(
            args.masters, args.replicas, aclfile=args.aclfile, ports=ports
        ) as cluster:
            seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
            if args.json:
                print(json.dumps(_describe(cluster)), flush=True)
            else:
                print(f"Redis Cluster up: masters {seeds}; replicas {cluster.replicas}", flush=True)
                print(f"  export FEATUREWELL_REDIS={seeds}", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _describe(cluster: LocalCluster) -> dict[str, object]:
    masters = [f"{h}:{p}" for h, p in cluster.seeds]
    return {
        "event": "cluster",
        "redis": ",".join(masters),
        "masters": masters,
        "replicas": [f"{HOST}:{p}" for p in cluster.replicas],
        "workdir": str(cluster.workdir),
    }


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--replicas", type=int, default=0, help="replicas per master")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the example repo and its sample data go (default: a temporary folder, "
        "removed at exit); ignored with --repo, which is served in place",
    )


def _demo(settings: Settings, args: argparse.Namespace) -> None:
    run_demo(settings, DemoOptions(args.users, args.items, args.replicas, args.workdir))


# The demo starts its own cluster: its Redis flags would be overridden.
COMMANDS = (
    Command(
        "cluster",
        "run a local Redis Cluster until Ctrl-C",
        _cluster,
        arguments=_cluster_arguments,
        repo=False,
    ),
    Command(
        "demo",
        "local Redis Cluster + example repo + sample data, serving on :50051",
        _demo,
        tuple(g for g in SERVER_GROUPS if g is not RedisSettings),
        _demo_arguments,
        repo_optional=True,
    ),
)
