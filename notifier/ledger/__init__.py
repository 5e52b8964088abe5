"""The ledger: runs, nodes and the outbound mail queue, in SQLite or PostgreSQL.

``schema`` (tables and migrations), ``database`` (engine, transactions, clocks),
``store`` (:class:`Ledger`: claims, fencing, recovery, history), ``queue`` (the outbound
queue), ``nodes`` (node leases and liveness), ``statuses`` (the states of runs and of
queued recipients).
"""

from notifier.ledger.database import (
    DEFAULT_URL,
    LedgerConfigError,
    LedgerError,
    NoLedgerYet,
)
from notifier.ledger.queue import Fenced
from notifier.ledger.schema import SCHEMA_VERSION
from notifier.ledger.statuses import TRIGGERS, RecipientStatus, RunStatus
from notifier.ledger.store import MANUAL, SCHEDULED, Ledger, Run

__all__ = [
    "DEFAULT_URL",
    "MANUAL",
    "SCHEDULED",
    "SCHEMA_VERSION",
    "TRIGGERS",
    "Fenced",
    "Ledger",
    "LedgerConfigError",
    "LedgerError",
    "NoLedgerYet",
    "RecipientStatus",
    "Run",
    "RunStatus",
]
