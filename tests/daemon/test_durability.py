"""Durable delivery with real ``notifier schedule`` processes, a real SMTP server and a
real SQLite ledger (the kill -9 and hand-over tests also on PostgreSQL): a mail outage across a slot, kill -9 at the worst moments, a locked
ledger, a graceful stop while another daemon runs, notifier as PID 1, and the process
tree of a notebook when its daemon is killed."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
from conftest import BACKENDS, wait_until
from daemons import Project, StallingSMTPServer, sigkill
from smtp_server import Behaviour, SMTPTestServer

from notebooks import write_notebook

UTC = timezone.utc
pytestmark = pytest.mark.slow

# a notebook that mails each of `people` its own email, in the order given (or reversed
# when `reverse_flag` exists), optionally after a slow cell
SPLIT_PARAMETERS = """\
people = ["r0@example.com", "r1@example.com", "r2@example.com"]
reverse_flag = ""
marker = ""
sleep = 0
scheduled_for = ""
"""

SPLIT_CELL = """\
import time
from pathlib import Path
from notifier import report

if marker and not Path(marker).exists():
    Path(marker).write_text("in the slow cell")
    time.sleep(sleep)
order = list(reversed(people)) if reverse_flag and Path(reverse_flag).exists() else people
for person in order:
    report.email(f"Report for {person} {scheduled_for}", to=person).markdown("your **numbers**")
"""


@pytest.fixture
def server_factory(smtp_server_factory: Callable[..., SMTPTestServer]):
    return smtp_server_factory


def make_project(tmp_path: Path, server: SMTPTestServer, db_url: str = "") -> Project:
    project = Project(tmp_path, server, db_url=db_url)
    write_notebook(project.root / "split.ipynb", SPLIT_CELL, parameters=SPLIT_PARAMETERS)
    return project


@pytest.fixture
def cleanup() -> Iterator[list[Project]]:
    projects: list[Project] = []
    yield projects
    for project in projects:
        project.cleanup()


def split_job(slot: datetime, *, extra: str = "", parameters: str = "{}") -> str:
    return f"""\
defaults:
  timezone: UTC
  to: ops@example.com
jobs:
  - name: split
    notebook: split.ipynb
    schedule: {{at: "{slot.isoformat()}"}}
    misfire: {{policy: run_once, grace: 1h}}
    parameters: {parameters}
{extra}"""


def ledger_url(backend: str, request: pytest.FixtureRequest) -> str:
    """ "" (the project's SQLite file) or a fresh PostgreSQL database."""
    return request.getfixturevalue("postgres_url") if backend == "postgresql" else ""


def slot_in(seconds: float) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)


def received_per_recipient(project: Project) -> Counter[str]:
    return Counter(rcpt for rcpt, _ in project.received())


# --- 1. an outage across the slot --------------------------------------------------------


def test_a_mail_outage_across_a_slot_delays_the_report_instead_of_losing_it(
    tmp_path: Path, server_factory: Callable[..., SMTPTestServer], cleanup: list[Project]
) -> None:
    server = server_factory("plain")
    project = make_project(tmp_path, server)
    cleanup.append(project)
    slot = slot_in(4)
    project.write_jobs(split_job(slot))
    server.stop()  # down at 08:00
    down_at = time.monotonic()
    daemon = project.start(NOTIFIER_RETRY_BACKOFF="2s", NOTIFIER_RETRY_BACKOFF_MAX="5s")

    wait_until(
        lambda: [r for r in project.runs("split") if r.status == "delivering"], 60, "the run"
    )
    waiting = wait_until(
        lambda: (done := project.cli("queue")).stdout.count("deferred, next try") == 3 and done,
        30,
        "the first try to fail",
    )
    assert waiting.returncode == 0, waiting.stderr
    history = project.cli("history")
    assert "delivering" in history.stdout and "refused" in history.stdout.lower()

    wait_until(lambda: time.monotonic() - down_at >= 40, 60, "40 s of outage")
    server.start()  # the same port
    up_at = time.monotonic()
    wait_until(lambda: len(project.received()) == 3, 60, "the report after the outage")
    # within the backoff bound: the longest wait is 5 s (+ a pass of the delivery service)
    assert time.monotonic() - up_at < 5 + 10
    wait_until(lambda: project.runs("split")[0].status == "succeeded", 30, "the run to settle")
    time.sleep(3)
    assert daemon.terminate() == 0
    assert received_per_recipient(project) == {f"r{i}@example.com": 1 for i in range(3)}
    [row] = project.history()
    assert (row["status"], row["attempt"]) == ("succeeded", 1)
    assert {d["status"] for d in row["deliveries"]} == {"delivered"}
    assert all(d["attempts"] >= 2 for d in row["deliveries"])  # the deferrals are counted
    assert "Traceback" not in daemon.stderr()


# --- 2. kill -9 after the first recipient, restart --------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_after_the_first_recipient_then_a_restart_mails_nobody_twice(
    tmp_path: Path, cleanup: list[Project], backend: str, request: pytest.FixtureRequest
) -> None:
    server = StallingSMTPServer("r1@example.com").start()
    project = make_project(tmp_path, server, ledger_url(backend, request))
    cleanup.append(project)
    flag = project.root / "reverse"
    slot = slot_in(2)
    project.write_jobs(split_job(slot, parameters=f'{{reverse_flag: "{flag}"}}'))
    # one connection: r0 delivered, r1 stalled before its DATA, r2 waiting behind it (with
    # parallel connections r2 could be past its 354 at the kill: "outcome unknown", rightly)
    first = project.start(SMTP_CONNECTIONS="1")
    try:
        wait_until(server.stalled.is_set, 60, "the RCPT for r1")
        wait_until(lambda: "r0@example.com" in received_per_recipient(project), 30, "r0")
        assert received_per_recipient(project) == {"r0@example.com": 1}
        sigkill(first)
        flag.write_text("build the emails in reverse order from now on")
        second = project.start()
        wait_until(lambda: project.runs("split")[0].status == "succeeded", 60, "the delivery")
        assert second.terminate() == 0
        assert received_per_recipient(project) == {f"r{i}@example.com": 1 for i in range(3)}
        [row] = project.history()
        assert row["attempt"] == 1  # the queue finished the run: no second execution
        assert "Traceback" not in second.stderr()
    finally:
        server.stop()


# --- 3. the link is lost after the final dot ----------------------------------------------


@pytest.mark.parametrize("on_unknown", ["skip", "resend"])
def test_a_daemon_killed_while_the_server_answers_the_final_dot(
    tmp_path: Path,
    server_factory: Callable[..., SMTPTestServer],
    cleanup: list[Project],
    on_unknown: str,
) -> None:
    server = server_factory("plain", behaviour=Behaviour(reply_delay_after_data=3.0))
    project = make_project(tmp_path, server)
    cleanup.append(project)
    slot = slot_in(2)
    people = '{people: ["r0@example.com"]}'
    project.write_jobs(split_job(slot, parameters=people, extra=f"    on_unknown: {on_unknown}\n"))
    first = project.start()
    wait_until(lambda: server.counts["slow_replies"] >= 1, 60, "the final dot")
    sigkill(first)  # during the server's 3 s: the answer never arrives
    assert len(project.received()) == 1  # the server has queued it

    server.behaviour.reply_delay_after_data = 0.0
    second = project.start()
    if on_unknown == "skip":
        wait_until(lambda: project.runs("split")[0].status == "failed", 60, "the verdict")
        [row] = project.history()
        [delivery] = [d for d in row["deliveries"] if d["purpose"] == "report"]
        assert delivery["status"] == "unknown"
        assert "possibly delivered" in delivery["reply"]
        history = project.cli("history")
        assert "outcome unknown (possibly delivered)" in history.stdout
        time.sleep(2)
        assert received_per_recipient(project)["r0@example.com"] == 1  # not sent again
        # the failure recipients are told the outcome is unknown
        wait_until(lambda: received_per_recipient(project)["ops@example.com"] == 1, 30, "notice")
    else:
        wait_until(
            lambda: received_per_recipient(project)["r0@example.com"] == 2, 60, "the copy again"
        )
        wait_until(lambda: project.runs("split")[0].status == "succeeded", 30, "the run")
    assert second.terminate() == 0
    assert "Traceback" not in second.stderr()


# --- 4. the ledger is locked during delivery --------------------------------------------


def test_a_ledger_locked_for_15_s_during_delivery_loses_and_repeats_nothing(
    tmp_path: Path, server_factory: Callable[..., SMTPTestServer], cleanup: list[Project]
) -> None:
    server = server_factory("plain", behaviour=Behaviour(reply_delay_after_data=1.0))
    project = make_project(tmp_path, server)
    cleanup.append(project)
    project.write_jobs(split_job(slot_in(2)))
    daemon = project.start()
    wait_until(lambda: server.counts["slow_replies"] >= 1, 60, "the first message on the wire")
    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)\n"
            "db.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
            "time.sleep(15); db.execute('COMMIT')\n",
            str(project.root / "ledger.db"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    assert locker.wait(60) == 0
    wait_until(lambda: project.runs("split")[0].status == "succeeded", 60, "the run")
    assert daemon.terminate() == 0
    assert received_per_recipient(project) == {f"r{i}@example.com": 1 for i in range(3)}
    with sqlite3.connect(project.root / "ledger.db") as raw:
        logged = Counter(raw.execute("SELECT recipient, status FROM deliveries").fetchall())
    assert logged == {(f"r{i}@example.com", "delivered"): 1 for i in range(3)}
    stderr = daemon.stderr()
    assert "Traceback" not in stderr
    assert "the ledger is unavailable" in stderr


# --- 5. a graceful stop hands the run over ------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_of_one_of_two_daemons_during_a_run_lets_the_other_complete_it(
    tmp_path: Path,
    server_factory: Callable[..., SMTPTestServer],
    cleanup: list[Project],
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    server = server_factory("plain")
    project = make_project(tmp_path, server, ledger_url(backend, request))
    cleanup.append(project)
    marker = project.root / "slow-cell"
    slot = slot_in(6)
    project.write_jobs(split_job(slot, parameters=f'{{marker: "{marker}", sleep: 30}}'))
    daemons = [project.start(NOTIFIER_SHUTDOWN_GRACE="2") for _ in range(2)]
    for daemon in daemons:
        daemon.wait_for_log("running; stop with")
    wait_until(marker.exists, 60, "the slow cell")
    [run] = project.runs("split")
    owner_pid = int(run.owner.rsplit(":", 2)[1])
    leaving = next(d for d in daemons if d.proc.pid == owner_pid)
    staying = next(d for d in daemons if d is not leaving)
    assert leaving.terminate(timeout=60) == 0  # kills the kernel after its 2 s grace
    assert project.runs("split")[0].status in {"interrupted", "claimed", "running"}

    wait_until(lambda: project.runs("split")[0].status == "succeeded", 60, "the other daemon")
    assert staying.terminate() == 0
    [row] = project.history()
    assert (row["status"], row["attempt"]) == ("succeeded", 2)
    assert received_per_recipient(project) == {f"r{i}@example.com": 1 for i in range(3)}
    assert "Traceback" not in leaving.stderr() + staying.stderr()


# --- 6. notifier as PID 1 -------------------------------------------------------------------


def test_a_run_succeeds_when_notifier_is_pid_1(tmp_path: Path, cleanup: list[Project]) -> None:
    unshare = shutil.which("unshare")
    probe = (
        subprocess.run(
            [unshare or "unshare", "--pid", "--fork", "--mount-proc", "true"],
            capture_output=True,
            check=False,
        )
        if unshare
        else None
    )
    if probe is None or probe.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("unshare --pid is needed for this test in CI (run as root)")
        pytest.skip("unshare --pid --fork --mount-proc is not available here (needs root)")
    write_notebook(
        tmp_path / "pid.ipynb",
        "import os\nfrom notifier import report\n"
        "report.email(f'parent {os.getppid()}', to='ops@example.com').text('x')",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "NOTIFIER_"))}
    env["PYTHONUNBUFFERED"] = "1"
    code = (
        "import os, sys\nassert os.getpid() == 1\nfrom notifier.cli import main\nsys.exit(main())"
    )
    done = subprocess.run(
        [
            unshare,
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            "-c",
            code,
            "run",
            "pid.ipynb",
            "--dry-run",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " succeeded in " in done.stdout
    [eml] = (tmp_path / "outbox").glob("*.eml")
    assert b"Subject: parent " in eml.read_bytes()


# --- 7. the notebook's process tree dies with the daemon ------------------------------------

SPAWNER = """\
import os, subprocess, time
from pathlib import Path

children = [
    subprocess.Popen(["sleep", "1000"]),  # a plain child of the kernel
    subprocess.Popen(["sleep", "1001"], start_new_session=True),  # in a session of its own
]
# a double-forked daemon: its parent exits at once, so it is nobody's child any more
subprocess.run(["sh", "-c", "nohup setsid sleep 1002 >/dev/null 2>&1 & echo $! > " + daemon_pid])
Path(pids).write_text(" ".join(str(c.pid) for c in children))
time.sleep(1000)
"""


def test_kill_9_of_the_daemon_leaves_no_notebook_process_running(
    tmp_path: Path, server_factory: Callable[..., SMTPTestServer], cleanup: list[Project]
) -> None:
    server = server_factory("plain")
    project = make_project(tmp_path, server)
    cleanup.append(project)
    pids_file, daemon_pid_file = project.root / "pids", project.root / "daemon-pid"
    write_notebook(project.root / "spawner.ipynb", SPAWNER, parameters='pids = ""\ndaemon_pid = ""')
    slot = slot_in(2)
    project.write_jobs(
        f"""\
jobs:
  - name: spawner
    notebook: spawner.ipynb
    schedule: {{at: "{slot.isoformat()}"}}
    timezone: UTC
    to: ops@example.com
    parameters: {{pids: "{pids_file}", daemon_pid: "{daemon_pid_file}"}}
"""
    )
    daemon = project.start()
    wait_until(lambda: pids_file.exists() and daemon_pid_file.exists(), 60, "the children")
    time.sleep(0.5)
    pids = [int(p) for p in pids_file.read_text().split()]
    pids.append(int(daemon_pid_file.read_text().strip()))
    kernels = [p for p in project.tagged_processes() if "ipykernel" in " ".join(p.cmdline())]
    assert kernels and all(psutil.pid_exists(pid) for pid in pids)
    sigkill(daemon)

    def survivors() -> list[str]:
        alive = []
        for pid in [*pids, *(k.pid for k in kernels)]:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} (parent {proc.ppid()}): {' '.join(proc.cmdline())}")
            except psutil.NoSuchProcess:
                continue
        return alive

    deadline = time.monotonic() + 20
    while survivors() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert survivors() == []
    # and the worker that killed them exits too
    wait_until(lambda: not project.tagged_processes(), 20, "the notebook worker to exit")


@pytest.fixture(autouse=True)
def _no_stray_signal_handlers() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)
