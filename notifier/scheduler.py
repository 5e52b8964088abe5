"""The ``notifier schedule`` daemon: APScheduler 3 firing ledger-guarded slots.

- Jobs come from jobs.yaml with stable ids (their names) and are reloaded when the
  file changes; a bad edit is logged and the previous schedule stays.
- Each fire passes its scheduled time (the *slot*) to the job, which claims it in
  the ledger first: a slot runs at most once, across restarts and processes.
- Misfires: slots missed while the daemon was down (or run too late) follow the
  job's policy (``skip``, ``run_once``, ``catch_up``) within its grace period;
  each missed slot is logged. Interrupted runs of a crashed daemon are taken over.
- A bounded worker pool; one job never overlaps itself (``max_instances=1``).
- SIGTERM/SIGINT: no new runs; running ones get a grace period, then their
  kernels are killed and the runs are marked interrupted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from notifier.config import Settings
from notifier.errors import JobsFileError
from notifier.jobrun import SlotRunner
from notifier.jobs import Job, JobsFile, load_jobs
from notifier.ledger import Ledger, Run
from notifier.runner import terminate_active_workers
from notifier.transport import Transport

log = logging.getLogger("notifier.scheduler")

# A slot that starts later than this counts as missed for the 'skip' policy.
LATE_TOLERANCE = timedelta(seconds=60)
MAX_LOGGED_MISSES = 20
# How often a running daemon looks for runs whose owner died (e.g. another node).
RECOVERY_INTERVAL = 60.0


class SlotExecutor(ThreadPoolExecutor):
    """APScheduler's thread pool, but the job function receives its scheduled time.

    APScheduler 3 calls job functions without the run time they were scheduled
    for; the slot is the ledger's key, so it is passed as ``slot=``.
    """

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        def run() -> list[Any]:
            for run_time in run_times:
                job.func(*job.args, slot=run_time, **job.kwargs)
            return []

        def done(future: Any) -> None:
            if future.cancelled():  # queued when the daemon stopped
                self._run_job_success(job.id, [])
                return
            error = future.exception()
            if error is not None:
                self._run_job_error(job.id, error, error.__traceback__)
            else:
                self._run_job_success(job.id, [])

        self._pool.submit(run).add_done_callback(done)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the pool; queued runs are cancelled, running ones go on."""
        self._pool.shutdown(wait, cancel_futures=True)


def missed_slots(job: Job, after: datetime, now: datetime, limit: int = 10_000) -> list[datetime]:
    """Fire times of ``job`` strictly after ``after`` and not after ``now`` (oldest first)."""
    trigger = job.trigger()
    slots: list[datetime] = []
    previous = after
    while len(slots) < limit:
        candidate = trigger.get_next_fire_time(previous, previous + timedelta(microseconds=1))
        if candidate is None or candidate > now:
            break
        if candidate > after:
            slots.append(candidate)
        previous = candidate
    return slots


def _fingerprint(job: Job) -> str:
    """Changes when anything that affects scheduling or running a job changes."""
    fields = {k: v for k, v in vars(job).items() if k != "line"}
    return hashlib.sha256(repr(sorted(fields.items(), key=lambda kv: kv[0])).encode()).hexdigest()


class Daemon:
    """Runs the jobs of one jobs.yaml until stopped."""

    def __init__(
        self,
        jobs_path: str | Path,
        settings: Settings,
        *,
        poll_interval: float = 2.0,
        transport_factory: Callable[[], Transport] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.jobs_path = Path(jobs_path)
        self.settings = settings
        self.poll_interval = poll_interval
        self.clock = clock
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.jobs_file: JobsFile = load_jobs(self.jobs_path)  # JobsFileError: exit 2
        self._jobs: dict[str, Job] = {job.name: job for job in self.jobs_file.jobs}
        self._fingerprints = {name: _fingerprint(job) for name, job in self._jobs.items()}
        self._file_state = self._stat()
        self.ledger = Ledger(settings.db_url)
        self.runner = SlotRunner(
            settings, self.ledger, transport_factory=transport_factory, stopping=self.stopping
        )
        self._active = 0
        self._active_lock = threading.Condition()
        # Recovery and catch-up run beside APScheduler's pool: one semaphore bounds all
        # runs to NOTIFIER_WORKERS, and a lock per job keeps a job from overlapping itself.
        self._run_slots = threading.BoundedSemaphore(settings.workers)
        self._job_locks: dict[str, threading.Lock] = {}
        self.scheduler = BackgroundScheduler(
            executors={"default": SlotExecutor(max_workers=settings.workers)},
            timezone=timezone.utc,
        )
        self.scheduler.add_listener(self._on_overlap, EVENT_JOB_MAX_INSTANCES)
        self._watcher: threading.Thread | None = None

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        """Recover, apply misfire policies, then start firing and watching jobs.yaml."""
        enabled = [job for job in self._jobs.values() if job.enabled]
        log.info(
            "scheduling %d job(s) from %s (%d disabled); %d worker(s); ledger %s",
            len(enabled),
            self.jobs_path,
            len(self._jobs) - len(enabled),
            self.settings.workers,
            self.ledger.url,
        )
        self.scheduler.start(paused=True)
        self._recover_interrupted()
        self._catch_up()
        for job in enabled:
            self._add(job)
        self.scheduler.resume()
        for job in enabled:
            scheduled = self.scheduler.get_job(job.name)
            if scheduled is not None and scheduled.next_run_time is not None:
                log.info("%s: next run %s", job.name, scheduled.next_run_time.astimezone(job.tz))
        self._watcher = threading.Thread(target=self._watch, name="jobs-watcher", daemon=True)
        self._watcher.start()

    def _add(self, job: Job) -> None:
        self.scheduler.add_job(
            self._fire,
            trigger=job.trigger(),
            id=job.name,
            name=job.name,
            args=[job.name],
            max_instances=1,
            coalesce=job.misfire.policy != "catch_up",
            misfire_grace_time=None,  # lateness is judged in _fire by the job's own policy
            replace_existing=True,
        )

    def _interrupted_runs(self, *, include_stopped: bool) -> list[Run]:
        """Runs of dead owners (now marked interrupted), and at start those stopped by a
        shutdown."""
        runs = {run.run_id: run for run in self.ledger.recover_interrupted()}
        now = self.clock()
        for job in self._jobs.values() if include_stopped else ():
            grace = timedelta(seconds=job.misfire.grace_seconds)
            for run in self.ledger.history(job.name, limit=20):
                # only the ones that can still be re-run: no log line for old history
                if run.status == "interrupted" and not run.manual and now - run.slot <= grace:
                    runs.setdefault(run.run_id, run)
        return sorted(runs.values(), key=lambda run: run.slot)

    def _recover_interrupted(self, *, include_stopped: bool = True) -> None:
        now = self.clock()
        for run in self._interrupted_runs(include_stopped=include_stopped):
            job = self._jobs.get(run.job)
            log.warning(
                "%s: run %s of slot %s was interrupted (owner %s)",
                run.job,
                run.run_id,
                run.slot,
                run.owner,
            )
            if job is None or not job.enabled or run.manual:
                continue
            if job.misfire.policy == "skip":
                log.info("%s: not re-running slot %s (misfire policy skip)", job.name, run.slot)
            elif now - run.slot > timedelta(seconds=job.misfire.grace_seconds):
                log.info("%s: slot %s is past its grace period; not re-running", job.name, run.slot)
            else:
                self._submit(lambda j=job, r=run: self._resume(j, r))

    def _catch_up(self) -> None:
        now = self.clock()
        for job in self._jobs.values():
            if not job.enabled:
                continue
            last = self.ledger.last_slot(job.name)
            if last is None:
                continue  # never ran here: nothing was missed
            slots = missed_slots(job, last, now)
            if not slots:
                continue
            grace = timedelta(seconds=job.misfire.grace_seconds)
            within = [s for s in slots if now - s <= grace]
            policy = job.misfire.policy
            to_run = {"skip": [], "run_once": within[-1:], "catch_up": within}[policy]
            for slot in slots[-MAX_LOGGED_MISSES:]:
                reason = (
                    "will run now"
                    if slot in to_run
                    else "past the grace period"
                    if slot not in within
                    else f"not run (misfire policy {policy})"
                )
                log.warning(
                    "%s: missed slot %s while down: %s", job.name, slot.astimezone(job.tz), reason
                )
            if len(slots) > MAX_LOGGED_MISSES:
                log.warning(
                    "%s: ... and %d earlier missed slots", job.name, len(slots) - MAX_LOGGED_MISSES
                )
            if to_run:
                self._submit(lambda j=job, s=to_run: [self._run(j, slot, "catch_up") for slot in s])

    def _submit(self, work: Callable[[], Any]) -> None:
        """Run recovery work in the background so the schedule starts on time."""
        threading.Thread(target=work, name="recovery", daemon=True).start()

    # -- firing --------------------------------------------------------------------------
    def _fire(self, name: str, *, slot: datetime | None = None) -> None:
        if self.stopping.is_set() or slot is None:  # slot is always passed by SlotExecutor
            return
        job = self._jobs.get(name)
        if job is None or not job.enabled or self._too_late(job, slot):
            return
        self._run(job, slot, "schedule")

    def _too_late(self, job: Job, slot: datetime) -> bool:
        """Apply the misfire policy to a slot about to start (logs why it does not)."""
        late = self.clock() - slot
        if late > timedelta(seconds=job.misfire.grace_seconds):
            log.warning(
                "%s: slot %s started %s late, past its grace period: not run", job.name, slot, late
            )
            return True
        if job.misfire.policy == "skip" and late > LATE_TOLERANCE:
            log.warning(
                "%s: slot %s is %s late: not run (misfire policy skip)", job.name, slot, late
            )
            return True
        return False

    @contextlib.contextmanager
    def _running(self, job_name: str) -> Iterator[bool]:
        """Hold the job's lock and a worker slot; yields False when the daemon is stopping."""
        lock = self._job_locks.setdefault(job_name, threading.Lock())
        lock.acquire()
        try:
            with self._run_slots:
                with self._active_lock:  # atomic with shutdown's wait for _active == 0
                    if self.stopping.is_set():
                        stopped = True
                    else:
                        stopped = False
                        self._active += 1
                if stopped:
                    yield False
                    return
                try:
                    yield True
                finally:
                    with self._active_lock:
                        self._active -= 1
                        self._active_lock.notify_all()
        finally:
            lock.release()

    def _run(self, job: Job, slot: datetime, trigger: str) -> None:
        # Waits behind a catch-up or re-run of the same job (APScheduler's max_instances
        # already refuses a scheduled slot while the previous scheduled one runs).
        with self._running(job.name) as allowed:
            if not allowed:
                return
            if trigger == "schedule" and self._too_late(job, slot):
                return
            started = time.perf_counter()
            local = slot.astimezone(job.tz).isoformat()
            log.info("%s: run of slot %s starting", job.name, local)
            status = self.runner.run_slot(job, slot, trigger=trigger)
            if status is not None:
                log.info(
                    "%s: run of slot %s ended: %s in %.1fs",
                    job.name,
                    local,
                    status,
                    time.perf_counter() - started,
                )

    def _resume(self, job: Job, run: Run) -> None:
        with self._running(job.name) as allowed:
            if not allowed:
                return
            status = self.runner.resume(job, run)
            log.info(
                "%s: interrupted slot %s re-run: %s",
                job.name,
                run.slot,
                status or "taken by another process",
            )

    def _on_overlap(self, event: JobSubmissionEvent) -> None:
        times = ", ".join(t.isoformat() for t in getattr(event, "scheduled_run_times", []))
        log.warning("%s: slot %s not run: the previous run is still going", event.job_id, times)

    # -- reload --------------------------------------------------------------------------
    def _stat(self) -> tuple[float, int, str] | None:
        try:
            data = self.jobs_path.read_bytes()
            return (self.jobs_path.stat().st_mtime, len(data), hashlib.sha256(data).hexdigest())
        except OSError:
            return None

    def _watch(self) -> None:
        last_recovery = time.monotonic()
        while not self.stopping.wait(self.poll_interval):
            if time.monotonic() - last_recovery >= RECOVERY_INTERVAL:
                # another daemon on this ledger may have died: take over its runs
                last_recovery = time.monotonic()
                try:
                    self._recover_interrupted(include_stopped=False)
                except Exception:
                    log.exception("recovery check failed; trying again later")
            state = self._stat()
            if state is None or state == self._file_state:
                continue
            self._file_state = state
            self.reload()

    def reload(self) -> bool:
        """Re-read jobs.yaml; apply it if valid, else keep the running schedule."""
        try:
            jobs_file = load_jobs(self.jobs_path)
        except JobsFileError as error:
            log.error("jobs file changed but is invalid; keeping the previous schedule:\n%s", error)
            return False
        new = {job.name: job for job in jobs_file.jobs}
        prints = {name: _fingerprint(job) for name, job in new.items()}
        for name in set(self._jobs) - set(new):
            if self.scheduler.get_job(name):
                self.scheduler.remove_job(name)
            log.info("%s: removed", name)
        for name, job in new.items():
            if self._fingerprints.get(name) == prints[name]:
                continue
            if job.enabled:
                self._add(job)
            elif self.scheduler.get_job(name):
                self.scheduler.remove_job(name)
            log.info("%s: %s", name, "updated" if name in self._jobs else "added")
        self._jobs, self._fingerprints, self.jobs_file = new, prints, jobs_file
        log.info("reloaded %s: %d job(s)", self.jobs_path, len(new))
        return True

    # -- stop ----------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        """Signal handler: stop taking runs; the main thread does the rest."""
        self.stopping.set()

    def run_forever(self) -> None:
        """Start, then block until SIGTERM/SIGINT, then shut down gracefully."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        log.info("running; stop with Ctrl-C or SIGTERM")
        self.stopping.wait()
        self.shutdown()

    def shutdown(self) -> None:
        """No new runs; wait up to the grace period; then kill and mark interrupted."""
        self.stopping.set()
        log.info(
            "stopping: no new runs; waiting up to %.0fs for running ones",
            self.settings.shutdown_grace,
        )
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + self.settings.shutdown_grace
        with self._active_lock:
            while self._active and time.monotonic() < deadline:
                self._active_lock.wait(timeout=deadline - time.monotonic())
            still = self._active
        if still:
            log.warning(
                "%d run(s) still going after the grace period: killing their kernels", still
            )
            terminate_active_workers()
            with self._active_lock:
                self._active_lock.wait_for(lambda: self._active == 0, timeout=15)
        for run in self.ledger.mark_interrupted_mine():
            log.warning("%s: run %s of slot %s marked interrupted", run.job, run.run_id, run.slot)
        self.ledger.close()
        self.stopped.set()
        log.info("stopped")
