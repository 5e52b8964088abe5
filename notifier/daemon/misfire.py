"""Slots missed while the daemon was down: which ones, and one line that says what runs."""

from __future__ import annotations

from datetime import datetime, timedelta

from notifier.jobs import Job


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


def _span(slots: list[datetime], job: Job) -> str:
    first, last = (s.astimezone(job.tz) for s in (slots[0], slots[-1]))
    fmt = "%H:%M" if first.date() == last.date() else "%Y-%m-%d %H:%M"
    return first.strftime(fmt) if len(slots) == 1 else f"{first:{fmt}}-{last:{fmt}}"


def missed_summary(
    job: Job, slots: list[datetime], within: list[datetime], to_run: list[datetime], policy: str
) -> str:
    """One line for everything a job missed while the daemon was down."""
    head = (
        f"missed {len(slots)} slot{'s' if len(slots) != 1 else ''} {_span(slots, job)} while down"
    )
    if not to_run:
        reason = "all past the grace period" if not within else f"policy {policy}: none runs"
        return f"{head}; {reason}"
    if policy == "run_once":
        return f"{head}; policy run_once: running the latest ({_span(to_run, job)})"
    return f"{head}; policy catch_up: running {len(to_run)} ({_span(to_run, job)})"
