"""Bulk delivery against a real SMTP server on 127.0.0.1 and a real SQLite ledger: parallel
connections send every recipient once, a failing connection leaves its work to the others,
daily limits count recipients across connections and processes and defer the rest until the
window frees up, `notifier run JOB --resume` sends what was left, and progress is reported."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from smtp_server import SMTPTestServer, settings_for

from notebooks import write_notebook
from notifier.delivery.backoff import Backoff
from notifier.delivery.planning import plan_email
from notifier.delivery.worker import Deliverer, Outcome, default_transports
from notifier.ledger import Ledger, Run
from notifier.mail.model import Email, InlineImage
from notifier.mail.parts import Part
from notifier.mail.transport.smtp import SMTPTransport
from notifier.settings import Settings

UTC = timezone.utc
SLOT = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)
CHART = Part(b"\x89PNG\r\n\x1a\n" + os.urandom(3000), "image/png", "chart.png")


class Bulk:
    """A ledger with one run in 'delivering' and a deliverer for ``settings``."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.settings = settings.with_overrides(outbox_dir=root / "outbox", runs_dir=root / "runs")
        self.ledger = Ledger(f"sqlite:///{root / 'ledger.db'}")
        self.run: Run | None = None

    def deliverer(
        self, transports: Callable | None = None, backoff: Backoff | None = None
    ) -> Deliverer:
        return Deliverer(
            self.ledger,
            self.settings,
            transports or default_transports(self.settings),
            backoff=backoff or Backoff(0.2, 0.4),
        )

    def enqueue(self, mails: list[Email]) -> Run:
        run = self.ledger.claim("bulk", SLOT, failure_recipients=())
        assert run is not None and self.ledger.mark_running(run.run_id, run.attempt)
        expires = datetime.now(UTC) + timedelta(days=2)
        messages = [
            plan_email(
                m,
                purpose="report",
                default_sender="reports@example.com",
                max_size=None,
                expires_at=expires,
            )
            for m in mails
        ]
        self.ledger.queue.enqueue(run.run_id, run.attempt, self.ledger.owner, messages, deliver={})
        self.run = run
        return run

    def states(self) -> dict[str, tuple[str, datetime | None]]:
        assert self.run is not None
        rows = self.ledger.queue.rows(run_ids=[self.run.run_id])
        return {r.recipient: (r.status, r.next_attempt_at) for r in rows}


@pytest.fixture
def bulk(tmp_path: Path) -> Iterator[Callable[[Settings], Bulk]]:
    made: list[Bulk] = []

    def make(settings: Settings) -> Bulk:
        made.append(Bulk(tmp_path, settings))
        return made[-1]

    yield make
    for item in made:
        item.ledger.close()


def personalised(count: int, *, recipients: int = 1) -> list[Email]:
    return [
        Email(
            subject=f"Statement {n}",
            to=[f"customer{n}.{k}@example.com" for k in range(recipients)],
            html=f'<p>Dear customer {n}</p><table><tr><td>{n * 7}</td></tr></table><img src="cid:c@x">',
            images=[InlineImage("c@x", CHART)],
        )
        for n in range(count)
    ]


def test_many_emails_go_out_over_parallel_connections_each_recipient_once(
    smtp_server_factory: Callable[..., SMTPTestServer], bulk: Callable[[Settings], Bulk]
) -> None:
    server = smtp_server_factory("starttls")
    queue = bulk(settings_for(server, smtp_connections=3))
    queue.enqueue(personalised(40))
    seen: list[Outcome] = []
    outcomes = queue.deliverer().deliver(limit=7, on_outcome=seen.append)

    assert sorted(o.status.value for o in outcomes) == ["delivered"] * 40
    assert len(seen) == 40
    received = sorted(r for m in server.messages for r in m.rcpt_tos)
    assert received == sorted(f"customer{n}.0@example.com" for n in range(40))
    assert server.counts["connections"] == 3  # one per session, kept for the whole pass
    # each message reads back as written: its own table, the shared chart
    for message in server.messages:
        number = message.message["Subject"].split()[-1]
        html = message.message.get_body(("html",)).get_content()
        assert f"Dear customer {number}<" in html
        images = [p for p in message.message.walk() if p.get_content_type() == "image/png"]
        assert [p.get_content() for p in images] == [CHART.data]
    assert queue.ledger.get(queue.run.run_id).status == "succeeded"  # type: ignore[union-attr]


def test_one_failing_connection_does_not_stop_the_others(
    smtp_server_factory: Callable[..., SMTPTestServer], bulk: Callable[[Settings], Bulk]
) -> None:
    server = smtp_server_factory("plain")
    queue = bulk(settings_for(server, smtp_connections=3, retries=0))
    queue.enqueue(personalised(20))
    broken = settings_for(server, port=1, retries=0)  # nothing listens on port 1
    made = []

    def transports(kind: str) -> SMTPTransport:
        made.append(SMTPTransport(broken if not made else queue.settings))
        return made[-1]

    # a backoff longer than the pass: the deferred message is not due again within it
    outcomes = queue.deliverer(transports, Backoff(60, 60)).deliver(limit=5)
    statuses = sorted(o.status.value for o in outcomes)
    # the broken connection's first message is deferred; the healthy ones sent the rest
    assert statuses == ["deferred"] + ["delivered"] * 19
    assert len(server.messages) == 19


def test_the_daily_limit_counts_recipients_and_defers_the_rest_until_it_frees_up(
    smtp_server_factory: Callable[..., SMTPTestServer], bulk: Callable[[Settings], Bulk]
) -> None:
    server = smtp_server_factory("plain")
    queue = bulk(settings_for(server, rate_per_day=3, smtp_connections=1))
    queue.enqueue(personalised(3, recipients=2))  # 6 recipients, 3 allowed a day
    started = datetime.now(UTC)
    outcomes = queue.deliverer().deliver()

    statuses = sorted(o.status.value for o in outcomes)
    assert statuses == ["deferred"] * 3 + ["delivered"] * 3
    assert sum(len(m.rcpt_tos) for m in server.messages) == 3
    for outcome in outcomes:
        if outcome.status.value == "deferred":
            assert "Daily sending limit reached" in outcome.reply
            # not the usual backoff: the moment the rolling 24 hours free up
            assert outcome.next_attempt_at is not None
            wait = outcome.next_attempt_at - started
            assert timedelta(hours=23, minutes=59) < wait < timedelta(hours=24, minutes=1)
    state = queue.settings.outbox_dir.parent / ".notifier-state" / "smtp-rate.sqlite3"
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT SUM(n) FROM sends").fetchone() == (3,)
    assert queue.ledger.get(queue.run.run_id).status == "delivering"  # type: ignore[union-attr]


def test_the_daily_limit_is_shared_by_parallel_connections(
    smtp_server_factory: Callable[..., SMTPTestServer], bulk: Callable[[Settings], Bulk]
) -> None:
    server = smtp_server_factory("plain")
    queue = bulk(settings_for(server, rate_per_day=5, smtp_connections=4))
    queue.enqueue(personalised(12))
    outcomes = queue.deliverer().deliver(limit=4)
    assert sorted(o.status.value for o in outcomes) == ["deferred"] * 7 + ["delivered"] * 5
    assert len(server.messages) == 5


def test_the_per_minute_limit_counts_recipients(
    smtp_server_factory: Callable[..., SMTPTestServer],
) -> None:
    server = smtp_server_factory("plain")
    now = [5000.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    settings = settings_for(server, rate_per_minute=4)
    transport = SMTPTransport(settings, clock=lambda: now[0], sleep=sleep)
    mails = [Email(subject="x", to=["a@example.com", "b@example.com", "c@example.com"], text="x")]
    from notifier.mail.mime import write

    outs = [
        write(m, default_sender="r@example.com", message_id=f"<{i}@x>", date="Mon, 6 May 2024")
        for i, m in enumerate(mails * 2)
    ]
    results = transport.send(outs)
    assert all(r.ok for r in results)
    assert sleeps == [60.0]  # 3 + 3 recipients do not fit in 4 a minute


def test_resume_sends_what_the_latest_run_left_deferred(
    smtp_server_factory: Callable[..., SMTPTestServer], tmp_path: Path
) -> None:
    server = smtp_server_factory("plain")
    project = tmp_path / "proj"
    (project / "notebooks").mkdir(parents=True)
    write_notebook(
        project / "notebooks" / "bulk.ipynb",
        "from notifier import report\n"
        "for n in range(4):\n"
        "    report.email(f'Statement {n}', to=f'c{n}@example.com').markdown(f'**{n}**')",
    )
    (project / "jobs.yaml").write_text(
        "jobs:\n  - name: statements\n    notebook: notebooks/bulk.ipynb\n"
        '    schedule: "0 8 1 * *"\n    to: ops@example.com\n'
    )
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "PYTHONPATH"}}
    env.update(
        SMTP_HOST=server.host,
        SMTP_PORT=str(server.port),
        SMTP_SECURITY="none",
        SMTP_FROM="reports@example.com",
        SMTP_RATE_PER_DAY="2",
        NOTIFIER_DB_URL="sqlite:///ledger.db",
    )

    def notifier(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "notifier", *args],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    first = notifier("run", "statements")
    assert first.returncode == 75, first.stdout + first.stderr  # some mail waits
    lines = [line for line in first.stdout.splitlines() if line.startswith("  email")]
    assert sum("deferred" in line for line in lines) == 2, first.stdout
    assert "Daily sending limit" in first.stdout
    assert len(server.messages) == 2
    # the next day (here: a raised limit), --resume sends the rest without running the notebook
    env["SMTP_RATE_PER_DAY"] = "10"
    runs_before = len(list((project / "runs").rglob("output.ipynb")))
    resumed = notifier("run", "statements", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "2 recipient(s) waiting" in resumed.stdout
    assert sorted(r for m in server.messages for r in m.rcpt_tos) == [
        f"c{n}@example.com" for n in range(4)
    ]
    assert len(list((project / "runs").rglob("output.ipynb"))) == runs_before
    again = notifier("run", "statements", "--resume")
    assert again.returncode == 0 and "no mail waiting" in again.stdout
    assert len(server.messages) == 4  # never twice


def test_the_progress_bar_stays_off_without_a_terminal() -> None:
    from notifier.cli.run import Progress

    class Counts:
        class queue:  # noqa: N801 - stands in for ledger.queue
            @staticmethod
            def counts(run_id: str) -> dict[str, int]:
                return {"queued": 50}

    progress = Progress(Counts())
    done = threading.Event()
    from notifier.ledger.statuses import RecipientStatus

    outcome = Outcome(
        1, "r", "report", "s", "a@x", RecipientStatus.DELIVERED, 250, "ok", None, None, "smtp"
    )
    for _ in range(50):
        progress(outcome)
    done.set()
    assert progress.bar is None  # pytest's stderr is not a terminal
    assert progress.counts == {"delivered": 50}
    progress.close()
