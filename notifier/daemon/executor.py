"""APScheduler's thread pool, passing each run its scheduled time (the slot)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor


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
