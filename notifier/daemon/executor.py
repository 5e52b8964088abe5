"""APScheduler's thread pool, passing each run its scheduled time (the slot)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor


class SlotExecutor(ThreadPoolExecutor):
    """APScheduler's thread pool, but the job function receives its scheduled time.

    APScheduler 3 calls job functions without the run time they were scheduled
    for; the slot is the ledger's key, so it is passed as ``slot=``. ``on_submit(job id,
    slots)`` is told of every submission, before the slots wait for a free thread (the
    daemon prepares their workers meanwhile).
    """

    def __init__(
        self,
        max_workers: int = 10,
        *,
        on_submit: Callable[[str, list[datetime]], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_workers, **kwargs)
        self.on_submit = on_submit

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

        if self.on_submit is not None:
            self.on_submit(job.id, list(run_times))
        self._pool.submit(run).add_done_callback(done)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the pool; queued runs are cancelled, running ones go on."""
        self._pool.shutdown(wait, cancel_futures=True)
