"""Real ``notifier schedule`` processes against a real SMTP server and a shared ledger
(SQLite; the kill -9, two-daemon and reload tests also on PostgreSQL).

Each test builds a project folder (jobs.yaml, a notebook) in tmp_path and starts
``python -m notifier schedule jobs.yaml`` there; the SMTP server runs in the test process
and counts what it received per recipient. Single-slot tests use ``schedule: {at: ...}``
(a one-off slot a few seconds ahead: it fires even when the daemon is slow to start, and
it is the same slot after a restart); the others use ``{every: 3s}`` (anchored slots).
Every wait polls with a deadline; every process started here (daemons, their notebook
workers and kernels, found by an environment tag) is killed at teardown.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import BACKENDS, wait_until
from daemons import Project, StallingSMTPServer, one_off_job, sigkill
from smtp_server import SMTPTestServer

from notebooks import kernels_of_run

UTC = timezone.utc
pytestmark = pytest.mark.slow


@pytest.fixture
def smtp(smtp_server_factory: Callable[..., SMTPTestServer]) -> SMTPTestServer:
    return smtp_server_factory("plain")


@pytest.fixture
def project(
    tmp_path: Path, smtp: SMTPTestServer, request: pytest.FixtureRequest
) -> Iterator[Project]:
    """A project on SQLite, or on PostgreSQL when parametrized ``indirect`` with it."""
    backend = getattr(request, "param", "sqlite")
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else ""
    p = Project(tmp_path, smtp, db_url=url)
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def stalling_project(tmp_path: Path) -> Iterator[Project]:
    server = StallingSMTPServer("bob@example.com").start()
    p = Project(tmp_path, server)
    try:
        yield p
    finally:
        p.cleanup()
        server.stop()


# --- 1. kill -9 during a run -------------------------------------------------------------


@pytest.mark.parametrize(
    ("project", "policy", "rerun"),
    [("sqlite", "run_once", True), ("sqlite", "skip", False), ("postgresql", "run_once", True)],
    indirect=["project"],
)
def test_sigkill_during_a_run_then_restart(project: Project, policy: str, rerun: bool) -> None:
    marker = project.root / "slow-cell-reached"
    text, slot = one_off_job(
        policy=policy, parameters=f'{{marker: "{marker}", sleep: 60, split: true}}'
    )
    project.write_jobs(text)
    first = project.start()
    wait_until(marker.exists, 60, "the notebook to reach its slow cell")
    [run] = project.runs("report")
    assert run.status == "running" and run.slot == slot
    sigkill(first)

    second = project.start()
    if rerun:
        wait_until(lambda: project.runs("report")[0].status == "succeeded", 60, "the re-run")
    else:
        second.wait_for_log("not re-running slot")
    second.wait_for_log("running; stop with")
    assert second.terminate() == 0

    [row] = [r for r in project.history() if r["job"] == "report"]
    assert row["slot"] == slot.isoformat()
    expected_note = f"attempt 1 interrupted: node {run.owner}: process "
    if rerun:
        assert (row["status"], row["attempt"], row["trigger"]) == ("succeeded", 2, "retry")
        assert row["notes"].startswith(expected_note)
        assert sorted(project.received()) == [
            ("alice@example.com", f"Report {slot.isoformat()}"),
            ("bob@example.com", f"Report {slot.isoformat()}"),
        ]
    else:
        assert (row["status"], row["attempt"]) == ("interrupted", 1)
        assert row["error"].startswith(f"node {run.owner}: process ")
        assert row["error"].endswith(" is gone")
        assert project.received() == []
    stderr = second.stderr()
    assert f"run {run.run_id} of slot" in stderr and "was interrupted" in stderr
    # the one-off slot the restarted scheduler fired again was refused by the ledger
    assert "Traceback" not in stderr
    wait_until(lambda: not kernels_of_run(run.run_id), 15, "the killed run's kernel to exit")


def test_sigkill_between_two_emails_mails_nobody_twice(stalling_project: Project) -> None:
    """The server accepted Alice's email; Bob's RCPT hangs; then the daemon is killed.

    Both emails were queued before the first was sent: the restarted daemon does not run
    the notebook again, it delivers what the queue still holds (Bob's, which never reached
    DATA, so it is sent; Alice's was recorded delivered, so it is not).
    """
    project = stalling_project
    text, slot = one_off_job(parameters="{split: true}")
    project.write_jobs(text)
    first = project.start()
    assert isinstance(project.server, StallingSMTPServer)
    wait_until(project.server.stalled.is_set, 60, "the RCPT for bob")
    subject = f"Report {slot.isoformat()}"
    assert project.received() == [("alice@example.com", subject)]
    [run] = project.runs("report")
    assert run.status == "delivering"
    sigkill(first)

    second = project.start()
    wait_until(lambda: project.runs("report")[0].status == "succeeded", 60, "the delivery")
    assert second.terminate() == 0

    assert Counter(project.received()) == {
        ("alice@example.com", subject): 1,
        ("bob@example.com", subject): 1,
    }
    [row] = project.history()
    assert (row["status"], row["attempt"]) == ("succeeded", 1)  # not executed again
    assert len(list((project.root / "runs" / "report").iterdir())) == 1
    delivered = sorted((d["recipient"], d["status"]) for d in row["deliveries"])
    assert delivered == [("alice@example.com", "delivered"), ("bob@example.com", "delivered")]


# --- 2. two schedulers, one ledger ---------------------------------------------------------


@pytest.mark.parametrize("project", BACKENDS, indirect=True)
def test_two_schedulers_on_one_ledger_send_each_slot_once(project: Project) -> None:
    anchor = (datetime.now(UTC) + timedelta(seconds=5)).replace(microsecond=0)
    project.write_jobs(
        f"""\
jobs:
  - name: tick
    notebook: report.ipynb
    schedule: {{every: 3s, start: "{anchor.isoformat()}"}}
    timezone: UTC
    to: ops@example.com
    parameters: {{subject: Tick}}
"""
    )
    daemons = [project.start(), project.start()]
    for daemon in daemons:
        daemon.wait_for_log("running; stop with")
    both_ready_in_time = datetime.now(UTC) < anchor - timedelta(seconds=0.5)
    wait_until(lambda: datetime.now(UTC) > anchor + timedelta(seconds=10), 30, "10 s of slots")
    assert [daemon.terminate() for daemon in daemons] == [0, 0]

    runs = project.runs("tick")
    assert len(runs) >= 2
    assert {r.status for r in runs} == {"succeeded"}
    assert all((r.slot - anchor) % timedelta(seconds=3) == timedelta(0) for r in runs)
    received = Counter(project.received())
    expected = {("ops@example.com", f"Tick {r.slot.isoformat()}"): 1 for r in runs}
    assert received == expected  # every slot that ran: exactly one email; nothing else
    logs = [daemon.stderr() for daemon in daemons]
    if both_ready_in_time:  # both were idle at the first slot: one of them lost the claim
        assert any("is already taken; not running it twice" in log for log in logs)
    assert not any("Traceback" in log for log in logs)


# --- 3. reload on change -------------------------------------------------------------------

BASE_JOBS = """\
defaults:
  timezone: UTC
  to: ops@example.com
jobs:
  - name: yearly
    notebook: report.ipynb
    schedule: "0 3 1 1 *"
"""

ADDED_JOB = """\
  - name: added
    notebook: report.ipynb
    schedule: {every: 3s}
    parameters: {subject: Added}
"""

BROKEN_JOBS = """\
defaults:
  timezone: UTC
  to: ops@example.com
jobs:
  - name: yearly
    notebook: report.ipynb
    schedule: "0 3 1 1 *"
  - name: added
    notebook: missing.ipynb
    schedule: {every: 3s}
"""


@pytest.mark.parametrize("project", BACKENDS, indirect=True)
def test_reload_adds_a_job_and_survives_a_bad_edit(project: Project) -> None:
    project.write_jobs(BASE_JOBS)
    daemon = project.start()
    daemon.wait_for_log("running; stop with")
    assert project.received() == []

    project.write_jobs(BASE_JOBS + ADDED_JOB)
    wait_until(lambda: project.received(), 45, "the added job's first email")
    assert "added: added" in daemon.stderr()

    project.write_jobs(BROKEN_JOBS)
    daemon.wait_for_log("jobs file changed but is invalid")
    count = len(project.received())
    wait_until(lambda: len(project.received()) > count, 45, "an email after the bad edit")
    assert daemon.proc.poll() is None
    assert daemon.terminate() == 0

    stderr = daemon.stderr()
    assert f"{project.jobs}:9:" in stderr and "missing.ipynb" in stderr  # file:line and cause
    assert "keeping the previous schedule" in stderr
    assert "Traceback" not in stderr
    subjects = Counter(subject for _, subject in project.received())
    assert subjects and all(s.startswith("Added ") for s in subjects)
    assert set(subjects.values()) == {1}  # each slot once
    assert {r.job for r in project.ledger().history(limit=None)} == {"added"}


# --- 4. SIGTERM during a run ---------------------------------------------------------------


def test_sigterm_with_enough_grace_finishes_the_run(project: Project) -> None:
    marker = project.root / "slow-cell-reached"
    text, slot = one_off_job(parameters=f'{{marker: "{marker}", sleep: 3}}')
    project.write_jobs(text)
    daemon = project.start(NOTIFIER_SHUTDOWN_GRACE="60")
    wait_until(marker.exists, 60, "the notebook to reach its slow cell")
    assert daemon.terminate(timeout=60) == 0

    assert project.received() == [("ops@example.com", f"Report {slot.isoformat()}")]
    [run] = project.runs("report")
    assert run.status == "succeeded"
    assert "stopping: no new runs" in daemon.stderr()


def test_sigterm_with_short_grace_kills_the_kernel_and_marks_interrupted(
    project: Project,
) -> None:
    marker = project.root / "slow-cell-reached"
    text, _ = one_off_job(parameters=f'{{marker: "{marker}", sleep: 30}}')
    project.write_jobs(text)
    daemon = project.start(NOTIFIER_SHUTDOWN_GRACE="1")
    wait_until(marker.exists, 60, "the notebook to reach its slow cell")
    [run] = project.runs("report")
    assert kernels_of_run(run.run_id)  # the kernel is there to be killed

    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    code = daemon.proc.wait(30)
    took = time.monotonic() - started
    assert code == 0
    assert took < 15, f"the daemon took {took:.1f}s to stop with a 1 s grace"

    [stored] = project.runs("report")
    assert stored.status == "interrupted"
    assert kernels_of_run(run.run_id) == []
    assert project.received() == []
    stderr = daemon.stderr()
    assert "still going after the grace period: killing their kernels" in stderr
    assert "Traceback" not in stderr
    [row] = project.history()
    assert row["status"] == "interrupted"


# --- 5. the other commands ----------------------------------------------------------------


def is_iso_with_offset(text: str) -> bool:
    return datetime.fromisoformat(text).utcoffset() is not None


def test_validate_list_run_history_json(project: Project) -> None:
    project.write_jobs(
        """\
defaults:
  to: ops@example.com
jobs:
  - name: daily
    notebook: report.ipynb
    schedule: "0 8 * * 1-5"
    timezone: Europe/Berlin
    parameters: {subject: Daily}
  - name: paused
    notebook: report.ipynb
    schedule: {every: 5m}
    enabled: false
"""
    )
    done = project.cli("validate", "--json")
    assert done.returncode == 0, done.stderr
    validated = {job["name"]: job for job in json.loads(done.stdout)["jobs"]}
    times = validated["daily"]["next_fire_times"]
    assert len(times) == 5 and all(is_iso_with_offset(t) for t in times)
    assert all(datetime.fromisoformat(t).hour == 8 for t in times)  # local to Berlin
    assert validated["paused"]["next_fire_times"] == []

    done = project.cli("run", "daily")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(rcpt, s.split(" ")[0]) for rcpt, s in project.received()] == [
        ("ops@example.com", "Daily")
    ]

    done = project.cli("list", "--json")
    assert done.returncode == 0, done.stderr
    listed = {job["name"]: job for job in json.loads(done.stdout)["jobs"]}
    assert is_iso_with_offset(listed["daily"]["next_run"])
    assert listed["daily"]["last_status"] == "succeeded"
    assert is_iso_with_offset(listed["daily"]["last_slot"])
    assert listed["paused"]["next_run"] is None and listed["paused"]["last_status"] is None

    [row] = project.history()
    assert (row["job"], row["trigger"], row["status"]) == ("daily", "manual", "succeeded")
    assert is_iso_with_offset(row["slot"])
    [delivery] = row["deliveries"]
    assert (delivery["recipient"], delivery["status"], delivery["code"]) == (
        "ops@example.com",
        "delivered",
        250,
    )
    assert Path(row["output"]).is_file()


def test_bad_jobs_file_exits_2_with_file_and_line(project: Project) -> None:
    project.write_jobs(
        """\
jobs:
  - name: daily
    notebook: report.ipynb
    schedule: "0 25 * * *"
"""
    )
    for command in (["schedule", str(project.jobs)], ["validate", str(project.jobs)]):
        done = project.cli(*command, timeout=60)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert f"{project.jobs}:4:" in done.stderr, done.stderr
        assert "hour" in done.stderr and "25" in done.stderr
        assert "Traceback" not in done.stderr
