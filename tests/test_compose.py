"""deploy/docker-compose.yml, checked without a Docker engine (none runs here): it parses, every
file it mounts exists, its ports and addresses agree with the server's settings and Prometheus,
and its Redis nodes form a valid 3 masters + 3 replicas cluster. The checks are shown failing on
broken copies."""

from __future__ import annotations

import copy
import ipaddress
import shlex
from pathlib import Path
from typing import Any

import yaml

from featurewell.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _load() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return document


def problems(compose: dict[str, Any], root: Path) -> list[str]:
    found: list[str] = []
    services: dict[str, Any] = compose["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                if not (root / source).exists():
                    found.append(f"{name}: mounts missing {source}")
            elif source not in compose.get("volumes", {}):
                found.append(f"{name}: unknown volume {source}")
    redis = {n: s for n, s in services.items() if "cluster-enabled yes" in str(s.get("command"))}
    addresses = {
        n: s["networks"]["featurewell"]["ipv4_address"] for n, s in redis.items()
    }  # fmt: skip
    subnet = ipaddress.ip_network(compose["networks"]["featurewell"]["ipam"]["config"][0]["subnet"])
    found += [f"{n}: {a} outside {subnet}" for n, a in addresses.items()
              if ipaddress.ip_address(a) not in subnet]  # fmt: skip
    create = shlex.split(services["redis-init"]["command"])
    members = [arg for arg in create if arg.count(":") == 1 and arg[0].isdigit()]
    replicas = int(create[create.index("--cluster-replicas") + 1])
    if sorted(members) != sorted(f"{a}:6379" for a in addresses.values()):
        found.append(f"cluster create lists {members}, nodes are {sorted(addresses.values())}")
    if len(members) != 3 * (1 + replicas) or replicas != 1:
        found.append(f"{len(members)} nodes with {replicas} replicas each is not 3+3")
    server = services["featurewell"]
    env = server["environment"]
    settings = Settings.load(environ={k: v for k, v in env.items() if k.startswith("FEATUREWELL_")})
    published = {int(p.split(":")[1]) for p in server["ports"]}
    if {settings.port, settings.metrics_port} != published:
        found.append(f"featurewell listens on {settings.port}/{settings.metrics_port}, "
                     f"publishes {sorted(published)}")  # fmt: skip
    seeds = {f"{h}:{p}" for h, p in settings.redis}
    if not seeds <= set(members):
        found.append(f"featurewell's Redis seeds {sorted(seeds)} are not cluster nodes")
    prometheus = yaml.safe_load((root / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]}  # fmt: skip
    if f"featurewell:{settings.metrics_port}" not in targets:
        found.append(f"Prometheus scrapes {sorted(targets)}, not featurewell's /metrics")
    return found


def test_compose_stack_is_consistent() -> None:
    assert problems(_load(), DEPLOY) == []


def test_the_checks_catch_broken_stacks() -> None:
    one_node_short = copy.deepcopy(_load())
    del one_node_short["services"]["redis-6"]
    assert any("cluster create lists" in p for p in problems(one_node_short, DEPLOY))

    wrong_port = copy.deepcopy(_load())
    wrong_port["services"]["featurewell"]["environment"]["FEATUREWELL_METRICS_PORT"] = "9999"
    found = problems(wrong_port, DEPLOY)
    assert any("publishes" in p for p in found)
    assert any("Prometheus scrapes" in p for p in found)

    missing_file = copy.deepcopy(_load())
    missing_file["services"]["prometheus"]["volumes"] = ["./prometheus/nope.yml:/etc/x.yml"]
    assert any("mounts missing" in p for p in problems(missing_file, DEPLOY))

    not_a_member = copy.deepcopy(_load())
    not_a_member["services"]["featurewell"]["environment"]["FEATUREWELL_REDIS"] = "10.9.9.9:6379"
    assert any("not cluster nodes" in p for p in problems(not_a_member, DEPLOY))
