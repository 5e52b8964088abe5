"""The ledger's tables, its UTC timestamp type, and the schema migrations.

Tables:

* ``runs``: one row per slot of a job (or per ad-hoc notebook run), unique on
  ``(job, slot, slot_kind)``; ``attempt`` is the fencing generation of its current claim.
* ``nodes``: every process that claims runs or sends queued mail, with a lease renewed by
  heartbeats. A run or a queue row owned by a node whose lease ran out is taken over.
* ``messages`` + ``message_parts`` (+ ``message_part_links``) + ``recipients``: the
  outbound queue. A message is one email of a run, keyed by its content identity; its
  parts (charts, attachments) are stored once per sha256 however many emails share them;
  ``recipients`` holds one row per (message, recipient) with its delivery state.
* ``deliveries``: an append-only log, one row per answer a recipient got (accepted,
  refused, deferred, unknown...), for history and the dashboard.
* ``run_files``: what a user reads about a run (its rendered output, the worker's log),
  compressed, so every node can show runs that executed on another.
* ``job_pauses``: jobs paused with ``notifier pause``; every node obeys.

Schema 1 (notifier 0.1) had ``runs`` and ``deliveries`` only; :func:`migrate` brings it to
the current version in place.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Dialect

SCHEMA_VERSION = 2

metadata = MetaData()


def as_utc(value: datetime, name: str) -> datetime:
    """``value`` converted to UTC; naive datetimes and non-datetimes are refused."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (got naive {value.isoformat()})")
    return value.astimezone(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always stores UTC and always returns aware UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """UTC on the way in (naive UTC wall time on SQLite)."""
        if value is None:
            return None
        value = as_utc(value, "timestamp")
        # SQLite has no offset column: store the UTC wall time so that text comparison of
        # stored values (the unique key, "slot < ?") orders and matches by instant.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Aware UTC on the way out."""
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
    Column("job", String(400), nullable=False),
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
    # schema 2
    Column("notebook", Text),
    Column("parameters", Text),  # JSON, as passed to papermill (never a secret: refused)
    Column("failure_recipients", Text),  # JSON list: who hears about this run's problems
    Column("progress", Text),  # JSON while the notebook runs: {"cell": i, "cells": n, ...}
    UniqueConstraint("job", "slot", "slot_kind", name="uq_runs_job_slot_kind"),
    Index("ix_runs_status", "status"),
    Index("ix_runs_job_alert", "job", "alert_key"),
    Index("ix_runs_job_slot", "job", "slot"),
    Index("ix_runs_slot", "slot"),
)

run_files_table = Table(
    "run_files",
    metadata,
    # what a user reads about a run on any node (output.html, worker.log, ...), compressed
    Column("run_id", String(64), ForeignKey("runs.run_id"), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("compressed", Boolean, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

pauses_table = Table(
    "job_pauses",
    metadata,
    # `notifier pause JOB`: every node obeys it; jobs.yaml stays the truth for the rest
    Column("job", String(400), primary_key=True),
    Column("paused_at", UTCDateTime, nullable=False),
    Column("paused_by", String(300), nullable=False),
    Column("reason", Text, nullable=False, default=""),
)

nodes_table = Table(
    "nodes",
    metadata,
    Column("node_id", String(300), primary_key=True),
    Column("host", String(255), nullable=False),
    # boot id + pid namespace: two processes with the same host_key can check each other's pid
    Column("host_key", String(128), nullable=False),
    Column("pid", Integer, nullable=False),
    # epoch milliseconds need 64 bits (PostgreSQL's INTEGER is 32)
    Column("process_start_ms", BigInteger, nullable=False),
    Column("role", String(16), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime),
    Column("jobs_hash", String(64)),
    Column("version", String(32)),
    Index("ix_nodes_lease", "lease_until"),
)

messages_table = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False),
    # content identity within the run: report.email(key=...) or a hash of the content
    Column("email_key", String(128), nullable=False),
    Column("purpose", String(16), nullable=False),  # report | failure | recovery | notice
    Column("message_id", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("sender", String(320), nullable=False),
    Column("size", Integer, nullable=False),
    Column("spec", LargeBinary, nullable=False),  # zlib-compressed JSON, see ledger.messages
    Column("transport", String(16), nullable=False),  # default | outbox
    Column("on_unknown", String(8), nullable=False),  # skip | resend
    # what the email says (sha256 of its content without the Bcc envelope): a re-attempt
    # that plans the same key with other content never joins this message (planning.py)
    Column("content_sha", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    UniqueConstraint("run_id", "email_key", name="uq_messages_run_key"),
    Index("ix_messages_run", "run_id"),
)

parts_table = Table(
    "message_parts",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("compressed", Boolean, nullable=False),
    Column("data", LargeBinary, nullable=False),
    # touched by every enqueue that links the part, so retention never deletes a part
    # that a concurrent enqueue is about to use
    Column("last_used_at", UTCDateTime, nullable=False),
)

part_links_table = Table(
    "message_part_links",
    metadata,
    Column("message_pk", Integer, ForeignKey("messages.id"), nullable=False),
    Column("sha256", String(64), nullable=False),
    UniqueConstraint("message_pk", "sha256", name="uq_part_links"),
    Index("ix_part_links_sha256", "sha256"),
)

recipients_table = Table(
    "recipients",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_pk", Integer, ForeignKey("messages.id"), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime),
    Column("last_attempt_at", UTCDateTime),
    Column("code", Integer),
    Column("reply", Text, nullable=False, default=""),
    Column("location", Text),  # where the outbox wrote it
    # who is working on the row (a node id) and until when; sending rows of a dead
    # claimant have an unknown outcome
    Column("claimed_by", String(300)),
    Column("claimed_until", UTCDateTime),
    # which claim of that node (one per claim of a delivery pass): a row is marked,
    # answered and released only under the claim that took it
    Column("claim_token", String(64)),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("message_pk", "recipient", name="uq_recipients_message_rcpt"),
    Index("ix_recipients_due", "status", "next_attempt_at"),
    Index("ix_recipients_run", "run_id"),
)

deliveries_table = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False),
    # The run's attempt when this answer was recorded (a slot keeps one run row).
    Column("attempt", Integer, nullable=False),
    Column("email_key", String(128), nullable=False),
    Column("message_id", Text, nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("status", String(16), nullable=False),
    Column("code", Integer),
    Column("reply", Text, nullable=False, default=""),
    Column("at", UTCDateTime, nullable=False),
    Column("recipient_pk", Integer),  # schema 2: the queue row this answer belongs to
    Index("ix_deliveries_run_email", "run_id", "email_key"),
)

# Columns added by schema 2 to tables that schema 1 already had: (table, column, SQL type).
_ADDED_IN_2 = (
    ("runs", "notebook", "TEXT"),
    ("runs", "parameters", "TEXT"),
    ("runs", "failure_recipients", "TEXT"),
    ("runs", "progress", "TEXT"),
    ("deliveries", "recipient_pk", "INTEGER"),
    ("messages", "content_sha", "VARCHAR(64)"),
    ("recipients", "claim_token", "VARCHAR(64)"),
)


def migrate(conn: Connection, stored: int) -> None:
    """Bring a schema-``stored`` database to :data:`SCHEMA_VERSION` (inside a transaction).

    New tables and indexes are created by ``metadata.create_all`` beforehand; this adds
    the columns older tables lack, also to a ledger already at this version (one made
    before a column was added to it during its development).
    """
    if stored > SCHEMA_VERSION:
        return
    inspector = inspect(conn)
    existing = {
        table: {column["name"] for column in inspector.get_columns(table)}
        for table in {table for table, _, _ in _ADDED_IN_2}
        if inspector.has_table(table)
    }
    for table, column, sql_type in _ADDED_IN_2:
        if table in existing and column not in existing[table]:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
    # create_all makes the indexes of new tables only
    for index in runs_table.indexes:
        index.create(conn, checkfirst=True)
