"""Alert jobs: the cooldown that keeps one alert from mailing every run, and recovery.

* An alert's identity (:func:`alert_key`) is the set of subjects and recipients it sends.
  With ``cooldown:``, the same alert is sent at most once per cooldown; a run that would
  repeat it inside the cooldown ends ``suppressed``.
* With ``notify_recovery: true``, the first quiet run (``report.skip(...)``) after an
  alert mails "RECOVERED" to whoever received the alert, and a new alert after that is
  news again, whatever the cooldown.

Both count scheduled runs only: a manual run (``notifier run JOB``) always sends and never
silences the next real alert. An alert still being delivered (held up by a mail outage)
counts as sent, so the next run does not queue it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

from notifier.jobs import Job
from notifier.ledger import Ledger, Run, RunStatus

_SENT = ("delivered", "queued", "sending", "deferred", "unknown")


def alert_key(subjects_and_recipients: Sequence[tuple[str, Sequence[str]]]) -> str:
    """Identity of an alert for the cooldown: the subjects and recipients it sends."""
    parts = sorted(
        f"{subject}|{','.join(sorted(rcpts))}" for subject, rcpts in subjects_and_recipients
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def previous_outcome(ledger: Ledger, job: Job, run: Run) -> Run | None:
    """The newest other scheduled run of the job that alerted, was suppressed or was quiet."""
    wanted = {
        RunStatus.SUCCEEDED.value,
        RunStatus.DELIVERING.value,
        RunStatus.SUPPRESSED.value,
        RunStatus.SKIPPED.value,
    }
    return next(
        (
            r
            for r in ledger.history(job.name, limit=50)
            if r.run_id != run.run_id and not r.manual and r.status in wanted
        ),
        None,
    )


def cooling_down(ledger: Ledger, job: Job, run: Run, key: str) -> datetime | None:
    """When the cooldown of this alert ends, if this run falls inside it (else None)."""
    if not job.cooldown_seconds or run.manual:
        return None
    last = ledger.last_alert(job.name, key)
    if last is None:
        return None
    until = last.slot + timedelta(seconds=job.cooldown_seconds)
    if run.slot >= until or told_recovered(ledger, job, run):
        return None
    return until


def told_recovered(ledger: Ledger, job: Job, run: Run) -> bool:
    """True when the run before this alert was quiet and the job mails recoveries: the
    recipients were told it recovered, so a new alert is news whatever the cooldown."""
    if not job.notify_recovery:
        return False
    previous = previous_outcome(ledger, job, run)
    return previous is not None and previous.status == RunStatus.SKIPPED.value


def recovery_due(ledger: Ledger, job: Job, run: Run) -> Run | None:
    """The alert run this quiet run recovers from (None when no recovery email is due)."""
    if not job.notify_recovery or run.manual:
        return None
    previous = previous_outcome(ledger, job, run)
    if previous is None or previous.status == RunStatus.SKIPPED.value or not previous.alert_key:
        return None
    return previous


def alert_recipients(ledger: Ledger, job: Job, alert: Run) -> list[str]:
    """Who got the alert (its queued report emails), else the job's recipients."""
    sent = alert
    if alert.status == RunStatus.SUPPRESSED.value and alert.alert_key:
        sent = ledger.last_alert(job.name, alert.alert_key) or alert
    rows = ledger.queue.rows(run_ids=[sent.run_id])
    got = [r.recipient for r in rows if r.purpose == "report" and r.status in _SENT]
    return list(dict.fromkeys(got)) or [*job.to, *job.cc]
