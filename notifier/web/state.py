"""The project a dashboard shows: its settings, its jobs file, its ledger, its run path.

One :class:`Dashboard` per server. The jobs file is re-read when it changes; an invalid
edit keeps the last good file (as the daemon does) and the page shows both. The ledger
is opened when there is one (a fresh project has none until something runs); inside
``notifier schedule`` the daemon's own ledger and run path are used, so the process is one
node.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from notifier.errors import JobsFileError, NotifierError
from notifier.jobs import Job, JobsFile, load_jobs
from notifier.ledger import Ledger, NoLedgerYet
from notifier.runs.path import RunPath
from notifier.settings import Settings

log = logging.getLogger("notifier.web")


@dataclass(frozen=True)
class JobsView:
    """What the jobs page shows: the last good file, and the current file's errors."""

    good: JobsFile | None
    error: JobsFileError | NotifierError | None
    loaded_at: datetime | None
    path: Path

    @property
    def jobs(self) -> list[Job]:
        """The jobs of the last good file (what a daemon runs)."""
        return list(self.good.jobs) if self.good else []


class JobsSource:
    """jobs.yaml, re-read when its size or mtime changes; keeps the last good file."""

    def __init__(self, path: Path, initial: JobsFile | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._good = initial
        self._loaded_at = datetime.now(timezone.utc) if initial else None
        self._error: JobsFileError | NotifierError | None = None
        self._stamp = self._stat() if initial else None

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def view(self) -> JobsView:
        """The current view, re-reading the file if it changed since the last look."""
        with self._lock:
            stamp = self._stat()
            if stamp != self._stamp or (stamp is None and self._error is None):
                self._stamp = stamp
                try:
                    self._good = load_jobs(self.path)
                    self._loaded_at = datetime.now(timezone.utc)
                    self._error = None
                except (JobsFileError, NotifierError) as error:
                    self._error = error
            return JobsView(self._good, self._error, self._loaded_at, self.path)


class Dashboard:
    """Everything the pages read: settings, jobs, the ledger, and the run path for Run now."""

    def __init__(
        self,
        jobs_path: Path,
        settings: Settings,
        *,
        ledger: Ledger | None = None,
        runner: RunPath | None = None,
        jobs: JobsFile | None = None,
    ) -> None:
        self.jobs_path = Path(jobs_path)
        self.settings = settings
        self.source = JobsSource(self.jobs_path, jobs)
        self._ledger = ledger
        self._owns_ledger = ledger is None
        self._runner = runner
        self._lock = threading.Lock()
        self.started = threading.Event()  # set by tests and embedders once serving
        # Run now executes at most NOTIFIER_WORKERS notebooks at once; more clicks wait
        self.run_now_slots = threading.BoundedSemaphore(settings.workers)

    # ----------------------------------------------------------------- jobs

    def jobs(self) -> JobsView:
        """The jobs file as the pages show it."""
        return self.source.view()

    def job(self, name: str) -> Job | None:
        """The job called ``name`` in the last good jobs file."""
        return next((job for job in self.jobs().jobs if job.name == name), None)

    def zone_of(self, name: str) -> tzinfo | None:
        """A job's time zone (None for ad-hoc notebooks: the settings' zone is used)."""
        job = self.job(name)
        return job.tz if job is not None else self.zone

    @property
    def zone(self) -> tzinfo:
        """The zone for times that belong to no job (NOTIFIER_TIMEZONE)."""
        try:
            return ZoneInfo(self.settings.timezone)
        except (KeyError, ValueError):
            return timezone.utc

    # --------------------------------------------------------------- ledger

    def ledger(self, *, create: bool = False) -> Ledger | None:
        """The project's ledger; None while nothing has run (unless ``create``)."""
        with self._lock:
            if self._ledger is None:
                try:
                    self._ledger = Ledger(
                        self.settings.db_url,
                        create=create,
                        lease_seconds=self.settings.lease_seconds,
                    )
                    self._ledger.nodes.configure(role="web")
                except NoLedgerYet:
                    return None
            return self._ledger

    def runner(self) -> RunPath:
        """The run path for Run now (the daemon's inside ``notifier schedule``)."""
        ledger = self.ledger(create=True)
        assert ledger is not None
        with self._lock:
            if self._runner is None:
                self._runner = RunPath(self.settings, ledger)
            return self._runner

    def close(self) -> None:
        """Stop this node if the dashboard opened the ledger itself."""
        with self._lock:
            if self._ledger is not None and self._owns_ledger:
                self._ledger.close()
                self._ledger = None
