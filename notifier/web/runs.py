"""Runs page (filter by job and status, paginated) and a run's page: parameters, output
notebook, the failing cell, the worker log, every email with its per-recipient outcome,
and live progress while it runs."""

from __future__ import annotations

import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notifier.ledger import Ledger, Run, RunStatus
from notifier.ledger.queries import count_history, delivery_log, history_rows, run_rows
from notifier.web import files
from notifier.web.mail import run_emails
from notifier.web.pages import get_run, render
from notifier.web.security import download, sandboxed
from notifier.web.state import Dashboard

PER_PAGE = 50
STATUSES = [s.value for s in RunStatus]


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        return max(low, min(high, int(value))) if value else default
    except ValueError:
        return default


def page_of_runs(
    dashboard: Dashboard, job: str | None, status: str | None, page: int, per_page: int
) -> dict[str, Any]:
    """One page of runs, newest first, with their mail, and the paging numbers."""
    ledger = dashboard.ledger()
    if ledger is None:
        return {"runs": [], "total": 0, "page": 1, "pages": 1, "per_page": per_page}
    total = count_history(ledger, job, status=status)
    pages = max(1, math.ceil(total / per_page))
    page = min(page, pages)
    rows = history_rows(
        ledger,
        job,
        status=status,
        limit=per_page,
        offset=(page - 1) * per_page,
        zone_of=dashboard.zone_of,
    )
    return {"runs": rows, "total": total, "page": page, "pages": pages, "per_page": per_page}


def runs_page(request: Request) -> Response:
    """``/runs?job=&status=&page=``."""
    dashboard: Dashboard = request.app.state.dashboard
    job = request.query_params.get("job") or None
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise HTTPException(400, f"Unknown status {status!r}; one of {', '.join(STATUSES)}.")
    page = _int(request.query_params.get("page"), 1, 1, 10**9)
    data = page_of_runs(dashboard, job, status, page, PER_PAGE)
    ledger = dashboard.ledger()
    known = [j.name for j in dashboard.jobs().jobs]
    return render(
        request,
        "runs.html",
        **data,
        job=job,
        status=status,
        statuses=STATUSES,
        jobs=known if job is None or job in known else [*known, job],
        has_ledger=ledger is not None,
    )


def run_detail(dashboard: Dashboard, ledger: Ledger, run: Run) -> dict[str, Any]:
    """Everything the run's page shows (also served as JSON by the API)."""
    zone = dashboard.zone_of(run.job)
    (row,) = run_rows(ledger, [run], dashboard.zone_of, dashboard.settings.secrets())
    row["progress"] = ledger.progress(run.run_id) if run.active else None
    row["failure"] = (
        files.failure_record(ledger, dashboard.settings, run)
        if run.status in (RunStatus.FAILED.value, RunStatus.INTERRUPTED.value)
        else None
    )
    row["log"] = delivery_log(ledger, run.run_id, zone)
    return row


def run_page(request: Request) -> Response:
    """``/runs/{run_id}``."""
    dashboard, ledger, run = get_run(request)
    detail = run_detail(dashboard, ledger, run)
    settings = dashboard.settings
    has_output = run.status not in ("claimed",) and (
        files.run_file(ledger, settings, run, "output.html") is not None
    )
    log_text, cut = files.log_tail(files.run_file(ledger, settings, run, "worker.log"))
    return render(
        request,
        "run.html",
        run=run,
        row=detail,
        emails=run_emails(ledger, run, dashboard.zone_of(run.job)),
        has_output=has_output,
        log_text=log_text,
        log_cut=cut,
        job=dashboard.job(run.job),
    )


def output_frame(request: Request) -> Response:
    """``/runs/{run_id}/output.html``: the archived output, sandboxed, for the iframe."""
    dashboard, ledger, run = get_run(request)
    data = files.run_file(ledger, dashboard.settings, run, "output.html")
    if data is None:
        return sandboxed("<p style='font-family:sans-serif'>No output notebook for this run.</p>")
    return sandboxed(data)


def worker_log(request: Request) -> Response:
    """``/runs/{run_id}/worker.log``: the whole log, as a download."""
    dashboard, ledger, run = get_run(request)
    data = files.run_file(ledger, dashboard.settings, run, "worker.log")
    if data is None:
        raise HTTPException(404, "This run has no worker log here.")
    return download(data, f"{run.job}-{run.run_id}-worker.log", "text/plain")


def routes() -> list[Route]:
    """Runs and a run's page."""
    return [
        Route("/runs", runs_page),
        Route("/runs/{run_id}", run_page),
        Route("/runs/{run_id}/output.html", output_frame),
        Route("/runs/{run_id}/worker.log", worker_log),
    ]
