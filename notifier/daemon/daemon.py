"""The ``notifier schedule`` daemon: APScheduler 3 firing ledger-guarded slots.

- Jobs come from jobs.yaml with stable ids (their names) and are reloaded when the
  file changes; a bad edit is logged and the previous schedule stays.
- Each fire passes its scheduled time (the *slot*) to the job, which claims it in
  the ledger first: a slot runs at most once, across restarts and processes.
- Misfires: slots missed while the daemon was down (or run too late) follow the
  job's policy (``skip``, ``run_once``, ``catch_up``) within its grace period;
  one line per job says what was missed and what runs. Runs of a dead node (a crashed
  or stopped daemon on the same ledger) are taken over.
- A bounded worker pool; one job never overlaps itself (``max_instances=1``).
- Warm starts: each slot's worker and kernel are prepared ``NOTIFIER_WARM_LEAD`` seconds
  before it (:mod:`notifier.notebook.warm`), and so are slots that fired but wait for a
  free worker; a run takes the one prepared for its slot, else it starts cold.
- The delivery service retries deferred mail in the background.
- SIGTERM/SIGINT: no new runs; running ones get a grace period, then their
  kernels are killed, the runs are marked interrupted and handed over to any other
  daemon on the ledger (or re-run by this one at its next start).
- An unreachable ledger stops no daemon: slots that cannot be claimed are not run (one
  log line, then backoff, see :mod:`notifier.daemon.outage`); when it is back, missed
  slots follow the misfire policies and runs left unfinished are marked interrupted.
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
from apscheduler.schedulers.background import BackgroundScheduler

from notifier.daemon.executor import SlotExecutor
from notifier.daemon.misfire import missed_slots, missed_summary
from notifier.daemon.outage import LedgerOutage
from notifier.delivery.service import DeliveryService
from notifier.delivery.worker import TransportFactory
from notifier.errors import JobsFileError
from notifier.jobs import Job, JobsFile, load_jobs
from notifier.ledger import Ledger, LedgerError, Run
from notifier.notebook.execute import terminate_active_workers
from notifier.notebook.warm import Coming, WarmPool, slots_within
from notifier.runs.path import RunPath, RunResult
from notifier.runs.summary import closing_line
from notifier.settings import Settings

log = logging.getLogger("notifier.daemon")

# A slot that starts later than this counts as missed for the 'skip' policy.
LATE_TOLERANCE = timedelta(seconds=60)
# How often a running daemon looks for runs of dead or stopped nodes to take over.
RECOVERY_INTERVAL = 10.0


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
        transports: TransportFactory | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        inline: bool = False,
    ) -> None:
        self.jobs_path = Path(jobs_path)
        self.settings = settings
        self.inline = inline
        self.poll_interval = poll_interval
        self.clock = clock
        self.stopping = threading.Event()
        self.hard_stop = threading.Event()  # the shutdown grace period is over
        self.stopped = threading.Event()
        self.jobs_file: JobsFile = load_jobs(self.jobs_path)  # JobsFileError: exit 2
        self._jobs: dict[str, Job] = {job.name: job for job in self.jobs_file.jobs}
        self._fingerprints = {name: _fingerprint(job) for name, job in self._jobs.items()}
        self._file_state = self._stat()
        self.ledger = Ledger(settings.db_url, lease_seconds=settings.lease_seconds)
        self.ledger.nodes.configure(role="daemon", jobs_hash=self._file_hash())
        # slots that fired and wait for a free worker, in the order they will run
        self._pending: dict[tuple[str, datetime], None] = {}
        self._pending_lock = threading.Lock()
        self.warm = WarmPool(settings, self._coming) if settings.warm_lead > 0 else None
        self.runner = RunPath(
            settings,
            self.ledger,
            transports=transports,
            stopping=self.stopping,
            abort=self.hard_stop,
            prepared=self.warm.take if self.warm else None,
        )
        self.delivery = DeliveryService(self.runner.deliverer)
        self._active = 0
        self._active_lock = threading.Condition()
        # Recovery and catch-up run beside APScheduler's pool: one semaphore bounds all
        # runs to NOTIFIER_WORKERS, and a lock per job keeps a job from overlapping itself.
        self._run_slots = threading.BoundedSemaphore(settings.workers)
        self._job_locks: dict[str, threading.Lock] = {}
        self.scheduler = BackgroundScheduler(
            executors={
                "default": SlotExecutor(max_workers=settings.workers, on_submit=self._submitted)
            },
            timezone=timezone.utc,
        )
        self.scheduler.add_listener(self._on_overlap, EVENT_JOB_MAX_INSTANCES)
        self._watcher: threading.Thread | None = None
        self.outage = LedgerOutage()

    @property
    def jobs(self) -> dict[str, Job]:
        """The jobs of the jobs file as last loaded (a reload replaces them)."""
        return dict(self._jobs)

    @property
    def watching(self) -> bool:
        """True while the daemon watches jobs.yaml for changes."""
        return self._watcher is not None and self._watcher.is_alive()

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
        self.ledger.nodes.ensure_registered()
        self.scheduler.start(paused=True)
        self.recover()
        self.catch_up()
        for job in enabled:
            self._add(job)
        self.scheduler.resume()
        for job in enabled:
            scheduled = self.scheduler.get_job(job.name)
            if scheduled is not None and scheduled.next_run_time is not None:
                log.info("%s: next run %s", job.name, scheduled.next_run_time.astimezone(job.tz))
        if self.warm is not None:
            self.warm.start()
        self._watcher = threading.Thread(target=self._watch, name="jobs-watcher", daemon=True)
        self._watcher.start()
        self.delivery.start()

    def _add(self, job: Job) -> None:
        self.scheduler.add_job(
            self.fire,
            trigger=job.trigger(),
            id=job.name,
            name=job.name,
            args=[job.name],
            max_instances=1,
            coalesce=job.misfire.policy != "catch_up",
            misfire_grace_time=None,  # lateness is judged in fire() by the job's own policy
            replace_existing=True,
        )

    def _interrupted_runs(self) -> list[Run]:
        """Runs of dead nodes (now marked interrupted) and runs a stopped node handed over."""
        runs = {run.run_id: run for run in self.ledger.recover_interrupted()}
        longest = max((job.misfire.grace_seconds for job in self._jobs.values()), default=0)
        for run in self.ledger.handed_over(self.clock() - timedelta(seconds=longest)):
            runs.setdefault(run.run_id, run)
        return sorted(runs.values(), key=lambda run: run.slot)

    def recover(self) -> None:
        """Take over runs of dead or stopped nodes; re-run them per their misfire policy."""
        now = self.clock()
        for run in self._interrupted_runs():
            self._rerun(run, now)

    def _rerun(self, run: Run, now: datetime) -> None:
        """Re-run an interrupted run of an enabled job if its misfire policy allows."""
        job = self._jobs.get(run.job)
        if job is not None and job.enabled and not run.manual:
            log.warning(
                "%s: run %s of slot %s was interrupted (%s)",
                run.job,
                run.run_id,
                run.slot.astimezone(job.tz),
                run.error or f"owner {run.owner}",
            )
            if job.misfire.policy == "skip":
                log.info("%s: not re-running slot %s (misfire policy skip)", job.name, run.slot)
            elif now - run.slot > timedelta(seconds=job.misfire.grace_seconds):
                log.info("%s: slot %s is past its grace period; not re-running", job.name, run.slot)
            else:
                self._submit(lambda j=job, r=run: self._resume(j, r))

    def _ledger_back(self) -> None:
        """A ledger call worked: if that ends an outage, settle what it left behind."""
        if self.outage.succeeded():
            self._submit(self._after_outage)

    def _after_outage(self) -> None:
        """Runs left unfinished here are marked interrupted (and re-run per policy), and
        slots missed meanwhile follow the misfire policies, as after downtime."""
        try:
            now = self.clock()
            for run in self.runner.release_orphans(
                "stopped while the ledger was unavailable (its node could not record it)"
            ):
                self._rerun(run, now)
            self.catch_up()
            self.ledger.nodes.configure(jobs_hash=self._file_hash())
        except LedgerError as error:  # gone again: the next success comes back here
            self.outage.failed(error, "settling runs after an outage")

    def catch_up(self) -> None:
        """Apply each job's misfire policy to the slots missed while no daemon ran."""
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
            log.warning("%s: %s", job.name, missed_summary(job, slots, within, to_run, policy))
            if to_run:
                self._submit(lambda j=job, s=to_run: [self._run(j, slot, "catch_up") for slot in s])

    def _submit(self, work: Callable[[], Any]) -> None:
        """Run recovery work in the background so the schedule starts on time (inline when
        the daemon was made with ``inline=True``, as tests and embedding code do)."""
        if self.inline:
            work()
            return
        threading.Thread(target=work, name="recovery", daemon=True).start()

    # -- firing --------------------------------------------------------------------------
    def fire(self, name: str, *, slot: datetime | None = None) -> None:
        """Run ``slot`` of the job ``name`` as the scheduler does when its time comes."""
        if slot is None:  # always passed by SlotExecutor
            return
        try:
            if self.stopping.is_set():
                return
            job = self._jobs.get(name)
            if job is None or not job.enabled or self._too_late(job, slot):
                return
            self._run(job, slot, "schedule")
        finally:
            with self._pending_lock:
                self._pending.pop((name, slot), None)
            if self.warm is not None:
                self.warm.wake()  # its prepared worker, if the run did not take it, goes

    # -- warm starts ---------------------------------------------------------------------
    def _submitted(self, name: str, slots: list[datetime]) -> None:
        """APScheduler fired ``slots`` of ``name``: they may wait for a free worker."""
        if self.warm is None:
            return
        with self._pending_lock:
            for slot in slots:
                self._pending[(name, slot)] = None
        self.warm.wake()

    def _coming(self, lead: float) -> tuple[list[Coming], datetime | None]:
        """The slots to prepare workers for, in the order they will run: those that fired
        and wait for a worker, then each job's next fire time within ``lead`` seconds; and
        the first fire time beyond it."""
        if self.stopping.is_set():
            return [], None
        # the next fire times first: APScheduler submits a slot before it moves the job's
        # next fire time on, so a slot missing here is already in the pending list below
        nexts = [
            (job, scheduled.next_run_time)
            for scheduled in self.scheduler.get_jobs()
            if (job := self._jobs.get(scheduled.id)) is not None and job.enabled
        ]
        with self._pending_lock:
            pending = list(self._pending)
        coming = [
            Coming(job, slot)
            for name, slot in pending
            if (job := self._jobs.get(name)) is not None and job.enabled
        ]
        upcoming, later = slots_within(nexts, lead, self.clock())
        seen = {(c.job.name, c.slot) for c in coming}
        return coming + [c for c in upcoming if (c.job.name, c.slot) not in seen], later

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
            if not self.outage.may_try():  # backing off: this slot is not run
                self.outage.not_run(job.name, slot)
                return
            started = time.perf_counter()
            local = slot.astimezone(job.tz).isoformat()
            log.info("%s: run of slot %s starting", job.name, local)
            try:
                result = self.runner.run_slot(job, slot, trigger=trigger)
            except LedgerError as error:  # the claim failed: no claim, no run
                self.outage.failed(error, f"claiming {job.name} slot {local}")
                self.outage.not_run(job.name, slot)
                return
            self._ledger_back()
            if result is not None:
                self._log_end(job, local, result, time.perf_counter() - started)

    def _resume(self, job: Job, run: Run) -> None:
        with self._running(job.name) as allowed:
            if not allowed:
                return
            started = time.perf_counter()
            local = run.slot.astimezone(job.tz).isoformat()
            try:
                result = self.runner.resume(job, run)
            except LedgerError as error:
                self.outage.failed(error, f"re-running {job.name} slot {local}")
                return
            if result is None:
                log.info("%s: interrupted slot %s not re-run here", job.name, local)
            else:
                self._log_end(job, local, result, time.perf_counter() - started)

    def _log_end(self, job: Job, local: str, result: RunResult, seconds: float) -> None:
        level, text = closing_line(result)
        log.log(level, "%s: run of slot %s ended after %.1fs: %s", job.name, local, seconds, text)

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

    def _file_hash(self) -> str | None:
        state = self._file_state
        return state[2] if state else None

    def _watch(self) -> None:
        last_recovery = time.monotonic()
        while not self.stopping.wait(self.poll_interval):
            due = time.monotonic() - last_recovery >= RECOVERY_INTERVAL or self.outage.down
            if due and self.outage.may_try():
                # another daemon on this ledger may have died or stopped: take over its runs
                # (during an outage this is also the probe that notices the ledger is back)
                last_recovery = time.monotonic()
                try:
                    self.recover()
                    self._ledger_back()
                except LedgerError as error:  # one line per outage, not a traceback
                    self.outage.failed(error, "looking for runs to take over")
                except Exception as error:
                    log.warning("recovery check failed (%s); trying again later", error)
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
        if self.warm is not None:
            self.warm.wake()  # workers prepared for removed or changed jobs go
        try:
            self.ledger.nodes.configure(jobs_hash=self._file_hash())
        except Exception as error:  # only shown by `notifier nodes`
            log.warning("could not record the new jobs file hash: %s", error)
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
        """No new runs; wait up to the grace period (runs finish, mail in flight goes out);
        then kill what still runs, mark it interrupted and hand it over."""
        self.stopping.set()
        log.info(
            "stopping: no new runs; waiting up to %.0fs for running ones",
            self.settings.shutdown_grace,
        )
        self.scheduler.shutdown(wait=False)
        if self.warm is not None:
            self.warm.wake()  # nothing is coming any more: waiting workers are shut down
        self.delivery.request_stop()
        deadline = time.monotonic() + self.settings.shutdown_grace
        with self._active_lock:
            while self._active and time.monotonic() < deadline:
                self._active_lock.wait(timeout=deadline - time.monotonic())
            still = self._active
        if still:
            log.warning(
                "%d run(s) still going after the grace period: killing their kernels", still
            )
            self.hard_stop.set()
            terminate_active_workers()
            with self._active_lock:
                self._active_lock.wait_for(lambda: self._active == 0, timeout=15)
        if not self.delivery.stop(timeout=max(0.0, deadline - time.monotonic())):
            self.hard_stop.set()  # mail not sent yet stays queued for the next daemon
            self.delivery.stop(timeout=15)
        if self.warm is not None:  # after the runs: their workers are the pool thread's children
            self.warm.close(timeout=15)
        try:
            for run in self.ledger.mark_interrupted_mine():
                log.warning(
                    "%s: run %s of slot %s marked interrupted; another daemon on this ledger "
                    "takes it over, or this one re-runs it at its next start",
                    run.job,
                    run.run_id,
                    run.slot,
                )
            self.ledger.close()
        except LedgerError as error:  # its runs are taken over once its lease runs out
            log.warning(
                "could not hand this node's runs over (the ledger is unavailable: %s); other "
                "daemons take them over when its lease runs out",
                error,
            )
            self.ledger.db.dispose()
        self.stopped.set()
        log.info("stopped")
