"""Read-side queries shared by ``notifier history``, ``notifier queue`` and the dashboard.

Every reader of runs and mail goes through here, so the CLI's ``--json`` and the web
pages say the same thing. Values are plain JSON-able dicts; times are ISO 8601 strings in
the zone the caller asks for (a job's own zone for its slots).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import func, select

from notifier.ledger.queue import QueueRow
from notifier.ledger.schema import deliveries_table, run_files_table, runs_table
from notifier.ledger.statuses import ACTIVE_RUN, WAITING, RecipientStatus
from notifier.ledger.store import Ledger, Run, filter_runs, run_from_row
from notifier.settings import redact

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


def node_host(owner: str) -> str:
    """The host part of a node id (``host:pid:start-nonce``); other ids as they are."""
    parts = owner.rsplit(":", 2)
    return parts[0] if len(parts) == 3 else owner


def run_file_names(ledger: Ledger, run_ids: Sequence[str]) -> dict[str, list[str]]:
    """The names of the files kept in the ledger for each run (one query)."""
    found: dict[str, list[str]] = {}
    ids = list(dict.fromkeys(run_ids))
    with ledger.db.tx(write=False) as conn:
        for start in range(0, len(ids), 500):
            rows = conn.execute(
                select(run_files_table.c.run_id, run_files_table.c.name)
                .where(run_files_table.c.run_id.in_(ids[start : start + 500]))
                .order_by(run_files_table.c.run_id, run_files_table.c.name)
            )
            for run_id, name in rows:
                found.setdefault(run_id, []).append(name)
    return found


def redacted(value: Any, secrets: Sequence[str]) -> Any:
    """``value`` (run parameters: nested dicts and lists) with every secret in its keys and
    text replaced by ``***``: what may be stored in the ledger or shown."""
    if not secrets:
        return value
    if isinstance(value, dict):
        return {redacted(k, secrets): redacted(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item, secrets) for item in value]
    if isinstance(value, str):
        return redact(value, list(secrets))
    return value


def run_rows(
    ledger: Ledger,
    runs: Sequence[Run],
    zone_of: ZoneOf = lambda _job: None,
    secrets: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Runs with their mail, per recipient, as dicts (one query for all their mail).

    ``host`` is the machine of the node that ran it (its run folder, ``output``, is on
    that machine); ``files`` are the files every node can read from the ledger
    (``output.html``, ``worker.log``, ``failure.json``: ``ledger.run_file(run_id, name)``).
    ``secrets`` are hidden from the parameters (a ledger written before they were
    refused may hold one).
    """
    run_ids = [run.run_id for run in runs]
    files = run_file_names(ledger, run_ids)
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
                "parameters": redacted(run.parameters, secrets),
                "owner": run.owner,
                "host": node_host(run.owner),
                "files": files.get(run.run_id, []),
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
    secrets: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Runs newest first with their mail: what ``history --json`` prints and the API serves."""
    runs = ledger.history(job, failed=failed, limit=limit, status=status, offset=offset)
    return run_rows(ledger, runs, zone_of, secrets)


def count_history(
    ledger: Ledger, job: str | None = None, *, failed: bool = False, status: str | None = None
) -> int:
    """How many runs :func:`history_rows` has to page through with the same filters."""
    query = filter_runs(
        select(func.count()).select_from(runs_table), job=job, failed=failed, status=status
    )
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


def runs_by_prefix(ledger: Ledger, prefix: str, *, limit: int = 2) -> list[Run]:
    """Runs whose id is ``prefix`` or starts with it (at most ``limit``): for short ids."""
    exact = ledger.get(prefix)
    if exact is not None:
        return [exact]
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    query = (
        select(runs_table)
        .where(runs_table.c.run_id.like(f"{escaped}%", escape="\\"))
        .order_by(runs_table.c.slot.desc())
        .limit(limit)
    )
    with ledger.db.tx(write=False) as conn:
        return [run_from_row(row) for row in conn.execute(query)]


def email_as_sent(ledger: Ledger, message_pk: int) -> bytes | None:
    """A queued email as the mail server got it (RFC 5322 bytes), rebuilt from the ledger.

    Its envelope recipients are every recipient row of the message; the headers are the
    ones it was sent with (To, Cc, Subject, Message-ID, Date).
    """
    from notifier.delivery.planning import outgoing_from, spec_parts

    message = ledger.queue.message(message_pk)
    if message is None:
        return None
    parts = ledger.queue.load_parts(spec_parts(message.spec))
    outgoing = outgoing_from(message, parts, [r.address for r in message.recipients])
    return outgoing.data


# --- nodes ------------------------------------------------------------------------------

RECENT_NODES = timedelta(days=1)


def _short(digest: str | None) -> str | None:
    return digest[:12] if digest else None


def nodes_report(
    ledger: Ledger, *, everything: bool = False, zone: tzinfo | None = None
) -> dict[str, Any]:
    """Every node on the ledger with its state, running runs and jobs-file hash.

    ``state`` is ``alive`` (lease valid by the database's clock), ``expired`` (it stopped
    renewing its lease: crashed, paused or cut off; its runs are taken over) or
    ``stopped`` (shut down cleanly). Without ``everything``: live nodes, and daemons seen
    in the last day. ``warnings`` says when live daemons run different jobs files (one
    was not redeployed).
    """
    with ledger.db.tx(write=False) as conn:
        now = ledger.db.db_now(conn)
        owned = list(
            conn.execute(
                select(runs_table.c.owner, runs_table.c.job, runs_table.c.run_id, runs_table.c.slot)
                .where(runs_table.c.status.in_([s.value for s in ACTIVE_RUN]))
                .order_by(runs_table.c.slot)
            )
        )
    running: dict[str, list[dict[str, Any]]] = {}
    for row in owned:
        running.setdefault(row.owner, []).append(
            {"job": row.job, "run_id": row.run_id, "slot": _iso(row.slot, zone)}
        )
    nodes = []
    for node in ledger.nodes.all():
        state = (
            "stopped"
            if node.stopped_at is not None
            else "alive"
            if node.lease_until >= now
            else "expired"
        )
        seen = node.stopped_at or node.heartbeat_at
        recent = node.role == "daemon" and now - seen <= RECENT_NODES
        if not (everything or state == "alive" or recent or node.node_id in running):
            continue
        nodes.append(
            {
                "node_id": node.node_id,
                "host": node.host,
                "pid": node.pid,
                "role": node.role,
                "version": node.version,
                "state": state,
                "started_at": _iso(node.started_at, zone),
                "heartbeat_at": _iso(node.heartbeat_at, zone),
                "heartbeat_age_s": round((now - node.heartbeat_at).total_seconds(), 1),
                "lease_until": _iso(node.lease_until, zone),
                "stopped_at": _iso(node.stopped_at, zone),
                "jobs_hash": node.jobs_hash,
                "jobs_hash_short": _short(node.jobs_hash),
                "running": running.get(node.node_id, []),
            }
        )
    hashes: dict[str, list[str]] = {}
    for node in nodes:
        if node["state"] == "alive" and node["role"] == "daemon":
            hashes.setdefault(node["jobs_hash"] or "unknown", []).append(node["host"])
    warnings = []
    if len(hashes) > 1:
        described = "; ".join(
            f"{_short(digest) if digest != 'unknown' else 'unknown'} on {', '.join(hosts)}"
            for digest, hosts in sorted(hashes.items(), key=lambda kv: -len(kv[1]))
        )
        warnings.append(
            f"the running daemons do not agree about the jobs file ({described}): "
            "deploy the same jobs.yaml to every node (each reloads it when it changes)"
        )
    return {
        "now": _iso(now, zone),
        "lease_seconds": ledger.nodes.lease.total_seconds(),
        "nodes": nodes,
        "warnings": warnings,
    }


def waiting_mail(ledger: Ledger, *, include_unknown: bool = True) -> list[QueueRow]:
    """What the queue still holds: queued, sending, deferred (and unknown outcomes)."""
    statuses = [s.value for s in (*WAITING, RecipientStatus.SENDING)]
    if include_unknown:
        statuses.append(RecipientStatus.UNKNOWN.value)
    return ledger.queue.rows(statuses=statuses)
