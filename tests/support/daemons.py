"""Real ``notifier schedule`` processes for tests: a project folder, its daemons, and an
SMTP server that stalls one recipient. Every process started here is found by an
environment tag and killed at cleanup."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil
from conftest import wait_until
from smtp_server import SMTPTestServer, _Handler

from notebooks import write_notebook
from notifier.ledger import Ledger, Run

UTC = timezone.utc
TAG_VARIABLE = "NOTIFIER_TEST_TAG"

PARAMETERS = """\
marker = ""
sleep = 0
subject = "Report"
split = False
scheduled_for = ""
"""

NOTEBOOK_CELL = """\
import time
from pathlib import Path
from notifier import report

if marker and not Path(marker).exists():
    Path(marker).write_text("in the slow cell")
    time.sleep(sleep)
title = f"{subject} {scheduled_for}"
if split:
    report.email(title, to="alice@example.com").markdown("part **one**")
    report.email(title, to="bob@example.com").markdown("part **two**")
else:
    report.email(title).markdown("all **good**")
"""


# --- an SMTP server that stalls one recipient -------------------------------------------------


class _StallingHandler(_Handler):
    """Answers the first RCPT for ``server.stall_address`` only when the client goes away."""

    async def handle_RCPT(self, smtp, session, envelope, address, rcpt_options):  # noqa: N802
        server = self.server
        if address == server.stall_address and not server.stalled.is_set():
            server.stalled.set()
            await asyncio.sleep(120)  # cancelled by aiosmtpd when the connection is lost
        return await super().handle_RCPT(smtp, session, envelope, address, rcpt_options)


class StallingSMTPServer(SMTPTestServer):
    """The plain test server, but the first RCPT for one address never gets a reply."""

    def __init__(self, stall_address: str) -> None:
        super().__init__("plain")
        self.stall_address = stall_address
        self.stalled = threading.Event()

    def start(self) -> StallingSMTPServer:
        super().start()
        assert self._controller is not None
        self._controller.handler = _StallingHandler(self)  # used for every new connection
        return self


# --- the project folder and its daemons -------------------------------------------------------


@dataclass
class Daemon:
    """A running ``notifier schedule`` with its stderr in a file."""

    proc: subprocess.Popen[bytes]
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and text not in self.stderr():
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.stderr()}")
            return text in self.stderr()

        wait_until(seen, timeout, f"{text!r} in the daemon's log")

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@dataclass
class Project:
    """A project folder with a notebook and a jobs file; ``db_url`` (default: an SQLite
    file in the folder) is the ledger every daemon and command of it uses."""

    root: Path
    server: SMTPTestServer
    db_url: str = ""
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    daemons: list[Daemon] = field(default_factory=list)
    ledgers: list[Ledger] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.notebook = write_notebook(
            self.root / "report.ipynb", NOTEBOOK_CELL, parameters=PARAMETERS
        )
        self.jobs = self.root / "jobs.yaml"
        self.db_url = self.db_url or f"sqlite:///{self.root / 'ledger.db'}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SMTP_", "NOTIFIER_")) and k != "COVERAGE_PROCESS_START"
        }
        env.update(
            {
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(self.server.port),
                "SMTP_SECURITY": "none",
                "SMTP_FROM": "reports@example.com",
                "SMTP_TIMEOUT": "10",
                "NOTIFIER_DB_URL": self.db_url,
                "NOTIFIER_RUNS_DIR": str(self.root / "runs"),
                "NOTIFIER_OUTBOX": str(self.root / "outbox"),
                "NOTIFIER_SHUTDOWN_GRACE": "30",
                "NOTIFIER_TIMEZONE": "UTC",
                # the dashboard on any free port: never the default 8765 a `make run`, or
                # the other test process, may hold
                "NOTIFIER_WEB_PORT": "0",
                "PYTHONUNBUFFERED": "1",
                TAG_VARIABLE: self.tag,
            }
        )
        env.update(extra)
        return env

    def write_jobs(self, text: str) -> None:
        tmp = self.jobs.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.jobs)  # atomic: the watcher never reads half a file

    def start(self, **env: str) -> Daemon:
        log = self.root / f"daemon-{len(self.daemons) + 1}.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "notifier", "schedule", str(self.jobs)],
                cwd=self.root,
                env=self.env(**env),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        daemon = Daemon(proc, log)
        self.daemons.append(daemon)
        return daemon

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "notifier", *args],
            cwd=self.root,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def history(self) -> list[dict[str, Any]]:
        done = self.cli("history", "--json", "--limit", "100")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def ledger(self) -> Ledger:
        if not self.ledgers:
            self.ledgers.append(Ledger(self.db_url))
        return self.ledgers[0]

    def runs(self, job: str) -> list[Run]:
        return self.ledger().history(job, limit=None)

    def received(self) -> list[tuple[str, str]]:
        """(recipient, subject) of every message the server accepted, in order."""
        with self.server.lock:
            messages = list(self.server.messages)
        return [(rcpt, str(m.message["Subject"])) for m in messages for rcpt in m.rcpt_tos]

    def tagged_processes(self) -> list[psutil.Process]:
        """Every live process started for this project (daemons, workers, kernels)."""
        found = []
        for proc in psutil.process_iter(["status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                    continue
                if proc.environ().get(TAG_VARIABLE) == self.tag:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def cleanup(self) -> None:
        for daemon in self.daemons:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
            try:
                daemon.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        leftovers = self.tagged_processes()
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(leftovers, timeout=10)
        for ledger in self.ledgers:
            ledger.close()


def one_off_job(
    *,
    name: str = "report",
    seconds_ahead: float = 1.0,
    policy: str = "run_once",
    parameters: str = "{}",
) -> tuple[str, datetime]:
    """jobs.yaml with one job whose single slot is ``seconds_ahead`` from now."""
    slot = (datetime.now(UTC) + timedelta(seconds=seconds_ahead)).replace(microsecond=0)
    text = f"""\
defaults:
  timezone: UTC
  to: ops@example.com
jobs:
  - name: {name}
    notebook: report.ipynb
    schedule: {{at: "{slot.isoformat()}"}}
    misfire: {{policy: {policy}, grace: 1h}}
    parameters: {parameters}
"""
    return text, slot


def sigkill(daemon: Daemon) -> None:
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(10)
