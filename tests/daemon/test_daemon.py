"""notifier.daemon in-process: misfire policies, exactly-once slots, retries, cooldown,
recovery emails, retention, reload of jobs.yaml and DST-exact missed slots.

The daemon gets a controllable clock and a MemoryTransport; the ledger is a real SQLite
file in tmp_path and the notebooks run in real kernels (~3-5 s each, so few of them).
Recovery and catch-up work, which the daemon hands to background threads, runs inline
here (``Daemon(inline=True)``) so each test can look at the outcome right after the call.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from notebooks import write_notebook
from notifier.daemon import Daemon, missed_slots
from notifier.delivery.planning import plan_email
from notifier.jobs import Job
from notifier.jobs.schedules import parse_schedule
from notifier.ledger import Ledger
from notifier.ledger.queue import Answer
from notifier.ledger.statuses import RecipientStatus
from notifier.mail.model import Email
from notifier.mail.transport.memory import MemoryTransport
from notifier.notebook.execute import run_folder
from notifier.settings import Settings, parse_settings

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
DAY = datetime(2024, 5, 6, tzinfo=UTC)  # a Monday


def at(hour: int, minute: int = 0) -> datetime:
    return DAY + timedelta(hours=hour, minutes=minute)


PARAMETERS = """\
subject = "Alert {slot}"
quiet_flag = ""
fail_marker = ""
split = False
scheduled_for = ""
"""

ALERT_CELL = """\
from pathlib import Path
from notifier import report

if fail_marker and not Path(fail_marker).exists():
    Path(fail_marker).write_text("the first attempt failed")
    raise RuntimeError("flaky data source")
if quiet_flag and Path(quiet_flag).exists():
    report.skip("latency is back under the threshold")
if split:
    report.email("For Alice", to="alice@example.com").markdown("part **one**")
    report.email("For Bob", to="bob@example.com").markdown("part **two**")
else:
    report.email(subject.format(slot=scheduled_for)).markdown("latency is **high**")
"""


class Clock:
    """A settable clock for ``Daemon(clock=...)``."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Project:
    """A tmp folder with jobs.yaml, the alert notebook, a SQLite ledger and a runs dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.notebook = write_notebook(root / "alert.ipynb", ALERT_CELL, parameters=PARAMETERS)
        self.jobs_path = root / "jobs.yaml"
        self.db_url = f"sqlite:///{root / 'ledger.db'}"
        self.settings: Settings = parse_settings(
            {
                "NOTIFIER_DB_URL": self.db_url,
                "NOTIFIER_RUNS_DIR": str(root / "runs"),
                "NOTIFIER_OUTBOX": str(root / "outbox"),
            }
        )
        self.transport = MemoryTransport()
        self.daemons: list[Daemon] = []
        self.ledgers: list[Ledger] = []

    def write_jobs(self, text: str) -> Path:
        tmp = self.jobs_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.jobs_path)  # atomic: the watcher never reads half a file
        return self.jobs_path

    def daemon(self, clock: Callable[[], datetime], **kwargs: Any) -> Daemon:
        daemon = Daemon(
            self.jobs_path,
            self.settings,
            transports=lambda _kind: self.transport,
            clock=clock,
            inline=True,  # recovery and catch-up run in the caller's thread
            **kwargs,
        )
        self.daemons.append(daemon)
        return daemon

    def ledger(self, **kwargs: Any) -> Ledger:
        ledger = Ledger(self.db_url, **kwargs)
        self.ledgers.append(ledger)
        return ledger

    def subjects(self) -> list[str]:
        return [out.subject for out in self.transport.sent]

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.scheduler.running:
                daemon.shutdown()
            else:
                daemon.ledger.close()
        for ledger in self.ledgers:
            ledger.close()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = Project(tmp_path)
    yield p
    p.close()


def seed_finished(ledger: Ledger, job: str, slot: datetime, status: str = "succeeded") -> str:
    run = ledger.claim(job, slot)
    assert run is not None
    ledger.mark_running(run.run_id)
    assert ledger.finish(run.run_id, status)
    return run.run_id


def mail(ledger: Ledger, run_id: str) -> list[tuple[str, str, str]]:
    """(purpose, recipient, status) of every queued email of a run, in the order planned."""
    return [(r.purpose, r.recipient, r.status) for r in ledger.queue.rows(run_ids=[run_id])]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


def scheduled_runs(ledger: Ledger, job: str) -> list:
    """The job's runs, oldest slot first."""
    return list(reversed(ledger.history(job, limit=None)))


# --- misfire policies after downtime ---------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("skip", []), ("run_once", [at(12)]), ("catch_up", [at(11), at(12)])],
)
def test_misfire_policy_after_downtime(
    project: Project, caplog: pytest.LogCaptureFixture, policy: str, expected: list[datetime]
) -> None:
    project.write_jobs(
        f"""
jobs:
  - name: hourly
    notebook: alert.ipynb
    schedule: "0 * * * *"
    timezone: UTC
    to: ops@example.com
    misfire: {{policy: {policy}, grace: 100m}}
"""
    )
    seed_finished(project.ledger(), "hourly", at(6))  # the daemon was down from 06:xx
    daemon = project.daemon(Clock(at(12, 10)))  # ... until 12:10; grace reaches back to 10:30

    with caplog.at_level(logging.INFO, logger="notifier"):
        daemon.catch_up()

    missed = [r for r in caplog.records if "missed" in r.getMessage()]
    assert len(missed) == 1, missed  # one line per job, however many slots
    tail = {
        "skip": "policy skip: none runs",
        "run_once": "policy run_once: running the latest (12:00)",
        "catch_up": "policy catch_up: running 2 (11:00-12:00)",
    }[policy]
    assert missed[0].getMessage() == f"hourly: missed 6 slots 07:00-12:00 while down; {tail}"
    assert missed[0].levelno == logging.WARNING

    runs = scheduled_runs(daemon.ledger, "hourly")
    assert [r.slot for r in runs] == [at(6), *expected]  # nothing beyond the grace period
    assert [r.status for r in runs[1:]] == ["succeeded"] * len(expected)
    assert {r.trigger for r in runs[1:]} <= {"catch_up"}
    # in slot order, each slot's own scheduled_for reaching the notebook
    assert project.subjects() == [f"Alert {slot.isoformat()}" for slot in expected]
    assert all(out.recipients == ("ops@example.com",) for out in project.transport.sent)

    if expected:  # a second start (say, a quick restart) has nothing left to catch up
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="notifier"):
            daemon.catch_up()
        assert not [r for r in caplog.records if "missed" in r.getMessage()]
        assert len(project.transport.sent) == len(expected)


def test_catch_up_logs_one_line_however_many_slots_were_missed(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    project.write_jobs(
        """
jobs:
  - name: minutely
    notebook: alert.ipynb
    schedule: "* * * * *"
    timezone: UTC
    to: ops@example.com
    misfire: {policy: run_once, grace: 10m}
"""
    )
    seed_finished(project.ledger(), "minutely", at(7))
    daemon = project.daemon(
        Clock(
            at(
                9,
                0,
            )
            + timedelta(seconds=1)
        )
    )  # 120 missed slots
    with caplog.at_level(logging.WARNING, logger="notifier.daemon"):
        daemon.catch_up()
    assert [r.getMessage() for r in caplog.records] == [
        "minutely: missed 120 slots 07:01-09:00 while down; "
        "policy run_once: running the latest (09:00)"
    ]


def test_fire_past_grace_or_late_with_skip_policy_runs_nothing(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    project.write_jobs(
        """
jobs:
  - name: graceful
    notebook: alert.ipynb
    schedule: "0 * * * *"
    timezone: UTC
    to: ops@example.com
    misfire: {policy: run_once, grace: 10m}
  - name: strict
    notebook: alert.ipynb
    schedule: "0 * * * *"
    timezone: UTC
    to: ops@example.com
    misfire: skip
"""
    )
    daemon = project.daemon(Clock(at(8, 11)))
    with caplog.at_level(logging.WARNING, logger="notifier.daemon"):
        daemon.fire("graceful", slot=at(8))  # 11 min late, grace 10 min
        daemon.fire("strict", slot=at(8))  # 'skip' tolerates one minute of lateness
        daemon.fire("no-such-job", slot=at(8))
    messages = [r.getMessage() for r in caplog.records]
    assert any("graceful" in m and "past its grace period" in m for m in messages)
    assert any("strict" in m and "misfire policy skip" in m for m in messages)
    assert daemon.ledger.history() == []
    assert project.transport.sent == []


# --- exactly once per slot --------------------------------------------------------------------


def test_a_slot_fired_twice_runs_once(project: Project, caplog: pytest.LogCaptureFixture) -> None:
    project.write_jobs(
        """
jobs:
  - name: once
    notebook: alert.ipynb
    schedule: "0 8 * * *"
    timezone: UTC
    to: ops@example.com
"""
    )
    clock = Clock(at(8, 0) + timedelta(seconds=2))
    first, second = project.daemon(clock), project.daemon(clock)  # two owners, one ledger
    start = threading.Barrier(3)

    def fire(daemon: Daemon) -> None:
        start.wait(10)
        daemon.fire("once", slot=at(8))

    threads = [threading.Thread(target=fire, args=(d,)) for d in (first, first, second)]
    with caplog.at_level(logging.INFO, logger="notifier"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
        first.fire("once", slot=at(8))  # and once more after it finished

    assert project.subjects() == [f"Alert {at(8).isoformat()}"]
    runs = first.ledger.history("once")
    assert len(runs) == 1 and runs[0].status == "succeeded" and runs[0].slot == at(8)
    # Refused by the ledger claim, or within one daemon already by the job's own lock.
    refused = [
        r
        for r in caplog.records
        if "already taken" in r.getMessage() or "previous run is still going" in r.getMessage()
    ]
    assert len(refused) == 3


def test_a_paused_job_runs_on_no_node_until_it_is_resumed(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    project.write_jobs(
        """
jobs:
  - name: once
    notebook: alert.ipynb
    schedule: "0 * * * *"
    timezone: UTC
    to: ops@example.com
"""
    )
    clock = Clock(at(8) + timedelta(seconds=2))
    nodes = [project.daemon(clock), project.daemon(clock)]  # two nodes, one ledger
    operator = project.ledger(owner="operator")
    assert operator.pause("once", reason="warehouse migration", by="ops@laptop")
    run_id, _ = seed_interrupted(project, "once", at(7, 30))
    with caplog.at_level(logging.INFO, logger="notifier"):
        for node in nodes:
            node.fire("once", slot=at(8))
            node.recover()  # nor is an interrupted slot re-run
    assert project.transport.sent == []
    (left,) = operator.history("once")
    assert (left.run_id, left.status, left.attempt) == (run_id, "interrupted", 1)
    said = [r.getMessage() for r in caplog.records]
    paused = [line for line in said if "not run: paused by ops@laptop" in line]
    assert len(paused) >= 3 and all("(warehouse migration)" in line for line in paused)
    assert sum(f"slot {at(8)}" in line for line in paused) == 2  # each node, once

    assert operator.resume("once")
    clock.now = at(9) + timedelta(seconds=2)
    nodes[1].fire("once", slot=at(9))
    assert project.subjects() == [f"Alert {at(9).isoformat()}"]


# --- retries, cooldown, recovery, retention ---------------------------------------------------


def test_retry_after_a_failed_attempt_sends_once(project: Project, tmp_path: Path) -> None:
    marker = tmp_path / "attempted"
    project.write_jobs(
        f"""
jobs:
  - name: flaky
    notebook: alert.ipynb
    schedule: "0 8 * * *"
    timezone: UTC
    to: ops@example.com
    retries: {{count: 1, delay: 1s}}
    parameters: {{fail_marker: "{marker}", subject: "Flaky report"}}
"""
    )
    daemon = project.daemon(Clock(at(8) + timedelta(seconds=1)))
    daemon.fire("flaky", slot=at(8))

    assert marker.read_text() == "the first attempt failed"  # attempt 1 really ran and failed
    assert project.subjects() == ["Flaky report"]  # no failure email for the retried attempt
    [run] = daemon.ledger.history("flaky")
    assert run.status == "succeeded" and run.error is None
    assert mail(daemon.ledger, run.run_id) == [("report", "ops@example.com", "delivered")]


def test_cooldown_suppresses_the_same_alert(project: Project) -> None:
    project.write_jobs(
        """
jobs:
  - name: latency
    notebook: alert.ipynb
    schedule: "*/10 * * * *"
    timezone: UTC
    to: oncall@example.com
    cooldown: 1h
    parameters: {subject: "Latency above 150 ms"}
"""
    )
    clock = Clock(at(8))
    daemon = project.daemon(clock)
    for slot in (at(8, 0), at(8, 10), at(10, 0)):
        clock.now = slot + timedelta(seconds=3)
        daemon.fire("latency", slot=slot)

    assert project.subjects() == ["Latency above 150 ms", "Latency above 150 ms"]
    first, second, third = scheduled_runs(daemon.ledger, "latency")
    assert (first.status, second.status, third.status) == ("succeeded", "suppressed", "succeeded")
    assert first.alert_key and first.alert_key == second.alert_key == third.alert_key
    assert "cooldown until 2024-05-06T09:00:00+00:00" in (second.notes or "")
    assert mail(daemon.ledger, second.run_id) == []


def test_a_manual_run_neither_starts_nor_obeys_the_cooldown(project: Project) -> None:
    project.write_jobs(
        """
jobs:
  - name: latency
    notebook: alert.ipynb
    schedule: "*/10 * * * *"
    timezone: UTC
    to: oncall@example.com
    cooldown: 1h
    parameters: {subject: "Latency above 150 ms"}
"""
    )
    clock = Clock(at(8, 0) + timedelta(seconds=3))
    daemon = project.daemon(clock)
    job = daemon.jobs_file.get("latency")
    manual = daemon.ledger.claim("latency", at(7, 59), trigger="manual")
    assert manual is not None
    assert (
        daemon.runner.execute_claimed(job, manual).status == "succeeded"
    )  # `notifier run latency`
    daemon.fire("latency", slot=at(8, 0))  # the real alert is not silenced by the trial
    again = daemon.ledger.claim("latency", at(8, 1), trigger="manual")
    assert again is not None
    assert daemon.runner.execute_claimed(job, again).status == "succeeded"  # nor is a trial after

    assert project.subjects() == ["Latency above 150 ms"] * 3
    [scheduled] = [r for r in daemon.ledger.history("latency") if not r.manual]
    assert scheduled.status == "succeeded"


def test_recovery_goes_to_whoever_got_the_alert_and_is_recorded(
    project: Project, tmp_path: Path
) -> None:
    quiet = tmp_path / "quiet"
    project.write_jobs(
        f"""
jobs:
  - name: split-alert
    notebook: alert.ipynb
    schedule: "*/5 * * * *"
    timezone: UTC
    to: ops@example.com
    notify_recovery: true
    parameters: {{quiet_flag: "{quiet}", split: true}}
"""
    )
    clock = Clock(at(8))
    daemon = project.daemon(clock)
    for minute, is_quiet in ((0, False), (5, True)):
        if is_quiet:
            quiet.write_text("ok")
        clock.now = at(8, minute) + timedelta(seconds=3)
        daemon.fire("split-alert", slot=at(8, minute))

    recovered = project.transport.sent[-1]
    assert recovered.subject == "RECOVERED: split-alert"
    # the notebook mailed Alice and Bob itself; the job's own `to` never got the alert
    assert recovered.recipients == ("alice@example.com", "bob@example.com")
    # not in the job's to/cc: they get it blind, as nobody listed them together
    assert recovered.message.get("To") is None and recovered.message.get("Bcc") is None
    quiet_run = scheduled_runs(daemon.ledger, "split-alert")[-1]
    assert mail(daemon.ledger, quiet_run.run_id) == [
        ("recovery", "alice@example.com", "delivered"),
        ("recovery", "bob@example.com", "delivered"),
    ]


def test_recovery_email_once_after_an_alert_then_a_new_alert_is_sent(
    project: Project, tmp_path: Path
) -> None:
    quiet = tmp_path / "quiet"
    project.write_jobs(
        f"""
jobs:
  - name: checkout
    notebook: alert.ipynb
    schedule: "*/5 * * * *"
    timezone: Europe/Berlin
    to: oncall@example.com
    notify_recovery: true
    cooldown: 1h
    parameters: {{quiet_flag: "{quiet}", subject: "Checkout is slow"}}
"""
    )
    clock = Clock(at(8))
    daemon = project.daemon(clock)
    for minute, is_quiet in ((0, False), (5, True), (10, True), (15, False)):
        if is_quiet:
            quiet.write_text("ok")
        else:
            quiet.unlink(missing_ok=True)
        clock.now = at(8, minute) + timedelta(seconds=3)
        daemon.fire("checkout", slot=at(8, minute))

    # the alert, one recovery email (not two), then the alert again: it broke again after
    # the recipients were told it had recovered, so the cooldown of the old alert is over
    assert project.subjects() == ["Checkout is slow", "RECOVERED: checkout", "Checkout is slow"]
    recovered = project.transport.sent[1]
    assert recovered.recipients == ("oncall@example.com",)
    body = recovered.message.get_body(("html",)).get_content()
    assert "latency is back under the threshold" in body
    assert "2024-05-06 10:00 CEST" in body  # the alert's slot, in the job's time zone
    alert, quiet1, quiet2, again = scheduled_runs(daemon.ledger, "checkout")
    statuses = (alert.status, quiet1.status, quiet2.status, again.status)
    assert statuses == ("succeeded", "skipped", "skipped", "succeeded")
    assert "(recovery email queued)" in (quiet1.notes or "")
    assert "recovery" not in (quiet2.notes or "")


def test_retention_purges_old_runs_and_their_folders(project: Project, tmp_path: Path) -> None:
    project.write_jobs(
        """
jobs:
  - name: kept
    notebook: alert.ipynb
    schedule: "* * * * *"
    timezone: UTC
    to: ops@example.com
    keep_runs: 1d
"""
    )
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    runs_dir = project.settings.runs_dir
    seeder = project.ledger()

    def seeded(slot: datetime, attempts: int = 1, outside: Path | None = None) -> tuple[str, Path]:
        run = seeder.claim("kept", slot)
        assert run is not None
        folders = [run_folder(runs_dir, "kept", run.run_id, slot) for _ in range(attempts)]
        folder = outside or folders[-1]  # each attempt has its own folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "output.ipynb").write_text("{}")
        seeder.finish(run.run_id, "succeeded", output_path=str(folder / "output.ipynb"))
        return run.run_id, folders[0]

    old, old_folder = seeded(now - timedelta(days=3), attempts=2)
    older_failed, older_folder = seeded(now - timedelta(days=2))
    recent, recent_folder = seeded(now - timedelta(hours=2))
    elsewhere = tmp_path / "elsewhere" / "run"
    outside, _ = seeded(now - timedelta(days=4), outside=elsewhere)  # output not under runs/

    daemon = project.daemon(Clock(now + timedelta(seconds=2)))
    daemon.fire("kept", slot=now)

    ledger = daemon.ledger
    assert ledger.get(old) is None and ledger.get(older_failed) is None
    assert ledger.get(outside) is None
    assert mail(ledger, old) == []
    assert not old_folder.exists() and not old_folder.with_name(old_folder.name + "-2").exists()
    assert not older_folder.exists()
    assert (elsewhere / "output.ipynb").exists()  # never delete outside runs/
    assert ledger.get(recent) is not None and recent_folder.is_dir()
    [new] = [r for r in ledger.history("kept") if r.slot == now]
    assert new.status == "succeeded" and Path(new.output_path or "").is_file()
    assert project.subjects() == [f"Alert {now.isoformat()}"]


def test_retention_keeps_the_folder_of_a_run_it_keeps(project: Project) -> None:
    """An old run still going on another node (or with mail waiting) stays in the ledger,
    and its run folder stays too: deleting it would kill that run's worker."""
    project.write_jobs(
        """
jobs:
  - name: kept
    notebook: alert.ipynb
    schedule: "* * * * *"
    timezone: UTC
    to: ops@example.com
    keep_runs: 1d
"""
    )
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    old_slot = now - timedelta(days=3)
    running = project.ledger(owner="other-node").claim("kept", old_slot)
    assert running is not None
    folder = run_folder(project.settings.runs_dir, "kept", running.run_id, old_slot)
    (folder / "worker.log").write_text("still working\n")

    project.daemon(Clock(now + timedelta(seconds=2))).fire("kept", slot=now)

    assert project.ledger().get(running.run_id) is not None
    assert (folder / "worker.log").is_file()


def test_retention_never_frees_a_slot_a_second_daemon_could_still_run(project: Project) -> None:
    """keep_runs shorter than the grace: the run of a slot within the grace stays in the
    ledger (its row is what keeps the slot taken), so a second daemon firing the same slot
    later, as its scheduler or catch-up does, finds it taken and mails nothing."""
    project.write_jobs(
        """
jobs:
  - name: often
    notebook: alert.ipynb
    schedule: "*/2 * * * *"
    timezone: UTC
    to: ops@example.com
    misfire: {policy: catch_up, grace: 1d}
    keep_runs: 3m
"""
    )
    slot = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=4)
    first, second = (project.daemon(Clock(slot + timedelta(minutes=4))) for _ in range(2))
    first.fire("often", slot=slot)  # runs it, then applies keep_runs (the slot is 4m old)
    second.fire("often", slot=slot)
    assert project.subjects() == [f"Alert {slot.isoformat()}"]
    [run] = project.ledger().history("often", limit=None)
    assert run.slot == slot and run.status == "succeeded"


# --- interrupted runs of a crashed daemon -----------------------------------------------------


def seed_interrupted(project: Project, job: str, slot: datetime) -> tuple[str, str]:
    """A run left 'running' by a node that died while the notebook ran (nothing queued)."""
    owner = "crashed-node"
    ten_minutes_ago = lambda: datetime.now(UTC) - timedelta(minutes=10)  # noqa: E731
    crashed = project.ledger(owner=owner, clock=ten_minutes_ago)  # its lease ran out long ago
    run = crashed.claim(job, slot, recipients=["alice@example.com", "bob@example.com"])
    assert run is not None
    crashed.mark_running(run.run_id)
    return run.run_id, owner


@pytest.mark.parametrize(
    ("policy", "late", "rerun"),
    [
        ("run_once", timedelta(minutes=5), True),
        ("skip", timedelta(minutes=5), False),
        ("catch_up", timedelta(hours=2), False),  # beyond the 1 h grace
    ],
)
def test_recover_interrupted_reruns_per_policy(
    project: Project,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    late: timedelta,
    rerun: bool,
) -> None:
    project.write_jobs(
        f"""
jobs:
  - name: split
    notebook: alert.ipynb
    schedule: "0 8 * * *"
    timezone: UTC
    misfire: {{policy: {policy}, grace: 1h}}
    parameters: {{split: true}}
"""
    )
    run_id, owner = seed_interrupted(project, "split", at(8))
    daemon = project.daemon(Clock(at(8) + late))
    with caplog.at_level(logging.INFO, logger="notifier"):
        daemon.recover()

    assert any(
        "was interrupted" in r.getMessage() and owner in r.getMessage() for r in caplog.records
    )
    run = daemon.ledger.get(run_id)
    assert run is not None
    if rerun:
        assert sorted(project.subjects()) == ["For Alice", "For Bob"]
        assert (run.status, run.attempt, run.trigger) == ("succeeded", 2, "retry")
        assert f"attempt 1 interrupted: node {owner} missed its lease" in (run.notes or "")
    else:
        assert project.transport.sent == []
        assert (run.status, run.attempt) == ("interrupted", 1)
        assert (run.error or "").startswith(f"node {owner} missed its lease")
    assert daemon.ledger.recover_interrupted() == []


def test_mail_queued_by_a_dead_node_is_delivered_once_and_not_re_executed(
    project: Project,
) -> None:
    """The node died after planning (Alice's email was sent, Bob's not yet): the queue
    finishes the job; the notebook is not run again and Alice gets nothing twice."""
    project.write_jobs(
        """
jobs:
  - name: split
    notebook: alert.ipynb
    schedule: "0 8 * * *"
    timezone: UTC
    parameters: {split: true}
"""
    )
    ten_minutes_ago = lambda: datetime.now(UTC) - timedelta(minutes=10)  # noqa: E731
    crashed = project.ledger(owner="crashed-node", clock=ten_minutes_ago)
    run = crashed.claim("split", at(8))
    assert run is not None and crashed.mark_running(run.run_id)
    planned = [
        plan_email(
            Email(subject=f"For {name.title()}", to=[f"{name}@example.com"], text="x"),
            purpose="report",
            default_sender="reports@example.com",
            max_size=None,
            expires_at=datetime.now(UTC) + timedelta(days=1),
        )
        for name in ("alice", "bob")
    ]
    crashed.queue.enqueue(run.run_id, 1, crashed.owner, planned, deliver={"notes": "sent"})
    alice, bob = crashed.queue.claim_due()
    sending = crashed.queue.mark_sending([r.row_id for r in alice.recipients])
    crashed.queue.record([Answer(i, RecipientStatus.DELIVERED, 250, "OK") for i in sending])
    crashed.queue.mark_sending([r.row_id for r in bob.recipients])  # then the node died

    daemon = project.daemon(Clock(at(8, 5)))
    daemon.recover()
    daemon.runner.deliverer.housekeeping()  # as the delivery service does every few seconds
    assert project.transport.sent == []  # not re-run; Bob's outcome is unknown (sending)
    assert mail(daemon.ledger, run.run_id) == [
        ("report", "alice@example.com", "delivered"),
        ("report", "bob@example.com", "unknown"),
    ]
    stored = daemon.ledger.get(run.run_id)
    assert stored is not None and (stored.status, stored.attempt) == ("failed", 1)
    assert "1 unknown" in (stored.error or "")


def test_a_run_interrupted_by_shutdown_is_rerun_at_the_next_start(project: Project) -> None:
    project.write_jobs(
        """
jobs:
  - name: split
    notebook: alert.ipynb
    schedule: "0 8 * * *"
    timezone: UTC
    misfire: {policy: run_once, grace: 1h}
    parameters: {split: true}
"""
    )
    stopped = project.ledger()
    run = stopped.claim("split", at(8))
    assert run is not None
    stopped.mark_running(run.run_id)
    assert [r.run_id for r in stopped.mark_interrupted_mine()] == [run.run_id]  # SIGTERM path
    stopped.nodes.stop()  # ... and the stopped daemon's node is gone (Ledger.close)

    project.daemon(Clock(at(8, 10))).recover()

    again = project.ledger().get(run.run_id)
    assert again is not None and (again.status, again.attempt) == ("succeeded", 2)
    assert sorted(project.subjects()) == ["For Alice", "For Bob"]


def test_a_job_that_cannot_start_sends_a_failure_email(project: Project) -> None:
    project.write_jobs(
        """
jobs:
  - name: renamed
    notebook: alert.ipynb
    schedule: "0 8 * * *"
    timezone: UTC
    to: ops@example.com
"""
    )
    daemon = project.daemon(Clock(at(8)))
    project.notebook.unlink()  # deleted after the daemon loaded jobs.yaml
    daemon.fire("renamed", slot=at(8))

    run = daemon.ledger.find("renamed", at(8))
    assert run is not None and run.status == "failed"
    assert "alert.ipynb" in (run.error or "") and "does not exist" in (run.error or "")
    [failure] = project.transport.sent
    assert failure.recipients == ("ops@example.com",)
    assert failure.subject.startswith("[notifier] FAILED: renamed:")
    assert "does not exist" in failure.message.get_body(("html",)).get_content()
    assert mail(daemon.ledger, run.run_id) == [("failure", "ops@example.com", "delivered")]


# --- reload of jobs.yaml ---------------------------------------------------------------------

JOBS_V1 = """
jobs:
  - name: alpha
    notebook: alert.ipynb
    schedule: "0 3 1 1 *"
    to: ops@example.com
  - name: beta
    notebook: alert.ipynb
    schedule: "0 4 1 1 *"
    to: ops@example.com
  - name: gamma
    notebook: alert.ipynb
    schedule: "0 5 1 1 *"
    to: ops@example.com
"""

JOBS_V2 = """
jobs:
  - name: alpha
    notebook: alert.ipynb
    schedule: "30 6 1 1 *"
    to: ops@example.com
  - name: gamma
    notebook: alert.ipynb
    schedule: "0 5 1 1 *"
    to: ops@example.com
    enabled: false
  - name: delta
    notebook: alert.ipynb
    schedule: {every: 30d}
    to: ops@example.com
"""

JOBS_BROKEN = """
jobs:
  - name: alpha
    notebook: alert.ipynb
    schedule: "61 * * * *"
    to: ops@example.com
"""


def scheduled(daemon: Daemon) -> dict[str, str]:
    return {job.id: str(job.trigger) for job in daemon.scheduler.get_jobs()}


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_reload_applies_edits_and_keeps_the_schedule_on_a_bad_edit(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    def logged(level: int = logging.INFO) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == level]

    def reloaded() -> bool:  # the last thing reload() logs, after every change is applied
        return any(m.startswith("reloaded ") for m in logged())

    project.write_jobs(JOBS_V1)
    daemon = project.daemon(Clock(datetime.now(UTC)), poll_interval=0.1)
    with caplog.at_level(logging.INFO, logger="notifier.daemon"):
        daemon.start()
        assert scheduled(daemon) == {
            "alpha": "crontab[0 3 1 1 *]",
            "beta": "crontab[0 4 1 1 *]",
            "gamma": "crontab[0 5 1 1 *]",
        }
        next_alpha = daemon.scheduler.get_job("alpha").next_run_time

        caplog.clear()
        project.write_jobs(JOBS_V2)  # change alpha, remove beta, disable gamma, add delta
        wait_for(reloaded)
        assert scheduled(daemon) == {"alpha": "crontab[30 6 1 1 *]", "delta": "every[30d]"}
        new_alpha = daemon.scheduler.get_job("alpha").next_run_time
        assert (new_alpha - next_alpha) == timedelta(hours=3, minutes=30)
        messages = logged()
        assert "beta: removed" in messages and "delta: added" in messages
        assert "alpha: updated" in messages and "gamma: updated" in messages

        caplog.clear()
        project.write_jobs(JOBS_BROKEN)
        wait_for(lambda: logged(logging.ERROR))
        [error] = logged(logging.ERROR)
        assert "invalid; keeping the previous schedule" in error
        assert f"{project.jobs_path}:5:" in error and "61" in error  # file:line and the cause
        assert scheduled(daemon) == {"alpha": "crontab[30 6 1 1 *]", "delta": "every[30d]"}
        assert set(daemon.jobs) == {"alpha", "gamma", "delta"}
        assert daemon.watching
        assert daemon.reload() is False  # still broken: nothing changes
        assert scheduled(daemon) == {"alpha": "crontab[30 6 1 1 *]", "delta": "every[30d]"}

        caplog.clear()
        project.write_jobs(JOBS_V1)  # fixed again: applied
        wait_for(reloaded)
        assert set(scheduled(daemon)) == {"alpha", "beta", "gamma"}
    daemon.shutdown()
    assert daemon.stopped.is_set()
    assert project.transport.sent == []


def test_reload_of_a_removed_job_stops_its_slots(project: Project) -> None:
    project.write_jobs(JOBS_V1)
    daemon = project.daemon(Clock(at(3)))
    project.write_jobs(JOBS_V2)
    assert daemon.reload() is True
    daemon.fire("beta", slot=at(4))  # a fire already queued for the removed job
    assert daemon.ledger.history() == [] and project.transport.sent == []


# --- missed_slots around DST --------------------------------------------------------------


def berlin_job(schedule: object) -> Job:
    return Job(name="dst", notebook=Path("x.ipynb"), schedule=parse_schedule(schedule), tz=BERLIN)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def missed_utc(job: Job, after: datetime, now: datetime, **kwargs: Any) -> list[datetime]:
    """missed_slots as UTC instants: aware datetimes inside a DST fold never compare equal
    to another zone's (PEP 495), so comparisons are made in UTC."""
    slots = missed_slots(job, after, now, **kwargs)
    assert all(slot.tzinfo == BERLIN for slot in slots)  # returned in the job's zone
    return [slot.astimezone(UTC) for slot in slots]


def test_missed_slots_bounds_are_exclusive_then_inclusive() -> None:
    job = berlin_job("0 * * * *")
    slots = missed_utc(job, utc("2024-05-06T08:00+02:00"), utc("2024-05-06T11:00+02:00"))
    assert slots == [utc(f"2024-05-06T{h:02d}:00+02:00") for h in (9, 10, 11)]
    between = missed_utc(job, utc("2024-05-06T08:30+02:00"), utc("2024-05-06T10:59+02:00"))
    assert between == [utc("2024-05-06T09:00+02:00"), utc("2024-05-06T10:00+02:00")]
    assert missed_utc(job, utc("2024-05-06T08:00+02:00"), utc("2024-05-06T08:59+02:00")) == []
    assert len(missed_utc(job, utc("2024-01-01T00:00Z"), utc("2025-01-01T00:00Z"), limit=5)) == 5


def test_missed_slots_on_spring_forward_day() -> None:
    after, now = utc("2024-03-30T12:00+01:00"), utc("2024-03-31T12:00+02:00")  # 23 h
    # 02:30 does not exist on 2024-03-31: it runs once at 03:00 CEST
    assert missed_utc(berlin_job("30 2 * * *"), after, now) == [utc("2024-03-31T03:00+02:00")]
    # the whole gap collapses into one run
    assert missed_utc(berlin_job("*/30 2 * * *"), after, now) == [utc("2024-03-31T03:00+02:00")]
    hourly = missed_utc(berlin_job("0 * * * *"), after, now)
    # 13:00 .. 01:00 CET, then 02:00 (gap) and 03:00 are the same instant, then 04:00 .. 12:00
    assert len(hourly) == 23 == len(set(hourly))
    assert hourly[12:14] == [utc("2024-03-31T01:00+01:00"), utc("2024-03-31T03:00+02:00")]
    every = missed_utc(berlin_job({"every": "1h"}), after, now)
    assert len(every) == 23  # elapsed hours
    assert all(b - a == timedelta(hours=1) for a, b in zip(every, every[1:], strict=False))


def test_missed_slots_on_fall_back_day() -> None:
    after, now = utc("2024-10-26T12:00+02:00"), utc("2024-10-27T12:00+01:00")  # 25 h
    # 02:30 happens twice on 2024-10-27: it runs at the first occurrence only
    assert missed_utc(berlin_job("30 2 * * *"), after, now) == [utc("2024-10-27T02:30+02:00")]
    assert missed_utc(berlin_job("*/30 2 * * *"), after, now) == [
        utc("2024-10-27T02:00+02:00"),
        utc("2024-10-27T02:30+02:00"),
    ]
    hourly = missed_utc(berlin_job("0 * * * *"), after, now)
    assert len(hourly) == 24  # the repeated 02:00 does not run again
    assert utc("2024-10-27T02:00+02:00") in hourly and utc("2024-10-27T02:00+01:00") not in hourly
    every = missed_utc(berlin_job({"every": "1h"}), after, now)
    assert len(every) == 25  # elapsed time: both 02:00s
    assert utc("2024-10-27T02:00+01:00") in every and utc("2024-10-27T02:00+02:00") in every
    # catching up across the change: slots strictly after the first 02:30 only
    later = missed_utc(berlin_job("30 * * * *"), utc("2024-10-27T02:30+02:00"), now)
    assert later[0] == utc("2024-10-27T03:30+01:00")


def test_start_schedules_the_next_slot_and_runs_nothing_past_grace(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    """start(): a missed slot far past its grace is not run; the next one is scheduled."""
    project.write_jobs(
        """
jobs:
  - name: daily
    notebook: alert.ipynb
    schedule: "0 3 1 1 *"
    timezone: UTC
    to: ops@example.com
    misfire: {policy: run_once, grace: 1s}
"""
    )
    now = datetime.now(UTC)
    last = datetime(now.year - 2, 1, 1, 3, tzinfo=UTC)  # last year's slot is far past grace
    seed_finished(project.ledger(), "daily", last)
    daemon = project.daemon(lambda: datetime.now(UTC))
    with caplog.at_level(logging.INFO, logger="notifier.daemon"):
        daemon.start()
    job = daemon.scheduler.get_job("daily")
    assert job is not None and job.next_run_time > now
    assert (job.next_run_time.month, job.next_run_time.day) == (1, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert (
        f"daily: missed 2 slots {now.year - 1}-01-01 03:00-{now.year}-01-01 03:00 while "
        "down; all past the grace period"
    ) in messages
    assert any("daily: next run" in m for m in messages)
    daemon.shutdown()
    assert project.transport.sent == []


def test_the_closing_line_names_each_outcome_and_the_run_folder(
    project: Project, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "attempted"
    project.write_jobs(
        f"""
jobs:
  - name: good
    notebook: alert.ipynb
    schedule: "0 8 * * *"
    timezone: UTC
    to: ops@example.com
  - name: bad
    notebook: alert.ipynb
    schedule: "0 8 * * *"
    timezone: UTC
    to: ops@example.com
    parameters: {{fail_marker: "{marker}"}}
"""
    )
    daemon = project.daemon(Clock(at(8) + timedelta(seconds=1)))
    with caplog.at_level(logging.INFO, logger="notifier.daemon"):
        daemon.fire("good", slot=at(8))
        daemon.fire("bad", slot=at(8))
    ended = {
        r.getMessage().split(":", 1)[0]: r
        for r in caplog.records
        if "ended after" in r.getMessage()
    }
    good, bad = ended["good"], ended["bad"]
    assert good.levelno == logging.INFO
    assert "succeeded: 1 delivered" in good.getMessage()
    assert f"run folder {project.settings.runs_dir}" in good.getMessage()
    assert bad.levelno == logging.ERROR
    assert "failed: cell 2 raised RuntimeError: flaky data source" in bad.getMessage()
