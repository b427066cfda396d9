"""The web UI in a real headless Chromium (Debian's `chromium`, driven by Playwright) against a
real demo stack: `featurewell demo` (cluster, server, stream, sample data) with ordinary
traffic and one promote, and `featurewell ui` over it. Pages load, filters filter, charts draw
series, the view page lists versions, history and callers. The screenshots in docs/ are taken
here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_demo_metrics import CALLER, DemoStack, demo_stack, ordinary_traffic
from tests.tools import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.redis]

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# `make screenshots` sets FEATUREWELL_SCREENSHOTS=docs, so the pictures in docs/ come from
# here; other runs keep theirs in a temporary folder and leave the tree as it was.
SHOTS = Path(os.environ.get("FEATUREWELL_SCREENSHOTS") or tempfile.mkdtemp(prefix="fw-ui-"))
FEATUREWELL = (sys.executable, "-m", "featurewell.cli")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with demo_stack(tmp_path_factory.mktemp("ui-demo") / "work") as running:
        # A promote and its rollback, for the view page's history. (v1 does not stay promoted:
        # the user_item_affinity transform needs v2's 32-dim taste.)
        for verb, version in (("promote", ["--version", "1"]), ("rollback", [])):
            view = ["--view", "user_genre_preferences", *version]
            done = subprocess.run(
                [*FEATUREWELL, verb, "--repo", str(running.repo), "--redis", running.seeds, *view],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        yield running


@pytest.fixture(scope="module")
def ui(stack: DemoStack) -> Iterator[str]:
    """`featurewell ui` over the demo, scraping every second; its base URL."""
    process = subprocess.Popen(
        [
            *FEATUREWELL,
            *("ui", "--repo", str(stack.repo), "--redis", stack.seeds, "--port", "0"),
            *("--metrics-url", stack.metrics_url, "--scrape-s", "1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"serving on (http://\S+)/", line)
        assert found is not None, line + process.stdout.read()
        yield found.group(1)
    finally:
        process.terminate()
        process.communicate(timeout=30)  # closes the pipe too


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium is missing: apt-get install chromium (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert errors == [], errors  # no script failed on any page


def rows(page: Any) -> list[str]:
    return [
        str(ref) for ref in page.locator("tr.entry").evaluate_all("r => r.map(e => e.dataset.ref)")
    ]


def test_catalog_loads_and_filters_filter(page: Any, ui: str) -> None:
    page.goto(ui + "/")
    everything = rows(page)
    assert "user_activity@v1" in everything
    assert len(everything) == 7  # the example: 6 views, one of them in two versions
    page.select_option("#filter-entity", "item")
    wait_until(lambda: rows(page) != everything, 10, "the entity filter to swap the rows")
    items = rows(page)
    assert items
    assert all(ref.split("@")[0].startswith("item") for ref in items), items
    page.select_option("#filter-entity", "")
    page.select_option("#filter-status", "superseded")  # v1: older than the default v2
    wait_until(lambda: rows(page) == ["user_genre_preferences@v1"], 10, "the status filter")
    page.select_option("#filter-status", "")
    page.fill("#q", "popularity")
    wait_until(lambda: rows(page) == ["item_stats@v1"], 10, "the search to narrow the rows")
    page.fill("#q", "")
    page.select_option("#filter-team", "recommendations")
    wait_until(lambda: rows(page) == ["user_activity@v1"], 10, "the team filter")
    page.select_option("#filter-team", "")
    wait_until(lambda: rows(page) == everything, 10, "clearing the filters to show all again")
    page.screenshot(path=str(SHOTS / "ui-catalog.png"), full_page=True)


def test_view_page_lists_versions_history_lineage_and_callers(
    page: Any, ui: str, stack: DemoStack
) -> None:
    ordinary_traffic(stack, rounds=20)

    def read_by_caller() -> bool:
        page.goto(ui + "/views/user_activity@v1")
        return CALLER in page.locator("tr.caller td:first-child").all_inner_texts()

    wait_until(read_by_caller, 20, f"the view page to list {CALLER} (flushed every second)")
    assert "ranker" in page.locator("#callers").inner_text()
    assert re.fullmatch(r"[0-9a-f]{16}", page.locator("#definition").inner_text())
    assert "computed from event source 'watches'" in page.locator("#source").inner_text()
    # Defaults as people write them, not numpy reprs.
    features = page.locator("#features").inner_text()
    assert "np.float32" not in features
    assert "array(" not in features
    page.goto(ui + "/views/user_genre_preferences@v1")
    versions = page.locator("tr.version").all_inner_texts()
    assert len(versions) == 2
    assert "superseded" in versions[0]
    assert "active" in versions[1]
    history = page.locator("#history tr").all_inner_texts()
    assert len(history) == 2
    assert "rollback" in history[0]  # newest first
    assert "v1 -> v2" in history[0]
    assert "promote" in history[1]
    assert "v2 -> v1" in history[1]
    assert (
        "[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, ... 16 values]"
        in page.locator("#features").inner_text()
    )
    page.goto(ui + "/views/user_genre_preferences@v2")  # the docs' picture: the active one
    page.screenshot(path=str(SHOTS / "ui-view.png"), full_page=True)


DRAWN = """id => {
  const chart = window.featurewellCharts[id];
  if (!chart) return {series: 0, points: 0, inked: 0};
  const metas = chart.data.datasets.map((_, i) => chart.getDatasetMeta(i));
  const points = metas.reduce((n, m) => n + m.data.length, 0);
  const area = chart.chartArea;
  const pixels = chart.ctx.getImageData(area.left, area.top, area.width, area.height).data;
  let inked = 0;  // coloured (not grey, not blank) pixels inside the plot: drawn series
  for (let i = 0; i < pixels.length; i += 4) {
    const [r, g, b, a] = [pixels[i], pixels[i + 1], pixels[i + 2], pixels[i + 3]];
    if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 40) inked++;
  }
  return {series: chart.data.datasets.length, points, inked};
}"""


def test_health_charts_draw_series_from_live_metrics(page: Any, ui: str, stack: DemoStack) -> None:
    page.goto(ui + "/health")
    for _ in range(3):  # calls across several scrapes: latency points over time
        ordinary_traffic(stack, rounds=40)
        page.wait_for_timeout(1200)

    def drawn(chart: str) -> dict[str, int] | None:
        page.reload()
        page.wait_for_function(f"window.featurewellCharts && window.featurewellCharts['{chart}']")
        found: dict[str, int] = page.evaluate(DRAWN, chart)
        return found if found["points"] and found["inked"] > 50 else None

    wait_until(lambda: drawn("chart-latency"), 30, "the latency chart to draw p50/p99 lines")
    wait_until(lambda: drawn("chart-served"), 30, "the served-statuses chart to draw bars")
    wait_until(lambda: drawn("chart-freshness"), 30, "the freshness chart to draw bars")
    # Drift: the demo compares every 15 s against its baselines.
    wait_until(lambda: drawn("chart-drift"), 60, "the drift chart to draw PSI bars")
    assert "GetFeatures" in page.locator("#latency").inner_text()
    assert "primary_genre" in page.locator("#drift").inner_text()
    assert "within SLA" in page.locator("#freshness").inner_text()
    page.screenshot(path=str(SHOTS / "ui-health.png"), full_page=True)


def test_the_chart_check_fails_on_an_empty_chart(page: Any, ui: str) -> None:
    """The check above, shown failing: the same measure on a chart with no data is 0."""
    page.goto(ui + "/health")
    page.wait_for_function("window.featurewellCharts && window.featurewellCharts['chart-drift']")
    page.evaluate(
        "() => { const c = window.featurewellCharts['chart-drift'];"
        " c.data = {labels: [], datasets: []}; c.update('none'); }"
    )
    assert page.evaluate(DRAWN, "chart-drift") == {"series": 0, "points": 0, "inked": 0}
