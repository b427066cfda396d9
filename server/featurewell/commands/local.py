"""Local development: `featurewell cluster` and `featurewell demo`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from featurewell.commands._command import Command
from featurewell.commands.serving import SERVER_GROUPS
from featurewell.demo import DemoOptions, run_demo
from featurewell.devcluster import start_local_cluster
from featurewell.settings import RedisSettings, Settings


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=0, help="replicas per master")
    parser.add_argument(
        "--aclfile",
        type=Path,
        help="Redis ACL users for every node (`featurewell redis-acl --format aclfile`)",
    )


def _cluster(_settings: Settings, args: argparse.Namespace) -> None:
    with start_local_cluster(args.masters, args.replicas, aclfile=args.aclfile) as cluster:
        seeds = ",".join(f"{h}:{p}" for h, p in cluster.seeds)
        print(f"Redis Cluster up: masters {seeds}; replicas {cluster.replicas}", flush=True)
        print(f"  export FEATUREWELL_REDIS={seeds}", flush=True)
        while True:
            time.sleep(3600)


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
