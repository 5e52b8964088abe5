"""The outbound queue in the ledger, on real SQLite files and PostgreSQL databases: fencing,
content keys (a key planned again with other content never gains recipients), claims and
their tokens (a row is marked sending once, under the claim that holds it; a pass keeps
its claims alive), the sending mark, answers, dead nodes, expiry, operators' retry and drop
(never undoing another node's delivery), an enqueue whose COMMIT answer was lost, and the
upgrade of a schema-1 ledger."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from ledgers import expire_lease, run_sql
from queued import deliver_everything, message
from sqlalchemy import event

from notifier.ledger import SCHEMA_VERSION, Fenced, Ledger, LedgerError, RecipientStatus
from notifier.ledger.queries import run_rows
from notifier.ledger.queue import Answer

UTC = timezone.utc
T0 = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)


@pytest.fixture
def make_ledger(db_url: str) -> Iterator[Callable[..., Ledger]]:
    opened: list[Ledger] = []

    def make(**kwargs: object) -> Ledger:
        ledger = Ledger(db_url, **kwargs)  # type: ignore[arg-type]
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(make_ledger: Callable[..., Ledger]) -> Ledger:
    return make_ledger()


def running(ledger: Ledger, slot: datetime = T0, job: str = "daily"):
    run = ledger.claim(job, slot, failure_recipients=["ops@example.com"])
    assert run is not None and ledger.mark_running(run.run_id, run.attempt)
    return run


def statuses(ledger: Ledger, run_id: str) -> dict[str, str]:
    return {r.recipient: r.status for r in ledger.queue.rows(run_ids=[run_id])}


# ------------------------------------------------------------------- enqueue


def test_enqueue_is_fenced_by_owner_and_attempt(make_ledger: Callable[..., Ledger]) -> None:
    me, other = make_ledger(owner="me"), make_ledger(owner="other")
    run = running(me)
    with pytest.raises(Fenced):
        other.queue.enqueue(run.run_id, run.attempt, other.owner, [message("a@x.org")])
    with pytest.raises(Fenced):
        me.queue.enqueue(run.run_id, run.attempt + 1, me.owner, [message("a@x.org")])
    assert me.queue.rows(run_ids=[run.run_id]) == []
    added = me.queue.enqueue(
        run.run_id,
        run.attempt,
        me.owner,
        [message("a@x.org", "b@x.org")],
        deliver={"alert_key": "k", "notes": "sent: Report"},
    )
    assert added == 2
    stored = me.get(run.run_id)
    assert stored is not None and stored.status == "delivering" and stored.alert_key == "k"
    assert statuses(me, run.run_id) == {"a@x.org": "queued", "b@x.org": "queued"}
    # the run is no longer running: a second "delivering" move is refused
    with pytest.raises(Fenced):
        me.queue.enqueue(run.run_id, run.attempt, me.owner, [message("c@x.org")], deliver={})


def test_the_same_emails_in_another_order_add_nothing(ledger: Ledger) -> None:
    run = running(ledger)
    first = [message("a@x.org", key="north"), message("b@x.org", key="south")]
    assert ledger.queue.enqueue(run.run_id, 1, ledger.owner, first) == 2
    again = [message("b@x.org", key="south"), message("a@x.org", key="north")]
    assert ledger.queue.enqueue(run.run_id, 1, ledger.owner, again) == 0
    # a recipient added to a known email gets a row of its own; the others are unchanged
    grown = [message("a@x.org", "c@x.org", key="north")]
    assert ledger.queue.enqueue(run.run_id, 1, ledger.owner, grown) == 1
    assert len(ledger.queue.messages_of(run.run_id)) == 2
    assert sorted(statuses(ledger, run.run_id)) == ["a@x.org", "b@x.org", "c@x.org"]


def test_a_key_planned_again_with_other_content_never_gains_recipients(ledger: Ledger) -> None:
    run = running(ledger)

    def planned(*recipients: str, content: str) -> Any:
        made = message(*recipients, key="k:north")
        return replace(made, content_sha=content * 64, spec={**made.spec, "subject": content})

    def enqueue(*messages: Any) -> int:
        return ledger.queue.enqueue(run.run_id, 1, ledger.owner, list(messages))

    assert enqueue(planned("a@x.org", content="A")) == 1
    assert enqueue(planned("a@x.org", content="A")) == 0  # a re-attempt: the same email
    assert enqueue(planned("a@x.org", "b@x.org", content="A")) == 1  # a Bcc added: joins it
    # Other content under the key: a and b have the key's email already (never twice); c
    # gets the new content in a message of its own, never the one a and b got.
    assert enqueue(planned("a@x.org", "c@x.org", content="B")) == 1
    assert enqueue(planned("c@x.org", content="B"), planned("b@x.org", content="B")) == 0
    rows = {r.recipient: r for r in ledger.queue.rows(run_ids=[run.run_id])}
    assert rows["a@x.org"].message_pk == rows["b@x.org"].message_pk != rows["c@x.org"].message_pk
    assert (rows["a@x.org"].email_key, rows["c@x.org"].email_key) == (
        "k:north",
        "k:north#" + "B" * 16,
    )
    other = ledger.queue.message(rows["c@x.org"].message_pk)
    assert other is not None and other.spec["subject"] == "B"
    # two emails with one key in one batch (planning refuses them; the queue never merges)
    assert enqueue(replace(planned("d@x.org", content="C"), email_key="k:south"),
                   replace(planned("e@x.org", content="D"), email_key="k:south")) == 2  # fmt: skip
    south = [
        r for r in ledger.queue.rows(run_ids=[run.run_id]) if r.recipient in {"d@x.org", "e@x.org"}
    ]
    assert len({r.message_pk for r in south}) == 2


def test_an_enqueue_tried_again_after_it_committed_finds_its_own_work(
    make_ledger: Callable[..., Ledger],
) -> None:
    me = make_ledger(owner="me")
    run = running(me)
    planned = [message("a@x.org", key="k:1"), message("b@x.org", key="k:2")]
    assert me.queue.enqueue(run.run_id, 1, me.owner, planned, deliver={"notes": "sent"}) == 2
    # the same call again (its first answer was lost): done, not fenced
    assert me.queue.enqueue(run.run_id, 1, me.owner, planned, deliver={"notes": "sent"}) == 0
    stored = me.get(run.run_id)
    assert stored is not None and stored.status == "delivering"
    assert statuses(me, run.run_id) == {"a@x.org": "queued", "b@x.org": "queued"}
    # other emails, another owner or attempt: still fenced
    with pytest.raises(Fenced):
        me.queue.enqueue(run.run_id, 1, me.owner, [message("c@x.org", key="k:3")], deliver={})
    with pytest.raises(Fenced):
        me.queue.enqueue(run.run_id, 2, me.owner, planned, deliver={})


def test_an_enqueue_whose_commit_answer_was_lost_is_done_when_tried_again(
    postgres_url: str,
) -> None:
    with Ledger(postgres_url, owner="me") as me:
        run = running(me)
        planned = [message("a@x.org", key="k:1"), message("b@x.org", key="k:2")]
        lost: list[bool] = []

        def lose_the_answer(conn: Any) -> None:
            # the server commits, then the connection drops before the client hears it
            if not lost:
                lost.append(True)
                raw = conn.connection.dbapi_connection
                raw.commit()
                raw.close()

        event.listen(me.db.engine, "commit", lose_the_answer)
        with pytest.raises(LedgerError):
            me.queue.enqueue(run.run_id, 1, me.owner, planned, deliver={"notes": "sent"})
        event.remove(me.db.engine, "commit", lose_the_answer)
        assert lost and statuses(me, run.run_id) == {"a@x.org": "queued", "b@x.org": "queued"}
        # the run path's patience calls it again: its own completed work, not a takeover
        assert me.queue.enqueue(run.run_id, 1, me.owner, planned, deliver={"notes": "sent"}) == 0
        stored = me.get(run.run_id)
        assert stored is not None and stored.status == "delivering"


def test_a_part_shared_by_many_emails_is_stored_once(ledger: Ledger, db_url: str) -> None:
    run = running(ledger)
    chart = bytes(range(256)) * 400  # compressible
    noise = random.Random(7).randbytes(4096)  # incompressible
    messages = [message(f"r{i}@x.org", chart=chart) for i in range(50)]
    messages.append(message("z@x.org", chart=noise))
    ledger.queue.enqueue(run.run_id, 1, ledger.owner, messages)
    stored = {
        size: (compressed, length)
        for size, compressed, length in run_sql(
            db_url, "SELECT size, compressed, length(data) FROM message_parts"
        )
    }
    assert set(stored) == {len(chart), len(noise)}  # two rows for 51 emails
    assert stored[len(noise)] == (0, len(noise))
    compressed, length = stored[len(chart)]
    assert compressed == 1 and length < len(chart) / 10
    shas = [hashlib.sha256(chart).hexdigest(), hashlib.sha256(noise).hexdigest()]
    assert ledger.queue.load_parts(shas + ["missing"]) == {shas[0]: chart, shas[1]: noise}


# ------------------------------------------------------------------ delivery


def test_claims_are_exclusive_between_nodes(make_ledger: Callable[..., Ledger]) -> None:
    owner = make_ledger(owner="owner")
    run = running(owner)
    owner.queue.enqueue(
        run.run_id, 1, owner.owner, [message(f"r{i}@x.org", key=f"m{i}") for i in range(40)]
    )
    workers = [make_ledger(owner=f"worker-{i}") for i in range(4)]
    barrier = threading.Barrier(len(workers))
    claimed: list[list[int]] = [[] for _ in workers]

    def work(i: int) -> None:
        barrier.wait()
        while due := workers[i].queue.claim_due(limit=3):
            claimed[i] += [r.row_id for m in due for r in m.recipients]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    everything = [row for rows in claimed for row in rows]
    assert len(everything) == 40 and len(set(everything)) == 40


def test_a_claim_tried_again_with_its_token_gets_what_it_claimed(
    make_ledger: Callable[..., Ledger],
) -> None:
    # a claim whose COMMIT answer was lost is tried again with the same token: it must get
    # the rows the first try claimed (else they wait out the claim with nobody sending)
    me, other = make_ledger(owner="me"), make_ledger(owner="other")
    run = running(me)
    me.queue.enqueue(run.run_id, 1, me.owner, [message("a@x.org"), message("b@x.org")])
    (first,) = me.queue.claim_due(limit=1, claim="pass.0")
    (again,) = me.queue.claim_due(limit=1, claim="pass.0")
    assert again.message_pk == first.message_pk
    assert [r.row_id for r in again.recipients] == [r.row_id for r in first.recipients]
    # the token is this node's: another node using the same string gets only the rest
    (rest,) = other.queue.claim_due(claim="pass.0")
    assert rest.message_pk != first.message_pk


def test_sending_mark_and_answers_only_for_the_claimant(
    make_ledger: Callable[..., Ledger],
) -> None:
    me, other = make_ledger(owner="me"), make_ledger(owner="other")
    run = running(me)
    me.queue.enqueue(run.run_id, 1, me.owner, [message("a@x.org", "b@x.org", "c@x.org")])
    (due,) = me.queue.claim_due()
    assert other.queue.claim_due() == []  # claimed by a live node
    ids = [r.row_id for r in due.recipients]
    assert other.queue.mark_sending(ids) == set()
    assert me.queue.mark_sending(ids) == set(ids)
    a, b, c = ids
    retry_at = datetime.now(UTC) + timedelta(minutes=1)
    answers = [
        Answer(a, RecipientStatus.DELIVERED, 250, "2.0.0 OK"),
        Answer(b, RecipientStatus.DEFERRED, 451, "4.3.0 try later", retry_at),
        Answer(c, RecipientStatus.REFUSED, 550, "5.1.1 no such user"),
    ]
    assert other.queue.record(answers) == set()
    assert me.queue.record(answers) == {a, b, c}
    rows = {r.recipient: r for r in me.queue.rows(run_ids=[run.run_id])}
    assert rows["a@x.org"].status == "delivered" and rows["a@x.org"].attempts == 1
    assert rows["b@x.org"].status == "deferred" and rows["b@x.org"].next_attempt_at == retry_at
    assert rows["c@x.org"].code == 550
    assert me.queue.claim_due() == []  # b is not due yet
    assert me.queue.counts(run.run_id) == {"delivered": 1, "deferred": 1, "refused": 1}
    assert me.queue.next_due() == retry_at


def test_a_row_is_marked_sending_once_and_only_under_the_claim_that_holds_it(
    ledger: Ledger,
) -> None:
    run = running(ledger)
    ledger.queue.enqueue(run.run_id, 1, ledger.owner, [message("a@x.org", "b@x.org")])
    (stale,) = ledger.queue.claim_due(claim_seconds=0.0)  # a claim that ran out at once
    (fresh,) = ledger.queue.claim_due()  # another pass of this node takes the rows
    assert stale.claim != fresh.claim
    a, b = ids = [r.row_id for r in stale.recipients]
    assert ledger.queue.mark_sending(ids, claim=stale.claim) == set()
    assert ledger.queue.mark_sending(ids, claim=fresh.claim) == {a, b}
    # marked once: asking again (any claim, or none) does not report them as marked
    assert ledger.queue.mark_sending(ids, claim=fresh.claim) == set()
    assert ledger.queue.mark_sending(ids) == set()
    # the stale claim can neither answer, nor release, nor unmark them
    answer = [Answer(a, RecipientStatus.DELIVERED, 250, "OK")]
    assert ledger.queue.record(answer, claim=stale.claim) == set()
    assert ledger.queue.unmark_sending(ids, claim=stale.claim) == set()
    assert ledger.queue.record(answer, claim=fresh.claim) == {a}
    # the server refused the message before taking it: b goes back to the queue
    assert ledger.queue.unmark_sending(ids, claim=fresh.claim) == {b}
    ledger.queue.release([b], claim=fresh.claim)
    assert statuses(ledger, run.run_id) == {"a@x.org": "delivered", "b@x.org": "queued"}
    assert [r.address for m in ledger.queue.claim_due() for r in m.recipients] == ["b@x.org"]


def test_a_pass_keeps_its_claims_alive_while_its_messages_wait(ledger: Ledger) -> None:
    run = running(ledger)
    ledger.queue.enqueue(
        run.run_id, 1, ledger.owner, [message("a@x.org", key="1"), message("b@x.org", key="2")]
    )
    sending, waiting = ledger.queue.claim_due(claim_seconds=0.0, claim="pass-1.0")
    assert ledger.queue.mark_sending([r.row_id for r in sending.recipients], claim="pass-1.0")
    assert ledger.queue.renew_claims("pass-2.") == 0  # another pass's prefix
    assert ledger.queue.renew_claims("pass-1.") == 1  # the waiting row (sending needs none)
    assert ledger.queue.claim_due() == []  # nobody else takes b while the pass holds it


def test_rows_of_a_dead_node_are_settled(make_ledger: Callable[..., Ledger], db_url: str) -> None:
    dead = make_ledger(owner="dead")
    me = make_ledger(owner="me")
    run = running(dead)
    dead.queue.enqueue(
        run.run_id,
        1,
        dead.owner,
        [
            message("in-flight@x.org", key="1"),
            message("again@x.org", key="2", on_unknown="resend"),
            message("untried@x.org", key="3"),
        ],
    )
    due = dead.queue.claim_due()
    for item in due[:2]:
        assert dead.queue.mark_sending([r.row_id for r in item.recipients])
    expire_lease(db_url, "dead")  # it stopped renewing its lease long ago
    settled = me.queue.sweep_dead_claims()
    assert sorted(r.recipient for r in settled) == ["again@x.org", "in-flight@x.org"]
    rows = {r.recipient: r for r in me.queue.rows(run_ids=[run.run_id])}
    assert rows["in-flight@x.org"].status == "unknown"
    assert "possibly delivered" in rows["in-flight@x.org"].reply
    assert rows["again@x.org"].status == "queued"  # on_unknown: resend
    assert rows["untried@x.org"].status == "queued"
    # released: another node can take both now; the dead node's late answer is refused
    assert sorted(r.address for m in me.queue.claim_due() for r in m.recipients) == [
        "again@x.org",
        "untried@x.org",
    ]
    late = Answer(rows["in-flight@x.org"].row_id, RecipientStatus.DELIVERED, 250, "OK")
    assert dead.queue.record([late]) == set()


def test_overdue_mail_expires(ledger: Ledger) -> None:
    run = running(ledger)
    past = datetime.now(UTC) - timedelta(seconds=1)
    ledger.queue.enqueue(
        run.run_id, 1, ledger.owner, [message("late@x.org", key="1", expires_at=past)]
    )
    ledger.queue.enqueue(run.run_id, 1, ledger.owner, [message("fine@x.org", key="2")])
    expired = ledger.queue.expire_overdue()
    assert [r.recipient for r in expired] == ["late@x.org"]
    assert statuses(ledger, run.run_id) == {"late@x.org": "expired", "fine@x.org": "queued"}


def test_operators_retry_and_drop(ledger: Ledger) -> None:
    run = running(ledger)
    ledger.queue.enqueue(
        run.run_id,
        1,
        ledger.owner,
        [message("a@x.org", "b@x.org", key="1"), message("c@x.org", key="2")],
    )
    first, second = ledger.queue.claim_due()
    ids = [r.row_id for r in first.recipients]
    ledger.queue.mark_sending(ids)
    later = datetime.now(UTC) + timedelta(hours=1)
    ledger.queue.record(
        [
            Answer(ids[0], RecipientStatus.DEFERRED, 451, "later", later),
            Answer(ids[1], RecipientStatus.REFUSED, 550, "no"),
        ]
    )
    ledger.queue.release([r.row_id for r in second.recipients])
    assert ledger.queue.retry(all_=True) == [ids[0], second.recipients[0].row_id]
    # an explicit retry of a message may bring back a refused recipient
    assert ledger.queue.retry(message_pk=first.message_pk, recipient="B@X.org") == [ids[1]]
    assert statuses(ledger, run.run_id)["b@x.org"] == "queued"
    assert ledger.queue.drop(message_pk=second.message_pk) == [second.recipients[0].row_id]
    assert statuses(ledger, run.run_id)["c@x.org"] == "dropped"
    assert ledger.queue.drop(message_pk=second.message_pk) == []


def test_retry_leaves_alone_a_row_another_node_delivers_meanwhile(postgres_url: str) -> None:
    # PostgreSQL only: SQLite's writers take the file's lock up front (BEGIN IMMEDIATE), so
    # nothing can happen between retry's SELECT and its UPDATE there.
    with Ledger(postgres_url, owner="node-a") as node, Ledger(postgres_url) as operator:
        run = running(node)
        node.queue.enqueue(run.run_id, 1, node.owner, [message("boss@x.org")])
        delivered: list[bool] = []

        def deliver_in_between(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            # `notifier queue retry --all` read the row (queued); before it updates it,
            # node A claims, sends and records it
            if statement.startswith("UPDATE recipients") and not delivered:
                delivered.append(True)
                deliver_everything(node)

        event.listen(operator.db.engine, "before_cursor_execute", deliver_in_between)
        assert operator.queue.retry(all_=True) == []
        assert delivered and statuses(node, run.run_id) == {"boss@x.org": "delivered"}
        assert node.queue.claim_due() == []  # never sent again


# ------------------------------------------------------------------- upgrade

SCHEMA_1 = """
CREATE TABLE notifier_meta (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO notifier_meta VALUES ('schema_version', '1');
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id VARCHAR(64) NOT NULL UNIQUE,
    job VARCHAR(200) NOT NULL, slot DATETIME NOT NULL, slot_kind VARCHAR(16) NOT NULL,
    trigger VARCHAR(16) NOT NULL, status VARCHAR(16) NOT NULL, attempt INTEGER NOT NULL,
    owner VARCHAR(300) NOT NULL, claimed_at DATETIME NOT NULL, started_at DATETIME,
    finished_at DATETIME, heartbeat_at DATETIME, duration_s FLOAT, error TEXT,
    output_path TEXT, recipients TEXT NOT NULL, alert_key VARCHAR(128), notes TEXT,
    CONSTRAINT uq_runs_job_slot_kind UNIQUE (job, slot, slot_kind));
CREATE INDEX ix_runs_status ON runs (status);
CREATE INDEX ix_runs_job_alert ON runs (job, alert_key);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id VARCHAR(64) NOT NULL REFERENCES runs (run_id),
    attempt INTEGER NOT NULL, email_key VARCHAR(128) NOT NULL, message_id TEXT NOT NULL,
    recipient VARCHAR(320) NOT NULL, status VARCHAR(16) NOT NULL, code INTEGER,
    reply TEXT NOT NULL, at DATETIME NOT NULL);
CREATE INDEX ix_deliveries_run_email ON deliveries (run_id, email_key);
INSERT INTO runs VALUES (1, 'old-run', 'daily', '2024-05-06 08:00:00.000000', 'scheduled',
    'schedule', 'succeeded', 1, 'host:1:1-a', '2024-05-06 08:00:00.000000', NULL,
    '2024-05-06 08:00:05.000000', NULL, 5.0, NULL, 'runs/x/output.ipynb', '["a@x.org"]',
    NULL, 'sent: Report');
INSERT INTO deliveries VALUES (1, 'old-run', 1, '0:abc', '<1@x>', 'a@x.org', 'accepted', 250,
    '2.0.0 OK', '2024-05-06 08:00:04.000000');
"""


def test_a_schema_1_ledger_is_upgraded_in_place(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "ledger.db") as raw:
        raw.executescript(SCHEMA_1)
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        (old,) = ledger.history()
        assert old.run_id == "old-run" and old.status == "succeeded" and old.notebook is None
        (row,) = run_rows(ledger, [old])
        assert row["deliveries"] == [
            {
                "id": None,
                "purpose": "report",
                "subject": "",
                "recipient": "a@x.org",
                "status": "delivered",
                "code": 250,
                "reply": "2.0.0 OK",
            }
        ]
        # the old slot is still taken; new runs get the new columns and the queue
        assert ledger.claim("daily", T0) is None
        run = running(ledger, T0 + timedelta(days=1))
        ledger.queue.enqueue(run.run_id, 1, ledger.owner, [message("b@x.org")])
        assert statuses(ledger, run.run_id) == {"b@x.org": "queued"}


def test_a_schema_2_ledger_made_before_a_column_was_added_gets_it(tmp_path: Path) -> None:
    # a ledger made by an earlier build of schema 2 (before content_sha and claim_token),
    # with a recipient still queued: it is upgraded on open and its mail goes out
    path = tmp_path / "ledger.db"
    with Ledger(f"sqlite:///{path}") as ledger:
        run = running(ledger, T0)
        ledger.queue.enqueue(run.run_id, 1, ledger.owner, [message("b@x.org")])
    with sqlite3.connect(path) as raw:
        raw.execute("ALTER TABLE messages DROP COLUMN content_sha")
        raw.execute("ALTER TABLE recipients DROP COLUMN claim_token")
    with Ledger(f"sqlite:///{path}") as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        assert statuses(ledger, run.run_id) == {"b@x.org": "queued"}
        assert ledger.queue.claim_due(limit=10, claim="pass.0")  # no "no such column"


def test_read_only_commands_never_create_a_ledger(tmp_path: Path) -> None:
    from notifier.ledger import NoLedgerYet

    path = tmp_path / "nothing-here.db"
    with pytest.raises(NoLedgerYet) as info:
        Ledger(f"sqlite:///{path}", create=False)
    assert "no ledger yet" in str(info.value) and info.value.fix
    assert not path.exists()
