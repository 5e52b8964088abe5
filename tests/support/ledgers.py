"""Reaching into a ledger database the way no API does, for tests: on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import create_engine, text, update

from notifier.ledger.schema import nodes_table

LONG_AGO = datetime(2000, 1, 1, tzinfo=timezone.utc)


def run_sql(url: str, statement: str, params: dict[str, Any] | None = None) -> list[Sequence]:
    """Run one SQL statement on the ledger at ``url``; returns its rows."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params or {})
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def expire_lease(url: str, node_id: str) -> None:
    """Make a node's lease run out (as if it had not renewed it for a long time)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            done = conn.execute(
                update(nodes_table)
                .where(nodes_table.c.node_id == node_id)
                .values(lease_until=LONG_AGO, heartbeat_at=LONG_AGO)
            )
            assert done.rowcount == 1, f"no node {node_id}"
    finally:
        engine.dispose()
