"""``keep_runs``: forget old runs in the ledger (with their mail) and delete their folders."""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta, timezone

from notifier.jobs import Job
from notifier.ledger import Ledger, LedgerError
from notifier.notebook.execute import job_runs_folder
from notifier.settings import Settings

log = logging.getLogger("notifier.runs")


def retention_cutoff(job: Job, now: datetime) -> datetime | None:
    """Runs with a slot before this are forgotten; None when the job keeps every run.

    Never later than ``now`` minus the job's misfire grace, whatever ``keep_runs`` says: a
    run's row is what keeps its slot taken, and a daemon may still fire, catch up or re-run
    (when interrupted) a slot within the grace. Forgetting it earlier would let a second
    daemon run that slot again and mail it twice.
    """
    if not job.keep_runs_seconds:
        return None
    keep = max(job.keep_runs_seconds, job.misfire.grace_seconds)
    return now - timedelta(seconds=keep)


def apply_retention(ledger: Ledger, settings: Settings, job: Job) -> None:
    """Remove ledger rows and run folders (every attempt) older than the job's keep_runs
    (but never within its misfire grace: see :func:`retention_cutoff`)."""
    cutoff = retention_cutoff(job, datetime.now(timezone.utc))
    if cutoff is None:
        return
    try:
        ledger.purge(job.name, cutoff)
    except LedgerError as error:  # tried again after the next run
        log.warning("%s: retention skipped this time: %s", job.name, error)
        return
    job_folder = job_runs_folder(settings.runs_dir, job.name).resolve()
    kept: dict[str, bool] = {}
    for folder in job_folder.glob("*T*Z-*") if job_folder.is_dir() else ():
        try:  # folder names start with the slot: 20261122T080000Z-<run id>[-N]
            stamp = datetime.strptime(folder.name[:16], "%Y%m%dT%H%M%SZ")
        except ValueError:
            continue
        if stamp.replace(tzinfo=timezone.utc) >= cutoff or not folder.is_dir():
            continue
        run_id = folder.name[17:].split("-")[0]
        if run_id not in kept:
            try:  # a run the purge kept (running, delivering, mail waiting) keeps its folder
                kept[run_id] = ledger.get(run_id) is not None
            except LedgerError:
                kept[run_id] = True  # not sure: the next run's retention decides
        if not kept[run_id]:
            shutil.rmtree(folder, ignore_errors=True)
