"""The daemon's view of an unreachable ledger: backoff, one line going, one line back.

(The real thing, a PostgreSQL server stopped under a running daemon, is in test_nodes.py.)
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from notifier.daemon.outage import LedgerOutage

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


def test_backoff_doubles_to_its_cap_and_each_outage_is_two_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    outage = LedgerOutage(first_delay=1.0, max_delay=10.0, clock=lambda: now[0])
    assert outage.may_try() and not outage.down
    waits = []
    with caplog.at_level(logging.INFO, logger="notifier.daemon"):
        for _ in range(7):
            outage.failed(ConnectionError("connection refused\n  fix: start it"), "claiming x")
            start = now[0]
            while not outage.may_try():
                now[0] += 0.5
            waits.append(now[0] - start)
        for minute in range(25):
            outage.not_run("daily", T0 + timedelta(minutes=minute))
        assert outage.succeeded() and not outage.succeeded()
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("the ledger is unavailable while claiming x (connection refused")
    assert "no slot runs until it is back" in lines[0] and "\n" not in lines[0]
    assert lines[1].startswith("the ledger is reachable again after 45 s; ")
    assert "25 slot(s) were not run meanwhile (daily 2026-01-05T08:00:00+00:00," in lines[1]
    assert lines[1].count("daily ") == 10 and "and 15 more" in lines[1]
    # the next outage starts its backoff afresh
    outage.failed(ConnectionError("down"), "claiming y")
    now[0] += 1.0
    assert outage.may_try()
