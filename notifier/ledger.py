"""The run ledger: which slot ran, who ran it, how it ended and what was delivered.

One SQLAlchemy Core code path serves SQLite (one host, possibly several processes)
and PostgreSQL (several scheduler nodes sharing one ledger). Exactly-once is enforced
by the database, never by in-process locks:

* a slot is taken by INSERTing its row; the unique key ``(job, slot, slot_kind)``
  makes every competitor after the first get an ``IntegrityError`` (``claim`` -> None);
* every later state change is a compare-and-set ``UPDATE ... WHERE status = ? AND
  owner = ?`` whose ``rowcount`` says whether this process won.

On SQLite, WAL and a busy timeout let several processes write, and every writing
transaction starts with ``BEGIN IMMEDIATE`` so that a read followed by a write can
never fail with "database is locked" when another process wrote in between.

Timestamps are stored as UTC (``DateTime(timezone=True)``); SQLite keeps no offset,
so values are converted to UTC on the way in and marked UTC on the way out. Callers
always get aware UTC datetimes and must pass aware ones.

Nothing secret belongs here: callers pass short summaries, never exception objects.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psutil
from sqlalchemy import (
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Dialect, Engine, Row, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)

from notifier.errors import NotifierError

__all__ = [
    "DEFAULT_URL",
    "DELIVERY_STATUSES",
    "SCHEMA_VERSION",
    "STATUSES",
    "TRIGGERS",
    "Delivery",
    "Ledger",
    "LedgerError",
    "Run",
]

DEFAULT_URL = "sqlite:///notifier.db"
SCHEMA_VERSION = 1

TRIGGERS = ("schedule", "manual", "catch_up", "retry")
STATUSES = ("claimed", "running", "succeeded", "skipped", "suppressed", "failed", "interrupted")
ACTIVE = ("claimed", "running")
TERMINAL = ("succeeded", "skipped", "suppressed", "failed")
FINISH_STATUSES = (*TERMINAL, "interrupted")
RECLAIMABLE = ("interrupted", "failed")
DELIVERY_STATUSES = ("accepted", "refused", "failed", "outbox")
# A delivery in one of these states is done: a re-attempt of the slot must not repeat it.
DELIVERED = ("accepted", "outbox")

# The slot key. Scheduled slots (trigger schedule/catch_up, and their retries) and manual
# runs (`notifier run`, slot = time of the request) live in separate lanes of the unique
# key (job, slot, slot_kind). A manual run can therefore never occupy a scheduled slot
# and make the scheduler skip it, not even when the request lands on exactly 08:00:00.000000
# or on a sub-second interval slot; a microsecond-timestamp scheme alone can only make that
# unlikely. Two manual runs of one job in the same microsecond are separated by moving the
# later one by 1 microsecond (see Ledger.claim).
SCHEDULED = "scheduled"
MANUAL = "manual"
_MANUAL_CLAIM_TRIES = 1000

_MAX_TEXT = 4000
_MAX_REPLY = 2000
_SQLITE_BUSY_TIMEOUT_MS = 10_000
# Process start times are read as wall-clock values whose boot-time base can move by about
# a second between reads; a pid reused by a process that started more than this later than
# the owner recorded in the token is recognised as a different process.
_START_TOLERANCE_MS = 2000

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always stores UTC and always returns aware UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _as_utc(value, "timestamp")
        # SQLite has no offset column: store the UTC wall time so that text comparison of
        # stored values (the unique key, "slot < ?") orders and matches by instant.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


meta_table = Table(
    "notifier_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

runs_table = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, unique=True),
    Column("job", String(200), nullable=False),
    Column("slot", UTCDateTime, nullable=False),
    Column("slot_kind", String(16), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("owner", String(300), nullable=False),
    Column("claimed_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("heartbeat_at", UTCDateTime),
    Column("duration_s", Float),
    Column("error", Text),
    Column("output_path", Text),
    Column("recipients", Text, nullable=False, default="[]"),
    Column("alert_key", String(128)),
    Column("notes", Text),
    UniqueConstraint("job", "slot", "slot_kind", name="uq_runs_job_slot_kind"),
    Index("ix_runs_status", "status"),
    Index("ix_runs_job_alert", "job", "alert_key"),
)

deliveries_table = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False),
    # The run's attempt when this delivery was recorded: a slot keeps one run row across
    # re-attempts, so this tells the attempts apart. Deliberately no unique key on
    # (run_id, email_key, recipient): a failed delivery and its later success are both kept.
    Column("attempt", Integer, nullable=False),
    Column("email_key", String(128), nullable=False),
    Column("message_id", Text, nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("status", String(16), nullable=False),
    Column("code", Integer),
    Column("reply", Text, nullable=False, default=""),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_deliveries_run_email", "run_id", "email_key"),
)


class LedgerError(NotifierError):
    """The ledger database cannot be opened or used (bad URL, missing driver, locked file)."""


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

    @property
    def active(self) -> bool:
        """True while the run is claimed or running."""
        return self.status in ACTIVE


@dataclass(frozen=True, slots=True)
class Delivery:
    """One recipient of one email of one run attempt, with the server's answer."""

    id: int
    run_id: str
    attempt: int
    email_key: str
    message_id: str
    recipient: str
    status: str
    code: int | None
    reply: str
    at: datetime


def _as_utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (got naive {value.isoformat()})")
    return value.astimezone(timezone.utc)


def _check(value: str, allowed: Sequence[str], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _clip(text: str | None, limit: int, name: str) -> str | None:
    if text is None:
        return None
    if not isinstance(text, str):
        # Exception objects and other values are refused: only summaries are stored.
        raise TypeError(f"{name} must be a str summary, not {type(text).__name__}")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _process_start_ms() -> int:
    return int(psutil.Process().create_time() * 1000)


def default_owner() -> str:
    """``hostname:pid:start-nonce`` for this process.

    ``start`` is the process creation time in milliseconds, so a later process that
    happens to get the same pid (a restarted container is often pid 1 again) is not
    mistaken for the one that claimed a run. ``nonce`` tells Ledger objects apart.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start_ms()}-{secrets.token_hex(4)}"


def _enable_wal(cursor: Any) -> None:
    """Switch a SQLite file to WAL, waiting for other processes doing the same.

    Changing the journal mode of a new file needs an exclusive lock, and SQLite reports
    "database is locked" at once instead of calling the busy handler when several
    processes open the new file together, so this step waits by itself.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.fetchall()
            return
        except Exception as exc:  # the driver's OperationalError
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Ledger:
    """Store of runs and deliveries on any SQLAlchemy URL (SQLite or PostgreSQL).

    Thread-safe (one pooled engine); several processes and hosts may share a database.
    ``owner`` identifies this process in the ``runs.owner`` column; ``clock`` returns
    the current aware time (tests may pass a fixed one).
    """

    def __init__(
        self,
        url: str,
        *,
        owner: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not url or not isinstance(url, str):
            raise LedgerError(
                "no ledger database URL given",
                fix=f"set NOTIFIER_DB_URL, e.g. NOTIFIER_DB_URL={DEFAULT_URL}",
            )
        if owner is not None and (not owner or len(owner) > 300):
            raise ValueError("owner must be a non-empty string of at most 300 characters")
        self._owner = owner or default_owner()
        self._hostname = socket.gethostname()
        self._clock = clock or _utcnow
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise LedgerError(
                f"NOTIFIER_DB_URL is not a database URL: {exc}",
                fix=f"use a URL such as {DEFAULT_URL} or postgresql+psycopg://user@host/db",
            ) from None
        self._url = parsed.render_as_string(hide_password=True)
        self._sqlite = parsed.get_backend_name() == "sqlite"
        try:
            self._engine = self._make_engine(parsed)
        except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
            raise LedgerError(
                f"cannot open the ledger at {self._url}: the database driver is missing ({exc})",
                fix=f"install the Python driver for '{parsed.drivername}' "
                "(for PostgreSQL: pip install 'psycopg[binary]')",
            ) from None
        try:
            self._create_schema()
        except BaseException:
            self._engine.dispose()
            raise

    # ----------------------------------------------------------------- setup

    def _make_engine(self, parsed: Any) -> Engine:
        if not self._sqlite:
            timeouts = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
            return create_engine(parsed, pool_pre_ping=True, connect_args=timeouts)
        engine = create_engine(parsed, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control away from the sqlite3 module: we emit BEGIN ourselves.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
                _enable_wal(cursor)
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA foreign_keys=ON")
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # IMMEDIATE takes the write lock up front (waiting up to busy_timeout). A deferred
            # transaction that reads and then writes fails at once with "database is locked"
            # if another process committed in between; busy_timeout does not help there.
            mode = conn.get_execution_options().get("notifier_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    def _create_schema(self) -> None:
        stored: str | None = None
        for attempt in range(3):
            try:
                with self._tx(write=True) as conn:
                    metadata.create_all(conn)
                    key = meta_table.c.key == "schema_version"
                    stored = conn.execute(select(meta_table.c.value).where(key)).scalar()
                    if stored is None:
                        stored = str(SCHEMA_VERSION)
                        conn.execute(insert(meta_table).values(key="schema_version", value=stored))
                break
            except (IntegrityError, ProgrammingError):
                # PostgreSQL: two nodes creating the tables at the same moment; the loser
                # sees "already exists" and finds everything in place on the next pass.
                if attempt == 2:
                    raise
        assert stored is not None
        if int(stored) > SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger at {self._url} has schema version {stored}, newer than this "
                f"notifier supports ({SCHEMA_VERSION})",
                fix="upgrade notifier, or point NOTIFIER_DB_URL at another database",
            )

    def _wrap(self, exc: DBAPIError) -> LedgerError:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        lowered = reason.lower()
        if "locked" in lowered or "busy" in lowered:
            fix = (
                "another process held the SQLite file for more than "
                f"{_SQLITE_BUSY_TIMEOUT_MS // 1000} s; look for a stuck notifier process, "
                "or use PostgreSQL when several schedulers share the ledger"
            )
        elif "unable to open" in lowered or "readonly" in lowered or "read-only" in lowered:
            fix = (
                "make sure the directory of the SQLite file exists and is writable, "
                "or set NOTIFIER_DB_URL to another location"
            )
        else:
            fix = "check NOTIFIER_DB_URL and that the database server is running and reachable"
        return LedgerError(f"the run ledger at {self._url} failed: {reason[:300]}", fix=fix)

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                if write and self._sqlite:
                    conn = conn.execution_options(notifier_begin="IMMEDIATE")
                with conn.begin():
                    yield conn
        except (OperationalError, InterfaceError) as exc:
            raise self._wrap(exc) from exc

    # ------------------------------------------------------------ properties

    @property
    def owner(self) -> str:
        """The owner string this ledger writes into claimed runs."""
        return self._owner

    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return self._url

    @property
    def schema_version(self) -> int:
        """The schema version stored in the database."""
        with self._tx(write=False) as conn:
            value = conn.execute(
                select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar_one()
        return int(value)

    def __repr__(self) -> str:
        return f"Ledger({self._url!r}, owner={self._owner!r})"

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
    ) -> Run | None:
        """Take ``(job, slot)`` for this owner; None when it was already taken.

        Exactly once across threads, processes and hosts: the row INSERT either creates
        the slot or hits the unique key. A manual run (``trigger="manual"``, slot = time
        of the request) lives in its own lane and never blocks a scheduled slot; if two
        manual runs share a microsecond, the later one is moved by 1 microsecond (check
        ``Run.slot`` of the result).
        """
        _check(trigger, TRIGGERS, "trigger")
        slot = _as_utc(slot, "slot")
        kind = MANUAL if trigger == "manual" else SCHEDULED
        people = json.dumps([str(r) for r in recipients])
        for _ in range(_MANUAL_CLAIM_TRIES if kind == MANUAL else 1):
            now = self._now()
            values = {
                "run_id": secrets.token_hex(16),
                "job": job,
                "slot": slot,
                "slot_kind": kind,
                "trigger": trigger,
                "status": "claimed",
                "attempt": 1,
                "owner": self._owner,
                "claimed_at": now,
                "heartbeat_at": now,
                "recipients": people,
            }
            try:
                with self._tx(write=True) as conn:
                    conn.execute(insert(runs_table).values(**values))
                    row = self._row(conn, values["run_id"])
            except IntegrityError:
                if kind == SCHEDULED:
                    return None
                slot += timedelta(microseconds=1)
                continue
            return _run(row) if row is not None else None
        return None

    def reclaim(self, run_id: str, *, trigger: str, attempt: int | None = None) -> Run | None:
        """Take an ``interrupted`` or ``failed`` run back for this owner (attempt + 1).

        Compare-and-set on status and attempt: when several processes try, one gets the
        run and the others get None. Pass ``attempt`` (the attempt you saw) to also refuse
        a run that was re-attempted since you looked. Whether a failure is worth retrying
        is the caller's decision. The previous outcome moves into ``notes``.
        """
        _check(trigger, TRIGGERS, "trigger")
        with self._tx(write=True) as conn:
            row = conn.execute(
                select(runs_table).where(runs_table.c.run_id == run_id).with_for_update()
            ).first()
            if row is None or row.status not in RECLAIMABLE:
                return None
            if attempt is not None and row.attempt != attempt:
                return None
            previous = f"attempt {row.attempt} {row.status}" + (
                f": {row.error}" if row.error else ""
            )
            now = self._now()
            result = conn.execute(
                update(runs_table)
                .where(
                    runs_table.c.id == row.id,
                    runs_table.c.status == row.status,
                    runs_table.c.attempt == row.attempt,
                )
                .values(
                    status="claimed",
                    trigger=trigger,
                    attempt=row.attempt + 1,
                    owner=self._owner,
                    claimed_at=now,
                    heartbeat_at=now,
                    started_at=None,
                    finished_at=None,
                    duration_s=None,
                    error=None,
                    notes=_clip(previous, _MAX_TEXT, "notes"),
                )
            )
            if result.rowcount != 1:
                return None
            fresh = self._row(conn, run_id)
        return _run(fresh) if fresh is not None else None

    # ------------------------------------------------------------ lifecycle

    def mark_running(self, run_id: str) -> bool:
        """``claimed`` -> ``running`` if this owner still holds the run; returns success."""
        now = self._now()
        with self._tx(write=True) as conn:
            result = conn.execute(
                update(runs_table)
                .where(
                    runs_table.c.run_id == run_id,
                    runs_table.c.owner == self._owner,
                    runs_table.c.status == "claimed",
                )
                .values(status="running", started_at=now, heartbeat_at=now)
            )
        return result.rowcount == 1

    def heartbeat(self, run_id: str) -> bool:
        """Refresh ``heartbeat_at``; False when this owner no longer holds an active run."""
        with self._tx(write=True) as conn:
            result = conn.execute(
                update(runs_table)
                .where(
                    runs_table.c.run_id == run_id,
                    runs_table.c.owner == self._owner,
                    runs_table.c.status.in_(ACTIVE),
                )
                .values(heartbeat_at=self._now())
            )
        return result.rowcount == 1

    def finish(
        self,
        run_id: str,
        status: str,
        *,
        error: str | None = None,
        output_path: str | None = None,
        alert_key: str | None = None,
        notes: str | None = None,
    ) -> bool:
        """Record the outcome, only if this owner still holds the run; returns success.

        Accepted from ``claimed``, ``running`` and ``interrupted`` (a run marked
        interrupted by shutdown or by another node's recovery that nobody has reclaimed
        yet did in fact finish). Once another owner reclaimed it, this is a no-op (False).
        ``error`` and ``notes`` are short summaries (clipped to 4000 characters).
        """
        _check(status, FINISH_STATUSES, "status")
        values: dict[str, Any] = {
            "status": status,
            "error": _clip(error, _MAX_TEXT, "error"),
        }
        if output_path is not None:
            values["output_path"] = str(output_path)
        if alert_key is not None:
            values["alert_key"] = alert_key
        if notes is not None:
            values["notes"] = _clip(notes, _MAX_TEXT, "notes")
        mine = (
            runs_table.c.run_id == run_id,
            runs_table.c.owner == self._owner,
            runs_table.c.status.in_((*ACTIVE, "interrupted")),
        )
        with self._tx(write=True) as conn:
            row = conn.execute(select(runs_table).where(*mine).with_for_update()).first()
            if row is None:
                return False
            values.update(self._ending(row))
            result = conn.execute(update(runs_table).where(*mine).values(**values))
        return result.rowcount == 1

    def _ending(self, row: Row[Any]) -> dict[str, Any]:
        now = self._now()
        began = row.started_at or row.claimed_at
        return {"finished_at": now, "duration_s": max(0.0, (now - began).total_seconds())}

    # ----------------------------------------------------------- deliveries

    def record_delivery(
        self,
        run_id: str,
        email_key: str,
        message_id: str,
        recipient: str,
        status: str,
        code: int | None = None,
        reply: str = "",
    ) -> None:
        """Record the server's answer for one recipient of one email of a run.

        Recorded whoever holds the run now: the email was sent either way.
        """
        _check(status, DELIVERY_STATUSES, "status")
        attempt = (
            select(runs_table.c.attempt).where(runs_table.c.run_id == run_id).scalar_subquery()
        )
        try:
            with self._tx(write=True) as conn:
                conn.execute(
                    insert(deliveries_table).values(
                        run_id=run_id,
                        attempt=attempt,
                        email_key=email_key,
                        message_id=message_id,
                        recipient=recipient,
                        status=status,
                        code=code,
                        reply=_clip(reply or "", _MAX_REPLY, "reply"),
                        at=self._now(),
                    )
                )
        except IntegrityError:
            raise ValueError(f"no run with run_id {run_id!r} in the ledger") from None

    def accepted_recipients(
        self, job: str, slot: datetime, email_key: str, *, manual: bool = False
    ) -> set[str]:
        """Recipients of that email in that slot already delivered by any attempt.

        "Delivered" means accepted by the server or written to the outbox; a re-attempt
        after a crash sends only to the others. ``manual`` selects the manual-run lane.
        """
        slot = _as_utc(slot, "slot")
        query = (
            select(deliveries_table.c.recipient)
            .join(runs_table, runs_table.c.run_id == deliveries_table.c.run_id)
            .where(
                runs_table.c.job == job,
                runs_table.c.slot == slot,
                runs_table.c.slot_kind == (MANUAL if manual else SCHEDULED),
                deliveries_table.c.email_key == email_key,
                deliveries_table.c.status.in_(DELIVERED),
            )
        )
        with self._tx(write=False) as conn:
            return set(conn.execute(query).scalars())

    def deliveries(self, run_id: str) -> list[Delivery]:
        """All deliveries recorded for a run, oldest first."""
        query = (
            select(deliveries_table)
            .where(deliveries_table.c.run_id == run_id)
            .order_by(deliveries_table.c.id)
        )
        with self._tx(write=False) as conn:
            return [_delivery(row) for row in conn.execute(query)]

    # ------------------------------------------------------------- recovery

    def recover_interrupted(self, *, stale_after: float = 120.0) -> list[Run]:
        """Mark runs whose owner is gone as ``interrupted`` and return them.

        Owner on this host: gone when its pid is not alive, is a zombie, or belongs to a
        process started at another time than the one in the owner's start token (pid
        reuse). Owner on another host (or unparseable): gone when its heartbeat (or claim
        time) is older than ``stale_after`` seconds; hosts need roughly synchronised
        clocks. Each mark is a compare-and-set on status, owner and attempt, so when two
        daemons recover at once each run is returned by exactly one of them.
        """
        with self._tx(write=False) as conn:
            candidates = list(
                conn.execute(select(runs_table).where(runs_table.c.status.in_(ACTIVE)))
            )
        now = self._now()
        limit = now - timedelta(seconds=stale_after)
        recovered: list[Run] = []
        for row in candidates:
            if row.owner == self._owner:
                continue
            alive = self._owner_alive(row.owner)
            if alive is None:
                seen = row.heartbeat_at or row.claimed_at
                if seen >= limit:
                    continue
                reason = f"no heartbeat from {row.owner} since {seen.isoformat()}"
            elif alive:
                continue
            else:
                reason = f"owner process {row.owner} is gone"
            run = self._interrupt(row, reason)
            if run is not None:
                recovered.append(run)
        return recovered

    def mark_interrupted_mine(self) -> list[Run]:
        """On graceful shutdown: mark this owner's claimed/running runs ``interrupted``."""
        with self._tx(write=False) as conn:
            rows = list(
                conn.execute(
                    select(runs_table).where(
                        runs_table.c.owner == self._owner, runs_table.c.status.in_(ACTIVE)
                    )
                )
            )
        done = (self._interrupt(row, "interrupted by shutdown of the scheduler") for row in rows)
        return [run for run in done if run is not None]

    def _interrupt(self, row: Row[Any], reason: str) -> Run | None:
        with self._tx(write=True) as conn:
            result = conn.execute(
                update(runs_table)
                .where(
                    runs_table.c.id == row.id,
                    runs_table.c.status == row.status,
                    runs_table.c.owner == row.owner,
                    runs_table.c.attempt == row.attempt,
                )
                .values(
                    status="interrupted",
                    error=_clip(reason, _MAX_TEXT, "error"),
                    **self._ending(row),
                )
            )
            if result.rowcount != 1:
                return None
            fresh = self._row(conn, row.run_id)
        return _run(fresh) if fresh is not None else None

    def _owner_alive(self, owner: str) -> bool | None:
        """True/False for an owner on this host; None when it cannot be judged locally."""
        parts = owner.rsplit(":", 2)
        if len(parts) != 3 or parts[0] != self._hostname:
            return None
        try:
            pid = int(parts[1])
        except ValueError:
            return None
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            started = int(process.create_time() * 1000)
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:
            return True  # exists but not inspectable: assume alive
        token_start = parts[2].split("-", 1)[0]
        if token_start.isdigit() and abs(started - int(token_start)) > _START_TOLERANCE_MS:
            return False  # the pid now belongs to a different, later process
        return True

    # -------------------------------------------------------------- queries

    def get(self, run_id: str) -> Run | None:
        """The run with this run_id, or None."""
        with self._tx(write=False) as conn:
            row = self._row(conn, run_id)
        return _run(row) if row is not None else None

    def find(self, job: str, slot: datetime, *, manual: bool = False) -> Run | None:
        """The run occupying ``(job, slot)`` (scheduled lane unless ``manual``), or None."""
        slot = _as_utc(slot, "slot")
        query = select(runs_table).where(
            runs_table.c.job == job,
            runs_table.c.slot == slot,
            runs_table.c.slot_kind == (MANUAL if manual else SCHEDULED),
        )
        with self._tx(write=False) as conn:
            row = conn.execute(query).first()
        return _run(row) if row is not None else None

    def history(
        self, job: str | None = None, *, failed: bool = False, limit: int | None = 20
    ) -> list[Run]:
        """Runs newest slot first; ``failed`` keeps only ``failed`` and ``interrupted``."""
        query = select(runs_table)
        if job is not None:
            query = query.where(runs_table.c.job == job)
        if failed:
            query = query.where(runs_table.c.status.in_(("failed", "interrupted")))
        return self._runs(query, limit)

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
        with self._tx(write=False) as conn:
            return conn.execute(query).scalar()

    def last_alert(self, job: str, alert_key: str) -> Run | None:
        """The newest scheduled, succeeded run that sent the alert ``alert_key``.

        Manual runs (``notifier run JOB``, dry runs included) never start a cooldown.
        """
        return self._first(
            select(runs_table).where(
                runs_table.c.job == job,
                runs_table.c.alert_key == alert_key,
                runs_table.c.status == "succeeded",
                runs_table.c.slot_kind == SCHEDULED,
            )
        )

    def last_finished(self, job: str) -> Run | None:
        """The newest run that ended (succeeded, skipped, suppressed or failed)."""
        return self._first(
            select(runs_table).where(runs_table.c.job == job, runs_table.c.status.in_(TERMINAL))
        )

    def purge(self, job: str, older_than: datetime) -> list[str]:
        """Delete the job's finished runs with a slot before ``older_than``, with deliveries.

        Claimed and running runs are kept. Returns the runs' output paths so the caller
        can delete the files. Purged scheduled slots no longer count as taken.
        """
        cutoff = _as_utc(older_than, "older_than")
        doomed = (
            runs_table.c.job == job,
            runs_table.c.slot < cutoff,
            runs_table.c.status.not_in(ACTIVE),
        )
        with self._tx(write=True) as conn:
            rows = list(
                conn.execute(
                    select(runs_table.c.id, runs_table.c.run_id, runs_table.c.output_path)
                    .where(*doomed)
                    .order_by(runs_table.c.slot)
                    .with_for_update()
                )
            )
            ids = [row.id for row in rows]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                run_ids = [row.run_id for row in rows[start : start + 500]]
                conn.execute(delete(deliveries_table).where(deliveries_table.c.run_id.in_(run_ids)))
                conn.execute(delete(runs_table).where(runs_table.c.id.in_(chunk)))
        paths = (row.output_path for row in rows if row.output_path)
        return list(dict.fromkeys(paths))

    def close(self) -> None:
        """Release all database connections."""
        self._engine.dispose()

    # -------------------------------------------------------------- helpers

    def _now(self) -> datetime:
        return _as_utc(self._clock(), "clock()")

    @staticmethod
    def _row(conn: Connection, run_id: str) -> Row[Any] | None:
        return conn.execute(select(runs_table).where(runs_table.c.run_id == run_id)).first()

    def _first(self, query: Any) -> Run | None:
        found = self._runs(query, 1)
        return found[0] if found else None

    def _runs(self, query: Any, limit: int | None) -> list[Run]:
        query = query.order_by(runs_table.c.slot.desc(), runs_table.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._tx(write=False) as conn:
            return [_run(row) for row in conn.execute(query)]


def _run(row: Row[Any]) -> Run:
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
    )


def _delivery(row: Row[Any]) -> Delivery:
    return Delivery(
        id=row.id,
        run_id=row.run_id,
        attempt=row.attempt,
        email_key=row.email_key,
        message_id=row.message_id,
        recipient=row.recipient,
        status=row.status,
        code=row.code,
        reply=row.reply,
        at=row.at,
    )
