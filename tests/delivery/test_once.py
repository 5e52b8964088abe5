"""Once, and never stuck, against a real SMTP server (or the outbox) and a real SQLite ledger:
keys that differ only in characters a stored key cannot keep stay two emails, two emails of
one run with the same key are refused, a claim that outlives a slow pass never lets a second
pass of the same node send an email again, an unexpected error inside a lane is recorded
once instead of looping, an error after the server's 354 leaves no row 'sending', and a run
ends together with its delivery-problems notice or not at all."""

from __future__ import annotations

import email
import email.policy
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from smtp_server import Behaviour, SMTPTestServer, settings_for
from sqlalchemy import event

from notebooks import write_notebook
from notifier.delivery.backoff import Backoff
from notifier.delivery.planning import plan_email
from notifier.delivery.worker import Deliverer, default_transports
from notifier.ledger import Ledger
from notifier.ledger.queue import NewMessage, QueueRow
from notifier.mail.model import Email
from notifier.mail.transport.memory import MemoryTransport
from notifier.runs.path import RunPath, adhoc_job
from notifier.settings import Settings

UTC = timezone.utc
SLOT = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)


class Mailroom:
    """A ledger with one running run of job 'statements' and a deliverer for ``settings``."""

    def __init__(self, root: Path, settings: Settings, **options: Any) -> None:
        self.settings = settings.with_overrides(
            outbox_dir=options.pop("outbox_dir", root / "outbox"), runs_dir=root / "runs"
        )
        self.url = f"sqlite:///{root / 'ledger.db'}"
        self.ledger = Ledger(self.url)
        options.setdefault("backoff", Backoff(0.3, 0.6))
        self.deliverer = Deliverer(
            self.ledger, self.settings, default_transports(self.settings), **options
        )
        run = self.ledger.claim("statements", SLOT, failure_recipients=["ops@example.com"])
        assert run is not None and self.ledger.mark_running(run.run_id, run.attempt)
        self.run = run

    def plan(self, mail: Email, **options: Any) -> NewMessage:
        values: dict[str, Any] = {
            "purpose": "report",
            "default_sender": "reports@example.com",
            "max_size": None,
            "expires_at": datetime.now(UTC) + timedelta(hours=1),
        }
        return plan_email(mail, **(values | options))

    def enqueue(self, *messages: NewMessage | Email) -> None:
        planned = [m if isinstance(m, NewMessage) else self.plan(m) for m in messages]
        self.ledger.queue.enqueue(
            self.run.run_id, self.run.attempt, self.ledger.owner, planned, deliver={}
        )

    def rows(self) -> dict[str, QueueRow]:
        rows = self.ledger.queue.rows(run_ids=[self.run.run_id])
        return {f"{r.purpose}:{r.recipient}": r for r in rows}

    def status(self) -> str:
        stored = self.ledger.get(self.run.run_id)
        assert stored is not None
        return stored.status


@pytest.fixture
def mailroom(tmp_path: Path) -> Iterator[Callable[..., Mailroom]]:
    made: list[Mailroom] = []

    def make(settings: Settings, **options: Any) -> Mailroom:
        made.append(Mailroom(tmp_path, settings, **options))
        return made[-1]

    yield make
    for room in made:
        room.ledger.close()


def report(to: str, subject: str = "Daily report") -> Email:
    return Email(subject=subject, to=[to], html="<p>numbers</p>")


def received(server: SMTPTestServer) -> Counter[str]:
    return Counter(r for m in server.messages for r in m.rcpt_tos)


# -- keys ---------------------------------------------------------------------------------


def statement(name: str, address: str) -> Email:
    return Email(
        subject=f"Statement for {name}",
        to=[address],
        html=f"<p>Dear {name}, your balance is private.</p>",
        key=f"customer-{name}",
    )


def test_keys_that_differ_only_in_characters_a_key_cannot_keep_stay_two_emails(
    smtp_server: SMTPTestServer, mailroom: Callable[..., Mailroom]
) -> None:
    room = mailroom(settings_for(smtp_server))
    room.enqueue(
        statement("Jürgen", "jurgen@example.com"), statement("Jörgen", "jorgen@example.com")
    )
    room.deliverer.deliver()
    by_recipients = {tuple(m.rcpt_tos): m for m in smtp_server.messages}
    assert sorted(by_recipients) == [("jorgen@example.com",), ("jurgen@example.com",)]
    body = by_recipients[("jorgen@example.com",)].message.get_body(("html",)).get_content()
    assert "Dear Jörgen" in body and "Jürgen" not in body
    assert room.status() == "succeeded"
    # the stored keys stay readable and tell the two apart
    keys = {row.email_key for row in room.rows().values()}
    assert len(keys) == 2 and all(k.startswith("k:customer-J-rgen~") for k in keys)


def test_two_emails_of_one_run_with_the_same_key_fail_the_run_with_both_subjects(
    tmp_path: Path,
) -> None:
    notebook = write_notebook(
        tmp_path / "statements.ipynb",
        """
        from notifier import report
        report.email("Statement for Ann", to="ann@example.com", key="customer").text("A")
        report.email("Statement for Bob", to="bob@example.com", key="customer").text("B")
        """,
    )
    transport = MemoryTransport()
    settings = Settings(outbox_dir=tmp_path / "outbox", runs_dir=tmp_path / "runs")
    job = adhoc_job(notebook, name="statements", to=["boss@example.com"])
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        result = RunPath(settings, ledger, transports=lambda _kind: transport).run_now(job)
    assert result.run.status == "failed"
    error = result.run.error or ""
    assert "same key 'customer'" in error, error
    assert "'Statement for Ann' and 'Statement for Bob'" in error, error
    # neither statement went out (nobody got the other's); the failure recipients heard why
    assert [m.recipients for m in transport.sent] == [("boss@example.com",)]
    failure = email.message_from_bytes(transport.sent[0].data, policy=email.policy.default)
    assert "give each email its own key" in failure.get_body(("html",)).get_content()


# -- claims -------------------------------------------------------------------------------


def test_two_passes_of_one_node_never_send_an_email_twice_when_a_claim_outlives_the_wait(
    smtp_server_factory: Callable[..., SMTPTestServer], mailroom: Callable[..., Mailroom]
) -> None:
    # One connection, 0.5 s per message: the first pass needs 4 s for 8 messages, four
    # times the (shortened) claim. Meanwhile the daemon's delivery service (the same
    # Deliverer, the same node) runs a pass of its own.
    server = smtp_server_factory("plain", behaviour=Behaviour(reply_delay_after_data=0.5))
    room = mailroom(settings_for(server, smtp_connections=1, timeout=10.0), claim_seconds=1.0)
    room.enqueue(*(report(f"r{i}@example.com", f"Report {i}") for i in range(8)))
    first = threading.Thread(target=room.deliverer.deliver, kwargs={"run_id": room.run.run_id})
    first.start()
    # four replies in, 1.5 s after the claim: unrenewed, the waiting messages' claims are over
    wait_until(lambda: len(server.messages) >= 4, 30, "four messages on the server")
    room.deliverer.deliver()
    first.join(60)
    assert received(server) == {f"r{i}@example.com": 1 for i in range(8)}
    assert {row.status for row in room.rows().values()} == {"delivered"}
    assert room.status() == "succeeded"


# -- unexpected errors --------------------------------------------------------------------


def test_an_unexpected_error_in_a_lane_is_recorded_once_instead_of_looping(
    smtp_server: SMTPTestServer,
    mailroom: Callable[..., Mailroom],
    caplog: pytest.LogCaptureFixture,
) -> None:
    room = mailroom(settings_for(smtp_server), backoff=Backoff(30, 60))
    planned = room.plan(report("alice@example.com"))
    # a stored spec the writer cannot encode (a lone surrogate): not a MessageError
    broken = replace(planned, spec={**planned.spec, "html": "<p>\udc80</p>"})
    room.enqueue(broken, report("bob@example.com", "Fine"))
    with caplog.at_level(logging.WARNING, logger="notifier.delivery"):
        outcomes = room.deliverer.deliver(max_passes=20)
    assert sorted((o.recipient, o.status.value) for o in outcomes) == [
        ("alice@example.com", "deferred"),
        ("bob@example.com", "delivered"),
    ]
    alice = room.rows()["report:alice@example.com"]
    assert alice.status == "deferred"
    assert alice.reply.startswith("internal error: UnicodeEncodeError"), alice.reply
    assert alice.next_attempt_at is not None
    assert alice.next_attempt_at > datetime.now(UTC) + timedelta(seconds=15)  # the backoff
    assert received(smtp_server) == {"bob@example.com": 1}
    assert len([r for r in caplog.records if r.exc_info]) == 1  # one traceback, no loop


def test_a_backoff_too_long_to_write_down_ends_the_email_instead_of_looping(
    smtp_server_factory: Callable[..., SMTPTestServer],
    mailroom: Callable[..., Mailroom],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = smtp_server_factory("plain", behaviour=Behaviour(defer={"alice@example.com": 9}))
    room = mailroom(settings_for(server, retries=0), backoff=Backoff(1e300, 1e300))
    room.enqueue(report("alice@example.com"))
    with caplog.at_level(logging.WARNING, logger="notifier.delivery"):
        outcomes = room.deliverer.deliver(max_passes=20)
    # the next try would come long after the email's lifetime: it expires, reported once
    assert [(o.recipient, o.status.value) for o in outcomes] == [("alice@example.com", "expired")]
    assert "451" in room.rows()["report:alice@example.com"].reply
    assert not [r for r in caplog.records if r.exc_info]


def test_an_error_after_the_servers_go_ahead_leaves_no_row_sending(
    mailroom: Callable[..., Mailroom], tmp_path: Path
) -> None:
    # the outbox "server" goes ahead (before_data), then writing the file raises
    # ValueError, not OSError: the message may or may not be written
    room = mailroom(Settings(), outbox_dir=tmp_path / "out\x00box")
    room.enqueue(report("alice@example.com"))
    outcomes = room.deliverer.deliver(max_passes=20)
    rows = room.rows()
    alice = rows["report:alice@example.com"]
    assert alice.status == "unknown", alice
    assert "internal error after the server was ready" in alice.reply
    assert "ValueError" in alice.reply and "not sent again" in alice.reply
    assert [o.status.value for o in outcomes if o.purpose == "report"] == ["unknown"]
    assert not [r for r in rows.values() if r.status == "sending"]
    assert room.status() == "failed"  # settled, not 'delivering' for the life of the node


# -- settling -----------------------------------------------------------------------------


def test_a_run_ends_together_with_its_delivery_problems_notice(
    smtp_server_factory: Callable[..., SMTPTestServer], mailroom: Callable[..., Mailroom]
) -> None:
    server = smtp_server_factory("plain", behaviour=Behaviour(refuse={"bob@example.com"}))
    room = mailroom(settings_for(server))
    room.enqueue(report("alice@example.com"), report("bob@example.com", "Bob's report"))
    failures: list[str] = []

    @event.listens_for(room.ledger.db.engine, "before_cursor_execute")
    def fail_once(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        # the ledger fails while the notice is stored (a disk error, a dropped connection)
        if statement.startswith("INSERT INTO messages") and not failures:
            failures.append(statement)
            raise sqlite3.OperationalError("disk I/O error")

    room.deliverer.deliver()
    assert failures
    # neither happened: the run still waits to be settled, with its notice
    assert room.status() == "delivering"
    assert "notice:ops@example.com" not in room.rows()
    room.deliverer.housekeeping()  # the delivery service, a few seconds later
    assert room.status() == "failed"
    assert room.rows()["notice:ops@example.com"].status == "delivered"
    notices = [m for m in server.messages if m.rcpt_tos == ["ops@example.com"]]
    assert len(notices) == 1
    assert "bob@example.com" in notices[0].message.get_body(("html",)).get_content()
