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


def apply_retention(ledger: Ledger, settings: Settings, job: Job) -> None:
    """Remove ledger rows and run folders (every attempt) older than the job's keep_runs."""
    if not job.keep_runs_seconds:
        return
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=job.keep_runs_seconds)
    try:
        ledger.purge(job.name, cutoff)
    except LedgerError as error:  # tried again after the next run
        log.warning("%s: retention skipped this time: %s", job.name, error)
        return
    job_folder = job_runs_folder(settings.runs_dir, job.name).resolve()
    for folder in job_folder.glob("*T*Z-*") if job_folder.is_dir() else ():
        try:  # folder names start with the slot: 20261122T080000Z-<run id>[-N]
            stamp = datetime.strptime(folder.name[:16], "%Y%m%dT%H%M%SZ")
        except ValueError:
            continue
        if stamp.replace(tzinfo=timezone.utc) < cutoff and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
