"""What every page needs: the templates with their filters, :func:`render`, and the run
named in a URL (:func:`get_run`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import jinja2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from notifier import __version__
from notifier.ledger import Ledger, Run
from notifier.web.state import Dashboard


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


def get_run(request: Request) -> tuple[Dashboard, Ledger, Run]:
    """The run named in the URL (404 when the ledger has no such run)."""
    dashboard: Dashboard = request.app.state.dashboard
    ledger = dashboard.ledger()
    run = ledger.get(request.path_params["run_id"]) if ledger is not None else None
    if ledger is None or run is None:
        raise HTTPException(
            404, "No such run in the ledger (it may have been purged by keep_runs)."
        )
    return dashboard, ledger, run
