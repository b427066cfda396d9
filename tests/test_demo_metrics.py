"""The demo's dashboard shows data: after ordinary traffic on the stack `featurewell demo`
starts, every metric the Grafana dashboard queries has samples in /metrics (labelled series
start at 0; the demo serves drift baselines; its `featurewell skew --every` exports the skew
gauges, 0 on a clean demo). `demo_stack` is the stack the UI's browser tests
use too."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from featurewell.client import ClientOptions, FeatureClient
from featurewell.definitions import load_repo
from featurewell.devcluster import free_ports
from featurewell.telemetry.metrics import ServerMetrics
from tests.test_cli import featurewell
from tests.test_dashboard import METRIC, dashboard, family, queries

CALLER = "ranker/3.2"


@dataclass(frozen=True)
class DemoStack:
    address: str
    metrics_url: str
    stream_metrics_url: str
    skew_metrics_url: str
    seeds: str
    repo: Path


@contextmanager
def demo_stack(workdir: Path, **env: str) -> Iterator[DemoStack]:
    """`featurewell demo` (small sample data, its own cluster) until the block ends; callers
    are flushed to Redis every second, so pages see them at once."""
    port, metrics_port = free_ports(2)
    environment = {
        **os.environ,
        "FEATUREWELL_PORT": str(port),
        "FEATUREWELL_METRICS_PORT": str(metrics_port),
        "FEATUREWELL_CONSUMERS_FLUSH_S": "1",
        **env,
    }
    process = featurewell(
        "demo", "--users", "300", "--items", "200", "--workdir", str(workdir), env=environment
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "featurewell ui --repo" in line:  # the summary, up to the web UI's command
                break
        text = "".join(lines)
        assert "Ctrl-C stops it all" in text, text
        seeds = re.search(r"Redis Cluster up: (\S+)", text)
        stream = re.search(r"featurewell stream \(pid \d+\), metrics (\S+)", text)
        skew = re.search(r"featurewell skew \(pid \d+\) every \S+, metrics (\S+/metrics)", text)
        assert seeds is not None, text
        assert stream is not None, text
        assert skew is not None, text
        assert "featurewell skew --repo" in text, text  # the summary's command line
        yield DemoStack(
            f"127.0.0.1:{port}",
            f"http://127.0.0.1:{metrics_port}/metrics",
            stream.group(1),
            skew.group(1),
            seeds.group(1),
            workdir,
        )
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def ordinary_traffic(stack: DemoStack, rounds: int = 150) -> None:
    """What a newcomer does first: single-user reads, ranking calls, a pushed session row."""
    with FeatureClient(stack.address, options=ClientOptions(caller=CALLER)) as client:
        for n in range(rounds):
            client.get_features(
                ["user_activity:*", "item_genre:*"],
                entities={"user_id": [f"u{n:06d}"], "item_id": [f"i{n % 200:06d}"]},
            )
        for n in range(5):
            client.get_features(
                ["user_activity:*", "item_stats:popularity_score", "user_item_affinity:*"],
                entities={"user_id": [f"u{n:06d}"], "item_id": [f"i{k:06d}" for k in range(200)]},
            )
        client.write_features(
            "user_session",
            entities={"user_id": ["u000042"]},
            event_timestamps_us=[time.time_ns() // 1000],
            features={"device": ["tv"], "session_minutes": np.array([12.5], dtype=np.float32)},
        )


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        text: str = answer.read().decode()
        return text


def sampled(text: str) -> set[str]:
    """Families with at least one sample (a declared family with no series draws nothing)."""
    return {family(m.group(1)) for m in re.finditer(r"^(featurewell_[a-z0-9_]+)[{ ]", text, re.M)}


def dashboard_metrics() -> set[str]:
    return {family(m) for _, expr in queries(dashboard()) for m in METRIC.findall(expr)}


@pytest.mark.redis  # the demo starts its own cluster
def test_every_dashboard_metric_has_samples_on_the_demo_after_ordinary_traffic(
    tmp_path: Path,
) -> None:
    named = dashboard_metrics()
    assert len(named) >= 25
    with demo_stack(tmp_path / "demo") as stack:
        assert (stack.repo / "baseline.json").is_file()  # the demo made drift baselines
        ordinary_traffic(stack)
        # The demo compares drift every 15 s, and skew every 15 s over records 10 s old.
        deadline = time.monotonic() + 90
        while True:
            text = fetch(stack.metrics_url) + fetch(stack.stream_metrics_url)
            text += fetch(stack.skew_metrics_url)
            missing = named - sampled(text)
            if not (missing or unskewed(text) is None) or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert missing == set(), f"the dashboard charts metrics with no sample: {sorted(missing)}"
    # Drift against the sample data's baseline (item_genre's genres), not only the Stats.
    assert 'featurewell_feature_drift_psi{feature="primary_genre",view="item_genre@v1"}' in text
    # The skew loop is clean: what was served is what training would hold, for every feature
    # the traffic asked for (stream-computed, Parquet-sourced, a transform over a user's and an
    # item's views), compared in earnest.
    gauges = [line for line in text.splitlines() if line.startswith("featurewell_skew_")]
    skew = unskewed(text)
    assert skew is not None, "\n".join(gauges)
    ratios, compared = skew
    assert {labels: ratio for labels, ratio in ratios.items() if ratio} == {}, "\n".join(gauges)
    assert sum(compared.values()) >= 150, compared


def unskewed(text: str) -> tuple[dict[str, float], dict[str, float]] | None:
    """The skew gauges (ratio, compared rows) by labels, once a run compared the features
    `ordinary_traffic` reads; None before."""
    ratios, compared = (
        {k: float(v) for k, v in re.findall(rf"^{name}(\{{[^}}]*\}}) (\S+)$", text, re.M)}
        for name in ("featurewell_skew_mismatch_ratio", "featurewell_skew_compared_rows")
    )
    for feature in ("watch_count_7d", "primary_genre", "popularity_score", "genre_affinity"):
        if not any(f'feature="{feature}"' in k and v for k, v in compared.items()):
            return None
    return ratios, compared


def test_labelled_families_start_at_zero_for_every_view() -> None:
    """Without the demo: a server's families have their known series at 0 from the start."""
    from prometheus_client import generate_latest

    from featurewell.demo import example_repo

    registry = load_repo(str(example_repo()))
    metrics = ServerMetrics()
    metrics.use(registry)
    text = generate_latest(metrics.registry).decode()
    for view in registry.views.values():
        for line in (
            f'featurewell_fallback_rows_total{{reason="circuit_open",source="default",'
            f'view="{view.ref}"}} 0.0',
            f'featurewell_written_rows_total{{outcome="skipped_older",view="{view.ref}"}} 0.0',
            f'featurewell_served_rows_total{{status="fallback",view="{view.ref}"}} 0.0',
        ):
            assert line in text
    assert 'featurewell_shed_calls_total{method="GetFeatures",reason="max_in_flight"} 0.0' in text
    assert 'featurewell_reloads_total{result="failed"} 0.0' in text
