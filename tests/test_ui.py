"""The web UI without a browser: its pages over HTTP (Starlette's test client) against a real
Redis Cluster, under the same bearer tokens and Access policies as the API; and the pieces the
pages are made of (readable defaults, filters, latency quantiles from buckets)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from featurewell.devcluster import LocalCluster
from featurewell.errors import Unauthenticated
from featurewell.settings import AuthSettings
from featurewell.telemetry.metrics import ServerMetrics
from featurewell.ui import catalog, health
from featurewell.ui.access import COOKIE, Gate
from featurewell.ui.app import build
from tests import auth_tools, defs_catalog
from tests.auth_tools import AUDITOR, RANKER, WRITER
from tests.tools import make_settings

TOKENS = {"tok-ranker": RANKER, "tok-writer": WRITER, "tok-auditor": AUDITOR}


@pytest.fixture(scope="module")
def enforced(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The UI over tests/auth_tools.py's definitions, with auth required: `secret` is readable
    by team ranking (RANKER) and AUDITOR, its `ssn` by AUDITOR only."""
    tokens = tmp_path_factory.mktemp("ui-auth") / "tokens"
    auth_tools.write_tokens(tokens, TOKENS)
    auth = AuthSettings(required=True, tokens_file=str(tokens))
    app = build(auth_tools.registry(), make_settings(cluster).redis, auth, [], scrape_s=60)
    with TestClient(app, follow_redirects=False) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def shown(page: str) -> set[str]:
    """The view versions a catalog page lists."""
    return {part.split('"')[0] for part in page.split('class="entry" data-ref="')[1:]}


def test_anonymous_browsers_are_sent_to_sign_in_and_scripts_refused(enforced: TestClient) -> None:
    answer = enforced.get("/views/secret@v1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=/views/secret%40v1"
    assert enforced.get("/", headers={"hx-request": "true"}).status_code == 401
    refused = enforced.get("/", headers=bearer("not-a-token"))
    assert refused.status_code == 401
    assert "not known to this server" in refused.text


def test_each_principal_sees_what_the_api_lets_it_read(enforced: TestClient) -> None:
    ranker = enforced.get("/", headers=bearer("tok-ranker")).text
    writer = enforced.get("/", headers=bearer("tok-writer")).text
    assert "secret@v1" in shown(ranker)
    assert "secret@v1" not in shown(writer)
    assert "profile@v2" in shown(writer)  # the repo's default policy: any signed-in principal
    # A feature the principal may not read is not shown, on the catalog or the view page.
    ranker_view = enforced.get("/views/secret@v1", headers=bearer("tok-ranker")).text
    auditor_view = enforced.get("/views/secret@v1", headers=bearer("tok-auditor")).text
    assert "<td>score</td>" in ranker_view
    assert "<td>ssn</td>" not in ranker_view
    assert "<td>ssn</td>" in auditor_view
    hidden = enforced.get("/views/secret@v1", headers=bearer("tok-writer"))
    assert hidden.status_code == 404
    assert "that you may read" in hidden.text


def test_the_login_form_keeps_a_session(enforced: TestClient) -> None:
    wrong = enforced.post("/login", data={"token": "nope"})
    assert wrong.status_code == 401
    assert "not known to this server" in wrong.text
    signed = enforced.post("/login?next=/views/profile@v2", data={"token": "tok-writer"})
    assert signed.status_code == 303
    assert signed.headers["location"] == "/views/profile@v2"
    session = signed.cookies[COOKIE]
    assert "httponly" in signed.headers["set-cookie"].lower()
    enforced.cookies.clear()  # the client's jar would keep it for the other tests
    cookie = {"cookie": f"{COOKIE}={session}"}
    page = enforced.get("/", headers=cookie)
    assert page.status_code == 200
    assert f'<b id="principal">{WRITER}</b>' in page.text
    assert "secret@v1" not in shown(page.text)
    off_site = enforced.post("/login?next=//evil.example/", data={"token": "tok-writer"})
    assert off_site.headers["location"] == "/"
    enforced.post("/logout", headers=cookie)
    enforced.cookies.clear()
    assert enforced.get("/", headers=cookie).status_code == 303  # the session is gone


def test_catalog_filters(enforced: TestClient) -> None:
    everything = shown(enforced.get("/catalog/rows", headers=bearer("tok-auditor")).text)
    assert {"secret@v1", "profile@v2", "click_counts@v1"} <= everything
    by_query = shown(enforced.get("/catalog/rows?q=ssn", headers=bearer("tok-auditor")).text)
    assert by_query == {"secret@v1"}
    # The ranker may not read ssn: searching for it finds nothing.
    assert shown(enforced.get("/catalog/rows?q=ssn", headers=bearer("tok-ranker")).text) == set()
    missing = enforced.get("/catalog/rows?status=deprecated", headers=bearer("tok-auditor"))
    assert "no view matches" in missing.text


def test_defaults_are_printed_readably() -> None:
    assert catalog.readable(np.float32(0.0)) == "0.0"
    assert catalog.readable(np.int64(-1)) == "-1"
    assert catalog.readable("unknown") == "'unknown'"
    assert catalog.readable(np.zeros(3, np.float32)) == "[0.0, 0.0, 0.0]"
    assert catalog.readable(np.zeros(16, np.float32)) == (
        "[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, ... 16 values]"
    )
    assert catalog.readable(np.float64("nan")) == "nan"


def test_entry_filters_match_on_every_field() -> None:
    entry = catalog.Entry(
        "v", 2, "v@v2", "staging", "me@x", "recs", {"team": "recs"}, "user", "d", None, []
    )
    assert entry.matches({})
    assert entry.matches({"status": "staging", "tag": "team", "owner": "me@x", "q": "V@V2"})
    assert entry.matches({"tag": "team=recs", "entity": "user", "team": "recs"})
    for miss in ({"status": "active"}, {"tag": "team=ads"}, {"entity": "item"}, {"q": "zzz"}):
        assert not entry.matches(miss), miss


def test_latency_quantiles_interpolate_inside_buckets_as_prometheus_does() -> None:
    buckets = [(0.001, 50.0), (0.002, 90.0), (0.005, 100.0), (float("inf"), 100.0)]
    q = health.quantiles(buckets)
    assert q["calls"] == 100
    assert q["p50_ms"] == pytest.approx(1.0)  # the 50th call is the first bucket's last
    assert q["p99_ms"] == pytest.approx(2.0 + 3.0 * 0.9)  # 9 of the last bucket's 10
    assert health.quantiles([]) == {"calls": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}


def test_health_reads_a_real_server_exposition() -> None:
    """The parser and the report against what ServerMetrics exports, views filtered."""
    from prometheus_client import generate_latest

    from tests import defs

    metrics = ServerMetrics()
    metrics.use(defs.registry())
    metrics.request_seconds.labels("GetFeatures", "single").observe(0.0004)
    metrics.served_rows.labels("profile@v2", "present").inc(7)
    samples = health.parse(generate_latest(metrics.registry).decode())
    snapshot = health.Snapshot(1.0, health.merge([samples, samples]), ())
    report = health.report([snapshot], lambda view, feature: view == "profile@v2")
    assert report["served"]["profile@v2"]["present"] == 14  # two servers, summed
    assert set(report["served"]) == {"profile@v2"}  # the others are not visible
    assert report["latency"]["GetFeatures"]["calls"] == 2
    assert 0.25 < report["latency"]["GetFeatures"]["p50_ms"] <= 0.5


def test_static_files_are_the_checked_in_builds() -> None:
    static = Path(catalog.__file__).parent / "static"
    assert "Chart.js v4.6.1" in (static / "chart.umd.min.js").read_text()[:300]
    assert "htmx" in (static / "htmx.min.js").read_text()[:2000]


def test_health_shows_only_the_views_and_features_a_principal_may_read(
    enforced: TestClient,
) -> None:
    state = enforced.app.state.ui  # type: ignore[attr-defined]
    writer = state.gate.viewer(state.registry, WRITER).visible
    ranker = state.gate.viewer(state.registry, RANKER).visible
    auditor = state.gate.viewer(state.registry, AUDITOR).visible
    assert not writer("secret@v1", None)
    assert writer("profile@v2", "age")
    assert ranker("secret@v1", "score")
    assert not ranker("secret@v1", "ssn")
    assert auditor("secret@v1", "ssn")
    assert not ranker("nope@v1", None)


def test_a_jwt_signs_in_as_its_subject_until_it_is_refused(tmp_path: Path) -> None:
    """The JWKS path of the API's Authenticator: a valid JWT names its `sub`; an expired one,
    or one for another audience, is refused."""
    jwks = auth_tools.make_jwks(tmp_path)
    gate = Gate(
        AuthSettings(
            required=True,
            jwks_file=str(jwks.path),
            jwt_issuer=auth_tools.ISSUER,
            jwt_audience=auth_tools.AUDIENCE,
        )
    )
    session = gate.sign_in(jwks.token(RANKER))
    assert gate.principal(None, session) == RANKER
    assert gate.principal(f"Bearer {jwks.token(AUDITOR)}", None) == AUDITOR
    for bad in (jwks.token(RANKER, expires_in=-60), jwks.token(RANKER, aud="another")):
        with pytest.raises(Unauthenticated):
            gate.sign_in(bad)
    with pytest.raises(Unauthenticated, match="Bearer <token>"):
        gate.principal("Basic abc", None)
    with pytest.raises(Unauthenticated, match="sign in"):
        gate.principal(None, "no-such-session")


def test_a_view_marked_deprecated_is_listed_as_deprecated() -> None:
    """The catalog follows the definitions' `deprecated=` (the API's DEPRECATED status)."""
    registry = defs_catalog.registry()
    found = {e.ref: e.status for e in catalog.entries(registry, {}, None)}
    assert found["cat_ranking@v1"] == "deprecated"
    assert found["cat_ranking@v2"] == "active"
