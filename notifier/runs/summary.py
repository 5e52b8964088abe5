"""How a run ended, in one line for the log and a few lines for the terminal.

The closing line names the outcome of every email (accepted by the server, written to the
outbox, deferred until T, refused with the server's code) and the run folder; a failed
run's line is an ERROR with the reason, one whose mail is waiting a WARNING.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime

from notifier.delivery.worker import Outcome
from notifier.ledger import RecipientStatus, RunStatus
from notifier.runs.path import RunResult


def _when(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%H:%M:%S") if moment else "?"


def outcome_phrase(outcome: Outcome) -> str:
    """``accepted by the server (250)``, ``written to outbox FILE``, ``deferred until T: ...``."""
    status = outcome.status
    if status is RecipientStatus.DELIVERED:
        if outcome.location:
            return f"written to outbox {outcome.location}"
        return f"accepted by the server ({outcome.code})" if outcome.code else "accepted"
    if status is RecipientStatus.DEFERRED:
        return f"deferred until {_when(outcome.next_attempt_at)}: {outcome.reply}"
    if status is RecipientStatus.REFUSED:
        code = f" {outcome.code}" if outcome.code else ""
        return f"refused{code}: {outcome.reply}"
    if status is RecipientStatus.UNKNOWN:
        return f"outcome unknown (possibly delivered): {outcome.reply}"
    return f"{status.value}: {outcome.reply}"


def closing_line(result: RunResult) -> tuple[int, str]:
    """The log level and text of the line that ends a run."""
    run = result.run
    execution = result.execution
    folder = f"; run folder {execution.run_dir}" if execution is not None else ""
    reports = [o for o in result.outcomes if o.purpose == "report"]
    counts = Counter(o.status.value for o in reports)
    mail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    if result.fenced:
        return logging.WARNING, (
            f"taken over by node {run.owner} (attempt {run.attempt}, now {run.status}): "
            f"this node delivered nothing{folder}"
        )
    if run.status == RunStatus.FAILED.value:
        return logging.ERROR, f"failed: {run.error or 'unknown error'}{folder}"
    if run.status == RunStatus.DELIVERING.value:
        waiting = [o for o in reports if o.status is RecipientStatus.DEFERRED]
        first = f"; {waiting[0].recipient} {outcome_phrase(waiting[0])}" if waiting else ""
        return logging.WARNING, f"mail waiting in the queue ({mail}){first}{folder}"
    if run.status == RunStatus.SKIPPED.value:
        return logging.INFO, f"skipped: {run.notes or ''}{folder}"
    if run.status == RunStatus.SUPPRESSED.value:
        return logging.INFO, f"suppressed: {run.notes or ''}{folder}"
    if run.status == RunStatus.SUCCEEDED.value and reports:
        where = sorted({o.location.rsplit("/", 1)[0] for o in reports if o.location})
        place = f" (outbox {where[0]})" if len(where) == 1 else ""
        level = logging.WARNING if result.warnings else logging.INFO
        warned = "".join(f"; warning: {w}" for w in result.warnings)
        return level, f"succeeded: {mail}{place}{warned}{folder}"
    if run.status == RunStatus.INTERRUPTED.value:
        return logging.WARNING, f"interrupted: {run.error or ''}{folder}"
    return logging.INFO, f"{run.status}: {run.notes or ''}{folder}"
