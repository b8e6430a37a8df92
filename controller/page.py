"""The operator page: `/` on the controller's port, its assets, and the data it polls.

The page (controller/static: HTML, one script, one stylesheet, and Chart.js vendored from the
npm registry with its licence) shows the split, each variant's live traffic, the rollout and
the last changes, and acts through the admin API with the token the operator types in. What it
polls, `GET /api/overview`, is open like `/metrics`: the split, the routers, the aliases, the
rollout and the last changes, read-only, never the token. Every asset is served from here (no
CDN: operators run offline), with a content security policy that allows scripts from this
origin only, so nothing injected into a reason or a message can run.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {
    "/page/page.js": ("page.js", "text/javascript"),
    "/page/page.css": ("page.css", "text/css"),
    "/page/chart.umd.min.js": ("vendor/chart.umd.min.js", "text/javascript"),
}
OVERVIEW_PATH = "/api/overview"
OPEN_PATHS = frozenset({"/", OVERVIEW_PATH, *ASSETS})
"""Answered without the token (the page reads; only the admin API's changes need it)."""
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def index(_request: web.Request) -> web.Response:
    """Serve the page."""
    return _file("index.html", "text/html")


async def asset(request: web.Request) -> web.Response:
    """Serve one of the page's assets."""
    name, kind = ASSETS[request.path]
    return _file(name, kind)


def add_page(app: web.Application) -> None:
    """Serve the page and its assets on `app` (the overview is the admin API's)."""
    app.router.add_get("/", index)
    for path in ASSETS:
        app.router.add_get(path, asset)


def _file(name: str, kind: str) -> web.Response:
    return web.Response(
        body=(STATIC / name).read_bytes(), content_type=kind, charset="utf-8", headers=HEADERS
    )
