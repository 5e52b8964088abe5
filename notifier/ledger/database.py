"""The ledger's database handle: engine, transactions, clock and error wrapping.

One SQLAlchemy Core code path serves SQLite (one host, possibly several processes) and
PostgreSQL (several nodes). On SQLite, WAL and a busy timeout let several processes
write, and every writing transaction starts with ``BEGIN IMMEDIATE`` so that a read
followed by a write can never fail with "database is locked" when another process wrote
in between. Leases are judged by the database's clock on PostgreSQL (``now()`` on the
server, so nodes need no synchronised clocks); SQLite lives on one host, whose clock is
the database's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, insert, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)

from notifier.errors import LedgerConfigError, LedgerError, NoLedgerYet
from notifier.ledger.schema import SCHEMA_VERSION, as_utc, meta_table, metadata, migrate

DEFAULT_URL = "sqlite:///notifier.db"
SQLITE_BUSY_TIMEOUT_MS = 10_000


def shown_url(url: str) -> str:
    """A database URL as it may be shown or logged: its password (also one given as a
    ``?password=`` query parameter) is ``***``."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "(not a database URL)"
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def _enable_wal(cursor: Any) -> None:
    """Switch a SQLite file to WAL, waiting for other processes doing the same.

    Changing the journal mode of a new file needs an exclusive lock, and SQLite reports
    "database is locked" at once instead of calling the busy handler when several
    processes open the new file together, so this step waits by itself.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.fetchall()
            return
        except Exception as exc:  # the driver's OperationalError
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# A node frozen inside a transaction (SIGSTOP, a stalled VM) must not hold its row locks
# until it wakes up: the server ends such a session after this long. No transaction of the
# ledger waits on anything but the database.
IDLE_IN_TRANSACTION_MS = 30_000
# No ledger statement takes long: one that runs this long is waiting on a lock or on a
# server in trouble, and the node must get a LedgerError (and retry) instead of hanging.
STATEMENT_TIMEOUT_MS = 60_000
# A server or network that dies without closing the connection (a powered-off host, a
# dropped NAT entry) must not leave a node waiting forever on a socket: TCP keepalives
# find a silent peer within about a minute, and unacknowledged writes give up after
# TCP_USER_TIMEOUT_MS (libpq parameters; a value in NOTIFIER_DB_URL's query wins).
POSTGRESQL_CONNECT_ARGS: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def _postgresql_session(dbapi_conn: Any, _record: Any) -> None:
    """Session settings for every new PostgreSQL connection (best effort)."""
    try:
        with dbapi_conn.cursor() as cursor:
            cursor.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")
            cursor.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        dbapi_conn.commit()
    except Exception:  # a pooler that refuses SET: the ledger still works, just less guarded
        dbapi_conn.rollback()


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(timezone.utc)


# PostgreSQL's duplicate_table, duplicate_object, unique_violation
_ALREADY_EXISTS = {"42P07", "42710", "23505"}


def _already_exists(exc: DBAPIError) -> bool:
    """A "relation ... already exists" from a concurrent CREATE (any IntegrityError too)."""
    if isinstance(exc, IntegrityError):
        return True
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return state in _ALREADY_EXISTS or "already exists" in str(exc.orig).lower()


class Database:
    """An engine on ``url`` with the ledger's schema in place.

    ``create=False`` (read-only commands) refuses to create a missing SQLite file or an
    empty database: :class:`NoLedgerYet`. ``clock`` returns the current aware time
    (tests may pass a fixed one); it is also the lease clock on SQLite.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], datetime] | None = None,
        create: bool = True,
    ) -> None:
        if not url or not isinstance(url, str):
            raise LedgerConfigError(
                "no ledger database URL given",
                fix=f"set NOTIFIER_DB_URL, e.g. NOTIFIER_DB_URL={DEFAULT_URL}",
            )
        self.clock = clock or utcnow
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise LedgerConfigError(
                f"NOTIFIER_DB_URL is not a database URL: {exc}",
                fix=f"use a URL such as {DEFAULT_URL} or postgresql+psycopg://user@host/db",
            ) from None
        self.url = shown_url(url)
        self.sqlite = parsed.get_backend_name() == "sqlite"
        self.postgresql = parsed.get_backend_name() == "postgresql"
        if not create and self.sqlite:
            database = parsed.database or ""
            if database and database != ":memory:" and not Path(database).is_file():
                raise NoLedgerYet(
                    f"no ledger yet at {database}: nothing has run in this project",
                    fix="run a job first (notifier run JOB, or notifier schedule), or set "
                    "NOTIFIER_DB_URL to the ledger you mean",
                )
        try:
            self.engine = self._make_engine(parsed)
        except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
            raise LedgerConfigError(
                f"cannot open the ledger at {self.url}: the database driver is missing ({exc})",
                fix=f"install the Python driver for '{parsed.drivername}' "
                "(for PostgreSQL: pip install 'notifier[postgres]')",
            ) from None
        try:
            self._prepare_schema(create)
        except BaseException:
            self.engine.dispose()
            raise

    # ----------------------------------------------------------------- setup

    def _make_engine(self, parsed: Any) -> Engine:
        if not self.sqlite:
            given = set(parsed.query)
            timeouts = {
                key: value
                for key, value in POSTGRESQL_CONNECT_ARGS.items()
                if self.postgresql and key not in given
            }
            engine = create_engine(parsed, pool_pre_ping=True, connect_args=timeouts)
            if self.postgresql:
                event.listen(engine, "connect", _postgresql_session)
            return engine
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control away from the sqlite3 module: we emit BEGIN ourselves.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
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

    def _prepare_schema(self, create: bool) -> None:
        stored: str | None = None
        for attempt in range(3):
            try:
                # ProgrammingError too: "already exists" when two nodes create the tables
                with self._tx(write=True, passed_on=(IntegrityError, ProgrammingError)) as conn:
                    key = meta_table.c.key == "schema_version"
                    has_meta = self.engine.dialect.has_table(conn, meta_table.name)
                    stored = (
                        conn.execute(select(meta_table.c.value).where(key)).scalar()
                        if has_meta
                        else None
                    )
                    if stored is None and not create:
                        raise NoLedgerYet(
                            f"no ledger yet in {self.url}: nothing has run with it",
                            fix="run a job first, or set NOTIFIER_DB_URL to the ledger you mean",
                        )
                    if stored is not None and int(stored) > SCHEMA_VERSION:
                        break
                    metadata.create_all(conn)
                    if stored is None:
                        conn.execute(
                            insert(meta_table).values(
                                key="schema_version", value=str(SCHEMA_VERSION)
                            )
                        )
                    else:
                        # also at this version: a ledger made by a development build of
                        # it may lack columns added to it since (cheap: an inspection)
                        migrate(conn, int(stored))
                        if int(stored) < SCHEMA_VERSION:
                            conn.execute(
                                meta_table.update().where(key).values(value=str(SCHEMA_VERSION))
                            )
                    stored = str(SCHEMA_VERSION)
                break
            except (IntegrityError, ProgrammingError) as exc:
                # PostgreSQL: two nodes creating the tables at the same moment; the loser
                # sees "already exists" and finds everything in place on the next pass.
                # Anything else (no right to create tables) is one clear error.
                if attempt == 2 or not _already_exists(exc):
                    raise self.wrap(exc) from None
        assert stored is not None
        if int(stored) > SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger at {self.url} has schema version {stored}, newer than this "
                f"notifier supports ({SCHEMA_VERSION})",
                fix="upgrade notifier, or point NOTIFIER_DB_URL at another database",
            )

    # ------------------------------------------------------------ transactions

    def wrap(self, exc: DBAPIError) -> LedgerError:
        """A LedgerError naming the cause and the fix for a driver error."""
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        lowered = reason.lower()
        if "locked" in lowered or "busy" in lowered:
            fix = (
                "another process held the SQLite file for more than "
                f"{SQLITE_BUSY_TIMEOUT_MS // 1000} s; look for a stuck notifier process, "
                "or use PostgreSQL when several schedulers share the ledger"
            )
        elif "unable to open" in lowered or "readonly" in lowered or "read-only" in lowered:
            fix = (
                "make sure the directory of the SQLite file exists and is writable, "
                "or set NOTIFIER_DB_URL to another location"
            )
        elif "statement timeout" in lowered:
            fix = (
                f"the database did not finish a ledger statement within "
                f"{STATEMENT_TIMEOUT_MS // 1000} s (a lock held by another session, or an "
                "overloaded server); it is tried again, check the server's activity"
            )
        elif not isinstance(exc, (OperationalError, InterfaceError)):
            fix = (
                "the database refused a ledger statement; check that NOTIFIER_DB_URL points "
                "at a notifier ledger of this version and that its user may write to it"
            )
        else:
            fix = "check NOTIFIER_DB_URL and that the database server is running and reachable"
        return LedgerError(f"the run ledger at {self.url} failed: {reason[:300]}", fix=fix)

    @contextmanager
    def tx(self, *, write: bool) -> Iterator[Connection]:
        """A transaction; ``write=True`` takes SQLite's write lock up front.

        Every driver error becomes a :class:`LedgerError` (cause and fix, the URL without
        its password), except IntegrityError: a unique key hit is an answer the ledger
        uses (a slot already claimed), not a failure.
        """
        with self._tx(write=write, passed_on=(IntegrityError,)) as conn:
            yield conn

    @contextmanager
    def _tx(self, *, write: bool, passed_on: tuple[type[DBAPIError], ...]) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                if write and self.sqlite:
                    conn = conn.execution_options(notifier_begin="IMMEDIATE")
                with conn.begin():
                    yield conn
        except passed_on:
            raise
        except DBAPIError as exc:
            raise self.wrap(exc) from exc

    # ------------------------------------------------------------------ clocks

    def now(self) -> datetime:
        """This process's idea of now (the ``clock``), aware UTC."""
        return as_utc(self.clock(), "clock()")

    def db_now(self, conn: Connection) -> datetime:
        """The database server's now on PostgreSQL (lease judgements), else :meth:`now`."""
        if self.postgresql:
            value = conn.execute(select(func.now())).scalar_one()
            return as_utc(value, "now()")
        return self.now()

    def dispose(self) -> None:
        """Release all database connections."""
        self.engine.dispose()
