"""Warm starts: the daemon's pool of workers prepared shortly before their slots.

The daemon tells the pool which ``(job, slot)`` pairs are coming (each job's next fire
time within ``NOTIFIER_WARM_LEAD`` seconds, and slots that fired but wait for a free
worker); the pool keeps a :class:`~notifier.notebook.prepared.PreparedWorker` ready for
each, earliest slot first, at most ``limit`` (``NOTIFIER_WORKERS``) waiting at once. At
the slot the run path takes the one for its ``(job, slot)`` (:meth:`WarmPool.take`) and
hands it the run; a worker whose slot is no longer coming (cancelled, run cold, the job
removed, changed or disabled on reload) or that waited past its slot by more than
``stale_after`` is shut down cleanly, and so is every waiting one when the pool closes.

Workers are started, and their process objects kept, by the pool's own thread, which
lives until :meth:`WarmPool.close`: a worker gets SIGTERM when the thread that started it
ends (PR_SET_PDEATHSIG), so a daemon killed with -9 leaves none behind, prepared or busy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from notifier.jobs import Job
from notifier.notebook.forkserver import ForkServer
from notifier.notebook.prepared import (
    WARM_FOLDER,
    PreparedWorker,
    start_prepared,
    worker_environment,
)
from notifier.settings import Settings

log = logging.getLogger("notifier.warm")

Key = tuple[str, datetime]  # (job name, slot)
# the longest the pool sleeps without looking (a reload or a fired slot wakes it earlier)
MAX_NAP = 30.0
# a cancelled worker gets this long to shut its kernel down before it is killed
CANCEL_GRACE = 10.0


@dataclass(frozen=True)
class Coming:
    """A slot the pool should have a worker for: ``job`` fires (or fired) at ``slot``."""

    job: Job
    slot: datetime


def job_fingerprint(job: Job) -> str:
    """What a prepared worker depends on: when it changes, the worker no longer fits."""
    fields = (str(Path(job.notebook).resolve()), job.kernel, job.warm_imports, job.timeout_seconds)
    return hashlib.sha256(repr(fields).encode()).hexdigest()[:16]


class WarmPool:
    """Prepared workers for the coming slots; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        coming: Callable[[float], tuple[list[Coming], datetime | None]],
        *,
        lead: float | None = None,
        limit: int | None = None,
        stale_after: float = 600.0,
        concurrency: int | None = None,
        use_fork_server: bool | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        """``coming(lead)`` returns the slots to prepare for, in the order they will run,
        and the first fire time beyond ``lead`` (when to look again). At most
        ``concurrency`` (default: the number of CPUs) workers prepare at the same time."""
        self.settings = settings
        self.lead = settings.warm_lead if lead is None else lead
        self.limit = settings.workers if limit is None else limit
        self.stale_after = stale_after
        self.concurrency = max(1, concurrency or os.cpu_count() or 1)
        self.clock = clock
        self._coming = coming
        self._lock = threading.Condition()
        self._waiting: dict[Key, PreparedWorker] = {}  # prepared (or preparing), not taken
        self._busy: list[PreparedWorker] = []  # taken by a run: kept for the thread's sake
        self._closing: list[tuple[PreparedWorker, float]] = []  # cancelled, deadline
        self._tried: set[tuple[str, datetime, str]] = set()  # (job, slot, fingerprint)
        self._stop = False
        self._wake = False
        self._thread: threading.Thread | None = None
        self.prepared_count = 0  # workers started so far (for logs and benchmarks)
        self.use_fork_server = (
            settings.warm_fork_server if use_fork_server is None else use_fork_server
        )
        self.server: ForkServer | None = None
        self._server_tried = -1e9  # monotonic time of the last start attempt

    # -- the daemon's side -----------------------------------------------------------------
    def start(self) -> None:
        """Start the pool's thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="warm-pool", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Look at the coming slots now (a slot fired, a run took its worker, a reload)."""
        with self._lock:
            self._wake = True
            self._lock.notify_all()

    def take(self, job: Job, slot: datetime) -> PreparedWorker | None:
        """The worker prepared for ``(job, slot)``, now the caller's; None: run cold.

        It must still run and fit the job as it is now (a reload may have changed it).
        When none was prepared (the slot came too soon, or waited behind a full pool), one
        is forked now when the fork server runs: it costs the run its kernel's start, not
        the imports. Either way the pool prepares nothing more for this slot.
        """
        fingerprint = job_fingerprint(job)
        with self._lock:
            self._tried.add((job.name, slot, fingerprint))  # its run has begun
            worker = self._waiting.pop((job.name, slot), None)
            if worker is not None and worker.alive and worker.fingerprint == fingerprint:
                self._busy.append(worker)
                self._wake = True  # room for the next one
                self._lock.notify_all()
                return worker
            if worker is not None:
                log.debug(
                    "%s: the worker prepared for slot %s is %s: not used",
                    job.name,
                    slot,
                    "gone" if not worker.alive else "for the job as it was before a reload",
                )
                self._closing.append((worker, time.monotonic() + CANCEL_GRACE))
            server = self.server
        if worker is not None:
            worker.cancel()
        if server is None or not server.alive or self._stop:
            return None
        try:
            fresh = self._start(Coming(job, slot), server)
        except OSError:
            return None
        with self._lock:
            self._busy.append(fresh)
        return fresh

    def waiting(self) -> list[PreparedWorker]:
        """The prepared workers not taken yet (for tests and logs)."""
        with self._lock:
            return list(self._waiting.values())

    def close(self, timeout: float = 30.0) -> None:
        """Shut down every waiting worker, wait for busy ones (their runs end or are killed
        by the daemon's shutdown), then end the thread."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._shut_down_all(timeout)

    # -- the pool's thread -----------------------------------------------------------------
    def _fork_server(self) -> ForkServer | None:
        """The fork server, (re)started when needed (at most once a minute); None: without."""
        if not self.use_fork_server:
            return None
        if self.server is not None and self.server.alive:
            return self.server
        if time.monotonic() - self._server_tried < 60:
            return None
        self._server_tried = time.monotonic()
        if self.server is not None:
            log.warning("warm starts: the fork server stopped; starting it again")
            self.server.stop()
        scratch = self.settings.runs_dir / WARM_FOLDER / "fork-server"
        try:
            scratch.mkdir(parents=True, exist_ok=True)
            server = ForkServer(worker_environment(scratch.resolve()))
            server.start()
        except OSError as error:
            log.info("warm starts: workers are started one by one (no fork server: %s)", error)
            self.server = None
            return None
        self.server = server
        return server

    def _loop(self) -> None:
        self._fork_server()  # from this thread, which outlives it (PDEATHSIG)
        while True:
            with self._lock:
                if self._stop:
                    break
            try:
                nap = self._tick()
            except Exception as error:  # the ledger or a reload: never the end of warm starts
                log.warning("warm starts: %s; looking again shortly", error)
                nap = 5.0
            with self._lock:
                if not self._wake and not self._stop:
                    self._lock.wait(nap)
                self._wake = False
        self._shut_down_all(CANCEL_GRACE)

    def _tick(self) -> float:
        """Cancel what is no longer coming, prepare what is; returns how long to sleep."""
        coming, later = self._coming(self.lead)
        now = self.clock()
        wanted = {(c.job.name, c.slot): c for c in coming}
        cancel: list[PreparedWorker] = []
        with self._lock:
            for key, worker in list(self._waiting.items()):
                c = wanted.get(key)
                stale = (now - worker.slot).total_seconds() > self.stale_after
                if c is None or stale or worker.fingerprint != job_fingerprint(c.job):
                    cancel.append(self._waiting.pop(key))
                elif not worker.alive:  # it could not prepare: the slot runs cold
                    self._waiting.pop(key)
                    self._log_failure(worker)
                    worker.remove_folder()
            # a slot gets one worker (its run takes it, or it goes cold): remembered until
            # the slot is long past
            self._tried = {
                t for t in self._tried if (now - t[1]).total_seconds() < self.stale_after
            }
            # preparing is CPU work: a few at a time, earliest slot first, so that the next
            # slot's worker is ready soonest when many are due at once
            preparing = sum(1 for w in self._waiting.values() if not w.ready and w.alive)
            starts = []
            for key, c in wanted.items():
                if len(self._waiting) + len(starts) >= self.limit:
                    break
                if preparing + len(starts) >= self.concurrency:
                    break
                tried = (key[0], key[1], job_fingerprint(c.job))
                if key in self._waiting or tried in self._tried:
                    continue
                if (now - c.slot).total_seconds() > self.stale_after:
                    continue  # long overdue (waiting for a worker): it starts cold
                self._tried.add(tried)
                starts.append(c)
        for worker in cancel:
            log.debug(
                "%s: slot %s not coming: prepared worker cancelled", worker.job_name, worker.slot
            )
            worker.cancel()
            with self._lock:
                self._closing.append((worker, time.monotonic() + CANCEL_GRACE))
        for c in starts:
            self._prepare(c)
        self._reap()
        # look again when the next slot comes within the lead, or something changes
        nap = MAX_NAP
        if later is not None:
            nap = min(nap, max(0.05, (later - now).total_seconds() - self.lead))
        if self._closing or any(not w.ready for w in self.waiting()):
            nap = min(nap, 0.5)  # follow cancels and preparations
        return nap

    def _prepare(self, coming: Coming) -> None:
        try:
            worker = self._start(coming, self._fork_server())
        except OSError as error:
            log.warning(
                "%s: could not prepare a worker for slot %s: %s",
                coming.job.name,
                coming.slot,
                error,
            )
            return
        self.prepared_count += 1
        log.debug(
            "%s: preparing a worker for slot %s (pid %d)", coming.job.name, coming.slot, worker.pid
        )
        with self._lock:
            self._waiting[(coming.job.name, coming.slot)] = worker

    def _start(self, coming: Coming, server: ForkServer | None) -> PreparedWorker:
        job = coming.job
        worker = start_prepared(
            self.settings,
            job_name=job.name,
            slot=coming.slot,
            notebook=job.notebook,
            kernel_name=job.kernel,
            warm_imports=job.warm_imports,
            start_timeout=min(60.0, job.timeout_seconds),
            max_wait=self.lead + self.stale_after + 60,
            server=server,
        )
        worker.fingerprint = job_fingerprint(job)
        return worker

    def _reap(self) -> None:
        """Forget finished busy workers; kill cancelled ones that overstay their grace."""
        now = time.monotonic()
        with self._lock:
            closing, self._closing = self._closing, []
            self._busy = [w for w in self._busy if w.alive]
        still: list[tuple[PreparedWorker, float]] = []
        for worker, deadline in closing:
            if worker.alive and now < deadline:
                still.append((worker, deadline))
                continue
            if worker.alive:
                log.warning("%s: a cancelled prepared worker did not stop: killed", worker.job_name)
                worker.kill()
            worker.remove_folder()
        with self._lock:
            self._closing += still

    def _log_failure(self, worker: PreparedWorker) -> None:
        try:
            tail = (worker.folder / "worker.log").read_text(errors="replace").strip()
        except OSError:
            tail = ""
        last = tail.splitlines()[-1] if tail else f"exit status {worker.proc.returncode}"
        log.warning(
            "%s: could not prepare a worker for slot %s (%s); it runs cold",
            worker.job_name,
            worker.slot,
            last,
        )

    def _shut_down_all(self, timeout: float) -> None:
        with self._lock:
            waiting = list(self._waiting.values())
            self._waiting.clear()
            closing, self._closing = [w for w, _ in self._closing], []
        for worker in waiting:
            worker.cancel()
        deadline = time.monotonic() + timeout
        for worker in [*waiting, *closing]:
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - TimeoutExpired: killed below
                pass
            if worker.alive:
                worker.kill()
            worker.remove_folder()
        # busy workers belong to their runs; this thread started them, so it waits for them
        # (the daemon's shutdown kills what outlives its grace period)
        while True:
            with self._lock:
                busy = [w for w in self._busy if w.alive]
            if not busy or time.monotonic() > deadline + 15:
                break
            time.sleep(0.1)
        if self.server is not None:  # its workers are done (or would die with it)
            self.server.stop()
            self.server = None
        shutil.rmtree(self.settings.runs_dir / WARM_FOLDER / "fork-server", ignore_errors=True)


def slots_within(
    jobs: Iterable[tuple[Job, datetime | None]], lead: float, now: datetime
) -> tuple[list[Coming], datetime | None]:
    """Of each job's next fire time: those within ``lead`` seconds (earliest first), and the
    first one beyond."""
    coming: list[Coming] = []
    later: datetime | None = None
    for job, when in jobs:
        if when is None:
            continue
        if (when - now).total_seconds() <= lead:
            coming.append(Coming(job, when))
        elif later is None or when < later:
            later = when
    coming.sort(key=lambda c: c.slot)
    return coming, later
