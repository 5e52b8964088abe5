"""schedule values -> triggers: stable interval slots, one-offs, crontab forms; durations."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.date import DateTrigger

from notifier.durations import DURATION, TIMEOUT, Limit, format_duration, parse_duration
from notifier.jobs.cron import CrontabTrigger
from notifier.jobs.schedules import (
    AnchoredIntervalTrigger,
    build_trigger,
    next_fire_times,
    parse_schedule,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def iso(times: list[datetime]) -> list[str]:
    return [t.isoformat() for t in times]


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("2d", 172800),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        ("1.5h", 5400),
        (" 10m ", 600),
        ("1h 30m", 5400),
        (90, 90),
        (2.5, 2.5),
        ("90", 90),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "5x", "10 minutes", "30m1h", "1h1h", "-5m", "5M"])
def test_parse_duration_rejects(text):
    if text == "5":
        assert parse_duration(text) == 5
        return
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_duration_rejects_bool_and_bare_number_when_unit_required():
    with pytest.raises(ValueError):
        parse_duration(True)
    with pytest.raises(ValueError, match="write the unit, e.g. '30d'"):
        parse_duration(30, allow_number=False)


@pytest.mark.parametrize(
    ("limit", "value", "message"),
    [
        (TIMEOUT, "nan", "'nan' is not a duration like 90s"),
        (TIMEOUT, float("nan"), "nan is not a duration"),
        (TIMEOUT, float("inf"), "inf is not a duration"),
        (TIMEOUT, "-5", "'-5' is negative"),
        (TIMEOUT, -5, "-5 is negative"),
        (TIMEOUT, "0", "'0' is zero"),
        (TIMEOUT, 0.5, "0.5 is under 1s"),
        (TIMEOUT, "1d1s", "'1d1s' is more than 1d"),
        (DURATION, "99999999999d", "'99999999999d' is more than 3650d; allowed: 1s to 3650d"),
        (DURATION, "9" * 400 + "d", "...' is not a duration like 90s"),
        (Limit(1, 10_000, count=True), "99999999999999999999", "is more than 10000"),
        (Limit(1, 10_000, count=True), "9" * 5000, "is more than 10000; allowed: 1 to 10000"),
        (Limit(1, 10_000, count=True), "2.5", "'2.5' is not a whole number"),
        (Limit(1, 10_000, count=True), True, "True is not a whole number"),
        (Limit(1, 60, unit=True), "30", "'30' needs a unit"),
    ],
)
def test_limits_refuse_what_is_not_finite_or_out_of_range(limit, value, message):
    with pytest.raises(ValueError) as info:
        limit.parse(value)
    assert message in str(info.value)
    assert str(info.value).endswith(f"allowed: {limit.describe()}")


def test_limits_accept_their_whole_range():
    assert (TIMEOUT.parse("1s"), TIMEOUT.parse("1d"), TIMEOUT.parse(600)) == (1, 86400, 600)
    assert DURATION.parse("3650d") == 3650 * 86400
    assert Limit(0, 5, count=True).parse(" 0 ") == 0
    assert Limit(1, 60, unit=True).parse("30s") == 30


def test_format_duration():
    assert format_duration(5400) == "1h30m"
    assert format_duration(86400) == "1d"
    assert format_duration(1.5) == "1.5s"


# --- intervals ------------------------------------------------------------------------------


def test_an_interval_that_runs_past_the_year_9999_just_ends():
    trigger = build_trigger({"every": "1000d", "start": "9998-01-01T00:00"}, UTC)
    times = next_fire_times(trigger, datetime(9997, 12, 1, tzinfo=UTC), count=5)
    assert times == [datetime(9998, 1, 1, tzinfo=UTC)]  # the next is in the year 10000


def test_interval_is_anchored_to_2000_in_the_job_zone():
    trigger = build_trigger({"every": "5m"}, BERLIN)
    assert isinstance(trigger, AnchoredIntervalTrigger)
    assert trigger.start_date == datetime(2000, 1, 1, tzinfo=BERLIN)
    now = datetime(2026, 6, 1, 10, 2, 30, tzinfo=BERLIN)
    assert iso(next_fire_times(trigger, now, 3)) == [
        "2026-06-01T10:05:00+02:00",
        "2026-06-01T10:10:00+02:00",
        "2026-06-01T10:15:00+02:00",
    ]


def test_interval_slots_are_identical_across_restarts():
    # 7 minutes does not divide an hour or a day: slots depend on the anchor only.
    anchor = datetime(2000, 1, 1, tzinfo=BERLIN).astimezone(UTC)
    before_restart = build_trigger({"every": "7m"}, BERLIN)
    first_start = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    slots = next_fire_times(before_restart, first_start, 50)
    for slot in slots:
        assert (slot.astimezone(UTC) - anchor) % timedelta(minutes=7) == timedelta(0)
    assert slots[0] == datetime(2026, 6, 1, 10, 2, tzinfo=UTC)
    # The daemon restarts at arbitrary moments and builds a new trigger each time.
    for minutes in (1, 13.5, 100, 200.25):
        restarted = build_trigger({"every": "7m"}, BERLIN)
        now = first_start + timedelta(minutes=minutes)
        expected = [s for s in slots if s >= now][:5]
        assert next_fire_times(restarted, now, 5) == expected


def test_interval_previous_fire_time_chains_on_the_lattice():
    trigger = build_trigger({"every": "90s"}, UTC)
    slot = datetime(2026, 6, 1, 10, 0, 0, tzinfo=UTC)
    later = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert trigger.get_next_fire_time(slot, later) == datetime(2026, 6, 1, 10, 1, 30, tzinfo=UTC)
    # An off-lattice previous time snaps to the next slot rather than shifting them all.
    odd = datetime(2026, 6, 1, 10, 0, 10, tzinfo=UTC)
    assert trigger.get_next_fire_time(odd, later) == datetime(2026, 6, 1, 10, 1, 30, tzinfo=UTC)


def test_interval_is_elapsed_time_across_dst():
    trigger = build_trigger({"every": "1h"}, BERLIN)
    now = datetime(2026, 3, 29, 0, 30, tzinfo=BERLIN)
    assert iso(next_fire_times(trigger, now, 4)) == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T04:00:00+02:00",
        "2026-03-29T05:00:00+02:00",
    ]
    now = datetime(2026, 10, 25, 1, 30, tzinfo=BERLIN)
    assert iso(next_fire_times(trigger, now, 4)) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T04:00:00+01:00",
    ]


def test_interval_with_start():
    trigger = build_trigger({"every": "1h", "start": "2026-01-05T09:15"}, BERLIN)
    before = datetime(2026, 1, 1, tzinfo=UTC)
    assert iso(next_fire_times(trigger, before, 2)) == [
        "2026-01-05T09:15:00+01:00",
        "2026-01-05T10:15:00+01:00",
    ]
    after = datetime(2026, 1, 6, 12, 0, tzinfo=BERLIN)
    assert iso(next_fire_times(trigger, after, 1)) == ["2026-01-06T12:15:00+01:00"]


def test_interval_start_with_offset_and_yaml_datetime():
    with_offset = build_trigger({"every": "30m", "start": "2026-01-05T09:10+00:00"}, BERLIN)
    assert with_offset.start_date == datetime(2026, 1, 5, 10, 10, tzinfo=BERLIN)
    from_yaml = build_trigger({"every": "30m", "start": datetime(2026, 1, 5, 9, 10)}, BERLIN)
    assert from_yaml.start_date == datetime(2026, 1, 5, 9, 10, tzinfo=BERLIN)


def test_interval_numbers_and_combos():
    assert parse_schedule({"every": 90}).every_seconds == 90
    assert parse_schedule({"every": "1h30m"}).every_seconds == 5400
    assert parse_schedule({"every": "1h30m"}).describe() == "every 1h30m"
    assert str(build_trigger({"every": "1h30m"}, UTC)) == "every[1h30m]"


# --- one-offs -------------------------------------------------------------------------------


def test_one_off_fires_once_then_none():
    trigger = build_trigger({"at": "2026-12-01T08:00"}, NEW_YORK)
    assert isinstance(trigger, DateTrigger)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    fire = trigger.get_next_fire_time(None, now)
    assert fire.isoformat() == "2026-12-01T08:00:00-05:00"
    assert trigger.get_next_fire_time(fire, fire) is None
    assert iso(next_fire_times(trigger, now)) == ["2026-12-01T08:00:00-05:00"]


def test_one_off_in_the_past_has_no_upcoming_fire_time():
    trigger = build_trigger({"at": "2026-12-01T08:00"}, NEW_YORK)
    assert next_fire_times(trigger, datetime(2027, 1, 1, tzinfo=UTC)) == []


def test_one_off_with_offset_keeps_the_instant():
    trigger = build_trigger({"at": "2026-12-01T08:00+01:00"}, NEW_YORK)
    fire = trigger.get_next_fire_time(None, datetime(2026, 1, 1, tzinfo=UTC))
    assert fire == datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    z = build_trigger({"at": "2026-12-01T08:00Z"}, NEW_YORK)
    assert z.get_next_fire_time(None, fire) == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_one_off_in_a_dst_gap_follows_the_cron_rule():
    trigger = build_trigger({"at": "2026-03-29T02:30"}, BERLIN)
    fire = trigger.get_next_fire_time(None, datetime(2026, 1, 1, tzinfo=UTC))
    assert fire.isoformat() == "2026-03-29T03:00:00+02:00"


# --- crontab forms and errors ---------------------------------------------------------------


def test_crontab_string_and_explicit_form_are_the_same():
    now = datetime(2026, 6, 1, tzinfo=UTC)
    plain = build_trigger("0 8 * * 1-5", BERLIN)
    explicit = build_trigger({"cron": "0 8 * * 1-5"}, BERLIN)
    assert isinstance(plain, CrontabTrigger)
    assert next_fire_times(plain, now) == next_fire_times(explicit, now)
    assert iso(next_fire_times(build_trigger("@daily", BERLIN), now, 1)) == [
        "2026-06-02T00:00:00+02:00"
    ]


def test_next_fire_times_are_aware_and_increasing():
    times = next_fire_times(build_trigger("*/5 * * * *", BERLIN), datetime.now(UTC), 5)
    assert len(times) == 5
    assert all(t.tzinfo is not None for t in times)
    assert times == sorted(times)
    assert times[1] - times[0] == timedelta(minutes=5)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("61 * * * *", "minute 61 out of range 0-59"),
        ({"every": "0s"}, "every: '0s' is zero; allowed: 1s to 3650d"),
        ({"every": "0.5s"}, "every: '0.5s' is under 1s; allowed: 1s to 3650d"),
        ({"every": "99999999999d"}, "every: '99999999999d' is more than 3650d"),
        ({"every": "5x"}, "every: '5x' is not a duration like 90s"),
        ({"every": "5m", "start": "9999-12-31T23:59"}, "start: 9999-12-31T23:59 is out of range"),
        ({"at": "0001-01-01T00:00"}, "at: 0001-01-01T00:00 is out of range; allowed: the years"),
        ({"at": "tomorrow"}, "at: invalid date-time 'tomorrow'; expected ISO 8601"),
        ({"every": "5m", "start": "soon"}, "start: invalid date-time 'soon'"),
        ({"every": "5m", "at": "2026-01-01T00:00"}, "exactly one of cron, every, at"),
        ({}, "exactly one of cron, every, at (found none)"),
        ({"every": "5m", "stat": "x"}, "unknown key 'stat' next to 'every'; allowed: every, start"),
        ({"at": "2026-01-01T00:00", "start": "x"}, "unknown key 'start' next to 'at'"),
        ({"cron": 5}, "expected a crontab like"),
        (5, "expected a crontab like '0 8 * * 1-5'"),
        (["0 8 * * *"], "got list"),
    ],
)
def test_schedule_errors(value, message):
    with pytest.raises(ValueError) as info:
        parse_schedule(value)
    assert message in str(info.value)
