"""The JSON API: the same data as the pages, from the same queries as the CLI.

``/api/runs`` is ``notifier history --json`` (both call
:func:`notifier.ledger.queries.history_rows`); ``/api/runs/{id}`` adds progress, the failure
record and the delivery log; ``/api/jobs`` is what the jobs page shows.
"""

from __future__ import annotations

from datetime import datetime, timezone

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notifier.ledger.queries import count_history, history_rows
from notifier.web.state import Dashboard


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number, not {raw!r}.") from None
    if not low <= value <= high:
        raise HTTPException(400, f"{name} must be between {low} and {high}.")
    return value


def api_runs(request: Request) -> Response:
    """``/api/runs?job=&status=&failed=1&limit=20&offset=0``: runs newest first."""
    dashboard: Dashboard = request.app.state.dashboard
    job = request.query_params.get("job") or None
    status = request.query_params.get("status") or None
    failed = request.query_params.get("failed") in ("1", "true", "yes")
    limit = _int(request, "limit", 20, 1, 1000)
    offset = _int(request, "offset", 0, 0, 10**9)
    ledger = dashboard.ledger()
    if ledger is None:
        return JSONResponse({"runs": [], "total": 0})
    rows = history_rows(
        ledger,
        job,
        failed=failed,
        status=status,
        limit=limit,
        offset=offset,
        zone_of=dashboard.zone_of,
        secrets=dashboard.settings.secrets(),
    )
    total = count_history(ledger, job, failed=failed, status=status)
    return JSONResponse({"runs": rows, "total": total})


def api_run(request: Request) -> Response:
    """``/api/runs/{run_id}``: one run with progress, failure record and delivery log."""
    from notifier.web.pages import get_run
    from notifier.web.runs import run_detail

    dashboard, ledger, run = get_run(request)
    return JSONResponse(run_detail(dashboard, ledger, run))


def api_jobs(request: Request) -> Response:
    """``/api/jobs``: every job with its schedule, next fire times and last run."""
    from notifier.ledger.queries import last_runs
    from notifier.web.jobs import FIRE_TIMES, alert_state
    from notifier.web.words import schedule_words

    dashboard: Dashboard = request.app.state.dashboard
    view = dashboard.jobs()
    ledger = dashboard.ledger()
    now = datetime.now(timezone.utc)
    last = last_runs(ledger, [j.name for j in view.jobs]) if ledger is not None else {}
    jobs = []
    for job in view.jobs:
        run = last.get(job.name)
        jobs.append(
            {
                "name": job.name,
                "enabled": job.enabled,
                "schedule": job.schedule.describe() if job.schedule else None,
                "schedule_words": schedule_words(job.schedule),
                "timezone": job.timezone,
                "next_fire_times": [
                    t.isoformat()
                    for t in (job.next_fire_times(now, FIRE_TIMES) if job.enabled else [])
                ],
                "last_run": None
                if run is None
                else {
                    "run_id": run.run_id,
                    "status": run.status,
                    "slot": run.slot.astimezone(job.tz).isoformat(),
                },
                "alert": alert_state(ledger, job, now),
            }
        )
    return JSONResponse(
        {
            "path": str(view.path),
            "errors": str(view.error) if view.error else None,
            "loaded_at": view.loaded_at.isoformat() if view.loaded_at else None,
            "jobs": jobs,
        }
    )


def routes() -> list[Route]:
    """The JSON API."""
    return [
        Route("/api/runs", api_runs),
        Route("/api/runs/{run_id}", api_run),
        Route("/api/jobs", api_jobs),
    ]
