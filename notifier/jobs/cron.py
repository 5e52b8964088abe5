"""A crontab trigger for APScheduler 3 that follows cron(8), with a stated DST rule.

APScheduler 3's ``CronTrigger.from_crontab`` counts Monday as day-of-week 0 and ANDs the two
day fields; crontab(5) does neither. :class:`CrontabTrigger` reads the five classic fields

    minute (0-59)  hour (0-23)  day-of-month (1-31)  month (1-12 or jan-dec)
    day-of-week (0-7 or sun-sat; 0 and 7 are both Sunday)

each a ``*``, a number or name, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a comma list
of those; names are case-insensitive and may appear in ranges (``mon-fri``, ``sat-sun``). The
macros ``@hourly @daily @midnight @weekly @monthly @yearly @annually`` stand for their usual
expansions. Extensions of other crons (``L``, ``W``, ``#``, ``?``, seconds, years) and
``@reboot`` are rejected with a message saying so.

Day rule (as in Vixie cron and cronie): if day-of-month and day-of-week are both restricted,
i.e. neither field starts with ``*``, a day matching EITHER field runs
(``0 9 1 * mon`` = the 1st of the month and every Monday). Otherwise both must match, which
with a ``*`` simply means "the other field decides". Like cron(8), a field that starts with
``*`` counts as unrestricted even with a step: ``*/2`` in day-of-month is ANDed.

Time zone and daylight saving rule. The expression is matched against wall-clock time in
``timezone`` (an IANA zone), and each matching local time becomes one instant:

* a local time that does not exist on the spring-forward day (02:30 in Europe/Berlin on the
  last Sunday of March) runs once at the first valid instant after it (03:00 local);
  several matching times in the same gap (``*/30 2 * * *``) collapse into that one run;
* a local time that occurs twice on the fall-back day runs once, at its first occurrence
  (the one before the clocks go back); its repetition does not run. So ``*/15 * * * *``
  has no run during the repeated hour: use an interval (``every: 15m``) when elapsed time
  matters more than the wall clock.

Fire times are therefore distinct, increasing instants, which makes them usable as the slot
keys of the run ledger. The search jumps field by field (month, day, hour, minute), so a
``0 0 29 2 *`` schedule finds the next Feb 29 in a few steps; expressions that can never fire
(``0 0 31 2 *``) are rejected when parsed.
"""

# Kept hand-written (cronsim 2.8 and croniter 7.0.0 evaluated 2026-11): they could replace
# only the ~40-line next_wall_time search, since our parser (field-named errors) and DST
# rule must stay, and only their November 2026 releases fire '0 0 31 2 mon' at all.
from __future__ import annotations

import calendar
import math
from bisect import bisect_left
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger

UTC = timezone.utc
CRONTAB_FORM = "a crontab like '0 8 * * 1-5' (minute hour day-of-month month day-of-week)"

MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# The longest each month can be (February in a leap year), to reject impossible dates.
_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# How far ahead to look before declaring that nothing matches: the Gregorian cycle.
_SEARCH_YEARS = 400


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0
    note: str = ""

    def allowed(self) -> str:
        text = f"{self.low}-{self.high}"
        if self.names:
            text += f" or {self.names[0]}-{self.names[-1]}"
        return text + self.note


_FIELDS = (
    _FieldSpec("minute", 0, 59),
    _FieldSpec("hour", 0, 23),
    _FieldSpec("day-of-month", 1, 31),
    _FieldSpec("month", 1, 12, _MONTHS, 1),
    _FieldSpec("day-of-week", 0, 7, _DAYS, 0, " (0 and 7 are Sunday)"),
)


class _CrontabError(ValueError):
    """A problem in one field; the caller adds the whole expression."""


def _parse_value(text: str, spec: _FieldSpec, *, range_end: bool = False) -> int:
    if text.isdigit():
        value = int(text)
    elif text.lower() in spec.names:
        value = spec.names.index(text.lower()) + spec.name_base
        if range_end and spec.name == "day-of-week" and value == 0:
            value = 7  # "sat-sun" means Saturday through Sunday
    elif not text:
        raise _CrontabError(f"{spec.name}: a number is missing (allowed: {spec.allowed()})")
    elif any(c in text for c in "LW#?"):
        raise _CrontabError(
            f"{spec.name} {text!r}: L, W, # and ? are not part of cron(8) "
            f"(allowed: {spec.allowed()})"
        )
    else:
        kind = "a number or a name" if spec.names else "a number"
        raise _CrontabError(f"{spec.name} {text!r} is not {kind} (allowed: {spec.allowed()})")
    if not spec.low <= value <= spec.high:
        raise _CrontabError(f"{spec.name} {value} out of range {spec.allowed()}")
    return value


def _parse_field(text: str, spec: _FieldSpec) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise _CrontabError(f"{spec.name} {text!r} has an empty list item")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise _CrontabError(
                    f"{spec.name} step {step_text!r} in {item!r} must be a whole number >= 1"
                )
            step = int(step_text)
        if base == "*":
            low, high = spec.low, spec.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low = _parse_value(first, spec)
            high = _parse_value(last, spec, range_end=True)
            if low > high:
                raise _CrontabError(
                    f"{spec.name} range {base!r} is backwards: write it low-high "
                    f"(allowed: {spec.allowed()})"
                )
        else:
            low = high = _parse_value(base, spec)
            if slash:
                raise _CrontabError(
                    f"{spec.name} {item!r}: a step needs a range or '*', "
                    f"e.g. '{base}-{spec.high}/{step}'"
                )
        values.update(range(low, high + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSpec:
    """A parsed crontab: the allowed values of each field and the day rule."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_month: frozenset[int]
    months: tuple[int, ...]
    days_of_week: frozenset[int]  # 0 = Sunday ... 6 = Saturday
    either_day: bool  # True: day-of-month OR day-of-week (both restricted)

    def day_matches(self, day: date) -> bool:
        """Whether ``day`` satisfies the day-of-month / day-of-week part."""
        dom_ok = day.day in self.days_of_month
        dow_ok = (day.weekday() + 1) % 7 in self.days_of_week
        return (dom_ok or dow_ok) if self.either_day else (dom_ok and dow_ok)

    def matches(self, wall: datetime) -> bool:
        """Whether the naive local time ``wall`` (to the minute) matches the expression."""
        return (
            wall.minute in self.minutes
            and wall.hour in self.hours
            and wall.month in self.months
            and self.day_matches(wall.date())
        )

    def next_wall_time(self, start: datetime) -> datetime | None:
        """The first naive local time at or after ``start`` (whole minutes) that matches.

        Jumps field by field; returns None when nothing matches within 400 years.
        """
        y, mo, d, h, mi = start.year, start.month, start.day, start.hour, start.minute
        if start.second or start.microsecond:
            mi += 1
        last_year = y + _SEARCH_YEARS
        while y <= last_year:
            i = bisect_left(self.months, mo)
            if i == len(self.months):
                y, mo, d, h, mi = y + 1, self.months[0], 1, 0, 0
                continue
            if self.months[i] != mo:
                mo, d, h, mi = self.months[i], 1, 0, 0
            day = self._next_day(y, mo, d)
            if day is None:
                y, mo, d, h, mi = (y + 1, 1, 1, 0, 0) if mo == 12 else (y, mo + 1, 1, 0, 0)
                continue
            if day != d:
                d, h, mi = day, 0, 0
            i = bisect_left(self.hours, h)
            if i == len(self.hours):
                d, h, mi = d + 1, 0, 0
                continue
            if self.hours[i] != h:
                h, mi = self.hours[i], 0
            i = bisect_left(self.minutes, mi)
            if i == len(self.minutes):
                h, mi = h + 1, 0
                continue
            return datetime(y, mo, d, h, self.minutes[i])
        return None

    def _next_day(self, year: int, month: int, first: int) -> int | None:
        length = calendar.monthrange(year, month)[1]
        for day in range(first, length + 1):
            if self.day_matches(date(year, month, day)):
                return day
        return None


def parse_crontab(expression: str) -> CronSpec:
    """Parse a crontab expression or macro; raise ValueError naming the field and the rule."""
    if not isinstance(expression, str):
        raise ValueError(f"expected {CRONTAB_FORM}, got {type(expression).__name__}")
    text = " ".join(expression.split())
    shown = f"invalid crontab {text!r}"
    if text.startswith("@"):
        macro = text.lower()
        if macro == "@reboot":
            raise ValueError(f"{shown}: @reboot is not supported (jobs run on a schedule)")
        if macro not in MACROS:
            raise ValueError(f"{shown}: unknown macro; use one of {', '.join(MACROS)}")
        fields = MACROS[macro].split()
    else:
        fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            f"{shown}: expected 5 fields (minute hour day-of-month month day-of-week) "
            f"or a macro like @daily, got {len(fields)}"
        )
    try:
        minutes, hours, doms, months, dows = (
            _parse_field(part, spec) for part, spec in zip(fields, _FIELDS, strict=True)
        )
    except _CrontabError as exc:
        raise ValueError(f"{shown}: {exc}") from None
    dom_star, dow_star = fields[2].startswith("*"), fields[4].startswith("*")
    spec = CronSpec(
        expression=text,
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days_of_month=doms,
        months=tuple(sorted(months)),
        days_of_week=frozenset(v % 7 for v in dows),
        either_day=not (dom_star or dow_star),
    )
    if not spec.either_day and not any(
        day <= _MAX_DAYS[month - 1] for month in spec.months for day in doms
    ):
        raise ValueError(
            f"{shown}: never fires: day-of-month {fields[2]} does not occur in month {fields[3]}"
        )
    return spec


def _zone(value: tzinfo | str) -> tzinfo:
    return ZoneInfo(value) if isinstance(value, str) else value


def resolve_local(wall: datetime, tz: tzinfo) -> datetime:
    """Turn a naive local time into the aware instant it stands for, by the DST rule above.

    A time in the spring-forward gap resolves to the first valid instant after it (the end of
    the gap); a time that occurs twice resolves to its first occurrence.
    """
    first = wall.replace(tzinfo=tz, fold=0)
    instant = first.astimezone(UTC).astimezone(tz)
    if instant.replace(tzinfo=None) == wall.replace(fold=0):
        return instant
    # In the gap: fold=1 reads it with the offset after the change (an instant before the
    # transition), fold=0 with the offset before it (an instant after). Bisect between them.
    offset_after = instant.utcoffset()
    low = math.floor(wall.replace(tzinfo=tz, fold=1).timestamp())
    high = math.ceil(first.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == offset_after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, tz)


class CrontabTrigger(BaseTrigger):
    """Fires when the wall-clock time in ``timezone`` matches a cron(8) expression.

    :param expression: five fields or a macro, see the module documentation
    :param timezone: an IANA zone (``ZoneInfo`` or its key); default UTC
    :raises ValueError: if the expression or the zone is invalid
    """

    __slots__ = ("expression", "spec", "timezone")

    def __init__(self, expression: str, timezone: tzinfo | str = "UTC") -> None:
        self.spec = parse_crontab(expression)
        self.expression = self.spec.expression
        self.timezone = _zone(timezone)

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The first fire time after ``previous_fire_time``, or at/after ``now`` if there is none.

        Returns an aware datetime in the trigger's zone, or None if the expression never
        matches again.
        """
        if previous_fire_time is not None:
            threshold = self._utc(previous_fire_time) + timedelta(microseconds=1)
        else:
            threshold = self._utc(now)
        # Start a minute early so that a gap ending exactly at the threshold is seen.
        wall = (threshold - timedelta(minutes=1)).astimezone(self.timezone)
        wall = wall.replace(tzinfo=None, second=0, microsecond=0, fold=0)
        while True:
            match = self.spec.next_wall_time(wall)
            if match is None:
                return None
            fire = resolve_local(match, self.timezone)
            if fire >= threshold:
                return fire
            # An earlier wall time whose instant is already past (the repeated hour).
            wall = match + timedelta(minutes=1)

    def _utc(self, value: datetime) -> datetime:
        if value.tzinfo is None:
            value = resolve_local(value, self.timezone)
        return value.astimezone(UTC)

    def __getstate__(self) -> dict:
        return {"version": 1, "expression": self.expression, "timezone": self.timezone}

    def __setstate__(self, state: dict) -> None:
        if state.get("version", 1) > 1:
            raise ValueError(
                f"Got serialized data for version {state['version']} of "
                f"{type(self).__name__}, but only version 1 can be handled"
            )
        self.spec = parse_crontab(state["expression"])
        self.expression = self.spec.expression
        self.timezone = _zone(state["timezone"])

    def __str__(self) -> str:
        return f"crontab[{self.expression}]"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} ({self.expression!r}, timezone='{self.timezone}')>"
