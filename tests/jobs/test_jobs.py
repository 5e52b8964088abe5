"""jobs.yaml loading: resolved values, defaults, ${VAR}, and every kind of error with file:line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.date import DateTrigger

from notifier.cli import validate
from notifier.errors import JobsFileError, NotifierError
from notifier.jobs import Job, load_jobs
from notifier.jobs.cron import CrontabTrigger
from notifier.jobs.schedules import AnchoredIntervalTrigger

UTC = timezone.utc


# Every parameter name the jobs in these tests pass; the check against the notebook's
# declared parameters has its own test.
DECLARED = (
    "region = 'x'\ntop = 1\ntags = []\nnested = {}\ntitle = ''\nregions = []\nthreshold = 1\n"
)


def notebook_declaring(source: str) -> str:
    cell = {
        "cell_type": "code",
        "metadata": {"tags": ["parameters"]},
        "source": source,
        "outputs": [],
        "execution_count": None,
    }
    return json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "notebooks").mkdir()
    for name in ("sales.ipynb", "alert.ipynb"):
        (tmp_path / "notebooks" / name).write_text(notebook_declaring(DECLARED))
    return tmp_path


def test_parameters_the_notebook_does_not_declare_are_errors(project: Path) -> None:
    path = write(
        project,
        """
        jobs:
          - name: daily-sales
            notebook: notebooks/sales.ipynb
            schedule: "0 8 * * *"
            parameters: {regoin: EMEA}
        """,
    )
    with pytest.raises(JobsFileError) as caught:
        load_jobs(path)
    [problem] = caught.value.problems
    assert ":5: job 'daily-sales', field 'parameters': sales.ipynb does not declare" in problem
    assert "regoin" in problem and "it declares: region, top" in problem


def write(project: Path, text: str, name: str = "jobs.yaml") -> Path:
    path = project / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(path: Path, env: dict | None = None) -> list[str]:
    with pytest.raises(JobsFileError) as info:
        load_jobs(path, env=env or {})
    error = info.value
    assert error.path == str(path)
    assert str(error).startswith(f"{path}: {len(error.problems)} error")
    return error.problems


def only_problem(path: Path, env: dict | None = None) -> str:
    problems = problems_of(path, env)
    assert len(problems) == 1, problems
    return problems[0]


FULL = """
defaults:
  timezone: Europe/Berlin
  to: team@example.com
  retries: {count: 2, delay: 30s}
  misfire: {policy: catch_up, grace: 2h}
  keep_runs: 30d
jobs:
  - name: daily-sales
    notebook: notebooks/sales.ipynb
    schedule: "0 8 * * 1-5"
    parameters:
      region: EMEA
      top: 10
      tags: [a, b]
      nested: {x: 1.5, y: null}
    cc: boss@example.com
    timeout: 15m
    cell_timeout: 90
    retries: 3
  - name: disk.alert_1
    notebook: ./notebooks/alert.ipynb
    schedule: {every: 5m}
    timezone: America/New_York
    to: [ops@example.com, oncall@example.com]
    on_failure: dev@example.com
    cooldown: 1h
    notify_recovery: true
    misfire: skip
    enabled: false
  - name: year-end
    notebook: notebooks/sales.ipynb
    schedule: {at: "2026-12-31T18:00"}
    retries: {delay: 5m}
"""


# --- valid files ----------------------------------------------------------------------------


def test_full_file_resolves_every_value(project):
    jobs_file = load_jobs(write(project, FULL), env={})
    assert jobs_file.path == project / "jobs.yaml"
    assert jobs_file.names == ["daily-sales", "disk.alert_1", "year-end"]
    sales, alert, year_end = jobs_file.jobs

    assert sales.notebook == (project / "notebooks" / "sales.ipynb").resolve()
    assert sales.notebook.is_absolute()
    assert sales.tz == ZoneInfo("Europe/Berlin")
    assert sales.timezone == "Europe/Berlin"
    assert sales.parameters == {
        "region": "EMEA",
        "top": 10,
        "tags": ["a", "b"],
        "nested": {"x": 1.5, "y": None},
    }
    assert sales.to == ("team@example.com",)
    assert sales.cc == ("boss@example.com",)
    assert sales.bcc == ()
    assert sales.on_failure == ()  # not set: problems go to the job's to + cc
    assert sales.failure_recipients == ["team@example.com", "boss@example.com"]
    assert sales.enabled is True
    assert sales.timeout_seconds == 900.0
    assert sales.cell_timeout_seconds == 90.0
    assert (sales.retries.count, sales.retries.delay_seconds) == (3, 30.0)  # delay inherited
    assert (sales.misfire.policy, sales.misfire.grace_seconds) == ("catch_up", 7200.0)
    assert sales.cooldown_seconds is None
    assert sales.notify_recovery is False
    assert sales.keep_runs_seconds == 30 * 86400
    assert sales.line == 8
    assert isinstance(sales.trigger(), CrontabTrigger)

    assert alert.tz == ZoneInfo("America/New_York")
    assert alert.to == ("ops@example.com", "oncall@example.com")
    assert alert.on_failure == ("dev@example.com",)
    assert alert.cooldown_seconds == 3600.0
    assert alert.notify_recovery is True
    assert alert.enabled is False
    assert alert.timeout_seconds == 600.0  # built-in default 10m
    assert (alert.misfire.policy, alert.misfire.grace_seconds) == ("skip", 7200.0)
    assert isinstance(alert.trigger(), AnchoredIntervalTrigger)

    assert (year_end.retries.count, year_end.retries.delay_seconds) == (2, 300.0)
    trigger = year_end.trigger()
    assert isinstance(trigger, DateTrigger)
    assert trigger.run_date.isoformat() == "2026-12-31T18:00:00+01:00"


def test_job_next_fire_times_are_in_the_job_zone(project):
    sales = load_jobs(write(project, FULL), env={}).get("daily-sales")
    now = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)  # a Friday
    assert [t.isoformat() for t in sales.next_fire_times(now, 3)] == [
        "2026-03-30T08:00:00+02:00",
        "2026-03-31T08:00:00+02:00",
        "2026-04-01T08:00:00+02:00",
    ]


def test_job_is_frozen(project):
    job = load_jobs(write(project, FULL), env={}).jobs[0]
    assert isinstance(job, Job)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.name = "other"
    assert hash(job) == hash("daily-sales")


def test_builtin_defaults(project):
    path = write(
        project,
        """
        jobs:
          - name: minimal
            notebook: notebooks/sales.ipynb
            schedule: "@daily"
        """,
    )
    job = load_jobs(path, env={}).jobs[0]
    assert job.tz == ZoneInfo("UTC")
    assert job.parameters == {}
    assert job.to == job.cc == job.bcc == job.on_failure == ()
    assert job.enabled is True
    assert job.timeout_seconds == 600.0
    assert job.cell_timeout_seconds is None
    assert (job.retries.count, job.retries.delay_seconds) == (0, 60.0)
    assert (job.misfire.policy, job.misfire.grace_seconds) == ("run_once", 3600.0)
    assert job.cooldown_seconds is None
    assert job.keep_runs_seconds is None
    assert job.notify_recovery is False
    assert (job.kernel, job.hide_code, job.attach_output) == (None, False, None)
    assert job.warm_imports is False


def test_kernel_hide_code_and_attach_output(project):
    path = write(
        project,
        """
        defaults:
          hide_code: true
          attach_output: pdf
          warm_imports: true
        jobs:
          - name: a
            notebook: notebooks/sales.ipynb
            schedule: "@daily"
            kernel: python3
          - name: b
            notebook: notebooks/sales.ipynb
            schedule: "@daily"
            hide_code: false
            attach_output: none
            warm_imports: false
          - name: c
            notebook: notebooks/sales.ipynb
            schedule: "@daily"
            attach_output: HTML
        """,
    )
    a, b, c = load_jobs(path, env={}).jobs
    assert (a.kernel, a.hide_code, a.attach_output) == ("python3", True, "pdf")
    assert (b.kernel, b.hide_code, b.attach_output) == (None, False, None)
    assert (c.hide_code, c.attach_output) == (True, "html")
    assert (a.warm_imports, b.warm_imports, c.warm_imports) == (True, False, True)


def test_timezone_precedence(project):
    text = """
        {defaults}
        jobs:
          - name: a
            notebook: notebooks/sales.ipynb
            schedule: "@daily"
          - name: b
            notebook: notebooks/sales.ipynb
            schedule: "@daily"
            timezone: Asia/Tokyo
        """
    env = {"NOTIFIER_TIMEZONE": "America/New_York"}
    path = write(project, text.format(defaults="defaults: {timezone: Europe/Paris}"))
    assert [j.timezone for j in load_jobs(path, env=env)] == ["Europe/Paris", "Asia/Tokyo"]
    path = write(project, text.format(defaults=""))
    assert [j.timezone for j in load_jobs(path, env=env)] == ["America/New_York", "Asia/Tokyo"]
    assert [j.timezone for j in load_jobs(path, env={})] == ["UTC", "Asia/Tokyo"]


def test_bad_notifier_timezone_env_is_reported(project):
    path = write(
        project,
        """
        jobs:
          - name: a
            notebook: notebooks/sales.ipynb
            schedule: "@daily"
        """,
    )
    problem = only_problem(path, env={"NOTIFIER_TIMEZONE": "Berlin"})
    assert problem.startswith(f"{path}:1: top level: environment variable NOTIFIER_TIMEZONE: ")
    assert "unknown time zone 'Berlin'" in problem


def test_env_expansion(project):
    path = write(
        project,
        """
        defaults:
          to: ${REPORT_TO}
        jobs:
          - name: ${JOB_PREFIX:-team}-sales
            notebook: ${NB_DIR:-notebooks}/sales.ipynb
            schedule: "${SALES_CRON:-0 8 * * 1-5}"
            timeout: ${TIMEOUT:-10m}
            parameters:
              title: "Costs in $${CURRENCY} for ${REGION}"
              regions: ["${REGION}", other]
        """,
    )
    env = {"REPORT_TO": "team@example.com", "REGION": "EMEA", "JOB_PREFIX": "", "TIMEOUT": "90s"}
    job = load_jobs(path, env=env).jobs[0]
    assert job.name == "team-sales"  # an empty variable takes the default, as in the shell
    assert job.notebook == (project / "notebooks" / "sales.ipynb").resolve()
    assert job.schedule.cron == "0 8 * * 1-5"
    assert job.timeout_seconds == 90.0
    assert job.to == ("team@example.com",)
    assert job.parameters == {
        "title": "Costs in ${CURRENCY} for EMEA",
        "regions": ["EMEA", "other"],
    }


def test_env_defaults_to_os_environ(project, monkeypatch):
    monkeypatch.setenv("NOTIFIER_TEST_RECIPIENT", "me@example.com")
    path = write(
        project,
        """
        jobs:
          - name: a
            notebook: notebooks/sales.ipynb
            schedule: "@daily"
            to: ${NOTIFIER_TEST_RECIPIENT}
        """,
    )
    assert load_jobs(str(path)).jobs[0].to == ("me@example.com",)


def test_get_unknown_job_lists_known_names(project):
    jobs_file = load_jobs(write(project, FULL), env={})
    assert jobs_file.get("year-end").name == "year-end"
    with pytest.raises(NotifierError) as info:
        jobs_file.get("daily-sale")
    text = str(info.value)
    assert "no job named 'daily-sale'" in text
    assert "Did you mean 'daily-sales'?" in text
    assert "Known jobs: daily-sales, disk.alert_1, year-end" in text
    assert info.value.fix
    assert info.value.exit_code == 2  # a wrong name on the command line is bad input


def test_empty_jobs_list_is_valid(project):
    assert load_jobs(write(project, "jobs: []\n"), env={}).jobs == []


# --- errors: one per kind, with file:line, job and field ------------------------------------

JOB = """
jobs:
  - name: daily-sales
    notebook: notebooks/sales.ipynb
    schedule: "0 8 * * *"
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            'schedule: "61 * * * *"',
            ":4: job 'daily-sales', field 'schedule': invalid crontab '61 * * * *': "
            "minute 61 out of range 0-59",
        ),
        (
            'schedule: "0 0 31 2 *"',
            ":4: job 'daily-sales', field 'schedule': invalid crontab '0 0 31 2 *': never fires",
        ),
        (
            "schedule: {every: 10 minutes}",
            ":4: job 'daily-sales', field 'schedule': every: '10 minutes' is not a duration "
            "like 90s, 10m, 1h30m, 2d, or a number of seconds; allowed: 1s to 3650d",
        ),
        (
            "schedule: {at: next tuesday}",
            ":4: job 'daily-sales', field 'schedule': at: invalid date-time 'next tuesday'",
        ),
        (
            "schedule: [1, 2]",
            ":4: job 'daily-sales', field 'schedule': expected a crontab like '0 8 * * 1-5'",
        ),
        (
            "timezone: Europe/Berlinn",
            ":5: job 'daily-sales', field 'timezone': unknown time zone 'Europe/Berlinn' "
            "(did you mean 'Europe/Berlin'?); expected an IANA time zone",
        ),
        (
            "timezone: europe/berlin",
            ":5: job 'daily-sales', field 'timezone': unknown time zone 'europe/berlin' "
            "(did you mean 'Europe/Berlin'?)",
        ),
        (
            "timeout: 10 minutes",
            ":5: job 'daily-sales', field 'timeout': '10 minutes' is not a duration like 90s, "
            "10m, 1h30m, 2d, or a number of seconds; allowed: 1s to 1d",
        ),
        ("timeout: 0", ":5: job 'daily-sales', field 'timeout': 0 is zero; allowed: 1s to 1d"),
        ("timeout: 2d", ":5: job 'daily-sales', field 'timeout': '2d' is more than 1d"),
        ("timeout: .nan", ":5: job 'daily-sales', field 'timeout': nan is not a duration"),
        ("cell_timeout: 5x", ":5: job 'daily-sales', field 'cell_timeout': '5x' is not a"),
        ("cell_timeout: .inf", ":5: job 'daily-sales', field 'cell_timeout': inf is not a"),
        ("cooldown: -5", ":5: job 'daily-sales', field 'cooldown': -5 is negative"),
        (
            "cooldown: 99999999999d",
            ":5: job 'daily-sales', field 'cooldown': '99999999999d' is more than 3650d; "
            "allowed: 0s to 3650d",
        ),
        (
            "deliver_within: 99999999d",
            ":5: job 'daily-sales', field 'deliver_within': '99999999d' is more than 3650d; "
            "allowed: 1s to 3650d",
        ),
        (
            "keep_runs: 99999999999d",
            ":5: job 'daily-sales', field 'keep_runs': '99999999999d' is more than 3650d",
        ),
        (
            "keep_runs: 30",
            ":5: job 'daily-sales', field 'keep_runs': 30 needs a unit (a bare number is "
            "ambiguous), e.g. '30d'",
        ),
        (
            "retries: {count: 3, delay: soon}",
            ":5: job 'daily-sales', field 'retries.delay': 'soon' is not a duration",
        ),
        (
            "retries: {count: 3, delay: 2d}",
            ":5: job 'daily-sales', field 'retries.delay': '2d' is more than 1d; allowed: 0s to 1d",
        ),
        (
            "retries: {count: -1}",
            ":5: job 'daily-sales', field 'retries.count': input should be greater than or "
            "equal to 0 (got -1); expected a whole number from 0 to 100",
        ),
        (
            "retries: lots",
            ":5: job 'daily-sales', field 'retries': expected a count like 3, or "
            "{count: 3, delay: 30s}, got 'lots'",
        ),
        (
            "retries: {count: 3, wait: 5s}",
            ":5: job 'daily-sales', field 'retries.wait': unknown key; allowed keys: count, delay",
        ),
        (
            "misfire: later",
            ":5: job 'daily-sales', field 'misfire.policy': input should be 'skip', 'run_once' "
            "or 'catch_up' (got 'later')",
        ),
        (
            "misfire: {policy: skip, grace: x}",
            ":5: job 'daily-sales', field 'misfire.grace': 'x' is not a duration",
        ),
        (
            "to: not-an-address",
            ":5: job 'daily-sales', field 'to': invalid address 'not-an-address': "
            "it needs exactly one '@'",
        ),
        (
            'to: "a@example.com, b@example.com"',
            ":5: job 'daily-sales', field 'to': invalid address 'a@example.com, b@example.com': "
            "several addresses in one string: write them as a YAML list",
        ),
        (
            'cc: ["ok@example.com", "Jane Doe <jane@example.com>"]',
            ":5: job 'daily-sales', field 'cc': invalid address 'Jane Doe <jane@example.com>': "
            "it contains a space",
        ),
        (
            'bcc: "a@b@example.com"',
            ":5: job 'daily-sales', field 'bcc': invalid address 'a@b@example.com'",
        ),
        (
            'on_failure: "ops@example.com\\nBcc: x@evil.com"',
            ":5: job 'daily-sales', field 'on_failure': invalid address",
        ),
        ("to: {a: b}", ":5: job 'daily-sales', field 'to': expected an address like"),
        (
            "enabled: maybe",
            ":5: job 'daily-sales', field 'enabled': input should be a valid boolean, unable to "
            "interpret input (got 'maybe'); expected true or false",
        ),
        (
            "notify_recovery: [yes]",
            ":5: job 'daily-sales', field 'notify_recovery': input should be a valid boolean",
        ),
        (
            "parameters: [a, b]",
            ":5: job 'daily-sales', field 'parameters': expected a mapping of parameter name "
            "to value",
        ),
        (
            "parameters: {my-param: 1}",
            ":5: job 'daily-sales', field 'parameters': parameter name 'my-param' is not a "
            "valid Python variable name",
        ),
        (
            "parameters: {class: 1}",
            ":5: job 'daily-sales', field 'parameters': parameter name 'class' is not a valid",
        ),
        (
            "parameters: {day: 2026-01-01}",
            ":5: job 'daily-sales', field 'parameters': parameter 'day' is a date "
            "(datetime.date(2026, 1, 1)); quote it to pass it as text",
        ),
        (
            "shedule: x",
            ":5: job 'daily-sales', field 'shedule': unknown key (did you mean 'schedule'?); "
            "allowed keys: name, notebook, schedule, ",
        ),
        (
            "recipients: a@example.com",
            ":5: job 'daily-sales', field 'recipients': unknown key; allowed keys: name, ",
        ),
        (
            "to: ${ALERT_TO}",
            ":5: job 'daily-sales', field 'to': undefined environment variable ${ALERT_TO}; "
            "set it, or give a default like ${ALERT_TO:-value}",
        ),
        (
            'parameters: {title: "${oops"}',
            ":5: job 'daily-sales', field 'parameters.title': malformed variable reference",
        ),
        (
            "name: again",
            ":5: duplicate key: key 'name' appears twice (first on line 2); "
            "YAML would keep only the last one",
        ),
        (
            "kernel: pyhton3",
            ":5: job 'daily-sales', field 'kernel': no Jupyter kernel named 'pyhton3' is "
            "installed (did you mean 'python3'?); installed: ",
        ),
        (
            "kernel: 'my kernel'",
            ":5: job 'daily-sales', field 'kernel': invalid kernel name 'my kernel'; expected the "
            "name of an installed Jupyter kernel, like python3 (jupyter kernelspec list)",
        ),
        (
            "hide_code: maybe",
            ":5: job 'daily-sales', field 'hide_code': input should be a valid boolean",
        ),
        (
            "attach_output: docx",
            ":5: job 'daily-sales', field 'attach_output': input should be 'html', 'pdf' or "
            "'none' (got 'docx')",
        ),
    ],
)
def test_each_kind_of_job_error(project, extra, expected):
    text = JOB
    key = extra.split(":", 1)[0]
    if key in ("schedule",):
        text = text.replace('    schedule: "0 8 * * *"\n', "")
        text += f"    {extra}\n"
    else:
        text += f"    {extra}\n"
    path = write(project, text)
    problem = only_problem(path)
    assert problem.startswith(f"{path}{expected}") or f"{path}{expected}" in problem, problem


def test_missing_notebook(project):
    path = write(project, JOB.replace("sales.ipynb", "nope.ipynb"))
    problem = only_problem(path)
    assert problem.startswith(
        f"{path}:3: job 'daily-sales', field 'notebook': notebook 'notebooks/nope.ipynb' "
        f"not found (looked for {project.resolve() / 'notebooks' / 'nope.ipynb'})"
    )


def test_undefined_variable_in_notebook_is_one_problem(project):
    path = write(project, JOB.replace("notebooks/sales.ipynb", "${NB_DIR}/sales.ipynb"))
    assert only_problem(path).startswith(
        f"{path}:3: job 'daily-sales', field 'notebook': undefined environment variable ${{NB_DIR}}"
    )


def test_notebook_must_be_ipynb(project):
    (project / "script.py").write_text("")
    path = write(project, JOB.replace("notebooks/sales.ipynb", "script.py"))
    assert "field 'notebook': 'script.py' is not a notebook (.ipynb)" in only_problem(path)


def test_notebook_path_is_relative_to_the_jobs_file_not_cwd(project, monkeypatch, tmp_path):
    sub = project / "conf"
    sub.mkdir()
    path = write(sub, JOB.replace("notebooks/", "../notebooks/"))
    monkeypatch.chdir(tmp_path.parent)
    assert load_jobs(path, env={}).jobs[0].notebook == (project / "notebooks/sales.ipynb")


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (
            "notebook: notebooks/sales.ipynb\n    schedule: '@daily'",
            ":2: job #1, field 'name': missing; expected a unique id of letters, digits",
        ),
        (
            "name: a\n    schedule: '@daily'",
            ":2: job 'a', field 'notebook': missing; expected a path to an .ipynb file",
        ),
        (
            "name: a\n    notebook: notebooks/sales.ipynb",
            ":2: job 'a', field 'schedule': missing; expected a crontab like",
        ),
        (
            "name: daily sales\n    notebook: notebooks/sales.ipynb\n    schedule: '@daily'",
            ":2: job #1, field 'name': invalid name 'daily sales'; expected a unique id",
        ),
        (
            "name: -x\n    notebook: notebooks/sales.ipynb\n    schedule: '@daily'",
            ":2: job #1, field 'name': invalid name '-x'",
        ),
        (
            "name: a\n    notebook: [x]\n    schedule: '@daily'",
            ":3: job 'a', field 'notebook': expected a path to an .ipynb file",
        ),
    ],
)
def test_missing_and_mistyped_required_fields(project, job, expected):
    path = write(project, f"jobs:\n  - {job}\n")
    problem = only_problem(path)
    assert problem.startswith(f"{path}{expected}"), problem


def test_numeric_name_is_accepted_as_text(project):
    path = write(project, "jobs:\n  - {name: 2024, notebook: notebooks/sales.ipynb, schedule: x}\n")
    assert "job '2024', field 'schedule'" in only_problem(path)


def test_misspelled_jobs_key(project):
    path = project / "jobs.yaml"
    path.write_text("job:\n  - name: a\n")
    assert problems_of(path) == [
        f"{path}:1: top level, field 'job': unknown key (did you mean 'jobs'?); "
        "allowed keys: defaults, jobs",
        f"{path}:1: top level: missing 'jobs:'; expected a list of jobs, each starting with "
        "'- name:'",
    ]


def test_duplicate_names(project):
    path = write(
        project,
        """
        jobs:
          - name: report
            notebook: notebooks/sales.ipynb
            schedule: "@daily"
          - name: report
            notebook: notebooks/alert.ipynb
            schedule: "@hourly"
        """,
    )
    assert only_problem(path) == (
        f"{path}:5: job 'report', field 'name': duplicate name 'report' (first used on line 2); "
        "names must be unique: they key the run history"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ":1: top level: the file is empty; expected a mapping with a 'jobs:' list"),
        ("# only a comment\n", ":1: top level: the file is empty"),
        (
            "- name: a\n",
            ":1: top level: the top level is a list; expected a mapping with a 'jobs:' list",
        ),
        ("just text\n", ":1: top level: the top level is a str"),
        ("defaults: {}\n", ":1: top level: missing 'jobs:'; expected a list of jobs"),
        ("jobs:\n", ":1: top level, field 'jobs': expected a list of jobs"),
        ("jobs: {name: a}\n", ":1: top level, field 'jobs': expected a list of jobs"),
        ("jobs:\n  - just a string\n", ":2: job #1: expected a mapping with name:, notebook:"),
        ("jobs:\n  -\n", ":2: job #1: expected a mapping with name:, notebook: and schedule:, "),
        (
            "defaults: [1]\njobs: []\n",
            ":1: defaults: expected a mapping of settings, got [1]",
        ),
        (
            "defaults:\n  timezone: Mars/Base\njobs: []\n",
            ":2: defaults, field 'timezone': unknown time zone 'Mars/Base'",
        ),
        (
            "defaults:\n  name: x\njobs: []\n",
            ":2: defaults, field 'name': unknown key; allowed keys: timezone, timeout,",
        ),
        (
            "defaults:\n  on: true\njobs: []\n",
            ":2: defaults: key True is not text (YAML reads on/off/yes/no as booleans); quote it",
        ),
    ],
)
def test_file_shape_errors(project, text, expected):
    path = project / "jobs.yaml"
    path.write_text(text)
    problem = only_problem(path)
    assert problem.startswith(f"{path}{expected}"), problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "jobs:\n  - name: a\n    schedule: */5 * * * *\n",
            ":3: invalid YAML: while scanning an alias; expected alphabetic or numeric "
            "character, but found '/'; a value starting with *, @ or ` must be quoted",
        ),
        (
            "jobs:\n  - name: a\n    schedule: @daily\n",
            ":3: invalid YAML: while scanning for the next token; found character '@' that "
            "cannot start any token; a value starting with *, @ or ` must be quoted",
        ),
        ("jobs:\n\t- name: a\n", ":2: invalid YAML: "),
        ("jobs: [a\n", ":2: invalid YAML: while parsing a flow sequence"),
        ("jobs:\n  - name: a\n   notebook: b\n", ":3: invalid YAML: "),
        ("jobs: []\n---\njobs: []\n", ":2: invalid YAML: expected a single document"),
        ("jobs: !!python/object:os.system x\n", ":1: invalid YAML: could not determine"),
    ],
)
def test_yaml_syntax_errors_have_their_line(project, text, expected):
    path = project / "jobs.yaml"
    path.write_text(text)
    problem = only_problem(path)
    assert problem.startswith(f"{path}{expected}"), problem


def test_unreadable_files(project):
    missing = project / "missing.yaml"
    assert (
        only_problem(missing)
        == f"{missing}: file not found; create it or pass the path of your jobs file"
    )
    assert "is a directory" in only_problem(project)
    binary = project / "binary.yaml"
    binary.write_bytes(b"jobs: \xff\xfe\n")
    assert "not UTF-8 text" in only_problem(binary)


def test_every_error_is_reported_at_once_in_line_order(project):
    path = write(
        project,
        """
        defaults:
          timeout: forever
        jobs:
          - name: daily-sales
            notebook: notebooks/missing.ipynb
            schedule: "61 * * * *"
            to: "not an address"
            shedule: typo
          - name: daily-sales
            notebook: notebooks/sales.ipynb
            schedule: {every: 0s}
          - "a string"
          - name: ok
            notebook: notebooks/alert.ipynb
            schedule: "@hourly"
            timezone: Nowhere/City
            to: ${UNSET_ADDRESS}
        """,
    )
    problems = problems_of(path)
    expected = [
        f"{path}:2: defaults, field 'timeout': 'forever' is not a duration",
        f"{path}:5: job 'daily-sales', field 'notebook': notebook 'notebooks/missing.ipynb' "
        "not found",
        f"{path}:6: job 'daily-sales', field 'schedule': invalid crontab '61 * * * *': "
        "minute 61 out of range 0-59",
        f"{path}:7: job 'daily-sales', field 'to': invalid address 'not an address'",
        f"{path}:8: job 'daily-sales', field 'shedule': unknown key (did you mean 'schedule'?)",
        f"{path}:9: job 'daily-sales', field 'name': duplicate name 'daily-sales' "
        "(first used on line 4)",
        f"{path}:11: job 'daily-sales', field 'schedule': every: '0s' is zero",
        f"{path}:12: job #3: expected a mapping with name:, notebook: and schedule:",
        f"{path}:16: job 'ok', field 'timezone': unknown time zone 'Nowhere/City'",
        f"{path}:17: job 'ok', field 'to': undefined environment variable ${{UNSET_ADDRESS}}",
    ]
    assert len(problems) == len(expected), "\n".join(problems)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), (problem, start)


# --- notifier validate ----------------------------------------------------------------------


def run_validate(path: Path, *flags: str, now: datetime | None = None) -> int:
    parser = argparse.ArgumentParser()
    validate.register(parser.add_subparsers())
    args = parser.parse_args(["validate", str(path), *flags])
    assert args.handler is validate.run
    return validate.run(args, now=now)


NOW = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)


def test_validate_prints_jobs_and_next_fire_times(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    write(project, FULL)
    assert run_validate(Path("jobs.yaml"), now=NOW) == 0
    out = capsys.readouterr().out
    assert out.startswith("jobs.yaml: 3 jobs, valid\n")
    assert (
        "\ndaily-sales\n"
        "  notebook:  notebooks/sales.ipynb\n"
        "  schedule:  0 8 * * 1-5  (Europe/Berlin)\n"
        "  next runs: 2026-03-30T08:00:00+02:00\n"
        "             2026-03-31T08:00:00+02:00\n"
        "             2026-04-01T08:00:00+02:00\n"
        "             2026-04-02T08:00:00+02:00\n"
        "             2026-04-03T08:00:00+02:00\n"
    ) in out
    assert "\ndisk.alert_1  (disabled: will not run)\n" in out
    assert "  schedule:  at 2026-12-31T18:00:00  (Europe/Berlin)\n" in out
    assert "  next runs: 2026-12-31T18:00:00+01:00\n" in out


def test_validate_json(project, capsys):
    path = write(project, FULL)
    assert run_validate(path, "--json", now=NOW) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["path"] == str(path)
    assert [job["name"] for job in data["jobs"]] == ["daily-sales", "disk.alert_1", "year-end"]
    sales, alert, _ = data["jobs"]
    assert sales == {
        "name": "daily-sales",
        "notebook": str((project / "notebooks" / "sales.ipynb").resolve()),
        "schedule": "0 8 * * 1-5",
        "timezone": "Europe/Berlin",
        "enabled": True,
        "next_fire_times": [
            "2026-03-30T08:00:00+02:00",
            "2026-03-31T08:00:00+02:00",
            "2026-04-01T08:00:00+02:00",
            "2026-04-02T08:00:00+02:00",
            "2026-04-03T08:00:00+02:00",
        ],
        "warnings": [],
    }
    assert alert["enabled"] is False
    assert alert["next_fire_times"] == []
    assert alert["schedule"] == "every 5m"


def test_validate_bad_file_exits_2_with_every_problem_on_stderr(project, capsys):
    path = write(project, JOB.replace('"0 8 * * *"', '"61 * * * *"') + "    to: nobody\n")
    assert run_validate(path) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{path}: 2 errors\n")
    assert f"  {path}:4: job 'daily-sales', field 'schedule': invalid crontab" in captured.err
    assert f"  {path}:5: job 'daily-sales', field 'to': invalid address 'nobody'" in captured.err


def test_validate_defaults_to_jobs_yaml_in_cwd(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    assert run_validate(Path("jobs.yaml")) == 2
    assert "jobs.yaml: file not found" in capsys.readouterr().err
    write(project, JOB)
    parser = argparse.ArgumentParser()
    validate.register(parser.add_subparsers())
    args = parser.parse_args(["validate"])
    assert args.path == "jobs.yaml"
    assert validate.run(args) == 0
    assert "jobs.yaml: 1 job, valid" in capsys.readouterr().out


def test_a_misspelled_required_key_is_one_error_not_two(project: Path) -> None:
    path = write(
        project,
        """
        jobs:
          - name: daily-sales
            notebook: notebooks/sales.ipynb
            shedule: "0 8 * * *"
        """,
    )
    with pytest.raises(JobsFileError) as caught:
        load_jobs(path)
    [problem] = caught.value.problems
    assert (
        ":4: job 'daily-sales', field 'shedule': unknown key (did you mean 'schedule'?)" in problem
    )


# -- files that would take minutes or crash the loader --------------------------------------


def test_yaml_aliases_are_refused_with_their_line(project):
    path = write(
        project,
        """
        x-shared: &shared
          notebook: notebooks/sales.ipynb
          schedule: "@daily"
        jobs:
          - name: a
            <<: *shared
        """,
    )
    assert only_problem(path) == (
        f"{path}:6: YAML aliases (*shared) are not supported in jobs.yaml; write the values "
        "out (settings shared by all jobs go under 'defaults:')"
    )


@pytest.mark.timeout(20)  # before the fix: 42 s and 1.2 GB for a smaller file than this
def test_an_alias_bomb_is_refused_before_it_expands(project):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = project / "jobs.yaml"
    path.write_text("\n".join(lines) + "\njobs: *a8\n")
    assert path.stat().st_size < 500
    assert only_problem(path).startswith(f"{path}:2: YAML aliases (*a0) are not supported")


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("jobs: " + "[" * 5000 + "]" * 5000, ":1: nested more than 64 levels deep"),
        ("jobs: " + "[" * 200 + "]" * 200, ":1: nested more than 64 levels deep"),
        ("jobs:\n  - name: " + "1" * 50_000, ":2: an unquoted number of 50,000 characters"),
        # a base-60 integer: building it takes quadratic time (minutes for 1 MB)
        ("jobs:\n  - name: 1:" + ":".join(["1"] * 300_000), ":2: an unquoted number of 600,"),
        ("jobs:\n  - name: a\n    schedule: {at: 2026-02-30}\n", ":3: cannot read '2026-02-30'"),
    ],
    ids=["deeper-than-libyaml", "deep", "long-number", "base-60", "impossible-date"],
)
def test_pathological_yaml_is_one_error_with_its_line(project, text, expected):
    path = project / "jobs.yaml"
    path.write_text(text)
    assert only_problem(path).startswith(f"{path}{expected}")


def test_a_jobs_file_over_1_mb_is_refused(project):
    path = project / "jobs.yaml"
    path.write_text("jobs: []\n" + "#" * 1024 * 1024)
    assert only_problem(path).startswith(f"{path}: larger than 1 MB (1,048,576 bytes)")
