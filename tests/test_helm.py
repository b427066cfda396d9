"""The Helm chart: `helm lint --strict`, `helm template` with the default and production values,
every rendered object valid against Kubernetes' schemas (strict), and the objects themselves
right: probes, ports, resources, labels, drain, security. Each check is also shown failing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from featurewell.settings import Settings
from tests.tools import RULES, promtool

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "featurewell"
PRODUCTION = CHART / "values-production.yaml"
KUBERNETES = "1.30.0"
CRDS = {"ServiceMonitor", "PrometheusRule"}  # the Prometheus Operator's: no schema here


@pytest.fixture(scope="module")
def helm() -> str:
    binary = shutil.which("helm") or str(ROOT / ".venv" / "bin" / "helm")
    if not Path(binary).exists():
        pytest.fail("helm is missing: run `make test` (it fetches helm) or helm/fetch_helm.py")
    return binary


def _helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, check=False)


def _render(helm: str, *values: str) -> dict[str, dict[str, Any]]:
    done = _helm(helm, "template", "features", str(CHART), *values)
    assert done.returncode == 0, done.stderr
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


@pytest.mark.parametrize("values", [[], ["-f", str(PRODUCTION)]], ids=["default", "production"])
def test_chart_lints_renders_and_validates(helm: str, values: list[str]) -> None:
    linted = _helm(helm, "lint", "--strict", str(CHART), *values)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    for name, obj in _render(helm, *values).items():
        if obj["kind"] in CRDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)  # raises when invalid
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "features", name


def test_deployment_probes_ports_drain_and_security(helm: str) -> None:
    objects = _render(helm)
    pod = objects["Deployment/features-featurewell"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["grpc"] == {
        "port": 50051,
        "service": "featurewell.v1.FeatureService",
    }
    assert container["livenessProbe"]["grpc"]["port"] == 50051
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": 50051,
        "metrics": 9464,
    }
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "512Mi"}
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    settings = objects["ConfigMap/features-featurewell"]["data"]
    # SIGKILL only after preStop + the server's drain + its grace for in-flight calls.
    drain = int(settings["FEATUREWELL_DRAIN_DELAY_S"]) + int(settings["FEATUREWELL_GRACE_PERIOD_S"])
    assert pod["terminationGracePeriodSeconds"] > 5 + drain
    assert settings["FEATUREWELL_PORT"] == "50051"
    assert settings["FEATUREWELL_METRICS_PORT"] == "9464"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert "env" not in container  # no Redis password unless a Secret is named
    headless = objects["Service/features-featurewell-headless"]["spec"]
    assert headless["clusterIP"] == "None"
    assert objects["PodDisruptionBudget/features-featurewell"]["spec"]["maxUnavailable"] == 1
    assert "HorizontalPodAutoscaler/features-featurewell" not in objects


def test_production_profile_scales_and_is_monitored(helm: str, tmp_path: Path) -> None:
    objects = _render(helm, "-f", str(PRODUCTION))
    hpa = objects["HorizontalPodAutoscaler/features-featurewell"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 30)
    deployment = objects["Deployment/features-featurewell"]["spec"]
    assert "replicas" not in deployment  # the autoscaler owns the count
    monitor = objects["ServiceMonitor/features-featurewell"]["spec"]
    assert monitor["endpoints"][0]["port"] == "metrics"
    # The alerts are deploy/'s rules, unchanged, and promtool accepts them as rendered.
    rules = objects["PrometheusRule/features-featurewell"]["spec"]
    assert rules == yaml.safe_load(RULES.read_text())
    rendered = tmp_path / "rules.yml"
    rendered.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(rendered))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (container,) = deployment["template"]["spec"]["containers"]
    assert container["env"] == [
        {
            "name": "FEATUREWELL_REDIS_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}},
        }
    ]


def test_redis_tls_from_a_secret(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "tls.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "redis": {
                    "tls": {
                        "enabled": True,
                        "existingSecret": "redis-tls",
                        "clientCertificate": True,
                    }
                }
            }
        )
    )
    objects = _render(helm, "-f", str(values))
    for obj in objects.values():
        if obj["kind"] not in CRDS:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    settings = objects["ConfigMap/features-featurewell"]["data"]
    pod = objects["Deployment/features-featurewell"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "redis-tls")
    volume = next(v for v in pod["volumes"] if v["name"] == "redis-tls")
    assert volume["secret"]["secretName"] == "redis-tls"
    # The files the server is told to load are the ones the Secret mounts.
    for setting, key in (
        ("FEATUREWELL_REDIS_TLS_CA_FILE", "ca.crt"),
        ("FEATUREWELL_REDIS_TLS_CERT_FILE", "tls.crt"),
        ("FEATUREWELL_REDIS_TLS_KEY_FILE", "tls.key"),
    ):
        assert settings[setting] == f"{mount['mountPath']}/{key}"
    # ...and they form valid server settings.
    loaded = Settings.load(
        environ={k: v for k, v in settings.items() if k.startswith("FEATUREWELL_")}
    )
    assert loaded.redis.tls is True
    assert loaded.redis.tls_check_hostname is True
    assert "FEATUREWELL_REDIS_TLS" not in _render(helm)["ConfigMap/features-featurewell"]["data"]


def test_feature_repo_in_a_configmap_is_mounted_and_reloaded(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "repo.yaml"
    values.write_text(yaml.safe_dump({"repo": {"files": {"repo.py": "# definitions\n"}}}))
    objects = _render(helm, "-f", str(values))
    assert objects["ConfigMap/features-featurewell-repo"]["data"] == {"repo.py": "# definitions\n"}
    settings = objects["ConfigMap/features-featurewell"]["data"]
    assert settings["FEATUREWELL_REPO"] == "/etc/featurewell/repo"
    assert settings["FEATUREWELL_RELOAD_INTERVAL_S"] == "10"


def test_checks_fail_on_broken_input(helm: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"grpcPort": "not-a-port"}))
    objects = _render(helm, "-f", str(broken))  # helm renders it...
    with pytest.raises(kubernetes_validate.ValidationError):  # ...the schema refuses it
        kubernetes_validate.validate(
            objects["Deployment/features-featurewell"], KUBERNETES, strict=True
        )
    missing = _helm(helm, "lint", "--strict", str(tmp_path))  # not a chart at all
    assert missing.returncode != 0
    unknown_field = dict(objects["Service/features-featurewell"], surprise=1)
    with pytest.raises(kubernetes_validate.ValidationError):  # strict: no unknown properties
        kubernetes_validate.validate(unknown_field, KUBERNETES, strict=True)
