"""Drift arithmetic and the two commands around it: `featurewell baseline` (from training
data) and `featurewell drift` (a report, offline from Parquet or from a server's /metrics)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurewell.definitions import Entity, Feature, FeatureView, Float64, Int64, Registry, String
from featurewell.definitions import Stats as Expected
from featurewell.telemetry import baseline
from featurewell.telemetry.drift import Reservoir, compare, psi, shares_of

ROOT = Path(__file__).resolve().parents[1]
rng = np.random.default_rng(11)
shop = Entity("shop", join_keys={"shop_id": String})
sales = FeatureView(
    "sales",
    entity=shop,
    features=[
        Feature("revenue", Float64, expected=Expected(mean=50.0, std=5.0)),
        Feature(
            "region", String, default="?", expected=Expected(categories={"eu": 0.5, "us": 0.4})
        ),
        Feature("opened_ts", Int64),
    ],
)


def reservoir_of(values: np.ndarray, size: int = 5000) -> Reservoir:
    reservoir = Reservoir(size, np.random.default_rng(0))
    reservoir.add(values)
    return reservoir


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    base = baseline.from_values("sales@v1", "revenue", rng.normal(50, 5, 20_000))
    same = compare(base, reservoir_of(rng.normal(50, 5, 5000)))
    moved = compare(base, reservoir_of(rng.normal(56, 5, 5000)))
    assert same.psi < 0.02
    assert moved.psi > 0.25
    assert moved.mean_shift == pytest.approx(1.2, abs=0.1)
    assert moved.std_ratio == pytest.approx(1.0, abs=0.05)
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0


def test_stats_baseline_is_deciles_of_the_normal() -> None:
    base = baseline.from_stats(sales, sales.features[0])
    assert base is not None
    assert len(base.edges) == 9
    assert base.edges[4] == pytest.approx(50.0)
    assert base.edges[8] == pytest.approx(50 + 1.2816 * 5, abs=1e-3)  # the 90th percentile
    # Values drawn from that normal land evenly in its bins.
    shares = shares_of(base, rng.normal(50, 5, 50_000))
    assert np.allclose(shares, 0.1, atol=0.01)


def test_categorical_baseline_counts_other_values_together() -> None:
    base = baseline.from_stats(sales, sales.features[1])
    assert base is not None
    assert base.categories == ("eu", "us")
    assert base.shares == pytest.approx((0.5, 0.4, 0.1))
    assert shares_of(base, np.array(["eu", "jp", "br", "us"])).tolist() == [0.25, 0.25, 0.5]
    calm = compare(base, reservoir_of(rng.choice(["eu", "us", "jp"], 4000, p=[0.5, 0.4, 0.1])))
    shifted = compare(base, reservoir_of(rng.choice(["eu", "us", "jp"], 4000, p=[0.2, 0.3, 0.5])))
    assert calm.psi < 0.02
    assert shifted.psi > 0.25


def test_reservoir_keeps_a_uniform_bounded_sample() -> None:
    reservoir = Reservoir(1000, np.random.default_rng(1))
    for start in range(0, 100_000, 500):  # a stream in call-sized pieces
        reservoir.add(np.arange(start, start + 500, dtype=np.float64))
    kept = reservoir.values()
    assert len(kept) == 1000
    assert reservoir.seen == 100_000
    # Uniform over the stream: each tenth of it holds about a tenth of the sample.
    per_tenth = np.bincount((kept // 10_000).astype(int), minlength=10)
    assert per_tenth.min() > 60
    assert per_tenth.max() < 140


def test_training_nulls_are_the_expected_default_rate() -> None:
    table = pa.table(
        {
            "revenue": pa.array([1.0, None, 3.0, None], pa.float64()),
            "region": ["eu", "us", None, "eu"],
            "opened_ts": [1, 2, 3, 4],
        }
    )
    registry = baseline_registry()
    found = {
        b.feature: b
        for b in baseline.compute(registry, {"sales@v1": table}, exclude=["sales:opened_ts"])
    }
    assert set(found) == {"revenue", "region"}
    assert found["revenue"].default_rate == 0.5
    assert found["revenue"].rows == 2
    assert found["region"].default_rate == 0.25


def baseline_registry() -> Registry:
    return Registry.build([shop, sales])


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurewell.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_baseline_then_drift_commands(tmp_path: Path) -> None:
    repo = tmp_path / "repo.py"
    repo.write_text(
        "from featurewell.definitions import Entity, Feature, FeatureView, Float64, String\n"
        "shop = Entity('shop', join_keys={'shop_id': String})\n"
        "sales = FeatureView('sales', entity=shop, features=[Feature('revenue', Float64),\n"
        "                    Feature('region', String)])\n"
    )
    ids = [f"s{i}" for i in range(4000)]
    training, today, shifted = (tmp_path / f"{n}.parquet" for n in ("train", "today", "shifted"))
    for path, mean, regions in (
        (training, 50, [0.5, 0.5]),
        (today, 50, [0.5, 0.5]),
        (shifted, 58, [0.1, 0.9]),
    ):
        revenue = rng.normal(mean, 5, len(ids))
        region = rng.choice(["eu", "us"], len(ids), p=regions)
        pq.write_table(pa.table({"shop_id": ids, "revenue": revenue, "region": region}), path)
    made = run(
        "baseline",
        "--repo",
        str(repo),
        "--data",
        f"sales={training}",
        "--out",
        "baseline.json",
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    assert "sales@v1:revenue: 4,000 values" in made.stdout
    check = ("drift", "--repo", str(repo), "--baseline", "baseline.json", "--fail-above", "0.25")
    calm = run(*check, "--data", f"sales={today}", cwd=tmp_path)
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert "sales@v1:revenue" in calm.stdout
    assert "major drift" not in calm.stdout
    drifted = run(*check, "--data", f"sales={shifted}", cwd=tmp_path)
    assert drifted.returncode == 1
    assert drifted.stdout.count("major drift") == 2  # revenue and region
    bad = run("drift", "--repo", str(repo), "--data", "sales", cwd=tmp_path)
    assert bad.returncode != 0
    assert "VIEW=PARQUET" in bad.stderr


def test_drift_report_from_a_server_that_is_not_there() -> None:
    gone = run("drift", "--metrics-url", "http://127.0.0.1:9/metrics", cwd=ROOT)
    assert gone.returncode != 0
    assert "cannot read http://127.0.0.1:9/metrics" in gone.stderr


def test_served_nulls_and_defaults_count_as_the_default_rate_not_as_drift() -> None:
    from prometheus_client import CollectorRegistry

    from featurewell.engine.calls import FeatureResult, ServedView
    from featurewell.store.codec import DecodedRows
    from featurewell.telemetry.drift import DriftMonitor
    from featurewell.values import NOT_FOUND, PRESENT

    monitor = DriftMonitor(CollectorRegistry(), sample_rate=1.0, reservoir_size=1000, seed=5)
    monitor.use(baseline.for_registry(baseline_registry()))
    revenue = rng.normal(50, 5, 400)
    revenue[:100] = np.nan  # a pipeline wrote NaNs for a quarter of the rows
    statuses = np.full(400, PRESENT, np.uint8)
    statuses[100:140] = NOT_FOUND  # and 40 shops are unknown to the store (defaults)
    revenue[100:140] = 0.0  # what the default looks like: must not be binned
    rows = DecodedRows(np.ones(400, bool), np.zeros(400, np.int64), {"revenue": revenue})
    monitor.observe(FeatureResult(400, [], served=[ServedView(sales, rows, statuses)]))
    (report,) = monitor.evaluate()
    assert report.samples == 260
    assert report.default_rate == pytest.approx(140 / 400)
    assert report.psi < 0.1  # the values that remain are the usual ones
