"""deploy/docker-compose.yml, checked without a Docker engine (none runs here): it parses, every
file it mounts exists, its ports and addresses agree with the server's settings and Prometheus,
and its Redis nodes form a valid 3 masters + 3 replicas cluster. The checks are shown failing on
broken copies."""

from __future__ import annotations

import copy
import ipaddress
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from featurewell.cli import _parser
from featurewell.definitions import load_repo
from featurewell.devcluster import call, free_ports
from featurewell.settings import Settings
from featurewell.store import acl
from tests.tools import promtool, wait_until

pytestmark = pytest.mark.deploy

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
EXAMPLE = load_repo(str(DEPLOY.parent / "examples" / "streaming_media"))  # the image's repo


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
    found += _secret_problems(compose, root, mounts)
    found += _stream_problems(compose, targets)
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


def _stream_problems(compose: dict[str, Any], targets: set[str]) -> list[str]:
    """The stream worker: a command line the CLI takes, for a source of the image's repo, its
    /metrics published, health-checked and scraped, time for its last checkpoint on SIGTERM,
    and its offline store on a volume."""
    found: list[str] = []
    service = compose["services"]["stream"]
    env = service["environment"]
    settings = Settings.load(environ={k: v for k, v in env.items() if k.startswith("FEATUREWELL_")})
    args = _parser().parse_args([*service["entrypoint"][1:], *service["command"]])
    if args.command.name != "stream":
        found.append(f"stream runs `featurewell {args.command.name}`, not `featurewell stream`")
    sources = {v.events.name for v in EXAMPLE.views.values() if v.events is not None}
    if args.source not in sources:
        found.append(f"stream reads {args.source!r}; the image's repo has {sorted(sources)}")
    port = settings.listen.metrics_port
    if f"stream:{port}" not in targets:
        found.append(f"Prometheus scrapes {sorted(targets)}, not the stream's /metrics :{port}")
    if {int(p.split(":")[1]) for p in service["ports"]} != {port}:
        found.append(f"stream listens on {port}, publishes {service['ports']}")
    if f":{port}/metrics" not in " ".join(service["healthcheck"]["test"]):
        found.append(f"stream's health check does not ask its /metrics on {port}")
    # SIGTERM: a last checkpoint (states, watermarks, acknowledgements: 10 s Redis timeouts).
    grace = int(str(service.get("stop_grace_period", "10s")).removesuffix("s"))
    if grace < args.checkpoint_s + 3 * 10:
        found.append(f"stream gets {grace} s after SIGTERM, too short for its last checkpoint")
    volumes = {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}
    if settings.offline.dir not in volumes:
        found.append(f"stream writes history to {settings.offline.dir!r}, which is no volume")
    return found


def _secret_problems(
    compose: dict[str, Any], root: Path, mounts: dict[str, dict[str, Path]]
) -> list[str]:
    """Redis ACL credentials: a service that reads a password file names its user, the file is
    one of its compose secrets (that user's, and it exists), and the user is in the aclfile
    each node loads from a file it mounts."""
    found = []
    declared = compose.get("secrets", {})
    users = (root / "redis" / "users.acl").read_text()
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        password_file = env.get("FEATUREWELL_REDIS_PASSWORD_FILE")
        if password_file is None:
            continue
        user = env.get("FEATUREWELL_REDIS_USERNAME", "")
        secret = password_file.removeprefix("/run/secrets/")
        if secret not in service.get("secrets", []) or secret not in declared:
            found.append(f"{name}: reads {password_file}, which no secret of it provides")
        elif not (root / declared[secret]["file"]).exists():
            found.append(f"{name}: secret {secret} has no file {declared[secret]['file']}")
        elif Path(declared[secret]["file"]).name != f"{user}.password":
            found.append(f"{name}: {password_file} is not the password of {user!r}")
        if f"user {user} " not in users:
            found.append(f"{name}: Redis user {user!r} is not in redis/users.acl")
    for name, service in compose["services"].items():
        command = shlex.split(str(service.get("command", "")))
        if "--aclfile" in command:
            target = command[command.index("--aclfile") + 1]
            if target not in mounts[name]:
                found.append(f"{name}: loads {target}, which no volume provides")
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
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
    # Every rule of the file, counted from it (a fixed number went stale as rules were added).
    assert f"{sum(len(g['rules']) for g in rules)} rules found" in checked.stdout


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

    # The stream worker: unscraped, for a source the repo lacks, cut off before its checkpoint.
    stream = copy.deepcopy(_load())
    stream["services"]["stream"]["environment"]["FEATUREWELL_METRICS_PORT"] = "9999"
    stream["services"]["stream"]["command"][1] = "clicks"
    stream["services"]["stream"]["stop_grace_period"] = "10s"
    del stream["services"]["stream"]["volumes"]
    found = problems(stream, DEPLOY)
    for expected in (
        "not the stream's /metrics :9999",
        "stream listens on 9999",
        "does not ask its /metrics on 9999",
        "stream reads 'clicks'",
        "too short for its last checkpoint",
        "which is no volume",
    ):
        assert any(expected in p for p in found), (expected, found)

    not_a_member = copy.deepcopy(_load())
    not_a_member["services"]["featurewell"]["environment"]["FEATUREWELL_REDIS"] = "10.9.9.9:6379"
    assert any("not cluster nodes" in p for p in problems(not_a_member, DEPLOY))


# The users.acl lines, as `featurewell redis-acl` prints them today for each user's roles.
_COMPOSE_USERS = {"fw-serve": ["server", "writer"], "fw-writer": ["writer"], "fw-admin": ["admin"]}


def test_compose_acl_users_are_what_redis_acl_prints() -> None:
    lines = (DEPLOY / "redis" / "users.acl").read_text().splitlines()
    users = {line.split()[1]: line for line in lines}
    assert users["default"] == "user default on nopass ~* &* +@all"
    for user, roles in _COMPOSE_USERS.items():
        password = (DEPLOY / "redis" / f"{user}.password").read_text().rstrip("\n")
        expected = acl.aclfile_line(user, [acl.ROLES[r] for r in roles], password)
        assert users.pop(user) == expected, f"regenerate {user}'s line (see docker-compose.yml)"
    assert list(users) == ["default"]


@pytest.mark.redis
def test_compose_aclfile_loads_into_redis(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    node = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
            "--aclfile",
            str(DEPLOY / "redis" / "users.acl"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        users = wait_until(
            lambda: call(port, "ACL", "USERS"), 10, "redis-server up", retry_on=(OSError,)
        )
        assert sorted(users) == sorted([b"default", *(u.encode() for u in _COMPOSE_USERS)])
        password = (DEPLOY / "redis" / "fw-serve.password").read_text().strip()
        assert call(port, "AUTH", "fw-serve", password) == b"OK"
    finally:
        node.kill()
        node.wait(timeout=10)


def test_the_credential_checks_catch_broken_stacks() -> None:
    no_secret = copy.deepcopy(_load())
    del no_secret["services"]["featurewell"]["secrets"]
    assert any("which no secret of it provides" in p for p in problems(no_secret, DEPLOY))

    wrong_user = copy.deepcopy(_load())
    wrong_user["services"]["featurewell"]["environment"]["FEATUREWELL_REDIS_USERNAME"] = "fw-x"
    found = problems(wrong_user, DEPLOY)
    assert any("is not the password of 'fw-x'" in p for p in found)
    assert any("'fw-x' is not in redis/users.acl" in p for p in found)

    no_aclfile = copy.deepcopy(_load())
    del no_aclfile["services"]["redis-1"]["volumes"]
    assert any("loads /etc/redis/users.acl" in p for p in problems(no_aclfile, DEPLOY))
