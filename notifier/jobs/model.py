"""A job as the daemon and the run path use it: every value resolved and typed."""

from __future__ import annotations

import difflib
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from apscheduler.triggers.base import BaseTrigger

from notifier.errors import UsageError
from notifier.jobs.schedules import Schedule, next_fire_times
from notifier.settings import DEFAULT_RUN_TIMEOUT

ENV_TIMEZONE = "NOTIFIER_TIMEZONE"
DEFAULT_TIMEOUT = DEFAULT_RUN_TIMEOUT
DEFAULT_RETRY_DELAY = 60.0
DEFAULT_GRACE = 3600.0
MISFIRE_POLICIES = ("skip", "run_once", "catch_up")

# --- the resolved, typed result -------------------------------------------------------------


@dataclass(frozen=True)
class Retries:
    """How often and how long apart a failed run is retried."""

    count: int = 0
    delay_seconds: float = DEFAULT_RETRY_DELAY


@dataclass(frozen=True)
class Misfire:
    """What to do with a slot missed while the daemon was down or busy."""

    policy: str = "run_once"  # one of MISFIRE_POLICIES
    grace_seconds: float = DEFAULT_GRACE


@dataclass(frozen=True)
class Job:
    """A job with every value resolved (defaults applied, paths absolute, durations seconds)."""

    name: str
    notebook: Path
    schedule: Schedule | None  # None for an ad-hoc run (notifier run NOTEBOOK)
    tz: zoneinfo.ZoneInfo
    parameters: dict[str, Any] = field(default_factory=dict)
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    on_failure: tuple[str, ...] = ()
    enabled: bool = True
    timeout_seconds: float = DEFAULT_TIMEOUT
    cell_timeout_seconds: float | None = None
    retries: Retries = Retries()
    misfire: Misfire = Misfire()
    cooldown_seconds: float | None = None
    notify_recovery: bool = False
    keep_runs_seconds: float | None = None
    # how long its emails are retried (None: NOTIFIER_DELIVERY_LIFETIME, 1 day)
    deliver_within_seconds: float | None = None
    # an email whose delivery outcome is unknown (link lost after the final dot, a crash
    # mid-transaction): "skip" = at most once (default), "resend" = at least once
    on_unknown: str = "skip"
    kernel: str | None = None  # None: the notebook's kernel (or this environment's Python)
    hide_code: bool = False  # archived output (and attach_output) without code
    attach_output: str | None = None  # "html" or "pdf": the rendered output on every email
    # warm starts: also import the modules of the notebook's first code cell beforehand
    warm_imports: bool = False
    line: int = 1  # where the job starts in the jobs file

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def timezone(self) -> str:
        """The IANA key of the job's time zone."""
        return self.tz.key

    def trigger(self) -> BaseTrigger:
        """A fresh APScheduler trigger for this job's schedule in its time zone."""
        if self.schedule is None:
            raise ValueError(f"{self.name} is an ad-hoc run: it has no schedule")
        return self.schedule.trigger(self.tz)

    @property
    def failure_recipients(self) -> list[str]:
        """Who hears about its problems: ``on_failure``, else ``to`` + ``cc`` (never bcc)."""
        chosen = list(self.on_failure) if self.on_failure else [*self.to, *self.cc]
        return list(dict.fromkeys(chosen))

    def warnings(self) -> list[str]:
        """Valid but risky combinations of settings, one sentence each (``validate`` shows them).

        ``keep_runs`` shorter than the misfire grace: runs are kept for the grace anyway
        (a run's row keeps its slot taken, and a daemon may still fire or re-run a slot
        within the grace; see ``notifier.runs.retention``), so keep_runs does less than it
        says.
        """
        from notifier.durations import format_duration

        found = []
        keep, grace = self.keep_runs_seconds, self.misfire.grace_seconds
        if keep and self.schedule is not None and keep < grace:
            found.append(
                f"keep_runs ({format_duration(keep)}) is shorter than the misfire grace "
                f"({format_duration(grace)}): runs are kept for {format_duration(grace)} "
                "anyway, so that a slot a daemon could still run is never run twice; set "
                f"keep_runs to at least {format_duration(grace)} (or a shorter misfire grace)"
            )
        return found

    def next_fire_times(self, now: datetime | None = None, count: int = 5) -> list[datetime]:
        """The next ``count`` fire times, in the job's time zone."""
        now = now or datetime.now(timezone.utc)
        return [t.astimezone(self.tz) for t in next_fire_times(self.trigger(), now, count)]


@dataclass(frozen=True)
class JobsFile:
    """A loaded, valid jobs file."""

    path: Path
    jobs: list[Job]

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    @property
    def names(self) -> list[str]:
        """Job names in file order."""
        return [job.name for job in self.jobs]

    def get(self, name: str) -> Job:
        """The job called ``name``; UsageError (exit 2) listing the known names if there is none."""
        for job in self.jobs:
            if job.name == name:
                return job
        close = difflib.get_close_matches(name, self.names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        known = ", ".join(self.names) or "none"
        raise UsageError(
            f"no job named {name!r} in {self.path}.{hint} Known jobs: {known}",
            fix=f"use one of the names above, or add a job named {name!r} to {self.path}",
        )
