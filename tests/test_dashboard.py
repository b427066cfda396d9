"""The Grafana dashboard: valid against Grafana's schema types, every query valid PromQL, and
every metric it (or an alert rule) names exported by a real server."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from featurewell.client import FeatureClient
from tests import defs
from tests.tools import (
    DASHBOARD,
    RULES,
    Ids,
    ServerThread,
    make_settings,
    metrics_text,
    promtool,
    type_check_dashboard,
)

pytestmark = pytest.mark.deploy

METRIC = re.compile(r"\bfeaturewell_[a-z0-9_]+\b")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows' children included."""
    out = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                out.append((inner["title"], target["expr"]))
    return out


def as_promql(expr: str) -> str:
    """Grafana's variables replaced by what they expand to."""
    return expr.replace("$__rate_interval", "5m").replace("$view", ".*")


def test_dashboard_type_checks_against_grafana_schema(tmp_path: Path) -> None:
    checked = type_check_dashboard(dashboard(), tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("breakage", "complaint"),
    [
        (lambda b: b["panels"][1].__setitem__("gridpos", {}), "'\"gridpos\"' does not exist"),
        (lambda b: b.pop("schemaVersion"), "Property 'schemaVersion' is missing"),
        (
            lambda b: b["panels"][1]["fieldConfig"]["defaults"]["thresholds"].__setitem__(
                "mode", "absolut"
            ),
            '"absolut"',
        ),
        (lambda b: b["panels"][0].__setitem__("type", "rows"), "does not exist"),
    ],
)
def test_the_type_check_rejects_a_broken_dashboard(
    tmp_path: Path, breakage: Any, complaint: str
) -> None:
    broken = copy.deepcopy(dashboard())
    breakage(broken)
    checked = type_check_dashboard(broken, tmp_path)
    assert checked.returncode != 0
    assert complaint in checked.stdout


def check_queries_with_promtool(exprs: list[tuple[str, str]], tmp_path: Path) -> Any:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
                    for i, (_, expr) in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    return promtool("check", "rules", str(path))


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    exprs = queries(dashboard())
    assert len(exprs) >= 25
    checked = check_queries_with_promtool(exprs, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout


def test_promtool_rejects_a_broken_query(tmp_path: Path) -> None:
    checked = check_queries_with_promtool(
        [("broken", "sum by (view (rate(featurewell_served_rows_total[5m]))")], tmp_path
    )
    assert checked.returncode != 0


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def stream_metrics_text(cluster: Any) -> str:
    """What a real `featurewell stream` runner exports (on a throwaway source)."""
    import asyncio
    import uuid

    from prometheus_client import generate_latest

    from featurewell.compute.metrics import stream_registry
    from featurewell.definitions import Registry
    from tests.test_deadletters import definitions, member
    from tests.test_stream import _runner, close

    source, view = definitions(f"watches_{uuid.uuid4().hex[:6]}")
    loop = asyncio.new_event_loop()
    runner = loop.run_until_complete(_runner(cluster, Registry.build([member, view]), source))
    try:
        return generate_latest(stream_registry(runner)).decode()
    finally:
        close(loop, runner)


def skew_metrics_text() -> str:
    """What `featurewell skew --every` exports (the gauges of its latest run)."""
    from prometheus_client import generate_latest

    from featurewell.offline.skew_report import SkewCollector, skew_registry

    return generate_latest(skew_registry(SkewCollector())).decode()


def test_every_metric_named_is_exported_by_a_real_server(
    cluster: Any, ids: Ids, tmp_path: Path
) -> None:
    named = {family(m) for _, expr in queries(dashboard()) for m in METRIC.findall(expr)}
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            named |= {family(m) for m in METRIC.findall(rule["expr"])}
    # With the served-feature log on, so its families (and their alert's) are there too.
    settings = make_settings(
        cluster, metrics_port=0, served_log_rate=0.01, offline_dir=str(tmp_path)
    )
    running = ServerThread(settings, defs.registry())
    try:
        with FeatureClient(running.address, timeout=5.0) as client:
            defs.write_profiles(client, [ids("m")], ages=[3])
            client.get_features(["profile:age"], entities={"user_id": [ids("m")]})
        assert running.server.metrics_port is not None
        text = metrics_text(running.server.metrics_port)
    finally:
        running.stop()
    text += stream_metrics_text(cluster)  # `featurewell stream` exports the stream's
    text += skew_metrics_text()  # and `featurewell skew --every` the skew gauges
    # Families a server declares, whether or not a labelled child has a sample yet.
    exported = {
        family(name)
        for name in re.findall(r"^# TYPE (featurewell_[a-z0-9_]+) ", text, re.MULTILINE)
    }
    assert named - exported == set(), "the dashboard or the rules name metrics no server exports"
    assert len(named) >= 25


PIPELINE_METRIC = re.compile(r"\b(?:featurewell|kube)_[a-z0-9_]+\b")


def unshown_pipeline_alerts(board: dict[str, Any]) -> dict[str, set[str]]:
    """Per pipeline alert (and the stream's dead letters), the metrics it reads that no panel
    shows: whoever is paged finds each alert's series on the dashboard."""
    shown = {m for _, expr in queries(board) for m in PIPELINE_METRIC.findall(expr)}
    rules = yaml.safe_load(RULES.read_text())["groups"]
    alerts = [
        rule
        for group in rules
        for rule in group["rules"]
        if group["name"] == "featurewell.pipelines"
        or rule.get("alert", "").startswith("FeaturewellStream")
    ]
    assert len(alerts) >= 5
    missing = {a["alert"]: set(PIPELINE_METRIC.findall(a["expr"])) - shown for a in alerts}
    return {alert: metrics for alert, metrics in missing.items() if metrics}


def test_every_pipeline_alert_has_its_panels() -> None:
    assert unshown_pipeline_alerts(dashboard()) == {}
    # The check fails when a panel goes: without the backlog panel, two alerts lose a series.
    board = copy.deepcopy(dashboard())
    board["panels"] = [p for p in board["panels"] if p["title"] != "Stream unread entries"]
    missing = unshown_pipeline_alerts(board)
    assert set(missing) == {"FeaturewellStreamBehind", "FeaturewellStreamStopped"}
