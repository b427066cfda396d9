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

import pytest
import yaml

from featurewell.settings import Settings
from tests.tools import promtool

pytestmark = pytest.mark.deploy

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
    addresses = {n: s["networks"]["featurewell"]["ipv4_address"] for n, s in redis.items()}
    subnet = ipaddress.ip_network(compose["networks"]["featurewell"]["ipam"]["config"][0]["subnet"])
    found += [
        f"{n}: {a} outside {subnet}"
        for n, a in addresses.items()
        if ipaddress.ip_address(a) not in subnet
    ]
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
    if {settings.serving.port, settings.listen.metrics_port} != published:
        found.append(
            f"featurewell listens on {settings.serving.port}/{settings.listen.metrics_port}, "
            f"publishes {sorted(published)}"
        )
    seeds = {f"{h}:{p}" for h, p in settings.redis.seeds}
    if not seeds <= set(members):
        found.append(f"featurewell's Redis seeds {sorted(seeds)} are not cluster nodes")
    prometheus = yaml.safe_load((root / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t
        for job in prometheus["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    }
    if f"featurewell:{settings.listen.metrics_port}" not in targets:
        found.append(f"Prometheus scrapes {sorted(targets)}, not featurewell's /metrics")
    mounts = {name: _mounts(service, root) for name, service in services.items()}
    for rule_file in prometheus.get("rule_files", []):
        if rule_file not in mounts["prometheus"]:
            found.append(f"Prometheus loads {rule_file}, which no volume provides")
    if not prometheus.get("rule_files"):
        found.append("Prometheus loads no rule files")
    boards = yaml.safe_load(
        (root / "grafana" / "provisioning" / "dashboards" / "featurewell.yml").read_text()
    )
    for provider in boards["providers"]:
        folder = mounts["grafana"].get(provider["options"]["path"])
        if folder is None or not list(folder.glob("*.json")):
            found.append(f"Grafana's dashboards path {provider['options']['path']} has none")
    return found


def _mounts(service: dict[str, Any], root: Path) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            out[target] = root / source
    return out


def test_compose_stack_is_consistent() -> None:
    assert problems(_load(), DEPLOY) == []


def test_prometheus_config_with_its_rules_passes_promtool(tmp_path: Path) -> None:
    # The config names the rules by their path in the container: point it at the host's copy.
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    config = config.replace("/etc/prometheus/rules.yml", str(DEPLOY / "prometheus" / "rules.yml"))
    (tmp_path / "prometheus.yml").write_text(config)
    checked = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "19 rules found" in checked.stdout


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

    no_rules = copy.deepcopy(_load())
    no_rules["services"]["prometheus"]["volumes"].pop()  # rules.yml not mounted
    assert any("which no volume provides" in p for p in problems(no_rules, DEPLOY))

    no_dashboards = copy.deepcopy(_load())
    no_dashboards["services"]["grafana"]["volumes"].pop()
    assert any("dashboards path" in p for p in problems(no_dashboards, DEPLOY))

    not_a_member = copy.deepcopy(_load())
    not_a_member["services"]["featurewell"]["environment"]["FEATUREWELL_REDIS"] = "10.9.9.9:6379"
    assert any("not cluster nodes" in p for p in problems(not_a_member, DEPLOY))
