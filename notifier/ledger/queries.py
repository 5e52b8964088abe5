"""Read-side queries shared by ``notifier history``, ``notifier queue`` and the dashboard.

Every reader of runs and mail goes through here, so the CLI's ``--json`` and the web
pages say the same thing. Values are plain JSON-able dicts; times are ISO 8601 strings in
the zone the caller asks for (a job's own zone for its slots).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import func, select

from notifier.ledger.queue import QueueRow
from notifier.ledger.schema import deliveries_table, runs_table
from notifier.ledger.statuses import WAITING, RecipientStatus, RunStatus
from notifier.ledger.store import Ledger, Run, run_from_row

ZoneOf = Callable[[str], tzinfo | None]


def _iso(moment: datetime | None, zone: tzinfo | None = None) -> str | None:
    if moment is None:
        return None
    return (moment.astimezone(zone) if zone is not None else moment).isoformat()


def mail_row(row: QueueRow, zone: tzinfo | None = None) -> dict[str, Any]:
    """One (email, recipient) of the queue as a dict."""
    return {
        "id": row.message_pk,
        "row": row.row_id,
        "purpose": row.purpose,
        "subject": row.subject,
        "recipient": row.recipient,
        "status": row.status,
        "code": row.code,
        "reply": row.reply,
        "attempts": row.attempts,
        "next_attempt_at": _iso(row.next_attempt_at, zone)
        if row.status in [s.value for s in WAITING]
        else None,
        "last_attempt_at": _iso(row.last_attempt_at, zone),
        "expires_at": _iso(row.expires_at, zone),
        "location": row.location,
        "transport": row.transport,
        "job": row.job,
        "run_id": row.run_id,
    }


def _legacy_deliveries(ledger: Ledger, run_ids: Sequence[str]) -> dict[str, list[dict]]:
    """Per-recipient answers of runs recorded before the queue existed (schema 1)."""
    if not run_ids:
        return {}
    d = deliveries_table
    found: dict[str, list[dict]] = {}
    with ledger.db.tx(write=False) as conn:
        rows = conn.execute(
            select(d)
            .where(d.c.run_id.in_(list(run_ids)), d.c.recipient_pk.is_(None))
            .order_by(d.c.id)
        )
        for row in rows:
            status = {"accepted": "delivered", "outbox": "delivered", "failed": "deferred"}.get(
                row.status, row.status
            )
            found.setdefault(row.run_id, []).append(
                {
                    "id": None,
                    "purpose": "failure" if row.email_key == "failure" else "report",
                    "subject": "",
                    "recipient": row.recipient,
                    "status": status,
                    "code": row.code,
                    "reply": row.reply,
                }
            )
    return found


def run_rows(
    ledger: Ledger,
    runs: Sequence[Run],
    zone_of: ZoneOf = lambda _job: None,
) -> list[dict[str, Any]]:
    """Runs with their mail, per recipient, as dicts (one query for all their mail)."""
    run_ids = [run.run_id for run in runs]
    mail: dict[str, list[dict]] = {}
    for row in ledger.queue.rows(run_ids=run_ids):
        mail.setdefault(row.run_id, []).append(mail_row(row, zone_of(row.job)))
    legacy = _legacy_deliveries(ledger, [r for r in run_ids if r not in mail])
    rows = []
    for run in runs:
        zone = zone_of(run.job)
        deliveries = mail.get(run.run_id) or legacy.get(run.run_id, [])
        reports = [d for d in deliveries if d["purpose"] == "report"]
        rows.append(
            {
                "job": run.job,
                "run_id": run.run_id,
                "slot": _iso(run.slot, zone),
                "manual": run.manual,
                "trigger": run.trigger,
                "status": run.status,
                "attempt": run.attempt,
                "started_at": _iso(run.started_at, zone),
                "finished_at": _iso(run.finished_at, zone),
                "duration_s": run.duration_s,
                "recipients": sorted({d["recipient"] for d in reports}) or list(run.recipients),
                "deliveries": deliveries,
                "error": run.error,
                "notes": run.notes,
                "output": run.output_path,
                "notebook": run.notebook,
                "parameters": run.parameters,
                "owner": run.owner,
            }
        )
    return rows


def history_rows(
    ledger: Ledger,
    job: str | None = None,
    *,
    failed: bool = False,
    status: str | None = None,
    limit: int | None = 20,
    offset: int = 0,
    zone_of: ZoneOf = lambda _job: None,
) -> list[dict[str, Any]]:
    """Runs newest first with their mail: what ``history --json`` prints and the API serves."""
    runs = ledger.history(job, failed=failed, limit=limit, status=status, offset=offset)
    return run_rows(ledger, runs, zone_of)


def count_history(
    ledger: Ledger, job: str | None = None, *, failed: bool = False, status: str | None = None
) -> int:
    """How many runs :func:`history_rows` has to page through with the same filters."""
    query = select(func.count()).select_from(runs_table)
    if job is not None:
        query = query.where(runs_table.c.job == job)
    if failed:
        query = query.where(
            runs_table.c.status.in_((RunStatus.FAILED.value, RunStatus.INTERRUPTED.value))
        )
    if status is not None:
        query = query.where(runs_table.c.status == status)
    with ledger.db.tx(write=False) as conn:
        return int(conn.execute(query).scalar_one())


def last_runs(ledger: Ledger, jobs: Sequence[str]) -> dict[str, Run]:
    """The newest run (any lane, any status) of each job, in one query."""
    if not jobs:
        return {}
    r = runs_table
    newest = (
        select(r.c.job, func.max(r.c.slot).label("slot"))
        .where(r.c.job.in_(list(jobs)))
        .group_by(r.c.job)
        .subquery()
    )
    query = (
        select(r)
        .join(newest, (r.c.job == newest.c.job) & (r.c.slot == newest.c.slot))
        .order_by(r.c.id)
    )
    with ledger.db.tx(write=False) as conn:
        return {row.job: run_from_row(row) for row in conn.execute(query)}


def delivery_log(ledger: Ledger, run_id: str, zone: tzinfo | None = None) -> list[dict[str, Any]]:
    """Every answer the run's recipients got, oldest first (retries and deferrals included)."""
    d = deliveries_table
    query = select(d).where(d.c.run_id == run_id).order_by(d.c.id)
    with ledger.db.tx(write=False) as conn:
        return [
            {
                "at": _iso(row.at, zone),
                "attempt": row.attempt,
                "email_key": row.email_key,
                "recipient": row.recipient,
                "status": row.status,
                "code": row.code,
                "reply": row.reply,
                "row": row.recipient_pk,
            }
            for row in conn.execute(query)
        ]


def waiting_mail(ledger: Ledger, *, include_unknown: bool = True) -> list[QueueRow]:
    """What the queue still holds: queued, sending, deferred (and unknown outcomes)."""
    statuses = [s.value for s in (*WAITING, RecipientStatus.SENDING)]
    if include_unknown:
        statuses.append(RecipientStatus.UNKNOWN.value)
    return ledger.queue.rows(statuses=statuses)
