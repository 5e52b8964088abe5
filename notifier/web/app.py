"""The dashboard's Starlette application: routes of every page group, templates, errors."""

from __future__ import annotations

import html
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from notifier.errors import NotifierError
from notifier.web import api, jobs, mail, runs, smtp
from notifier.web.config import WebConfig
from notifier.web.pages import render, templates
from notifier.web.security import Guard, SecurityMiddleware
from notifier.web.state import Dashboard

log = logging.getLogger("notifier.web")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
    return render(
        request, "error.html", status_code=exc.status_code, code=exc.status_code, message=exc.detail
    )


async def _notifier_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NotifierError)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": exc.message, "fix": exc.fix}, status_code=500)
    return render(request, "error.html", status_code=500, code=500, message=str(exc))


async def _crash(request: Request, exc: Exception) -> Response:
    # the details go to the log (which never holds a secret: the ledger and settings do not
    # put one in their errors); the page names the class only
    log.error("dashboard error on %s: %s", request.url.path, exc.__class__.__name__)
    return HTMLResponse(
        f"<h1>500</h1><p>Internal error ({html.escape(exc.__class__.__name__)}); "
        "see the log of notifier web / notifier schedule.</p>",
        status_code=500,
    )


def create_app(
    dashboard: Dashboard, config: WebConfig | None = None, port: int | None = None
) -> Starlette:
    """The dashboard application for ``dashboard`` (``port``: the one actually bound)."""
    from importlib.resources import files

    config = config or WebConfig()
    routes = [
        *jobs.routes(),
        *runs.routes(),
        *mail.routes(),
        *smtp.routes(),
        *api.routes(),
        Mount(
            "/static", StaticFiles(directory=str(files("notifier.web") / "static")), name="static"
        ),
        Route("/favicon.ico", lambda _request: Response(status_code=204)),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityMiddleware)],
        exception_handlers={
            HTTPException: _http_error,
            NotifierError: _notifier_error,
            Exception: _crash,
        },
    )
    app.state.dashboard = dashboard
    app.state.config = config
    app.state.guard = Guard(config, port or config.port)
    app.state.templates = templates()
    return app
