"""Jobs page (schedule, next fire times, last outcome, alert state, the next 24 hours) and
"Run now" (a button per job, and a form with the notebook's declared parameters)."""

from __future__ import annotations

import ast
import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from notifier.errors import NotifierError
from notifier.jobs import Job
from notifier.ledger import Ledger, RunStatus
from notifier.ledger.database import shown_url
from notifier.ledger.queries import last_runs
from notifier.notebook.params import (
    RUN_METADATA,
    check_parameters,
    declared_parameters,
    load_notebook_json,
    parameter_defaults,
    parse_cli_value,
)
from notifier.settings import redact
from notifier.web.pages import render
from notifier.web.security import checked_form
from notifier.web.state import Dashboard
from notifier.web.words import DENSE, hour_marks, schedule_words, upcoming

log = logging.getLogger("notifier.web")

FIRE_TIMES = 5
WINDOW = timedelta(hours=24)
TIMELINE_WIDTH = 1000.0
_ALERTED = (RunStatus.SUCCEEDED.value, RunStatus.DELIVERING.value, RunStatus.SUPPRESSED.value)
_OUTCOMES = (*_ALERTED, RunStatus.SKIPPED.value)


def alert_state(ledger: Ledger | None, job: Job, now: datetime) -> dict[str, Any] | None:
    """quiet / alerting / cooling down until T / recovered, from the job's scheduled runs.

    Only for alert jobs (``cooldown:`` or ``notify_recovery:``). Manual runs never count,
    as for the cooldown itself (notifier.runs.alerts).
    """
    if not (job.cooldown_seconds or job.notify_recovery):
        return None
    runs = ledger.history(job.name, limit=50) if ledger is not None else []
    outcomes = [r for r in runs if not r.manual and r.status in _OUTCOMES]
    alerts = [r for r in outcomes if r.status in _ALERTED and r.alert_key]
    if not alerts:
        return {"state": "quiet", "text": "quiet", "detail": "no alert sent yet"}
    last, alert = outcomes[0], alerts[0]
    if last.status == RunStatus.SKIPPED.value:
        return {
            "state": "recovered",
            "text": "recovered",
            "detail": f"quiet since {last.slot.astimezone(job.tz):%Y-%m-%d %H:%M}; last alert "
            f"{alert.slot.astimezone(job.tz):%Y-%m-%d %H:%M}",
        }
    if job.cooldown_seconds:
        sent = ledger.last_alert(job.name, alert.alert_key) if ledger is not None else None
        if sent is not None:
            until = sent.slot + timedelta(seconds=job.cooldown_seconds)
            if now < until:
                return {
                    "state": "cooling",
                    "text": f"cooling down until {until.astimezone(job.tz):%H:%M}",
                    "detail": f"alerting; the same alert is not sent again before "
                    f"{until.astimezone(job.tz):%Y-%m-%d %H:%M %Z}",
                }
    return {
        "state": "alerting",
        "text": "alerting",
        "detail": f"last alert {alert.slot.astimezone(job.tz):%Y-%m-%d %H:%M %Z}",
    }


def jobs_page(request: Request) -> Response:
    """``/``: every job with its schedule, next runs, last outcome and alert state."""
    dashboard: Dashboard = request.app.state.dashboard
    view = dashboard.jobs()
    ledger = dashboard.ledger()
    now = datetime.now(timezone.utc)
    names = [job.name for job in view.jobs]
    last = last_runs(ledger, names) if ledger is not None else {}
    paused = ledger.paused() if ledger is not None else {}
    rows = []
    for job in view.jobs:
        rows.append(
            {
                "job": job,
                "words": schedule_words(job.schedule),
                "written": job.schedule.describe() if job.schedule else "",
                "next": job.next_fire_times(now, FIRE_TIMES) if job.enabled else [],
                "last": last.get(job.name),
                "alert": alert_state(ledger, job, now),
                "paused": paused.get(job.name),
            }
        )
    lanes = upcoming(view.jobs, now, WINDOW)
    zones = {job.tz.key: job.tz for job in view.jobs}
    zone = next(iter(zones.values())) if len(zones) == 1 else dashboard.zone
    soonest = sorted(
        ((slot, lane.job) for lane in lanes for slot in lane.slots[:30]), key=lambda p: p[0]
    )[:20]
    active = ledger.history(status=RunStatus.RUNNING.value, limit=20) if ledger else []
    return render(
        request,
        "jobs.html",
        view=view,
        rows=rows,
        lanes=lanes,
        now=now,
        zone=zone,
        width=TIMELINE_WIDTH,
        window=WINDOW,
        dense=DENSE,
        marks=hour_marks(now, WINDOW, zone),
        soonest=soonest,
        active=active,
        ledger_url=shown_url(dashboard.settings.db_url) if ledger is None else ledger.url,
    )


# ------------------------------------------------------------------ Run now


@dataclass
class Field:
    """A parameter of the Run now form."""

    name: str
    value: str  # what the field shows (as -p would take it); "" for a computed default
    default_source: str  # the default as written in the notebook
    from_job: bool  # the value comes from jobs.yaml


def cli_text(value: Any) -> str:
    """A value as ``notifier run -p NAME VALUE`` would be given it."""
    if isinstance(value, str):
        return value
    return repr(value) if isinstance(value, float) else str(value)


def form_fields(job: Job, secrets: Sequence[str] = ()) -> list[Field]:
    """The notebook's declared parameters (without run metadata), with their defaults.

    A jobs.yaml value holding a secret shows as ``***`` (and, left so, stays the job's
    value: Run now then refuses it, as ``notifier run`` does).
    """
    notebook = load_notebook_json(job.notebook)
    declared = declared_parameters(notebook) or []
    defaults = parameter_defaults(notebook)
    fields = []
    for name in dict.fromkeys(declared):
        if name in RUN_METADATA:
            continue
        source = defaults.get(name, "")
        if name in job.parameters:
            value, from_job = redact(cli_text(job.parameters[name]), list(secrets)), True
        else:
            from_job = False
            try:
                literal = ast.literal_eval(source)
                value = "" if literal is None else cli_text(literal)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                value = ""  # computed in the notebook (e.g. today's date)
        fields.append(Field(name, value, source, from_job))
    return fields


def overrides(job: Job, fields: list[Field], form: Any) -> dict[str, Any]:
    """Parameters the user changed, each parsed as ``-p`` parses it; unchanged ones stay."""
    changed: dict[str, Any] = {}
    known = {field.name for field in fields}
    for key, given in form.multi_items():  # a name the form did not offer: -p refuses it too
        if key.startswith("p.") and key[2:] not in known and isinstance(given, str):
            changed[key[2:]] = parse_cli_value(given)
    for field in fields:
        given = form.get(f"p.{field.name}")
        if not isinstance(given, str) or given == field.value:
            continue
        if given == "" and not field.from_job:
            continue  # left empty: the notebook's own default
        changed[field.name] = parse_cli_value(given)
    return changed


def _job_or_404(request: Request) -> Job:
    dashboard: Dashboard = request.app.state.dashboard
    job = dashboard.job(request.path_params["name"])
    if job is None:
        raise HTTPException(404, f"No job named {request.path_params['name']!r} in jobs.yaml.")
    return job


def run_form(request: Request) -> Response:
    """``GET /jobs/{name}/run``: the parameters form."""
    job = _job_or_404(request)
    secrets = request.app.state.dashboard.settings.secrets()
    try:
        fields = form_fields(job, secrets)
    except NotifierError as error:
        return render(request, "run_form.html", 400, job=job, fields=[], error=error, values={})
    return render(request, "run_form.html", job=job, fields=fields, error=None, values={})


def start_run(dashboard: Dashboard, job: Job, dry_run: bool) -> str:
    """Claim a manual run (so its page exists at once), execute it in the background, at
    most ``NOTIFIER_WORKERS`` at once (a run waiting for its turn shows as claimed)."""
    runner = dashboard.runner()
    run = runner.claim_now(job)

    def execute() -> None:
        try:
            if not dashboard.run_now_slots.acquire(blocking=False):
                log.info(
                    "%s: run %s waits for one of the %d Run now workers",
                    job.name,
                    run.run_id,
                    dashboard.settings.workers,
                )
                dashboard.run_now_slots.acquire()
            try:
                runner.execute_claimed(job, run, dry_run=dry_run)
            finally:
                dashboard.run_now_slots.release()
        except BaseException:  # execute_claimed records every failure in the ledger itself
            log.exception("%s: Run now of run %s crashed", job.name, run.run_id)

    threading.Thread(target=execute, name=f"run-now-{job.name}", daemon=True).start()
    log.info(
        "%s: run %s started from the dashboard%s", job.name, run.run_id, " (dry run)" * dry_run
    )
    return run.run_id


async def run_now(request: Request) -> Response:
    """``POST /jobs/{name}/run``: check the parameters as ``notifier run -p`` does, then run."""
    form = await checked_form(request)
    job = _job_or_404(request)
    dashboard: Dashboard = request.app.state.dashboard
    dry_run = form.get("dry_run") == "1"
    values = {k[2:]: v for k, v in form.multi_items() if k.startswith("p.")}
    fields: list[Field] = []
    try:
        secrets = dashboard.settings.secrets()
        fields = await run_in_threadpool(form_fields, job, secrets) if values else []
        changed = overrides(job, fields, form)
        chosen = replace(job, parameters={**job.parameters, **changed}) if changed else job
        await run_in_threadpool(check_parameters, chosen.notebook, chosen.parameters)
        if not dry_run and dashboard.settings.smtp_error is not None:
            raise dashboard.settings.smtp_error
        run_id = await run_in_threadpool(start_run, dashboard, chosen, dry_run)
    except NotifierError as error:
        if not fields:
            try:
                fields = await run_in_threadpool(form_fields, job, dashboard.settings.secrets())
            except NotifierError:
                fields = []
        return render(
            request, "run_form.html", 400, job=job, fields=fields, error=error, values=values
        )
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


async def pause_or_resume(request: Request) -> Response:
    """``POST /jobs/{name}/pause`` and ``/resume``: as ``notifier pause`` / ``resume`` do,
    in the ledger, so every node obeys; back to the jobs page."""
    form = await checked_form(request)
    job = _job_or_404(request)
    dashboard: Dashboard = request.app.state.dashboard
    ledger = await run_in_threadpool(dashboard.ledger, create=True)
    assert ledger is not None
    if request.url.path.endswith("/pause"):
        reason = str(form.get("reason") or "paused from the dashboard")[:200]
        who = f"dashboard@{socket.gethostname()}"
        await run_in_threadpool(ledger.pause, job.name, reason=reason, by=who)
        log.info("%s: paused from the dashboard", job.name)
    else:
        await run_in_threadpool(ledger.resume, job.name)
        log.info("%s: resumed from the dashboard", job.name)
    return RedirectResponse(f"/#job-{job.name}", status_code=303)


def routes() -> list[Route]:
    """The jobs page and Run now."""
    return [
        Route("/", jobs_page),
        Route("/jobs/{name:path}/run", run_form, methods=["GET"]),
        Route("/jobs/{name:path}/run", run_now, methods=["POST"]),
        Route("/jobs/{name:path}/pause", pause_or_resume, methods=["POST"]),
        Route("/jobs/{name:path}/resume", pause_or_resume, methods=["POST"]),
    ]
