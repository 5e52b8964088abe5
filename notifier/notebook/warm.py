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
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from notifier.jobs import Job
from notifier.notebook.prepared import PreparedWorker, start_prepared
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
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        """``coming(lead)`` returns the slots to prepare for, in the order they will run,
        and the first fire time beyond ``lead`` (when to look again)."""
        self.settings = settings
        self.lead = settings.warm_lead if lead is None else lead
        self.limit = settings.workers if limit is None else limit
        self.stale_after = stale_after
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
        """The worker prepared for ``(job, slot)``, now the caller's (None: run cold).

        It must still run and fit the job as it is now (a reload may have changed it).
        """
        with self._lock:
            worker = self._waiting.pop((job.name, slot), None)
            if worker is None:
                return None
            if worker.alive and worker.fingerprint == job_fingerprint(job):
                self._busy.append(worker)
                self._wake = True  # room for the next one
                self._lock.notify_all()
                return worker
            self._closing.append((worker, time.monotonic() + CANCEL_GRACE))
            self._lock.notify_all()
        worker.cancel()
        return None

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
    def _loop(self) -> None:
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
            self._tried = {t for t in self._tried if (t[0], t[1]) in wanted}
            starts = []
            for key, c in wanted.items():
                if len(self._waiting) + len(starts) >= self.limit:
                    break
                tried = (key[0], key[1], job_fingerprint(c.job))
                if key in self._waiting or tried in self._tried:
                    continue
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
        job = coming.job
        try:
            worker = start_prepared(
                self.settings,
                job_name=job.name,
                slot=coming.slot,
                notebook=job.notebook,
                kernel_name=job.kernel,
                warm_imports=job.warm_imports,
                start_timeout=min(60.0, job.timeout_seconds),
                max_wait=self.lead + self.stale_after + 60,
            )
        except OSError as error:
            log.warning(
                "%s: could not prepare a worker for slot %s: %s", job.name, coming.slot, error
            )
            return
        worker.fingerprint = job_fingerprint(job)
        self.prepared_count += 1
        log.debug("%s: preparing a worker for slot %s (pid %d)", job.name, coming.slot, worker.pid)
        with self._lock:
            self._waiting[(job.name, coming.slot)] = worker

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
