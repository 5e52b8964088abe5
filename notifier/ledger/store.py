"""The run ledger: which slot ran, who ran it, how it ended, and the outbound mail queue.

Exactly-once is enforced by the database, never by in-process locks:

* a slot is taken by INSERTing its row; the unique key ``(job, slot, slot_kind)`` makes
  every competitor after the first get an ``IntegrityError`` (``claim`` -> None);
* every later state change is a compare-and-set ``UPDATE ... WHERE status = ? AND owner
  = ? AND attempt = ?`` whose ``rowcount`` says whether this process still holds the run.
  ``attempt`` is the fencing token: a node whose run was taken over (it was paused past
  its lease) finds its writes refused.

Timestamps are stored as UTC; callers always get aware UTC datetimes and must pass aware
ones. Nothing secret belongs here: callers pass short summaries, never exception objects.
"""

from __future__ import annotations

import json
import logging
import secrets
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from notifier.errors import LedgerError
from notifier.ledger.database import Database
from notifier.ledger.nodes import NodeRegistry, new_node_id
from notifier.ledger.queue import NewMessage, OutboundQueue
from notifier.ledger.schema import (
    SCHEMA_VERSION,
    as_utc,
    deliveries_table,
    messages_table,
    meta_table,
    part_links_table,
    pauses_table,
    recipients_table,
    run_files_table,
    runs_table,
)
from notifier.ledger.statuses import (
    ACTIVE_RUN,
    FINAL_RUN,
    RECLAIMABLE_RUN,
    TRIGGERS,
    RunStatus,
)
from notifier.settings import DEFAULT_LEASE_SECONDS

log = logging.getLogger("notifier.ledger")

SCHEDULED = "scheduled"
MANUAL = "manual"
_MANUAL_CLAIM_TRIES = 1000
MAX_TEXT = 4000


def check_choice(value: str, allowed: Sequence[str], name: str) -> str:
    """``value`` if it is one of ``allowed``, else ValueError naming ``name``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    return value


def clip(text: str | None, limit: int, name: str) -> str | None:
    """A summary clipped to ``limit`` characters; non-strings (exceptions) are refused."""
    if text is None:
        return None
    if not isinstance(text, str):
        # Exception objects and other values are refused: only summaries are stored.
        raise TypeError(f"{name} must be a str summary, not {type(text).__name__}")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Run:
    """One slot of one job, as stored (a plain value, detached from any session)."""

    id: int
    run_id: str
    job: str
    slot: datetime
    manual: bool
    trigger: str
    status: str
    attempt: int
    owner: str
    claimed_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    duration_s: float | None
    error: str | None
    output_path: str | None
    recipients: tuple[str, ...]
    alert_key: str | None
    notes: str | None
    notebook: str | None = None
    parameters: dict[str, Any] | None = None
    failure_recipients: tuple[str, ...] | None = None

    @property
    def active(self) -> bool:
        """True while the run is claimed or running (its notebook has not ended)."""
        return self.status in ACTIVE_RUN


def run_from_row(row: Row[Any]) -> Run:
    """A :class:`Run` from a ``runs`` row."""
    failure = row.failure_recipients
    return Run(
        id=row.id,
        run_id=row.run_id,
        job=row.job,
        slot=row.slot,
        manual=row.slot_kind == MANUAL,
        trigger=row.trigger,
        status=row.status,
        attempt=row.attempt,
        owner=row.owner,
        claimed_at=row.claimed_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        heartbeat_at=row.heartbeat_at,
        duration_s=row.duration_s,
        error=row.error,
        output_path=row.output_path,
        recipients=tuple(json.loads(row.recipients or "[]")),
        alert_key=row.alert_key,
        notes=row.notes,
        notebook=row.notebook,
        parameters=json.loads(row.parameters) if row.parameters else None,
        failure_recipients=tuple(json.loads(failure)) if failure is not None else None,
    )


def filter_runs(query: Select, *, job: str | None, failed: bool, status: str | None) -> Select:
    """``query`` on runs narrowed as history filters them (``failed``: failed and
    interrupted); one definition for :meth:`Ledger.history` and its count."""
    if job is not None:
        query = query.where(runs_table.c.job == job)
    if failed:
        query = query.where(
            runs_table.c.status.in_((RunStatus.FAILED.value, RunStatus.INTERRUPTED.value))
        )
    if status is not None:
        query = query.where(runs_table.c.status == status)
    return query


class Ledger:
    """Runs, nodes and the outbound queue on any SQLAlchemy URL (SQLite or PostgreSQL).

    Thread-safe (one pooled engine); several processes and hosts may share a database.
    ``owner`` is this process's node id (default ``host:pid:start-nonce``); the node is
    registered, and its lease renewed in the background, from the first claim on.
    ``clock`` returns the current aware time (tests may pass a fixed one). ``create=False``
    (read-only commands) raises :class:`~notifier.ledger.database.NoLedgerYet` instead of
    creating a database.
    """

    def __init__(
        self,
        url: str,
        *,
        owner: str | None = None,
        clock: Callable[[], datetime] | None = None,
        create: bool = True,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        if owner is not None and (not owner or len(owner) > 300):
            raise ValueError("owner must be a non-empty string of at most 300 characters")
        self.db = Database(url, clock=clock, create=create)
        self._owner = owner or new_node_id()
        self.nodes = NodeRegistry(self.db, self._owner, lease_seconds=lease_seconds)
        self.queue = OutboundQueue(self.db, self.nodes)

    # ------------------------------------------------------------ properties

    @property
    def owner(self) -> str:
        """The node id this ledger writes into claimed runs and queue rows."""
        return self._owner

    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return self.db.url

    @property
    def schema_version(self) -> int:
        """The schema version stored in the database."""
        with self.db.tx(write=False) as conn:
            value = conn.execute(
                select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar_one()
        return int(value)

    def __repr__(self) -> str:
        return f"Ledger({self.db.url!r}, owner={self._owner!r})"

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- claiming

    def claim(
        self,
        job: str,
        slot: datetime,
        *,
        trigger: str = "schedule",
        recipients: Sequence[str] = (),
        notebook: str | None = None,
        parameters: dict[str, Any] | None = None,
        failure_recipients: Sequence[str] | None = None,
    ) -> Run | None:
        """Take ``(job, slot)`` for this node; None when it was already taken.

        Exactly once across threads, processes and hosts: the row INSERT either creates
        the slot or hits the unique key. A manual run (``trigger="manual"``, slot = time
        of the request) lives in its own lane and never blocks a scheduled slot; if two
        manual runs share a microsecond, the later one is moved by 1 microsecond (check
        ``Run.slot`` of the result).
        """
        check_choice(trigger, TRIGGERS, "trigger")
        slot = as_utc(slot, "slot")
        self.nodes.ensure_registered()
        kind = MANUAL if trigger == "manual" else SCHEDULED
        people = json.dumps([str(r) for r in recipients])
        for _ in range(_MANUAL_CLAIM_TRIES if kind == MANUAL else 1):
            now = self.db.now()
            values = {
                "run_id": secrets.token_hex(16),
                "job": job,
                "slot": slot,
                "slot_kind": kind,
                "trigger": trigger,
                "status": RunStatus.CLAIMED.value,
                "attempt": 1,
                "owner": self._owner,
                "claimed_at": now,
                "heartbeat_at": now,
                "recipients": people,
                "notebook": notebook,
                "parameters": json.dumps(parameters, default=str) if parameters else None,
                "failure_recipients": (
                    json.dumps(list(failure_recipients)) if failure_recipients is not None else None
                ),
            }
            try:
                with self.db.tx(write=True) as conn:
                    conn.execute(insert(runs_table).values(**values))
                    row = self._row(conn, values["run_id"])
            except IntegrityError:
                if kind == SCHEDULED:
                    return None
                slot += timedelta(microseconds=1)
                continue
            return run_from_row(row) if row is not None else None
        return None

    def reclaim(self, run_id: str, *, trigger: str, attempt: int | None = None) -> Run | None:
        """Take an ``interrupted`` or ``failed`` run back for this node (attempt + 1).

        Compare-and-set on status and attempt: when several processes try, one gets the
        run and the others get None. Pass ``attempt`` (the attempt you saw) to also refuse
        a run that was re-attempted since you looked. The previous outcome moves into
        ``notes``.
        """
        check_choice(trigger, TRIGGERS, "trigger")
        self.nodes.ensure_registered()
        with self.db.tx(write=True) as conn:
            row = conn.execute(
                select(runs_table).where(runs_table.c.run_id == run_id).with_for_update()
            ).first()
            if row is None or row.status not in RECLAIMABLE_RUN:
                return None
            if attempt is not None and row.attempt != attempt:
                return None
            previous = f"attempt {row.attempt} {row.status}" + (
                f": {row.error}" if row.error else ""
            )
            now = self.db.now()
            result = conn.execute(
                update(runs_table)
                .where(
                    runs_table.c.id == row.id,
                    runs_table.c.status == row.status,
                    runs_table.c.attempt == row.attempt,
                )
                .values(
                    status=RunStatus.CLAIMED.value,
                    trigger=trigger,
                    attempt=row.attempt + 1,
                    owner=self._owner,
                    claimed_at=now,
                    heartbeat_at=now,
                    started_at=None,
                    finished_at=None,
                    duration_s=None,
                    error=None,
                    notes=clip(previous, MAX_TEXT, "notes"),
                )
            )
            if result.rowcount != 1:
                return None
            fresh = self._row(conn, run_id)
        return run_from_row(fresh) if fresh is not None else None

    # ------------------------------------------------------------ lifecycle

    def _mine(self, run_id: str, attempt: int | None, statuses: Sequence[str]) -> tuple:
        """The WHERE clause of a fenced write: this node, this attempt, these statuses."""
        clauses = [
            runs_table.c.run_id == run_id,
            runs_table.c.owner == self._owner,
            runs_table.c.status.in_([str(s) for s in statuses]),
        ]
        if attempt is not None:
            clauses.append(runs_table.c.attempt == attempt)
        return tuple(clauses)

    def mark_running(self, run_id: str, attempt: int | None = None) -> bool:
        """``claimed`` -> ``running`` if this node still holds the run; returns success."""
        now = self.db.now()
        with self.db.tx(write=True) as conn:
            result = conn.execute(
                update(runs_table)
                .where(*self._mine(run_id, attempt, (RunStatus.CLAIMED,)))
                .values(status=RunStatus.RUNNING.value, started_at=now, heartbeat_at=now)
            )
        return result.rowcount == 1

    def holds(self, run_id: str, attempt: int | None = None) -> bool:
        """True while this node still holds the run (claimed or running, same attempt).

        Also refreshes the run's ``heartbeat_at`` (shown as "last seen" by history).
        """
        with self.db.tx(write=True) as conn:
            result = conn.execute(
                update(runs_table)
                .where(*self._mine(run_id, attempt, ACTIVE_RUN))
                .values(heartbeat_at=self.db.now())
            )
        return result.rowcount == 1

    heartbeat = holds

    def finish(
        self,
        run_id: str,
        status: str,
        *,
        attempt: int | None = None,
        error: str | None = None,
        output_path: str | None = None,
        alert_key: str | None = None,
        notes: str | None = None,
    ) -> bool:
        """Record how the run ended, only if this node still holds it; returns success.

        Accepted from ``claimed``, ``running`` and ``interrupted`` (a run marked
        interrupted by shutdown or by another node's recovery that nobody has reclaimed
        yet did in fact finish). Once another node reclaimed it, this is a no-op (False).
        ``error`` and ``notes`` are short summaries (clipped to 4000 characters).
        """
        check_choice(status, [*FINAL_RUN, RunStatus.INTERRUPTED], "status")
        values = self._outcome(str(status), error, output_path, alert_key, notes)
        mine = self._mine(run_id, attempt, (*ACTIVE_RUN, RunStatus.INTERRUPTED))
        with self.db.tx(write=True) as conn:
            row = conn.execute(select(runs_table).where(*mine).with_for_update()).first()
            if row is None:
                return False
            values.update(self._ending(row))
            result = conn.execute(update(runs_table).where(*mine).values(**values))
        return result.rowcount == 1

    def start_delivering(
        self,
        conn: Connection,
        run_id: str,
        attempt: int | None,
        *,
        output_path: str | None,
        alert_key: str | None,
        notes: str | None,
    ) -> bool:
        """Within ``conn`` (the enqueue transaction): ``running`` -> ``delivering``, fenced."""
        values = self._outcome(RunStatus.DELIVERING.value, None, output_path, alert_key, notes)
        mine = self._mine(run_id, attempt, (*ACTIVE_RUN, RunStatus.INTERRUPTED))
        row = conn.execute(select(runs_table).where(*mine).with_for_update()).first()
        if row is None:
            return False
        result = conn.execute(update(runs_table).where(*mine).values(**values))
        return result.rowcount == 1

    def complete_delivery(
        self,
        run_id: str,
        status: str,
        *,
        error: str | None = None,
        notices: Sequence[NewMessage] = (),
    ) -> bool:
        """``delivering`` -> ``succeeded``/``failed`` once its mail is settled (any node).

        ``notices`` (what was not delivered, for the failure recipients) are queued in the
        same transaction: a run never ends without them, nor are they queued twice.
        """
        check_choice(status, (RunStatus.SUCCEEDED, RunStatus.FAILED), "status")
        where = (
            runs_table.c.run_id == run_id,
            runs_table.c.status == RunStatus.DELIVERING.value,
        )
        with self.db.tx(write=True) as conn:
            row = conn.execute(select(runs_table).where(*where).with_for_update()).first()
            if row is None:
                return False
            values: dict[str, Any] = {"status": str(status), **self._ending(row)}
            if error is not None:
                values["error"] = clip(error, MAX_TEXT, "error")
            result = conn.execute(update(runs_table).where(*where).values(**values))
            if result.rowcount == 1 and notices:
                self.queue.add_in(conn, run_id, notices)
        return result.rowcount == 1

    def _outcome(
        self,
        status: str,
        error: str | None,
        output_path: str | None,
        alert_key: str | None,
        notes: str | None,
    ) -> dict[str, Any]:
        values: dict[str, Any] = {"status": status, "error": clip(error, MAX_TEXT, "error")}
        if output_path is not None:
            values["output_path"] = str(output_path)
        if alert_key is not None:
            values["alert_key"] = alert_key
        if notes is not None:
            values["notes"] = clip(notes, MAX_TEXT, "notes")
        return values

    def _ending(self, row: Row[Any]) -> dict[str, Any]:
        now = self.db.now()
        began = row.started_at or row.claimed_at
        return {"finished_at": now, "duration_s": max(0.0, (now - began).total_seconds())}

    def set_progress(self, run_id: str, progress: dict[str, Any] | None) -> None:
        """Record how far the run's notebook is (shown live by the dashboard)."""
        with self.db.tx(write=True) as conn:
            conn.execute(
                update(runs_table)
                .where(runs_table.c.run_id == run_id)
                .values(progress=json.dumps(progress) if progress is not None else None)
            )

    def progress(self, run_id: str) -> dict[str, Any] | None:
        """The progress a running run reported last, or None."""
        with self.db.tx(write=False) as conn:
            value = conn.execute(
                select(runs_table.c.progress).where(runs_table.c.run_id == run_id)
            ).scalar()
        return json.loads(value) if value else None

    # --------------------------------------------------------------- run files

    def save_run_file(
        self, run_id: str, name: str, data: bytes, *, attempt: int | None = None
    ) -> bool:
        """Keep a file of the run (output.html, worker.log, ...) in the ledger, compressed.

        With ``attempt`` the write is fenced like every write of a run: it happens only
        while this node holds the run at that attempt (False otherwise), so a node whose
        run was taken over never replaces the files of the attempt that took it.
        """
        packed = zlib.compress(data, 6)
        compressed = len(packed) < len(data)
        values = {
            "size": len(data),
            "compressed": compressed,
            "data": packed if compressed else data,
            "created_at": self.db.now(),
        }
        where = (run_files_table.c.run_id == run_id, run_files_table.c.name == name)
        with self.db.tx(write=True) as conn:
            if attempt is not None:
                mine = self._mine(run_id, attempt, (*ACTIVE_RUN, RunStatus.INTERRUPTED))
                if (
                    conn.execute(select(runs_table.c.id).where(*mine).with_for_update()).first()
                    is None
                ):
                    return False
            done = conn.execute(update(run_files_table).where(*where).values(**values))
            if done.rowcount == 0:
                conn.execute(insert(run_files_table).values(run_id=run_id, name=name, **values))
        return True

    def run_file(self, run_id: str, name: str) -> bytes | None:
        """A file kept with :meth:`save_run_file`, or None."""
        with self.db.tx(write=False) as conn:
            row = conn.execute(
                select(run_files_table.c.compressed, run_files_table.c.data).where(
                    run_files_table.c.run_id == run_id, run_files_table.c.name == name
                )
            ).first()
        if row is None:
            return None
        data = bytes(row.data)
        return zlib.decompress(data) if row.compressed else data

    def run_file_names(self, run_id: str) -> list[str]:
        """The names of the files kept for a run."""
        with self.db.tx(write=False) as conn:
            return sorted(
                conn.execute(
                    select(run_files_table.c.name).where(run_files_table.c.run_id == run_id)
                ).scalars()
            )

    # ------------------------------------------------------------------ pauses

    def pause(self, job: str, *, reason: str = "", by: str | None = None) -> bool:
        """Pause a job on every node (False when it was paused already)."""
        try:
            with self.db.tx(write=True) as conn:
                if conn.execute(
                    select(pauses_table.c.job).where(pauses_table.c.job == job)
                ).first():
                    return False
                conn.execute(
                    insert(pauses_table).values(
                        job=job,
                        paused_at=self.db.now(),
                        paused_by=by or self._owner,
                        reason=clip(reason, MAX_TEXT, "reason") or "",
                    )
                )
        except IntegrityError:  # PostgreSQL: paused by someone else at the same moment
            return False
        return True

    def resume(self, job: str) -> bool:
        """Lift a pause (False when the job was not paused)."""
        with self.db.tx(write=True) as conn:
            done = conn.execute(delete(pauses_table).where(pauses_table.c.job == job))
        return done.rowcount > 0

    def paused(self) -> dict[str, dict[str, Any]]:
        """Paused jobs: name -> {paused_at, paused_by, reason}."""
        with self.db.tx(write=False) as conn:
            rows = conn.execute(select(pauses_table))
            return {
                row.job: {
                    "paused_at": row.paused_at,
                    "paused_by": row.paused_by,
                    "reason": row.reason,
                }
                for row in rows
            }

    def set_notes(self, run_id: str, notes: str) -> None:
        """Replace a run's notes (whoever holds it: notes describe, they decide nothing)."""
        with self.db.tx(write=True) as conn:
            conn.execute(
                update(runs_table)
                .where(runs_table.c.run_id == run_id)
                .values(notes=clip(notes, MAX_TEXT, "notes"))
            )

    # ------------------------------------------------------------- recovery

    def recover_interrupted(self) -> list[Run]:
        """Mark claimed/running runs whose node is dead as ``interrupted``; return them.

        Each mark is a compare-and-set on status, owner and attempt, so when two daemons
        recover at once each run is returned by exactly one of them.
        """
        with self.db.tx(write=False) as conn:
            candidates = list(
                conn.execute(
                    select(runs_table).where(
                        runs_table.c.status.in_([s.value for s in ACTIVE_RUN]),
                        runs_table.c.owner != self._owner,
                    )
                )
            )
        dead = self.nodes.dead_owners({row.owner for row in candidates})
        recovered = []
        for row in candidates:
            if row.owner in dead:
                run = self._interrupt(row, dead[row.owner])
                if run is not None:
                    recovered.append(run)
        return recovered

    def handed_over(self, since: datetime) -> list[Run]:
        """Scheduled runs left ``interrupted`` (slot after ``since``) whose node is gone.

        A daemon stopped by SIGTERM marks its running slots interrupted and stops its
        node: the other daemons on the ledger find them here and re-run them (through
        :meth:`reclaim`, so only one does).
        """
        since = as_utc(since, "since")
        with self.db.tx(write=False) as conn:
            rows = list(
                conn.execute(
                    select(runs_table).where(
                        runs_table.c.status == RunStatus.INTERRUPTED.value,
                        runs_table.c.slot_kind == SCHEDULED,
                        runs_table.c.slot >= since,
                    )
                )
            )
        dead = self.nodes.dead_owners({row.owner for row in rows})
        return [run_from_row(row) for row in rows if row.owner in dead]

    def mark_interrupted_mine(
        self,
        *,
        keep: Collection[str] = (),
        reason: str = "interrupted by shutdown of the scheduler",
    ) -> list[Run]:
        """Mark this node's claimed/running runs ``interrupted`` (but those in ``keep``).

        On graceful shutdown; and after the ledger was unreachable, for the runs this node
        claimed but is no longer executing (a claim whose answer was lost, a run that
        stopped because the ledger failed under it).
        """
        with self.db.tx(write=False) as conn:
            rows = list(
                conn.execute(
                    select(runs_table).where(
                        runs_table.c.owner == self._owner,
                        runs_table.c.status.in_([s.value for s in ACTIVE_RUN]),
                    )
                )
            )
        done = (self._interrupt(row, reason) for row in rows if row.run_id not in keep)
        return [run for run in done if run is not None]

    def _interrupt(self, row: Row[Any], reason: str) -> Run | None:
        with self.db.tx(write=True) as conn:
            result = conn.execute(
                update(runs_table)
                .where(
                    runs_table.c.id == row.id,
                    runs_table.c.status == row.status,
                    runs_table.c.owner == row.owner,
                    runs_table.c.attempt == row.attempt,
                )
                .values(
                    status=RunStatus.INTERRUPTED.value,
                    error=clip(reason, MAX_TEXT, "error"),
                    **self._ending(row),
                )
            )
            if result.rowcount != 1:
                return None
            fresh = self._row(conn, row.run_id)
        return run_from_row(fresh) if fresh is not None else None

    # -------------------------------------------------------------- queries

    def get(self, run_id: str) -> Run | None:
        """The run with this run_id, or None."""
        with self.db.tx(write=False) as conn:
            row = self._row(conn, run_id)
        return run_from_row(row) if row is not None else None

    def find(self, job: str, slot: datetime, *, manual: bool = False) -> Run | None:
        """The run occupying ``(job, slot)`` (scheduled lane unless ``manual``), or None."""
        slot = as_utc(slot, "slot")
        query = select(runs_table).where(
            runs_table.c.job == job,
            runs_table.c.slot == slot,
            runs_table.c.slot_kind == (MANUAL if manual else SCHEDULED),
        )
        with self.db.tx(write=False) as conn:
            row = conn.execute(query).first()
        return run_from_row(row) if row is not None else None

    def history(
        self,
        job: str | None = None,
        *,
        failed: bool = False,
        limit: int | None = 20,
        status: str | None = None,
        offset: int = 0,
    ) -> list[Run]:
        """Runs newest slot first; ``failed`` keeps only ``failed`` and ``interrupted``."""
        query = filter_runs(select(runs_table), job=job, failed=failed, status=status)
        return self._runs(query, limit, offset)

    def count_runs(self, job: str | None = None) -> int:
        """How many runs the ledger holds (of ``job``)."""
        from sqlalchemy import func

        query = select(func.count()).select_from(runs_table)
        if job is not None:
            query = query.where(runs_table.c.job == job)
        with self.db.tx(write=False) as conn:
            return int(conn.execute(query).scalar_one())

    def last_run(self, job: str) -> Run | None:
        """The run with the newest slot (any lane, any status)."""
        return self._first(select(runs_table).where(runs_table.c.job == job))

    def last_slot(self, job: str) -> datetime | None:
        """The newest scheduled slot (trigger schedule/catch_up, also if retried since).

        Any status counts: a claimed slot is taken even if it failed or is still running.
        Manual runs do not count.
        """
        query = select(runs_table.c.slot).where(
            runs_table.c.job == job, runs_table.c.slot_kind == SCHEDULED
        )
        query = query.order_by(runs_table.c.slot.desc()).limit(1)
        with self.db.tx(write=False) as conn:
            return conn.execute(query).scalar()

    def last_alert(self, job: str, alert_key: str) -> Run | None:
        """The newest scheduled run that sent (or is still sending) the alert ``alert_key``.

        Manual runs (``notifier run JOB``, dry runs included) never start a cooldown.
        A run still ``delivering`` counts: an alert held up by a mail outage must not be
        queued again by the next run.
        """
        return self._first(
            select(runs_table).where(
                runs_table.c.job == job,
                runs_table.c.alert_key == alert_key,
                runs_table.c.status.in_((RunStatus.SUCCEEDED.value, RunStatus.DELIVERING.value)),
                runs_table.c.slot_kind == SCHEDULED,
            )
        )

    def last_finished(self, job: str) -> Run | None:
        """The newest run that ended (succeeded, skipped, suppressed or failed)."""
        return self._first(
            select(runs_table).where(
                runs_table.c.job == job,
                runs_table.c.status.in_([s.value for s in FINAL_RUN]),
            )
        )

    def purge(self, job: str, older_than: datetime) -> list[str]:
        """Delete the job's settled runs with a slot before ``older_than``, with their mail.

        Claimed, running and delivering runs are kept, and so are runs with mail still
        waiting in the queue. Returns the runs' output paths so the caller can delete the
        files. Purged scheduled slots no longer count as taken, so ``older_than`` must be
        no later than now minus the job's misfire grace (``runs.retention`` makes sure):
        within it a daemon could still fire the slot, or re-run it when interrupted.
        """
        cutoff = as_utc(older_than, "older_than")
        keep = [s.value for s in (*ACTIVE_RUN, RunStatus.DELIVERING)]
        waiting = select(recipients_table.c.run_id).where(
            recipients_table.c.status.in_(("queued", "sending", "deferred"))
        )
        doomed = (
            runs_table.c.job == job,
            runs_table.c.slot < cutoff,
            runs_table.c.status.not_in(keep),
            runs_table.c.run_id.not_in(waiting),
        )
        with self.db.tx(write=True) as conn:
            rows = list(
                conn.execute(
                    select(runs_table.c.id, runs_table.c.run_id, runs_table.c.output_path)
                    .where(*doomed)
                    .order_by(runs_table.c.slot)
                    .with_for_update()
                )
            )
            for start in range(0, len(rows), 500):
                chunk = rows[start : start + 500]
                run_ids = [row.run_id for row in chunk]
                self._delete_mail(conn, run_ids)
                conn.execute(delete(runs_table).where(runs_table.c.id.in_([r.id for r in chunk])))
            if rows:
                OutboundQueue.forget_unused_parts(conn, self.db.now())
        paths = (row.output_path for row in rows if row.output_path)
        return list(dict.fromkeys(paths))

    @staticmethod
    def _delete_mail(conn: Connection, run_ids: list[str]) -> None:
        conn.execute(delete(run_files_table).where(run_files_table.c.run_id.in_(run_ids)))
        conn.execute(delete(deliveries_table).where(deliveries_table.c.run_id.in_(run_ids)))
        conn.execute(delete(recipients_table).where(recipients_table.c.run_id.in_(run_ids)))
        doomed = select(messages_table.c.id).where(messages_table.c.run_id.in_(run_ids))
        conn.execute(delete(part_links_table).where(part_links_table.c.message_pk.in_(doomed)))
        conn.execute(delete(messages_table).where(messages_table.c.run_id.in_(run_ids)))

    def close(self) -> None:
        """Stop this node (others take over what it owned) and release connections."""
        try:
            self.nodes.stop()
        except LedgerError as error:  # its lease runs out by itself
            log.warning("could not mark this node stopped in the ledger: %s", error)
        finally:
            self.db.dispose()

    # -------------------------------------------------------------- helpers

    @staticmethod
    def _row(conn: Connection, run_id: str) -> Row[Any] | None:
        return conn.execute(select(runs_table).where(runs_table.c.run_id == run_id)).first()

    def _first(self, query: Any) -> Run | None:
        found = self._runs(query, 1, 0)
        return found[0] if found else None

    def _runs(self, query: Any, limit: int | None, offset: int) -> list[Run]:
        query = query.order_by(runs_table.c.slot.desc(), runs_table.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with self.db.tx(write=False) as conn:
            return [run_from_row(row) for row in conn.execute(query)]


__all__ = ["MANUAL", "SCHEDULED", "SCHEMA_VERSION", "Ledger", "Run"]
