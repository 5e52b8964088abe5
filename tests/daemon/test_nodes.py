"""Several ``notifier schedule`` nodes on one PostgreSQL ledger, as real processes.

* a node paused with SIGSTOP past its lease finds its run taken over when it resumes,
  and stops without delivering (fencing);
* the database goes away under a running daemon and comes back: the daemon lives, says
  so in a few lines, runs no slot it could not claim, and catches up;
* three nodes with their own run folders, a job every 20 s mailing three people for
  three minutes, one node killed with kill -9 mid-run and another stopped with SIGSTOP
  past its lease: every slot runs and every (slot, recipient) is mailed exactly once.

Leases are 6 s here (``NOTIFIER_LEASE_SECONDS``), so a stopped node loses its lease fast.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import wait_until
from daemons import Daemon, Project, sigkill
from postgres import Cluster, Server, Unavailable, throwaway_cluster
from smtp_server import SMTPTestServer

from notebooks import write_notebook

UTC = timezone.utc
pytestmark = pytest.mark.slow
LEASE = "6"

PEOPLE_PARAMETERS = """\
people = ["r0@example.com", "r1@example.com", "r2@example.com"]
marker = ""
sleep = 0
scheduled_for = ""
"""

# every run sleeps `sleep` seconds (a slow query), after writing `marker` if given
PEOPLE_CELL = """\
import time
from pathlib import Path
from notifier import report

if marker:
    Path(marker).write_text("in the slow cell")
time.sleep(sleep)
for person in people:
    report.email(f"Report for {person} {scheduled_for}", to=person).markdown("your **numbers**")
"""


def people_jobs(schedule: str, parameters: str = "{}") -> str:
    return f"""\
defaults:
  timezone: UTC
  to: ops@example.com
jobs:
  - name: people
    notebook: people.ipynb
    schedule: {schedule}
    misfire: {{policy: run_once, grace: 1h}}
    parameters: {parameters}
"""


def make_project(root: Path, server: SMTPTestServer, db_url: str) -> Project:
    project = Project(root, server, db_url=db_url)
    write_notebook(project.root / "people.ipynb", PEOPLE_CELL, parameters=PEOPLE_PARAMETERS)
    return project


def owner_pid(owner: str) -> int:
    return int(owner.rsplit(":", 2)[1])


def daemon_of(daemons: list[Daemon], owner: str) -> Daemon:
    return next(d for d in daemons if d.proc.pid == owner_pid(owner))


def no_tracebacks(daemons: list[Daemon]) -> None:
    for daemon in daemons:
        assert "Traceback" not in daemon.stderr(), daemon.stderr()


@pytest.fixture
def smtp(smtp_server_factory: Callable[..., SMTPTestServer]) -> SMTPTestServer:
    return smtp_server_factory("plain")


@pytest.fixture
def cleanup() -> Iterator[list[Project]]:
    projects: list[Project] = []
    yield projects
    for project in projects:
        project.cleanup()


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of this test's own, to stop and start under a daemon."""
    try:
        context = throwaway_cluster()
        cluster = context.__enter__()
    except Unavailable as why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI (CI=true): {why}", pytrace=False)
        pytest.skip(f"PostgreSQL cases skipped: {why}")
    try:
        yield cluster
    finally:
        context.__exit__(None, None, None)


# --- 1. SIGSTOP past the lease: fenced ------------------------------------------------------


def test_a_node_stopped_past_its_lease_is_fenced_and_delivers_nothing(
    tmp_path: Path, smtp: SMTPTestServer, postgres_url: str, cleanup: list[Project]
) -> None:
    project = make_project(tmp_path, smtp, postgres_url)
    cleanup.append(project)
    marker = project.root / "slow-cell"
    slot = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
    project.write_jobs(
        people_jobs(f'{{at: "{slot.isoformat()}"}}', f'{{marker: "{marker}", sleep: 6}}')
    )
    daemons = [
        project.start(NOTIFIER_LEASE_SECONDS=LEASE, NOTIFIER_RUNS_DIR=str(tmp_path / f"runs-{n}"))
        for n in range(2)
    ]
    for daemon in daemons:
        daemon.wait_for_log("running; stop with", timeout=60)
    wait_until(marker.exists, 60, "the notebook to reach its slow cell")
    [run] = project.runs("people")
    stalled = daemon_of(daemons, run.owner)
    rescuer = next(d for d in daemons if d is not stalled)
    stalled.proc.send_signal(signal.SIGSTOP)  # its notebook worker goes on and finishes
    try:
        # the lease runs out (6 s), the other node takes the run over (attempt 2) and mails
        wait_until(
            lambda: (r := project.runs("people")[0]).attempt == 2 and r.status == "succeeded",
            90,
            "the other node to take the run over and deliver it",
        )
    finally:
        stalled.proc.send_signal(signal.SIGCONT)
    stalled.wait_for_log("was taken over by another node; this node stops without delivering")
    stalled.wait_for_log("this node delivered nothing")
    stalled.wait_for_log("lease ran out before it could renew it")
    time.sleep(3)  # anything it would still send would arrive now
    expected = {
        (f"r{i}@example.com", f"Report for r{i}@example.com {slot.isoformat()}") for i in range(3)
    }
    assert Counter(project.received()) == {pair: 1 for pair in expected}
    [row] = project.history()
    assert (row["status"], row["attempt"]) == ("succeeded", 2)
    assert "missed its lease" in row["notes"]
    assert row["owner"] != run.owner and owner_pid(row["owner"]) == rescuer.proc.pid
    # its output is readable from any node: this command has neither daemon's runs folder
    assert row["files"] == ["output.html", "worker.log"]
    shown = project.cli("show", row["run_id"], "output")
    assert shown.returncode == 0 and "Report for r1@example.com" in shown.stdout
    email = project.cli("show", row["run_id"], "email", "2")
    assert email.returncode == 0 and "To: r1@example.com" in email.stdout
    assert [d.terminate() for d in daemons] == [0, 0]
    no_tracebacks(daemons)


# --- 2. the database goes away and comes back -------------------------------------------------


def test_the_database_goes_away_and_comes_back_under_a_running_daemon(
    tmp_path: Path, smtp: SMTPTestServer, own_cluster: Cluster, cleanup: list[Project]
) -> None:
    server = Server(own_cluster.url, own_cluster)
    project = make_project(tmp_path, smtp, server.create_database())
    cleanup.append(project)
    anchor = (datetime.now(UTC) + timedelta(seconds=4)).replace(microsecond=0)
    project.write_jobs(
        people_jobs(f'{{every: 5s, start: "{anchor.isoformat()}"}}', '{people: ["r0@example.com"]}')
    )
    daemon = project.start(NOTIFIER_LEASE_SECONDS=LEASE)
    daemon.wait_for_log("running; stop with", timeout=60)
    wait_until(
        lambda: any(r.status == "succeeded" for r in project.runs("people")), 60, "a first run"
    )
    project.ledger().close()  # the test's own reader holds no connection during the outage
    project.ledgers.clear()

    own_cluster.stop("immediate")  # as a crash of the database server would
    down_at = datetime.now(UTC)
    time.sleep(25)  # five slots, several heartbeats, recovery checks and delivery passes
    assert daemon.proc.poll() is None, daemon.stderr()
    during = daemon.stderr()
    own_cluster.start()
    up_at = datetime.now(UTC)

    daemon.wait_for_log("the ledger is reachable again after", timeout=60)
    wait_until(
        lambda: any(r.slot > up_at and r.status == "succeeded" for r in project.runs("people")),
        60,
        "a slot after the outage to run",
    )
    assert daemon.terminate() == 0
    log = daemon.stderr()
    assert "Traceback" not in log
    # a few lines, not one per slot or per second
    trouble = [line for line in during.splitlines() if "unavailable" in line or "failed" in line]
    assert 1 <= len(trouble) <= 6, "\n".join(trouble)
    assert "no slot runs until it is back" in during
    back = next(line for line in log.splitlines() if "the ledger is reachable again after" in line)
    assert "slot(s) were not run meanwhile" in back

    runs = project.runs("people")
    assert {r.status for r in runs} <= {"succeeded", "interrupted"}, [
        (r.slot, r.status) for r in runs
    ]
    outage = [r for r in runs if down_at < r.slot < up_at]
    assert len(outage) <= 1  # the latest missed slot, caught up per misfire run_once
    received = Counter(subject for _, subject in project.received())
    assert set(received.values()) == {1}, (received, log)  # nothing twice
    assert {
        f"Report for r0@example.com {r.slot.isoformat()}" for r in runs if r.status == "succeeded"
    } == set(received)


# --- 3. three nodes, one killed, one stopped --------------------------------------------------


def test_three_nodes_lose_two_and_mail_every_slot_once(
    tmp_path: Path, smtp: SMTPTestServer, postgres_url: str, cleanup: list[Project]
) -> None:
    project = make_project(tmp_path, smtp, postgres_url)
    cleanup.append(project)
    anchor = (datetime.now(UTC) + timedelta(seconds=15)).replace(microsecond=0)
    project.write_jobs(people_jobs(f'{{every: 20s, start: "{anchor.isoformat()}"}}', "{sleep: 5}"))
    daemons = [
        project.start(NOTIFIER_LEASE_SECONDS=LEASE, NOTIFIER_RUNS_DIR=str(tmp_path / f"runs-{n}"))
        for n in range(3)
    ]
    for daemon in daemons:
        daemon.wait_for_log("running; stop with", timeout=60)
    ledger = project.ledger()

    def running_on(candidates: list[Daemon]):
        """A run that started its notebook in the last 2 s on one of ``candidates``."""
        pids = {d.proc.pid for d in candidates}
        recent = datetime.now(UTC) - timedelta(seconds=2)
        return next(
            (
                r
                for r in ledger.history("people", limit=5)
                if r.status == "running"
                and owner_pid(r.owner) in pids
                and r.started_at is not None
                and r.started_at > recent
            ),
            None,
        )

    # kill -9 one node while it runs a slot
    killed_run = wait_until(lambda: running_on(daemons), 90, "a run to kill")
    killed = daemon_of(daemons, killed_run.owner)
    sigkill(killed)
    alive = [d for d in daemons if d is not killed]

    # stop another with SIGSTOP while it runs a later slot, for longer than its lease
    wait_until(lambda: datetime.now(UTC) > anchor + timedelta(seconds=60), 120, "a minute")
    stopped_run = wait_until(lambda: running_on(alive), 90, "a run to stop")
    stopped = daemon_of(alive, stopped_run.owner)
    stopped.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: ledger.get(stopped_run.run_id).attempt >= 2,  # type: ignore[union-attr]
            60,
            "the stopped node's run to be taken over",
        )
        time.sleep(4)
    finally:
        stopped.proc.send_signal(signal.SIGCONT)
    stopped.wait_for_log("lease ran out before it could renew it")
    stopped.wait_for_log("was taken over by another node; this node stops without delivering")

    end = anchor + timedelta(seconds=185)
    wait_until(lambda: datetime.now(UTC) > end, 240, "three minutes of slots")
    slots = [anchor + timedelta(seconds=20 * k) for k in range(10)]  # anchor .. anchor+180 s

    def settled() -> bool:
        runs = {r.slot: r for r in ledger.history("people", limit=None)}
        return all(s in runs and runs[s].status in {"succeeded", "failed"} for s in slots)

    wait_until(settled, 120, "every slot to run and its mail to settle")
    assert [d.terminate() for d in alive] == [0, 0]

    runs = {r.slot: r for r in ledger.history("people", limit=None)}
    rows = ledger.queue.rows(run_ids=[r.run_id for r in runs.values()])
    unknown = {(row.run_id, row.recipient) for row in rows if row.status == "unknown"}
    received = Counter(project.received())
    for slot in slots:
        run = runs[slot]
        assert run.status == "succeeded" or all(
            (run.run_id, f"r{i}@example.com") in unknown for i in range(3) if run.status == "failed"
        ), (slot, run.status, run.error)
        for i in range(3):
            person = f"r{i}@example.com"
            got = received[(person, f"Report for {person} {slot.isoformat()}")]
            if (run.run_id, person) in unknown:
                assert got <= 1, (slot, person)  # an unknown outcome: reported, never resent
            else:
                assert got == 1, (slot, person, got)
    assert sum(received.values()) <= 3 * len(runs)
    assert runs[killed_run.slot].attempt >= 2 and runs[stopped_run.slot].attempt >= 2
    assert {owner_pid(r.owner) for r in runs.values()} >= {d.proc.pid for d in alive}
    no_tracebacks(daemons)
