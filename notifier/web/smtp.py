"""Settings page: the effective mail settings (the password only as set / not set), the
ledger and its nodes, and "test connection", which runs ``notifier doctor``'s steps."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notifier.mail.doctor import Step, diagnose
from notifier.settings import Settings
from notifier.web.pages import render
from notifier.web.security import checked_form
from notifier.web.state import Dashboard


def effective(settings: Settings) -> list[tuple[str, str]]:
    """(name, value) of the mail settings in force; never the password itself."""
    if settings.uses_outbox:
        mode = "outbox: no SMTP server is configured, mail is written to the outbox folder"
        if settings.transport == "outbox":
            mode = "outbox (NOTIFIER_TRANSPORT=outbox)"
    else:
        mode = f"SMTP ({settings.transport or 'smtp'})"
    rows = [
        ("Delivery", mode),
        ("SMTP_HOST", settings.host or "(not set)"),
        ("SMTP_PORT", str(settings.port or "")),
        ("SMTP_SECURITY", settings.security),
        ("SMTP_USER", settings.user or "(not set)"),
        ("SMTP_PASSWORD", "set" if settings.password else "not set"),
        ("From", settings.from_address),
        ("SMTP_PROVIDER", settings.provider or "(none)"),
        ("SMTP_VERIFY", "yes" if settings.verify else "NO: certificates are not checked"),
        ("SMTP_CA_FILE", str(settings.ca_file or "(system store)")),
        ("SMTP_TIMEOUT", f"{settings.timeout:g} s"),
        ("Outbox folder", str(settings.outbox_dir.resolve())),
        ("Runs folder", str(settings.runs_dir.resolve())),
        ("Time zone", settings.timezone),
        ("Workers", str(settings.workers)),
    ]
    return rows


def _nodes(dashboard: Dashboard) -> list[dict[str, Any]]:
    ledger = dashboard.ledger()
    if ledger is None:
        return []
    now = datetime.now(timezone.utc)
    return [
        {"node": node, "live": ledger.nodes.is_live(node, now)} for node in ledger.nodes.all()[:50]
    ]


def _page(request: Request, steps: list[Step] | None, status_code: int = 200) -> Response:
    dashboard: Dashboard = request.app.state.dashboard
    settings = dashboard.settings
    ledger = dashboard.ledger()
    return render(
        request,
        "settings.html",
        status_code,
        rows=effective(settings),
        smtp_error=settings.smtp_error,
        steps=steps,
        nodes=_nodes(dashboard),
        ledger_url=ledger.url if ledger is not None else "(no ledger yet)",
        can_test=not settings.uses_outbox,
    )


def settings_page(request: Request) -> Response:
    """``GET /settings``."""
    return _page(request, None)


async def test_connection(request: Request) -> Response:
    """``POST /settings/test``: doctor's steps, each with its outcome (no message is sent)."""
    await checked_form(request)
    dashboard: Dashboard = request.app.state.dashboard
    settings = dashboard.settings
    if settings.smtp_error is not None:
        error = settings.smtp_error
        steps = [Step("Settings", False, error.message, error.fix)]
    elif settings.uses_outbox:
        steps = [Step("Settings", None, "no SMTP server configured: nothing to connect to")]
    else:
        steps = await run_in_threadpool(diagnose, settings)
    return _page(request, steps)


def routes() -> list[Route]:
    """The settings page and its test button."""
    return [
        Route("/settings", settings_page, methods=["GET"]),
        Route("/settings/test", test_connection, methods=["POST"]),
    ]
