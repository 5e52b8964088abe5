"""The dashboard's Starlette application: routes of every page group, templates, errors."""

from __future__ import annotations

import html
import logging
from datetime import datetime
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from notifier import __version__
from notifier.errors import NotifierError
from notifier.web.config import WebConfig
from notifier.web.security import Guard, SecurityMiddleware
from notifier.web.state import Dashboard

log = logging.getLogger("notifier.web")


def _when(value: Any, with_seconds: bool = True) -> str:
    """An ISO string or an aware datetime as ``2026-11-26 08:00:00 +01:00``."""
    if not value:
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    text = moment.strftime("%Y-%m-%d %H:%M:%S" if with_seconds else "%Y-%m-%d %H:%M")
    offset = moment.strftime("%z")
    return f"{text} {offset[:3]}:{offset[3:]}" if offset else text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return (
        f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
    )


def _size(size: int) -> str:
    from notifier.mail.preview import human_size

    return human_size(size)


def templates() -> Jinja2Templates:
    """Autoescaped templates from the package (no file system path needed)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("notifier.web", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(when=_when, duration=_duration, size=_size)
    return Jinja2Templates(env=env)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """A page of the dashboard with the context every page needs."""
    app = request.app
    dashboard: Dashboard = app.state.dashboard
    context.update(
        csrf=app.state.guard.csrf_value(request),
        version=__version__,
        project=dashboard.jobs_path.resolve().parent,
        outbox=dashboard.settings.uses_outbox,
        path=request.url.path,
    )
    return app.state.templates.TemplateResponse(request, template, context, status_code=status_code)


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

    from notifier.web import api, jobs, mail, runs, smtp

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
