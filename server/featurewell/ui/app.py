"""`featurewell ui`: the read-only web UI, a Starlette app of server-rendered pages (Jinja2)
that htmx refreshes in place: the catalog (search and filters), a page per view version,
and live health from the servers' /metrics with Chart.js charts. No write path exists.

Pages ask Redis for what changes while the UI runs (promoted defaults, their history, callers)
on each request; the definitions are the repo's, loaded once at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from featurewell.app import connected
from featurewell.definitions import Registry
from featurewell.errors import FeaturewellError, Unauthenticated
from featurewell.settings import AuthSettings, RedisSettings
from featurewell.store.online import OnlineStore
from featurewell.store.versions import history, promoted
from featurewell.telemetry import consumers
from featurewell.ui import catalog, health
from featurewell.ui.access import COOKIE, SESSION_S, Gate, Viewer

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["ago"] = lambda s: _ago(s)


@dataclass
class UiState:
    registry: Registry
    gate: Gate
    scraper: health.Scraper
    store: OnlineStore | None = None


def build(
    registry: Registry,
    redis: RedisSettings,
    auth: AuthSettings,
    metrics_urls: list[str],
    scrape_s: float = 5.0,
) -> Starlette:
    state = UiState(registry, Gate(auth), health.Scraper(metrics_urls, scrape_s))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with connected(redis) as store:
            state.store = store
            scraping = asyncio.ensure_future(state.scraper.run())
            try:
                yield
            finally:
                scraping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scraping

    app = Starlette(
        routes=[
            Route("/", _page(state, _catalog)),
            Route("/catalog/rows", _page(state, _rows)),
            Route("/views/{ref}", _page(state, _view)),
            Route("/health", _page(state, _health)),
            Route("/health/panel", _page(state, _panel)),
            Route("/login", _login(state), methods=["GET", "POST"]),
            Route("/logout", _logout(state), methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.ui = state
    return app


def _page(state: UiState, handler: Any) -> Any:
    """A page behind the gate: who is looking decides what it shows. Not signed in (when the
    API requires it): the login form, or 401 for htmx and scripts."""

    async def endpoint(request: Request) -> Response:
        try:
            principal = state.gate.principal(
                request.headers.get("authorization"), request.cookies.get(COOKIE)
            )
            viewer = state.gate.viewer(state.registry, principal)
        except Unauthenticated as exc:
            if request.headers.get("authorization") or request.headers.get("hx-request"):
                return Response(str(exc), status_code=401, media_type="text/plain")
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        try:
            return await handler(state, request, viewer)  # type: ignore[no-any-return]
        except FeaturewellError as exc:  # Redis down or refusing: say so, keep serving
            return _render(request, viewer, "error.html", {"error": str(exc)}, status=503)

    return endpoint


async def _catalog(state: UiState, request: Request, viewer: Viewer) -> Response:
    found = catalog.entries(state.registry, await _promoted(state), viewer.can_read)
    chosen = _chosen(request)
    return _render(
        request,
        viewer,
        "catalog.html",
        {
            "entries": [e for e in found if e.matches(chosen)],
            "total": len(found),
            "chosen": chosen,
            "choices": catalog.choices(found),
        },
    )


async def _rows(state: UiState, request: Request, viewer: Viewer) -> Response:
    found = catalog.entries(state.registry, await _promoted(state), viewer.can_read)
    chosen = _chosen(request)
    shown = [e for e in found if e.matches(chosen)]
    return _render(request, viewer, "_rows.html", {"entries": shown, "total": len(found)})


async def _view(state: UiState, request: Request, viewer: Viewer) -> Response:
    store = _store(state)
    chosen = await _promoted(state)
    found = catalog.entries(state.registry, chosen, viewer.can_read)
    page = catalog.view_page(
        state.registry,
        found,
        request.path_params["ref"],
        chosen,
        await history(store.cluster),
        await consumers.read(store.cluster),
    )
    if page is None:
        message = f"no view version {request.path_params['ref']!r} that you may read"
        return _render(request, viewer, "error.html", {"error": message}, status=404)
    return _render(request, viewer, "view.html", {"page": page, "span": catalog.span})


async def _health(state: UiState, request: Request, viewer: Viewer) -> Response:
    return _render(request, viewer, "health.html", _health_context(state, viewer))


async def _panel(state: UiState, request: Request, viewer: Viewer) -> Response:
    return _render(request, viewer, "_health_panel.html", _health_context(state, viewer))


def _health_context(state: UiState, viewer: Viewer) -> dict[str, Any]:
    report = health.report(list(state.scraper.history), viewer.visible)
    charts = {
        "latency": report["latency_series"],
        "served": report["served"],
        "statuses": list(health.STATUS_ORDER),
        "drift": report["drift"],
        "freshness": report["freshness"],
    }
    return {
        "report": report,
        "urls": state.scraper.urls,
        "statuses": health.STATUS_ORDER,
        # Inside a <script> element: no "<" may close it early.
        "charts": json.dumps(_clean(charts), allow_nan=False).replace("<", "\\u003c"),
    }


def _login(state: UiState) -> Any:
    async def endpoint(request: Request) -> Response:
        target = request.query_params.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # only this UI's own pages: no open redirect
        error = ""
        if request.method == "POST":
            form = await request.form()
            try:
                session = state.gate.sign_in(str(form.get("token", "")))
            except Unauthenticated as exc:
                error = str(exc)
            else:
                answer = RedirectResponse(target, status_code=303)
                answer.set_cookie(
                    COOKIE, session, max_age=SESSION_S, httponly=True, samesite="strict"
                )
                return answer
        context = {"error": error, "next": target}
        viewer = Viewer(None, None, None)
        return _render(request, viewer, "login.html", context, status=401 if error else 200)

    return endpoint


def _logout(state: UiState) -> Any:
    async def endpoint(request: Request) -> Response:
        state.gate.sign_out(request.cookies.get(COOKIE))
        answer = RedirectResponse("/login", status_code=303)
        answer.delete_cookie(COOKIE)
        return answer

    return endpoint


def _render(
    request: Request, viewer: Viewer, name: str, context: dict[str, Any], status: int = 200
) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, {"viewer": viewer, **context}, status_code=status
    )


def _chosen(request: Request) -> dict[str, str]:
    return {name: request.query_params.get(name, "")[:200] for name in catalog.FILTERS}


async def _promoted(state: UiState) -> dict[str, int]:
    return await promoted(_store(state).cluster)


def _store(state: UiState) -> OnlineStore:
    assert state.store is not None, "the UI's store opens with the app (lifespan)"
    return state.store


def _clean(value: Any) -> Any:
    """`value` with NaN and infinities as null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _ago(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "never"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
