"""The Helm chart: `helm lint --strict`, `helm template` with the default and production values,
every rendered object valid against Kubernetes' schemas (strict), and the objects themselves
right: probes, ports, resources, labels, drain, security. Each check is also shown failing."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from featurewell.cli import _parser
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
    # The Redis password is a mounted file (re-read at reconnect), never an environment variable.
    pod = deployment["template"]["spec"]
    (container,) = pod["containers"]
    assert "env" not in container
    settings = objects["ConfigMap/features-featurewell"]["data"]
    assert _mounted_file(pod, settings["FEATUREWELL_REDIS_PASSWORD_FILE"]) == (
        "secret",
        "redis-auth",
        "password",
    )


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


# -- trust at the edge: serving TLS and mTLS, auth files, Redis credentials, NetworkPolicy -----


def _values(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _valid(helm: str, *values: str) -> dict[str, dict[str, Any]]:
    """Rendered, linted strictly and valid against Kubernetes' schemas."""
    linted = _helm(helm, "lint", "--strict", str(CHART), *values)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    objects = _render(helm, *values)
    for obj in objects.values():
        if obj["kind"] not in CRDS:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    return objects


def _mounted_file(pod: dict[str, Any], path: str) -> tuple[str, str, str]:
    """The (kind, name, key) of the Secret or ConfigMap whose key the container sees at `path`:
    what the server is told to read is what the chart mounts."""
    (container,) = pod["containers"]
    for mount in container["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        assert "subPath" not in mount  # a subPath mount never sees a rotated Secret
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        file = path[len(prefix) :]
        kind = "secret" if "secret" in volume else "configMap"
        source = volume[kind]
        name = source.get("secretName") or source.get("name")
        items = {item["path"]: item["key"] for item in source.get("items", [])}
        return kind, name, items.get(file, file) if items else file
    raise AssertionError(f"nothing mounted at {path}")


def _server_settings(settings: dict[str, str]) -> Settings:
    return Settings.load(
        environ={k: v for k, v in settings.items() if k.startswith("FEATUREWELL_")}
    )


@pytest.mark.parametrize("client_auth", [False, True], ids=["tls", "mtls"])
def test_serving_tls_from_a_cert_manager_secret(
    helm: str, tmp_path: Path, client_auth: bool
) -> None:
    tls = {"enabled": True, "existingSecret": "featurewell-tls", "clientAuth": client_auth}
    objects = _valid(helm, "-f", _values(tmp_path, {"tls": tls}))
    settings = objects["ConfigMap/features-featurewell"]["data"]
    pod = objects["Deployment/features-featurewell"]["spec"]["template"]["spec"]
    for setting, key in (
        ("FEATUREWELL_TLS_CERT_FILE", "tls.crt"),
        ("FEATUREWELL_TLS_KEY_FILE", "tls.key"),
    ):
        assert _mounted_file(pod, settings[setting]) == ("secret", "featurewell-tls", key)
    if client_auth:
        ca = settings["FEATUREWELL_TLS_CLIENT_CA_FILE"]
        assert _mounted_file(pod, ca) == ("secret", "featurewell-tls", "ca.crt")
    else:
        assert "FEATUREWELL_TLS_CLIENT_CA_FILE" not in settings
    loaded = _server_settings(settings)
    assert loaded.serving.tls_cert_file == settings["FEATUREWELL_TLS_CERT_FILE"]
    # Probes: Kubernetes' gRPC probe is plaintext, so startup and readiness run `featurewell
    # probe` over TLS (with the pod's certificate for mTLS), and liveness checks the port.
    (container,) = pod["containers"]
    assert container["livenessProbe"]["tcpSocket"] == {"port": 50051}
    for probe, service in (
        ("startupProbe", ""),
        ("readinessProbe", "featurewell.v1.FeatureService"),
    ):
        command = container[probe]["exec"]["command"]
        assert "grpc" not in container[probe]
        args = _parser().parse_args(command[1:])  # a command line the CLI accepts
        assert command[0] == "featurewell"
        assert (args.address, args.service) == ("127.0.0.1:50051", service)
        assert args.server_name == "features-featurewell.default.svc"
        assert _mounted_file(pod, str(args.ca_file)) == ("secret", "featurewell-tls", "ca.crt")
        assert (args.cert_file is not None) is client_auth
        if client_auth:
            assert _mounted_file(pod, str(args.cert_file))[2] == "tls.crt"
            assert _mounted_file(pod, str(args.key_file))[2] == "tls.key"
    # TLS off (the default): plain gRPC probes, no TLS settings.
    plain = _render(helm)
    (container,) = plain["Deployment/features-featurewell"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["readinessProbe"]["grpc"]["service"] == "featurewell.v1.FeatureService"
    assert "FEATUREWELL_TLS_CERT_FILE" not in plain["ConfigMap/features-featurewell"]["data"]


def test_auth_settings_and_their_files(helm: str, tmp_path: Path) -> None:
    auth = {
        "required": True,
        "tokens": {"existingSecret": "callers", "key": "tokens"},
        "jwks": {"existingConfigMap": "idp-jwks", "key": "jwks.json"},
        "jwtIssuer": "https://idp.example",
        "jwtAudience": "featurewell",
    }
    objects = _valid(helm, "-f", _values(tmp_path, {"auth": auth}))
    settings = objects["ConfigMap/features-featurewell"]["data"]
    pod = objects["Deployment/features-featurewell"]["spec"]["template"]["spec"]
    assert settings["FEATUREWELL_AUTH_REQUIRED"] == "true"
    assert settings["FEATUREWELL_AUTH_JWT_ISSUER"] == "https://idp.example"
    assert settings["FEATUREWELL_AUTH_JWT_AUDIENCE"] == "featurewell"
    tokens = _mounted_file(pod, settings["FEATUREWELL_AUTH_TOKENS_FILE"])
    assert tokens == ("secret", "callers", "tokens")
    jwks = _mounted_file(pod, settings["FEATUREWELL_AUTH_JWKS_FILE"])
    assert jwks == ("configMap", "idp-jwks", "jwks.json")
    defaults = _render(helm)["ConfigMap/features-featurewell"]["data"]
    assert not [name for name in defaults if name.startswith("FEATUREWELL_AUTH_")]


def test_redis_acl_user_and_password_file(helm: str, tmp_path: Path) -> None:
    redis = {"username": "fw-server", "existingSecret": "redis-users", "passwordKey": "fw-server"}
    objects = _valid(helm, "-f", _values(tmp_path, {"redis": redis}))
    settings = objects["ConfigMap/features-featurewell"]["data"]
    pod = objects["Deployment/features-featurewell"]["spec"]["template"]["spec"]
    password_file = settings["FEATUREWELL_REDIS_PASSWORD_FILE"]
    assert _mounted_file(pod, password_file) == ("secret", "redis-users", "fw-server")
    loaded = _server_settings(settings)
    assert (loaded.redis.username, loaded.redis.password_file) == ("fw-server", password_file)
    assert not loaded.redis.password
    defaults = _render(helm)["ConfigMap/features-featurewell"]["data"]
    assert "FEATUREWELL_REDIS_PASSWORD_FILE" not in defaults
    assert "FEATUREWELL_REDIS_USERNAME" not in defaults


def test_network_policy(helm: str, tmp_path: Path) -> None:
    assert not [n for n in _render(helm) if n.startswith("NetworkPolicy/")]  # opt-in
    values = {"networkPolicy": {"enabled": True, "redisPorts": [6379, 6380]}}
    objects = _valid(helm, "-f", _values(tmp_path, values))
    policy = objects["NetworkPolicy/features-featurewell"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "featurewell",
        "app.kubernetes.io/instance": "features",
    }
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    grpc_in, metrics_in = policy["ingress"]
    assert grpc_in["ports"] == [{"port": 50051, "protocol": "TCP"}]
    assert grpc_in["from"] == [{"podSelector": {"matchLabels": {"featurewell-client": "true"}}}]
    assert metrics_in["ports"] == [{"port": 9464, "protocol": "TCP"}]
    assert metrics_in["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"
    }
    redis_out, dns_out = policy["egress"]
    assert redis_out["ports"] == [{"port": p, "protocol": "TCP"} for p in (6379, 6380)]
    assert redis_out["to"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis-cluster"}}}
    ]
    assert {(p["port"], p["protocol"]) for p in dns_out["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert dns_out["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls": {"clientAuth": True}}, "tls.clientAuth (mTLS) needs tls.enabled"),
        ({"tls": {"enabled": True}}, "tls.enabled needs tls.existingSecret"),
        (
            {"auth": {"jwks": {"existingSecret": "a", "existingConfigMap": "b"}}},
            "set existingSecret or existingConfigMap, not both",
        ),
    ],
    ids=["mtls-without-tls", "tls-without-secret", "two-jwks"],
)
def test_contradicting_security_values_fail_to_render(
    helm: str, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    done = _helm(helm, "template", "features", str(CHART), "-f", _values(tmp_path, values))
    assert done.returncode != 0
    assert message in done.stderr


# -- pipelines: stream workers per event source, materialize and backfill Jobs/CronJobs ---------

_PIPELINES: dict[str, Any] = {
    "pipelines": {
        "redis": {"username": "fw-writer", "existingSecret": "redis-users", "passwordKey": "fw-w"}
    },
    "offline": {"existingClaim": "featurewell-offline"},
    "stream": {
        "sources": [
            {"name": "watches", "partitions": 4, "replicas": 2},
            {"name": "page_views", "partitions": 2},
            {
                "name": "clicks",
                "partitions": 8,
                "kafkaBootstrap": "kafka:9092",
                "args": ["--batch-size=200"],
            },
        ]
    },
    "jobs": {
        "materialize": {"enabled": True, "schedule": "0 3 * * *"},
        "backfill": {"enabled": True, "source": "watches", "log": "/data/watches.parquet"},
    },
    "metrics": {"serviceMonitor": {"enabled": True}},
}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _pipeline_settings(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = objects["ConfigMap/features-featurewell-pipelines"]["data"]
    return data


def test_pipelines_render_valid_and_off_by_default(helm: str, tmp_path: Path) -> None:
    defaults = _render(helm)
    assert not [n for n in defaults if "stream" in n or "materialize" in n or "backfill" in n]
    assert "ConfigMap/features-featurewell-pipelines" not in defaults
    objects = _valid(helm, "-f", _values(tmp_path, _PIPELINES))
    kinds = sorted(n for n in objects if "featurewell-stream-" in n)
    assert kinds == sorted(
        f"{kind}/features-featurewell-stream-{name}"
        for kind in ("Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor")
        for name in ("watches", "page-views", "clicks")
    )
    # The servers' Service, PDB and ServiceMonitor select server pods only, never workers.
    worker = objects["Deployment/features-featurewell-stream-watches"]["spec"]["template"]
    server_selector = objects["Service/features-featurewell"]["spec"]["selector"]
    assert not _selects(server_selector, worker["metadata"]["labels"])


def test_stream_worker_per_source(helm: str, tmp_path: Path) -> None:
    objects = _valid(helm, "-f", _values(tmp_path, _PIPELINES))
    settings = _pipeline_settings(objects)
    for name, replicas, consumer in (("watches", 2, "$(POD_NAME)"), ("page-views", 1, "stream-0")):
        deployment = objects[f"Deployment/features-featurewell-stream-{name}"]["spec"]
        assert deployment["replicas"] == replicas
        # Never two workers on one consumer name or partition during a rollout.
        assert deployment["strategy"] == {"type": "Recreate"}
        pod = deployment["template"]["spec"]
        labels = deployment["template"]["metadata"]["labels"]
        assert _selects(deployment["selector"]["matchLabels"], labels)
        (container,) = pod["containers"]
        assert container["command"] == ["featurewell"]
        args = _parser().parse_args(container["args"])  # a command line the CLI accepts
        assert args.source == name.replace("-", "_")
        assert args.consumer == consumer
        assert args.group == "featurewell"
        # Several workers share the partitions by lease; one worker needs none.
        assert args.lease_s == (10.0 if replicas > 1 else 0.0)
        if consumer == "$(POD_NAME)":  # expanded by the kubelet from the downward API
            assert container["env"] == [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
            ]
        # SIGTERM: the last checkpoint writes states, then watermarks, then acknowledges, each
        # with a 10 s Redis timeout, after up to one checkpoint interval already under way.
        assert pod["terminationGracePeriodSeconds"] >= args.checkpoint_s + 3 * 10
        # Metrics: the port the worker listens on is the container's, the Service's and the
        # ServiceMonitor's, and they select this worker's pods.
        loaded = _server_settings(settings)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"metrics": loaded.listen.metrics_port}
        assert loaded.listen.host == "0.0.0.0"
        service = objects[f"Service/features-featurewell-stream-{name}"]["spec"]
        assert _selects(service["selector"], labels)
        assert service["ports"][0]["targetPort"] == "metrics"
        monitor = objects[f"ServiceMonitor/features-featurewell-stream-{name}"]["spec"]
        service_labels = objects[f"Service/features-featurewell-stream-{name}"]["metadata"]
        assert _selects(monitor["selector"]["matchLabels"], service_labels["labels"])
        assert monitor["endpoints"][0]["port"] == "metrics"
        pdb = objects[f"PodDisruptionBudget/features-featurewell-stream-{name}"]["spec"]
        assert _selects(pdb["selector"]["matchLabels"], labels)
        # The writer's credentials and the offline store are what the chart mounts.
        assert _mounted_file(pod, settings["FEATUREWELL_REDIS_PASSWORD_FILE"]) == (
            "secret",
            "redis-users",
            "fw-w",
        )
        offline = next(m for m in container["volumeMounts"] if m["name"] == "offline")
        assert offline["mountPath"] == loaded.offline.dir
        volume = next(v for v in pod["volumes"] if v["name"] == "offline")
        assert volume["persistentVolumeClaim"] == {"claimName": "featurewell-offline"}
    # A Kafka source: its topic instead of Redis Streams, and extra flags passed through.
    kafka = objects["Deployment/features-featurewell-stream-clicks"]["spec"]["template"]["spec"]
    args = _parser().parse_args(kafka["containers"][0]["args"])
    assert (args.kafka_bootstrap, args.batch_size) == ("kafka:9092", 200)
    # The servers' anti-affinity (about server pods) is not the workers'.
    production = _render(helm, "-f", str(PRODUCTION), "-f", _values(tmp_path, _PIPELINES))
    assert "affinity" in production["Deployment/features-featurewell"]["spec"]["template"]["spec"]
    worker = production["Deployment/features-featurewell-stream-watches"]["spec"]["template"]
    assert "affinity" not in worker["spec"]
    loaded = _server_settings(settings)
    assert (loaded.redis.username, loaded.redis.password_file) == (
        "fw-writer",
        "/etc/featurewell/redis-auth/password",
    )
    assert not loaded.redis.password
    # The servers keep their own user: none set here, so none in their ConfigMap.
    assert "FEATUREWELL_REDIS_USERNAME" not in objects["ConfigMap/features-featurewell"]["data"]


def test_materialize_and_backfill_jobs_are_paced(helm: str, tmp_path: Path) -> None:
    objects = _valid(helm, "-f", _values(tmp_path, _PIPELINES))
    cron = objects["CronJob/features-featurewell-materialize"]["spec"]
    assert cron["schedule"] == "0 3 * * *"
    assert cron["concurrencyPolicy"] == "Forbid"
    one_off = objects["Job/features-featurewell-backfill-r1"]["spec"]  # named by revision
    for job, command in ((cron["jobTemplate"]["spec"], "materialize"), (one_off, "backfill")):
        pod = job["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert job["backoffLimit"] == 2
        assert job["activeDeadlineSeconds"] > 0  # a stuck load fails, and alerts
        (container,) = pod["containers"]
        args = _parser().parse_args(container["args"])
        assert container["args"][0] == command
        assert args.max_rows_per_second == 20000  # paced by default
        assert {"name": "offline", "mountPath": "/var/lib/featurewell/offline"} in container[
            "volumeMounts"
        ]
    backfill = _parser().parse_args(one_off["template"]["spec"]["containers"][0]["args"])
    assert (backfill.source, backfill.log, backfill.group) == (
        "watches",
        "/data/watches.parquet",
        "featurewell",
    )
    # schedule swaps the kinds; maxRowsPerSecond 0 lifts the pace.
    values = copy.deepcopy(_PIPELINES)
    values["jobs"]["materialize"].update(schedule="", maxRowsPerSecond=0)
    values["jobs"]["backfill"]["schedule"] = "*/30 * * * *"
    swapped = _valid(helm, "-f", _values(tmp_path, values))
    job = swapped["Job/features-featurewell-materialize-r1"]["spec"]
    args = _parser().parse_args(job["template"]["spec"]["containers"][0]["args"])
    assert not args.max_rows_per_second
    assert "CronJob/features-featurewell-backfill" in swapped


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"stream": {"sources": [{"name": "watches", "partitions": 4, "replicas": 5}]}},
            "replicas 5 must be between 1 and its 4 partitions",
        ),
        (
            {"stream": {"sources": [{"name": "watches"}]}},
            "partitions (the source's partitions= in the repo)",
        ),
        (
            {"jobs": {"backfill": {"enabled": True}}},
            "jobs.backfill.source: the EventSource to backfill",
        ),
    ],
    ids=["replicas-above-partitions", "no-partitions", "backfill-without-source"],
)
def test_pipeline_values_that_cannot_work_fail_to_render(
    helm: str, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    done = _helm(helm, "template", "features", str(CHART), "-f", _values(tmp_path, change))
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.parametrize("replicas", [1, 2, 8])
def test_kafka_replicas_share_the_topic_by_rebalancing(
    helm: str, tmp_path: Path, replicas: int
) -> None:
    """Several workers of a Kafka source: one consumer group sharing the topic's partitions
    (--shared), each worker its own consumer name; no leases (those are Redis Streams')."""
    source = {"name": "clicks", "partitions": 8, "replicas": replicas, "kafkaBootstrap": "k:1"}
    values = {**_PIPELINES, "stream": {"sources": [source]}}
    objects = _valid(helm, "-f", _values(tmp_path, values))
    deployment = objects["Deployment/features-featurewell-stream-clicks"]["spec"]
    assert deployment["replicas"] == replicas
    args = _parser().parse_args(deployment["template"]["spec"]["containers"][0]["args"])
    assert (args.kafka_bootstrap, args.group, args.lease_s) == ("k:1", "featurewell", 0.0)
    assert args.shared == (replicas > 1)
    assert args.consumer == ("$(POD_NAME)" if replicas > 1 else "stream-0")


def test_the_selector_check_catches_a_mismatch() -> None:
    labels = {"app.kubernetes.io/component": "stream-watches", "app.kubernetes.io/name": "x"}
    assert _selects({"app.kubernetes.io/component": "stream-watches"}, labels)
    assert not _selects({"app.kubernetes.io/component": "stream-clicks"}, labels)


def test_pipelines_network_policy(helm: str, tmp_path: Path) -> None:
    kafka = {"to": [{"podSelector": {"matchLabels": {"app": "kafka"}}}], "ports": [{"port": 9092}]}
    values = copy.deepcopy(_PIPELINES)
    values["networkPolicy"] = {"enabled": True, "pipelinesEgress": [kafka]}
    objects = _valid(helm, "-f", _values(tmp_path, values))
    policy = objects["NetworkPolicy/features-featurewell-pipelines"]["spec"]
    workers = [o for n, o in objects.items() if n.startswith("Deployment/") and "stream" in n]
    assert workers
    for worker in workers:  # every worker's pods, and the servers' policy selects none of them
        labels = worker["spec"]["template"]["metadata"]["labels"]
        assert _selects(policy["podSelector"]["matchLabels"], labels)
        server = objects["NetworkPolicy/features-featurewell"]["spec"]["podSelector"]
        assert not _selects(server["matchLabels"], labels)
    (metrics_in,) = policy["ingress"]
    assert metrics_in["ports"] == [{"port": 9464, "protocol": "TCP"}]
    redis_out, dns_out, kafka_out = policy["egress"]
    assert redis_out["ports"] == [{"port": 6379, "protocol": "TCP"}]
    assert {p["port"] for p in dns_out["ports"]} == {53}
    assert kafka_out == kafka
    # A Kafka source behind a policy with no way out to Kafka would never read: refused.
    values["networkPolicy"]["pipelinesEgress"] = []
    done = _helm(helm, "template", "features", str(CHART), "-f", _values(tmp_path, values))
    assert done.returncode != 0
    assert "stream.sources clicks reads Kafka" in done.stderr
