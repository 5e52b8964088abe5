"""Schedules in words ("at 08:00, Monday to Friday") and the next 24 hours as a timeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from notifier.durations import format_duration
from notifier.jobs import Job
from notifier.jobs.cron import parse_crontab
from notifier.jobs.schedules import Schedule

_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


def _runs(values: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted values as (first, last) runs of consecutive numbers."""
    found: list[tuple[int, int]] = []
    for value in sorted(values):
        if found and value == found[-1][1] + 1:
            found[-1] = (found[-1][0], value)
        else:
            found.append((value, value))
    return found


def _list(values: Sequence[int], name: callable, joiner: str = " to ") -> str:  # type: ignore[valid-type]
    parts = [
        name(a)
        if a == b
        else f"{name(a)}{joiner}{name(b)}"
        if b > a + 1
        else f"{name(a)}, {name(b)}"
        for a, b in _runs(values)
    ]
    return ", ".join(parts)


def _step(values: Sequence[int], size: int) -> int | None:
    """n when ``values`` are 0, n, 2n, ... covering the whole field (``*/n``)."""
    if len(values) < 2 or values[0] != 0:
        return None
    step = values[1] - values[0]
    return step if list(values) == list(range(0, size, step)) else None


def _every(seconds: float) -> str:
    text = format_duration(seconds)
    if text[:-1].isdigit() and text[-1] in _UNITS:
        number, unit = int(text[:-1]), _UNITS[text[-1]]
        return f"every {unit}" if number == 1 else f"every {number} {unit}s"
    return f"every {text}"


def _cron_words(expression: str) -> str:
    spec = parse_crontab(expression)
    minutes, hours = spec.minutes, spec.hours
    all_hours = len(hours) == 24
    if len(minutes) == 60 and all_hours:
        when = "every minute"
    elif (step := _step(minutes, 60)) and all_hours:
        when = f"every {step} minutes"
    elif len(minutes) == 1 and all_hours:
        when = f"every hour at :{minutes[0]:02d}"
    elif len(minutes) == 1 and (step := _step(hours, 24)):
        when = f"every {step} hours at :{minutes[0]:02d}"
    elif len(minutes) * len(hours) <= 6:
        when = "at " + ", ".join(f"{h:02d}:{m:02d}" for h in hours for m in minutes)
    else:
        mins = "every minute" if len(minutes) == 60 else f"minute {_list(minutes, str)}"
        when = f"{mins} of hours {_list(hours, lambda h: f'{h:02d}')}"
    days = ""
    dom_all = len(spec.days_of_month) == 31
    dow_all = len(spec.days_of_week) == 7
    dom = f"day {_list(sorted(spec.days_of_month), str)} of the month"
    dow = _list(sorted(spec.days_of_week, key=lambda d: (d + 6) % 7), lambda d: _DAYS[d])
    if sorted(spec.days_of_week) == [1, 2, 3, 4, 5]:
        dow = "Monday to Friday"
    elif sorted(spec.days_of_week) == [0, 6]:
        dow = "Saturday and Sunday"
    if spec.either_day:
        days = f"on {dom} and on {dow}"
    elif not dom_all and dow_all:
        days = f"on {dom}"
    elif dom_all and not dow_all:
        days = f"on {dow}"
    elif not dom_all and not dow_all:
        days = f"on {dom} if it is a {dow}"
    if not days and when.startswith("at "):
        days = "every day"
    months = "" if len(spec.months) == 12 else "in " + _list(spec.months, lambda m: _MONTHS[m - 1])
    return ", ".join(part for part in (when, days, months) if part)


def schedule_words(schedule: Schedule | None) -> str:
    """The schedule in plain words: ``at 08:00, Monday to Friday``, ``every 5 minutes``."""
    if schedule is None:
        return "on request only"
    if schedule.kind == "every":
        text = _every(schedule.every_seconds or 0)
        return text + (f", counted from {schedule.start.isoformat()}" if schedule.start else "")
    if schedule.kind == "at":
        assert schedule.at is not None
        return f"once, at {schedule.at:%Y-%m-%d %H:%M}"
    try:
        return _cron_words(schedule.cron or "")
    except (ValueError, IndexError):
        return schedule.describe()


# ------------------------------------------------------------------ the timeline


@dataclass(frozen=True)
class Lane:
    """One job's row of the timeline: its slots in the window (at most ``MAX_SLOTS``)."""

    job: Job
    slots: list[datetime]
    more: bool  # the window holds more slots than were computed

    def xs(self, start: datetime, width: float, window: timedelta) -> list[float]:
        """The slots' x positions (0..width)."""
        span = window.total_seconds()
        return [round((s - start).total_seconds() / span * width, 1) for s in self.slots]


MAX_SLOTS = 1500  # an every-minute job has 1440 slots a day
DENSE = 200  # past this many slots a lane is drawn as a band, not as ticks


def upcoming(jobs: Sequence[Job], now: datetime, window: timedelta) -> list[Lane]:
    """Each enabled job's slots in ``[now, now + window)``."""
    end = now + window
    lanes = []
    for job in jobs:
        if not job.enabled or job.schedule is None:
            continue
        trigger = job.trigger()
        slots: list[datetime] = []
        previous = None
        while len(slots) < MAX_SLOTS:
            fire = trigger.get_next_fire_time(previous, now if previous is None else previous)
            if fire is None or fire >= end:
                break
            if fire >= now:
                slots.append(fire.astimezone(job.tz))
            previous = fire
        lanes.append(Lane(job, slots, len(slots) >= MAX_SLOTS))
    return lanes


def hour_marks(start: datetime, window: timedelta, zone: tzinfo) -> list[tuple[datetime, bool]]:
    """Whole local hours in the window, each with True when it is a labelled one (every 3 h)."""
    local = start.astimezone(zone)
    first = (local + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    marks = []
    moment = first
    while moment < start + window:
        wall = moment.astimezone(zone)
        marks.append((wall, wall.hour % 3 == 0))
        moment = moment + timedelta(hours=1)
    return marks
