"""A job's ``schedule`` value -> an APScheduler trigger whose fire times are stable slots.

Forms accepted in jobs.yaml::

    schedule: "0 8 * * 1-5"            # crontab or macro ("@daily"), see notifier.jobs.cron
    schedule: {cron: "0 8 * * 1-5"}    # the same, explicit
    schedule: {every: 5m}              # elapsed time: s, m, h, d, combos like 1h30m (>= 1s)
    schedule: {every: 1h, start: "2026-01-05T09:15"}
    schedule: {at: "2026-12-01T08:00"} # once; naive = the job's time zone, offsets accepted

Interval slots are anchored to a fixed origin (``start``, else 2000-01-01T00:00 in the job's
time zone) rather than to the moment the daemon started, so a restart yields the same slot
times: they key the exactly-once run ledger. Naive local times in a DST gap or overlap are
resolved by the rule in :mod:`notifier.jobs.cron`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from notifier.durations import MAX_DURATION, Limit, format_duration
from notifier.jobs.cron import CRONTAB_FORM, CrontabTrigger, parse_crontab, resolve_local

SCHEDULE_FORM = (
    f"{CRONTAB_FORM}, a macro like '@daily', {{every: 5m}} (optionally with start: "
    "<ISO datetime>), {at: 2026-12-01T08:00} or {cron: '<crontab>'}"
)
DEFAULT_ANCHOR = datetime(2000, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
INTERVAL = Limit(1, MAX_DURATION)  # every: 1s to 3650d
_KEYS = {"cron": (), "every": ("start",), "at": ()}


class AnchoredIntervalTrigger(IntervalTrigger):
    """An IntervalTrigger whose fire times are always ``start_date + k * interval``.

    APScheduler's own trigger adds the interval to the previous fire time in floating point;
    this one snaps every answer to the lattice with integer microseconds, so the slots stay
    identical whatever ``previous_fire_time`` or ``now`` the scheduler passes.
    """

    __slots__ = ()

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The first slot after ``previous_fire_time``, or at/after ``now`` when there is none."""
        # Arithmetic in UTC: on aware datetimes of one zone Python computes in wall time.
        origin = self.start_date.astimezone(timezone.utc)
        step = self.interval // _MICROSECOND
        if previous_fire_time is not None:
            elapsed = (previous_fire_time.astimezone(timezone.utc) - origin) // _MICROSECOND
            index = elapsed // step + 1
        else:
            elapsed = (now.astimezone(timezone.utc) - origin) // _MICROSECOND
            index = -(-elapsed // step)  # ceiling division
        try:
            fire = origin + timedelta(microseconds=step * max(index, 0))
            if self.end_date is not None and fire > self.end_date:
                return None
            return fire.astimezone(self.timezone)
        except OverflowError:  # past the year 9999: the schedule has no further slot
            return None

    def __str__(self) -> str:
        return f"every[{format_duration(self.interval.total_seconds())}]"


@dataclass(frozen=True)
class Schedule:
    """A validated schedule, independent of time zone until :meth:`trigger` is called."""

    kind: str  # "cron", "every" or "at"
    cron: str | None = None
    every_seconds: float | None = None
    start: datetime | None = None  # naive = local to the job's zone
    at: datetime | None = None  # naive = local to the job's zone

    def trigger(self, tz: tzinfo) -> BaseTrigger:
        """The APScheduler trigger for this schedule in time zone ``tz``."""
        if self.kind == "cron":
            return CrontabTrigger(self.cron, tz)
        if self.kind == "every":
            anchor = _aware(self.start or DEFAULT_ANCHOR, tz)
            return AnchoredIntervalTrigger(
                seconds=self.every_seconds, start_date=anchor, timezone=tz
            )
        return DateTrigger(run_date=_aware(self.at, tz), timezone=tz)

    def describe(self) -> str:
        """A one-line human description, e.g. ``every 5m`` or ``0 8 * * 1-5``."""
        if self.kind == "cron":
            return self.cron
        if self.kind == "every":
            text = f"every {format_duration(self.every_seconds)}"
            return text + (f" from {self.start.isoformat()}" if self.start else "")
        return f"at {self.at.isoformat()}"


def _aware(value: datetime, tz: tzinfo) -> datetime:
    return resolve_local(value, tz) if value.tzinfo is None else value.astimezone(tz)


_YEARS = (1970, 9998)  # a date-time outside can overflow when moved to another zone


def _parse_datetime(value: object, key: str) -> datetime:
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time())
    elif isinstance(value, str):
        try:
            text = value.strip()
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            pass
    if moment is not None and not _YEARS[0] <= moment.year <= _YEARS[1]:
        raise ValueError(
            f"{key}: {value!s} is out of range; allowed: the years {_YEARS[0]} to {_YEARS[1]}"
        )
    if moment is not None:
        return moment
    raise ValueError(
        f"{key}: invalid date-time {value!r}; expected ISO 8601 like 2026-12-01T08:00 "
        "(local to the job's timezone) or 2026-12-01T08:00+01:00"
    )


def parse_schedule(value: object) -> Schedule:
    """Validate a ``schedule`` value from jobs.yaml; raise ValueError with the expected form."""
    if isinstance(value, str):
        return Schedule(kind="cron", cron=parse_crontab(value).expression)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected {SCHEDULE_FORM}; got {type(value).__name__} {value!r}")
    kinds = [key for key in _KEYS if key in value]
    if len(kinds) != 1:
        found = " and ".join(kinds) if kinds else "none"
        raise ValueError(f"needs exactly one of cron, every, at (found {found}); {SCHEDULE_FORM}")
    kind = kinds[0]
    unknown = sorted(str(key) for key in value if key != kind and key not in _KEYS[kind])
    if unknown:
        allowed = ", ".join((kind, *_KEYS[kind]))
        raise ValueError(f"unknown key {unknown[0]!r} next to {kind!r}; allowed: {allowed}")
    if kind == "cron":
        return Schedule(kind="cron", cron=parse_crontab(value["cron"]).expression)
    if kind == "at":
        return Schedule(kind="at", at=_parse_datetime(value["at"], "at"))
    try:
        seconds = INTERVAL.parse(value["every"])
    except ValueError as exc:
        raise ValueError(f"every: {exc}") from None
    start = value.get("start")
    return Schedule(
        kind="every",
        every_seconds=seconds,
        start=None if start is None else _parse_datetime(start, "start"),
    )


def build_trigger(schedule: object, tz: tzinfo) -> BaseTrigger:
    """The APScheduler trigger for a jobs.yaml ``schedule`` value in time zone ``tz``."""
    spec = schedule if isinstance(schedule, Schedule) else parse_schedule(schedule)
    return spec.trigger(tz)


def next_fire_times(trigger: BaseTrigger, now: datetime, count: int = 5) -> list[datetime]:
    """Up to ``count`` upcoming fire times (aware, at or after ``now``), in order."""
    times: list[datetime] = []
    previous = None
    while len(times) < count:
        moment = now if previous is None else max(now, previous)
        fire = trigger.get_next_fire_time(previous, moment)
        if fire is None:
            break
        if fire >= now:
            times.append(fire)
        previous = fire
    return times
