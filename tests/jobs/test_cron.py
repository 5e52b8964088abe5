"""CrontabTrigger: cron(8) semantics, DST rule, errors, and APScheduler compatibility.

The clock is controlled: every test calls get_next_fire_time with chosen datetimes.
"""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from notifier.jobs.cron import CronSpec, CrontabTrigger, parse_crontab, resolve_local

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def fires(expr: str, now: datetime, count: int = 5, tz: ZoneInfo = UTC) -> list[str]:
    """The next ``count`` fire times as ISO strings, chained the way APScheduler does."""
    trigger = CrontabTrigger(expr, tz)
    result: list[str] = []
    previous = None
    for _ in range(count):
        previous = trigger.get_next_fire_time(previous, now if previous is None else previous)
        if previous is None:
            break
        result.append(previous.isoformat())
    return result


def brute_force(expr: str, tz, start: datetime, end: datetime) -> list[str]:
    """Minute-by-minute reference of the documented rule, walking UTC instants."""
    spec = parse_crontab(expr)
    result = []
    moment = start.astimezone(UTC).replace(second=0, microsecond=0)
    previous_wall = None
    while moment < end:
        local = moment.astimezone(tz)
        wall = local.replace(tzinfo=None, fold=0)
        due = local.fold == 0 and spec.matches(wall)  # second occurrences never run
        if previous_wall is not None and wall - previous_wall > timedelta(minutes=1):
            # Clocks jumped forward: the skipped wall times run now, once.
            skipped = previous_wall + timedelta(minutes=1)
            while skipped < wall and not due:
                due = spec.matches(skipped)
                skipped += timedelta(minutes=1)
        if due:
            result.append(local.isoformat())
        previous_wall = wall
        moment += timedelta(minutes=1)
    return result


# --- day-of-week numbering and names --------------------------------------------------------

MONDAY = datetime(2026, 6, 1, tzinfo=UTC)  # 2026-06-01 is a Monday


@pytest.mark.parametrize("dow", ["0", "7", "sun", "SUN", "Sun"])
def test_sunday_is_0_and_7_and_sun(dow):
    assert fires(f"0 9 * * {dow}", MONDAY, 2) == [
        "2026-06-07T09:00:00+00:00",
        "2026-06-14T09:00:00+00:00",
    ]


@pytest.mark.parametrize("dow", ["1-5", "mon-fri", "MON-FRI", "1,2,3,4,5", "mon,tue,wed-fri"])
def test_weekdays_are_monday_to_friday(dow):
    assert fires(f"0 8 * * {dow}", MONDAY, 6) == [
        "2026-06-01T08:00:00+00:00",
        "2026-06-02T08:00:00+00:00",
        "2026-06-03T08:00:00+00:00",
        "2026-06-04T08:00:00+00:00",
        "2026-06-05T08:00:00+00:00",
        "2026-06-08T08:00:00+00:00",
    ]


@pytest.mark.parametrize("dow", ["6-7", "sat-sun", "6,0", "sat,sun"])
def test_weekend(dow):
    assert fires(f"0 10 * * {dow}", MONDAY, 3) == [
        "2026-06-06T10:00:00+00:00",
        "2026-06-07T10:00:00+00:00",
        "2026-06-13T10:00:00+00:00",
    ]


def test_month_names_case_insensitive():
    assert fires("0 0 1 Jan,jul *", MONDAY, 2) == [
        "2026-07-01T00:00:00+00:00",
        "2027-01-01T00:00:00+00:00",
    ]


# --- day-of-month OR day-of-week -------------------------------------------------------------


def test_both_day_fields_restricted_means_either():
    # the 13th of the month OR any Friday (June 2026: Fridays 5, 12, 19, 26)
    assert fires("0 9 13 * 5", MONDAY, 5) == [
        "2026-06-05T09:00:00+00:00",
        "2026-06-12T09:00:00+00:00",
        "2026-06-13T09:00:00+00:00",
        "2026-06-19T09:00:00+00:00",
        "2026-06-26T09:00:00+00:00",
    ]


def test_day_of_month_with_star_day_of_week_is_only_the_day_of_month():
    assert fires("0 9 15 * *", MONDAY, 2) == [
        "2026-06-15T09:00:00+00:00",
        "2026-07-15T09:00:00+00:00",
    ]


def test_star_step_in_day_field_counts_as_unrestricted_and_is_anded():
    # cron(8): a field starting with '*' is unrestricted, so */10 (1, 11, 21, 31) AND Monday.
    assert fires("0 9 */10 * mon", MONDAY, 3) == [
        "2026-06-01T09:00:00+00:00",
        "2026-08-31T09:00:00+00:00",
        "2026-09-21T09:00:00+00:00",
    ]


def test_impossible_dom_is_fine_when_dow_is_an_alternative():
    # Feb 31 never exists, but "31 OR Monday" runs on February Mondays.
    assert fires("0 0 31 2 mon", MONDAY, 2) == [
        "2027-02-01T00:00:00+00:00",
        "2027-02-08T00:00:00+00:00",
    ]


# --- macros, steps, ranges, lists -----------------------------------------------------------


@pytest.mark.parametrize(
    ("macro", "expansion"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_macros(macro, expansion):
    now = datetime(2026, 6, 3, 10, 30, tzinfo=UTC)
    assert fires(macro, now, 4) == fires(expansion, now, 4)


def test_macro_values():
    now = datetime(2026, 6, 3, 10, 30, tzinfo=UTC)
    assert fires("@hourly", now, 2) == ["2026-06-03T11:00:00+00:00", "2026-06-03T12:00:00+00:00"]
    assert fires("@weekly", now, 1) == ["2026-06-07T00:00:00+00:00"]
    assert fires("@monthly", now, 1) == ["2026-07-01T00:00:00+00:00"]
    assert fires("@yearly", now, 1) == ["2027-01-01T00:00:00+00:00"]


def test_steps_ranges_lists():
    now = datetime(2026, 6, 1, 10, 0, 30, tzinfo=UTC)
    assert fires("*/15 * * * *", now, 3) == [
        "2026-06-01T10:15:00+00:00",
        "2026-06-01T10:30:00+00:00",
        "2026-06-01T10:45:00+00:00",
    ]
    assert fires("1-30/7 10 * * *", now, 5) == [
        "2026-06-01T10:01:00+00:00",
        "2026-06-01T10:08:00+00:00",
        "2026-06-01T10:15:00+00:00",
        "2026-06-01T10:22:00+00:00",
        "2026-06-01T10:29:00+00:00",
    ]
    assert fires("5,10-12 */6 * * *", now, 5) == [
        "2026-06-01T12:05:00+00:00",
        "2026-06-01T12:10:00+00:00",
        "2026-06-01T12:11:00+00:00",
        "2026-06-01T12:12:00+00:00",
        "2026-06-01T18:05:00+00:00",
    ]
    assert fires("0 0 1-31/10 * *", now, 4) == [
        "2026-06-11T00:00:00+00:00",
        "2026-06-21T00:00:00+00:00",
        "2026-07-01T00:00:00+00:00",
        "2026-07-11T00:00:00+00:00",
    ]


def test_now_on_a_fire_time_is_included_and_previous_is_excluded():
    trigger = CrontabTrigger("0 8 * * *")
    at_eight = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    assert trigger.get_next_fire_time(None, at_eight) == at_eight
    assert trigger.get_next_fire_time(at_eight, at_eight) == at_eight + timedelta(days=1)
    later = at_eight + timedelta(seconds=1)
    assert trigger.get_next_fire_time(None, later) == at_eight + timedelta(days=1)


def test_missed_runs_are_enumerated_from_previous_not_now():
    # APScheduler passes the last fire time and a later now to list missed runs.
    trigger = CrontabTrigger("0 * * * *")
    previous = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    now = datetime(2026, 6, 1, 11, 30, tzinfo=UTC)
    assert trigger.get_next_fire_time(previous, now) == datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


# --- February 29 and impossible dates -------------------------------------------------------


def test_february_29():
    assert fires("0 0 29 2 *", datetime(2026, 3, 1, tzinfo=UTC), 3) == [
        "2028-02-29T00:00:00+00:00",
        "2032-02-29T00:00:00+00:00",
        "2036-02-29T00:00:00+00:00",
    ]


def test_february_29_skips_the_century_that_is_not_leap():
    assert fires("0 0 29 2 *", datetime(2097, 1, 1, tzinfo=UTC), 2) == [
        "2104-02-29T00:00:00+00:00",
        "2108-02-29T00:00:00+00:00",
    ]


@pytest.mark.parametrize("expr", ["0 0 31 2 *", "0 0 30,31 feb *", "0 0 31 4,6,9,11 *"])
def test_impossible_dates_fail_at_parse_time(expr):
    with pytest.raises(ValueError, match="never fires"):
        CrontabTrigger(expr)


def test_search_terminates_when_nothing_matches():
    # A spec that cannot match (bypassing the parse-time check) must return, not loop.
    spec = CronSpec("x", (0,), (0,), frozenset({31}), (2,), frozenset(range(7)), False)
    assert spec.next_wall_time(datetime(2026, 1, 1)) is None


# --- parse errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", "invalid crontab '61 * * * *': minute 61 out of range 0-59"),
        ("* 24 * * *", "hour 24 out of range 0-23"),
        ("* * 0 * *", "day-of-month 0 out of range 1-31"),
        ("* * 32 * *", "day-of-month 32 out of range 1-31"),
        ("* * * 13 *", "month 13 out of range 1-12 or jan-dec"),
        ("* * * * 8", "day-of-week 8 out of range 0-7 or sun-sat (0 and 7 are Sunday)"),
        ("* * * * *", None),
        ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week)"),
        ("0 * * * * *", "got 6"),
        ("", "got 0"),
        ("* * * foo *", "month 'foo' is not a number or a name (allowed: 1-12 or jan-dec)"),
        ("x * * * *", "minute 'x' is not a number (allowed: 0-59)"),
        ("* * * * monday", "day-of-week 'monday' is not a number or a name"),
        ("5-1 * * * *", "minute range '5-1' is backwards"),
        ("*/0 * * * *", "minute step '0' in '*/0' must be a whole number >= 1"),
        ("*/x * * * *", "minute step 'x'"),
        ("5/15 * * * *", "a step needs a range or '*', e.g. '5-59/15'"),
        ("1,,2 * * * *", "minute '1,,2' has an empty list item"),
        ("* * L * *", "L, W, # and ? are not part of cron(8)"),
        ("* * * * 5#2", "L, W, # and ? are not part of cron(8)"),
        ("* * ? * *", "L, W, # and ? are not part of cron(8)"),
        ("-5 * * * *", "minute: a number is missing"),
        ("@reboot", "@reboot is not supported"),
        ("@often", "unknown macro; use one of @yearly"),
    ],
)
def test_parse_errors_name_field_value_and_allowed(expr, message):
    if message is None:
        CrontabTrigger(expr)
        return
    with pytest.raises(ValueError) as info:
        CrontabTrigger(expr)
    assert message in str(info.value)
    assert str(info.value).startswith("invalid crontab")


def test_bad_timezone_key():
    with pytest.raises(Exception, match="No time zone found"):
        CrontabTrigger("* * * * *", "Mars/Olympus")


# --- daylight saving time -------------------------------------------------------------------


def test_berlin_spring_forward_gap_runs_once_at_three():
    now = datetime(2026, 3, 28, 0, 0, tzinfo=BERLIN)
    assert fires("30 2 * * *", now, 3, BERLIN) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


def test_berlin_several_times_in_the_gap_collapse_into_one_run():
    now = datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN)
    assert fires("*/30 2 * * *", now, 3, BERLIN) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


def test_gap_run_and_a_real_three_oclock_run_are_one_slot():
    now = datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN)
    assert fires("0,30 2,3 * * *", now, 3, BERLIN) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:30:00+02:00",
        "2026-03-30T02:00:00+02:00",
    ]


def test_gap_run_is_found_when_now_is_exactly_the_end_of_the_gap():
    now = datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)
    assert fires("30 2 * * *", now, 1, BERLIN) == ["2026-03-29T03:00:00+02:00"]
    after = datetime(2026, 3, 29, 3, 0, 1, tzinfo=BERLIN)
    assert fires("30 2 * * *", after, 1, BERLIN) == ["2026-03-30T02:30:00+02:00"]


def test_berlin_fall_back_runs_the_repeated_time_once_at_first_occurrence():
    now = datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN)
    assert fires("30 2 * * *", now, 3, BERLIN) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


def test_berlin_fall_back_repeated_hour_has_no_second_runs():
    now = datetime(2026, 10, 25, 1, 45, tzinfo=BERLIN)
    assert fires("*/30 * * * *", now, 5, BERLIN) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T03:30:00+01:00",
        "2026-10-25T04:00:00+01:00",
    ]


def test_new_york_spring_forward():
    now = datetime(2026, 3, 7, 12, 0, tzinfo=NEW_YORK)
    assert fires("30 2 * * *", now, 3, NEW_YORK) == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
        "2026-03-10T02:30:00-04:00",
    ]


def test_new_york_fall_back_runs_once():
    now = datetime(2026, 10, 31, 12, 0, tzinfo=NEW_YORK)
    assert fires("30 1 * * *", now, 3, NEW_YORK) == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
        "2026-11-03T01:30:00-05:00",
    ]


def test_new_york_now_in_the_second_occurrence_waits_for_the_next_day():
    now = datetime(2026, 11, 1, 1, 10, fold=1, tzinfo=NEW_YORK)  # 01:10 EST, after 01:30 EDT
    assert now.utcoffset() == timedelta(hours=-5)
    assert fires("30 1 * * *", now, 1, NEW_YORK) == ["2026-11-02T01:30:00-05:00"]


def test_fire_times_are_strictly_increasing_across_dst_days():
    for tz, day in ((BERLIN, datetime(2026, 3, 28)), (BERLIN, datetime(2026, 10, 24))):
        trigger = CrontabTrigger("*/7 * * * *", tz)
        previous, seen = None, []
        now = day.replace(tzinfo=tz)
        for _ in range(600):
            previous = trigger.get_next_fire_time(previous, now)
            seen.append(previous.astimezone(UTC))
        assert seen == sorted(set(seen))


@pytest.mark.parametrize(
    ("expr", "tz", "day"),
    [
        ("30 2 * * *", BERLIN, datetime(2026, 3, 28)),
        ("*/20 2 * * *", BERLIN, datetime(2026, 3, 28)),
        ("*/25 1-3 * * *", BERLIN, datetime(2026, 10, 24)),
        ("15,45 * * * *", BERLIN, datetime(2026, 10, 24)),
        ("0 1,2 * * *", NEW_YORK, datetime(2026, 3, 7)),
        ("*/13 0-3 * * *", NEW_YORK, datetime(2026, 10, 31)),
        ("0 9 13 * 5", UTC, datetime(2026, 4, 8)),
        ("*/10 6-9 * 2,3 1-5", UTC, datetime(2026, 2, 20)),
    ],
)
def test_matches_minute_by_minute_reference(expr, tz, day):
    start = day.replace(tzinfo=tz)
    end = start + timedelta(days=7)
    expected = brute_force(expr, tz, start, end)
    got = [t for t in fires(expr, start, len(expected) + 1, tz) if datetime.fromisoformat(t) < end]
    assert got == expected
    assert expected  # the window really contains runs


def test_resolve_local_rule():
    assert resolve_local(datetime(2026, 3, 29, 2, 30), BERLIN).isoformat() == (
        "2026-03-29T03:00:00+02:00"
    )
    assert resolve_local(datetime(2026, 10, 25, 2, 30), BERLIN).isoformat() == (
        "2026-10-25T02:30:00+02:00"
    )
    assert resolve_local(datetime(2026, 7, 1, 12, 0), BERLIN).isoformat() == (
        "2026-07-01T12:00:00+02:00"
    )


# --- APScheduler compatibility --------------------------------------------------------------


def test_state_round_trip_and_str():
    trigger = CrontabTrigger("0  8 * * MON-fri", BERLIN)
    copy = pickle.loads(pickle.dumps(trigger))
    assert copy.expression == "0 8 * * MON-fri"
    assert copy.timezone == BERLIN
    assert str(copy) == "crontab[0 8 * * MON-fri]"
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert copy.get_next_fire_time(None, now) == trigger.get_next_fire_time(None, now)
    assert "Europe/Berlin" in repr(copy)


def test_unlike_apscheduler_from_crontab_day_numbering():
    # The reason this module exists: APScheduler 3 reads "0" as Monday.
    from apscheduler.triggers.cron import CronTrigger

    theirs = CronTrigger.from_crontab("0 9 * * 0", timezone=UTC).get_next_fire_time(None, MONDAY)
    ours = CrontabTrigger("0 9 * * 0").get_next_fire_time(None, MONDAY)
    assert theirs.weekday() == 0  # Monday
    assert ours.weekday() == 6  # Sunday


def test_scheduler_accepts_the_trigger():
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.start(paused=True)
    try:
        job = scheduler.add_job(print, trigger=CrontabTrigger("0 8 * * 1-5", BERLIN))
        assert job.next_run_time > datetime.now(UTC)
        assert job.next_run_time.astimezone(BERLIN).hour == 8
        assert job.next_run_time.astimezone(BERLIN).isoweekday() <= 5
    finally:
        scheduler.shutdown(wait=False)
