"""External checkers the deploy tests run: promtool and the Grafana schema type check. `make
test` installs both; run directly without them, the tests fail saying how to get them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "featurewell.json"
SCHEMA_CHECK = ROOT / ".venv" / "grafana-schema"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is missing: run `make test` (installs it) or apt-get install prometheus"
        )
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def type_check_dashboard(
    dashboard: dict[str, object], workdir: Path
) -> subprocess.CompletedProcess[str]:
    """tsc on the dashboard as a literal of Grafana's `Dashboard` type (strict, excess
    properties rejected)."""
    tsc = SCHEMA_CHECK / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        pytest.fail("the Grafana schema check is not installed: run `make test` (npm ci)")
    template = (ROOT / "deploy" / "grafana" / "schema-check" / "check.ts.in").read_text()
    # Inside the install folder, so `@grafana/schema` resolves from its node_modules.
    source = SCHEMA_CHECK / f"check-{workdir.name}.ts"
    source.write_text(template.replace("__DASHBOARD__", json.dumps(dashboard, indent=1)))
    config = SCHEMA_CHECK / f"tsconfig-{workdir.name}.json"
    config.write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "module": "esnext",
                            "moduleResolution": "bundler", "target": "es2022",
                            "skipLibCheck": True},
        "files": [source.name],
    }))  # fmt: skip
    try:
        return subprocess.run([str(tsc), "-p", str(config)], capture_output=True, text=True,
                              timeout=120, cwd=SCHEMA_CHECK)  # fmt: skip
    finally:
        source.unlink()
        config.unlink()


def alert_test(
    tmp_path: Path,
    series: dict[str, str],
    alert: str,
    expectations: list[tuple[str, list[dict[str, str]]]],
) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` of deploy/'s rules on `series` ({series: values}): at each
    (eval_time, alerts) the rule `alert` must fire exactly with those label sets (the rule's
    own labels and annotations are added here)."""
    import yaml

    rule = next(
        r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
        if r.get("alert") == alert
    )  # fmt: skip

    def expected(labels: dict[str, str]) -> dict[str, object]:
        annotations = {
            key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
            for key, text in rule["annotations"].items()
        }
        return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}

    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "alert_rule_test": [
                {"eval_time": at, "alertname": alert,
                 "exp_alerts": [expected(labels) for labels in alerts]}
                for at, alerts in expectations
            ],
        }],
    }  # fmt: skip
    path = tmp_path / f"{alert}.test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return promtool("test", "rules", str(path))
