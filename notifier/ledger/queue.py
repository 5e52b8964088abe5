"""The outbound queue: every (email, recipient) of a run, from planned to a final state.

A run's emails are stored here *before* anything is sent, in one transaction that also
moves the run to ``delivering``, fenced by the run's owner and attempt. Each email is
keyed by its content identity within the run (``email_key``), so planning the same
emails again (a re-attempt, in any order) adds nothing. A recipient gets an email of a
key at most once, and recipients are only ever added to a message that says the same
thing (``content_sha``): planned again with other content, a key's new recipients get a
message of their own (``<key>#<content>``), never someone else's. Parts (charts,
attachments) are stored once per sha256, compressed when that helps.

Delivery is a sequence of compare-and-set steps on each recipient row, so that several
workers and nodes can share the queue and no recipient is mailed twice:

1. :meth:`OutboundQueue.claim_due` takes due rows (``queued``/``deferred``, next attempt
   reached) for this node for a while (``claimed_by``/``claimed_until``), under a token
   of this claim (``claim_token``): two delivery passes of one node never share a claim.
   A pass keeps its claims alive while their messages wait (:meth:`renew_claims`);
2. :meth:`OutboundQueue.mark_sending` moves a message's rows from waiting to ``sending``
   under that claim just before its SMTP transaction (a row already ``sending`` is
   never marked twice); a row found ``sending`` whose node died has an unknown outcome;
3. :meth:`OutboundQueue.record` stores the answer (``delivered``, ``refused``,
   ``deferred`` with the next attempt, ``unknown``) and appends it to the delivery log.
"""

from __future__ import annotations

import json
import secrets
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from notifier.ledger.database import Database
from notifier.ledger.nodes import NodeRegistry
from notifier.ledger.schema import (
    as_utc,
    deliveries_table,
    messages_table,
    part_links_table,
    parts_table,
    recipients_table,
    runs_table,
)
from notifier.ledger.statuses import (
    ACTIVE_RUN,
    FINAL_RECIPIENT,
    PENDING,
    RETRYABLE,
    WAITING,
    RecipientStatus,
    RunStatus,
)

CLAIM_SECONDS = 600.0
MAX_REPLY = 2000
PURPOSES = ("report", "failure", "recovery", "notice")
_CHUNK = 500


class Fenced(Exception):  # noqa: N818 - reads as "the write was fenced off"
    """This node no longer holds the run (it was taken over): nothing was written."""


@dataclass(frozen=True)
class NewMessage:
    """An email to put in the queue: its stored form, its parts, its envelope recipients."""

    email_key: str
    purpose: str
    message_id: str
    subject: str
    sender: str
    size: int
    spec: dict[str, Any]
    parts: dict[str, bytes]
    recipients: tuple[str, ...]
    expires_at: datetime
    transport: str = "default"
    on_unknown: str = "skip"
    # what the email says (planning's content_sha); "" when unknown (matches only "")
    content_sha: str = ""


@dataclass(frozen=True)
class QueuedRecipient:
    """One recipient row of a due message."""

    row_id: int
    address: str
    attempts: int


@dataclass
class DueMessage:
    """A message with the recipient rows this node claimed for delivery."""

    message_pk: int
    run_id: str
    email_key: str
    purpose: str
    message_id: str
    subject: str
    sender: str
    size: int
    spec: dict[str, Any]
    transport: str
    on_unknown: str
    expires_at: datetime
    recipients: list[QueuedRecipient] = field(default_factory=list)
    claim: str = ""  # the claim token the rows were taken under ("" for a message read)


@dataclass(frozen=True)
class Answer:
    """What happened to one recipient row in one attempt (what :meth:`record` stores)."""

    row_id: int
    status: RecipientStatus
    code: int | None = None
    reply: str = ""
    next_attempt_at: datetime | None = None
    location: str | None = None
    tried: bool = True  # False: answered without a try (the server was unusable, expiry)


@dataclass(frozen=True)
class QueueRow:
    """A recipient row with its message, for history, ``notifier queue`` and the dashboard."""

    row_id: int
    message_pk: int
    run_id: str
    job: str
    email_key: str
    purpose: str
    subject: str
    message_id: str
    recipient: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    code: int | None
    reply: str
    location: str | None
    expires_at: datetime
    transport: str
    updated_at: datetime


def encode_spec(spec: dict[str, Any]) -> bytes:
    """The stored form of a message spec: zlib-compressed JSON."""
    return zlib.compress(json.dumps(spec, separators=(",", ":")).encode("utf-8"), 6)


def decode_spec(data: bytes) -> dict[str, Any]:
    """The inverse of :func:`encode_spec`."""
    return json.loads(zlib.decompress(data).decode("utf-8"))


def _insert_ignoring_duplicates(conn: Connection, table: Any) -> Any:
    """An INSERT that skips rows hitting a unique key (SQLite and PostgreSQL)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def _rows_in(row_ids: Sequence[int]) -> Any:
    """``recipients.id IN (...)``."""
    return recipients_table.c.id.in_(list(row_ids))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REPLY else text[: MAX_REPLY - 1] + "…"


def new_claim() -> str:
    """A fresh claim token (a delivery pass makes its claims' tokens from one of these)."""
    return secrets.token_hex(8)


_VARIANT = "#"  # <key>#<content>: a key planned again with other content (never in a key)
_UNCLAIMED = {"claimed_by": None, "claimed_until": None, "claim_token": None}


@dataclass
class _Family:
    """The stored messages of one key in a run (the key itself and its content variants)."""

    messages: list[tuple[int, str, str | None]] = field(default_factory=list)  # pk, key, sha
    recipients: set[str] | None = None  # lower-cased, loaded when first needed


class _RunKeys:
    """The run's stored message keys, read once per transaction, by base key."""

    def __init__(self, conn: Connection, run_id: str) -> None:
        self.families: dict[str, _Family] = {}
        rows = conn.execute(
            select(
                messages_table.c.id, messages_table.c.email_key, messages_table.c.content_sha
            ).where(messages_table.c.run_id == run_id)
        )
        for pk, key, sha in rows:
            self.add(pk, key, sha)

    def add(self, pk: int, key: str, sha: str | None) -> None:
        base = key.split(_VARIANT, 1)[0]
        self.families.setdefault(base, _Family()).messages.append((pk, key, sha))


def _variant(message: NewMessage) -> str:
    """The key of ``message`` when its key was already stored with other content."""
    return f"{message.email_key}{_VARIANT}{message.content_sha[:16] or 'unknown'}"


# a run whose emails are queued (an enqueue's retry after a lost COMMIT answer finds this)
_QUEUED_RUN = (RunStatus.DELIVERING.value, RunStatus.SUCCEEDED.value, RunStatus.FAILED.value)


class OutboundQueue:
    """The queue tables of one ledger database; see the module docstring."""

    def __init__(self, db: Database, nodes: NodeRegistry) -> None:
        self.db = db
        self.nodes = nodes

    @property
    def node_id(self) -> str:
        """The node this queue claims rows for."""
        return self.nodes.node_id

    # ---------------------------------------------------------------- enqueue

    def enqueue(
        self,
        run_id: str,
        attempt: int,
        owner: str,
        messages: Iterable[NewMessage],
        *,
        deliver: dict[str, Any] | None = None,
    ) -> int:
        """Store ``messages`` for the run in one transaction; returns new recipient rows.

        Fenced: nothing is written unless ``owner`` still holds the run at ``attempt``
        (raises :class:`Fenced`). A message whose ``email_key`` the run already has adds
        only recipients it did not have. With ``deliver`` (the run's outcome: output_path,
        alert_key, notes), the run moves from running to ``delivering`` in the same
        transaction.
        """
        messages = list(messages)
        added = 0
        with self.db.tx(write=True) as conn:
            run = conn.execute(
                select(runs_table.c.status, runs_table.c.owner, runs_table.c.attempt)
                .where(runs_table.c.run_id == run_id)
                .with_for_update()
            ).first()
            if run is None or run.owner != owner or run.attempt != attempt:
                raise Fenced(f"run {run_id} is no longer held by {owner} at attempt {attempt}")
            keys = _RunKeys(conn, run_id)
            if deliver is not None:
                if run.status not in [s.value for s in (*ACTIVE_RUN, RunStatus.INTERRUPTED)]:
                    if run.status in _QUEUED_RUN and self._all_stored(conn, keys, messages):
                        # this very enqueue committed but its answer was lost (a dropped
                        # connection at COMMIT): the retry finds its own work, done
                        return 0
                    raise Fenced(f"run {run_id} is {run.status}, not running")
                values = {"status": RunStatus.DELIVERING.value}
                values.update({k: v for k, v in deliver.items() if v is not None})
                conn.execute(
                    update(runs_table).where(runs_table.c.run_id == run_id).values(**values)
                )
            now = self.db.now()
            stored: set[str] = set()  # parts written in this transaction (a shared chart)
            for message in messages:
                added += self._store(conn, run_id, message, now, stored, keys)
        return added

    def _all_stored(self, conn: Connection, keys: _RunKeys, messages: list[NewMessage]) -> bool:
        """Are all ``messages``, with all their recipients, in the run already (same content)?"""
        if not messages:
            return False
        for message in messages:
            family = keys.families.get(message.email_key.split(_VARIANT, 1)[0])
            if family is None or not any(
                key in (message.email_key, _variant(message)) and (sha or "") == message.content_sha
                for _, key, sha in family.messages
            ):
                return False
            have = self._family_recipients(conn, family)
            if any(address.lower() not in have for address in message.recipients):
                return False
        return True

    def add(self, run_id: str, messages: Iterable[NewMessage]) -> int:
        """Store messages for a run without fencing (notices about a run's delivery, written
        by whichever node settles it). Keyed like :meth:`enqueue`, so adding twice is a no-op.
        """
        with self.db.tx(write=True) as conn:
            return self.add_in(conn, run_id, messages)

    def add_in(self, conn: Connection, run_id: str, messages: Iterable[NewMessage]) -> int:
        """:meth:`add` inside the caller's transaction (a run settled with its notice)."""
        added = 0
        now = self.db.now()
        stored: set[str] = set()
        keys = _RunKeys(conn, run_id)
        for message in messages:
            added += self._store(conn, run_id, message, now, stored, keys)
        return added

    def _family_recipients(self, conn: Connection, family: _Family) -> set[str]:
        if family.recipients is None:
            pks = [pk for pk, _, _ in family.messages]
            family.recipients = {
                address.lower()
                for address in conn.execute(
                    select(recipients_table.c.recipient).where(
                        recipients_table.c.message_pk.in_(pks)
                    )
                ).scalars()
            }
        return family.recipients

    def _store(
        self,
        conn: Connection,
        run_id: str,
        message: NewMessage,
        now: datetime,
        stored: set[str],
        keys: _RunKeys,
    ) -> int:
        """Store one message; returns the recipient rows added.

        A recipient the run already has under this key (in any content) is never added
        again; the others join the stored message that says the same thing, or a new one:
        the key itself the first time, ``<key>#<content>`` when the key was stored with
        other content (a re-attempt whose notebook changed it, two emails given one key).
        """
        if message.purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}; got {message.purpose!r}")
        if _VARIANT in message.email_key:
            raise ValueError(f"an email key cannot contain {_VARIANT!r}: {message.email_key!r}")
        family = keys.families.get(message.email_key)
        addresses = list(dict.fromkeys(message.recipients))
        if family is not None:
            have = self._family_recipients(conn, family)
            addresses = [a for a in addresses if a.lower() not in have]
            if not addresses:
                return 0
            same = [
                (pk, key) for pk, key, sha in family.messages if (sha or "") == message.content_sha
            ]
            key = same[0][1] if same else _variant(message)
        else:
            key = message.email_key
        # a part shared by many emails of the run is written (or touched) once per transaction
        self._store_parts(conn, {k: v for k, v in message.parts.items() if k not in stored}, now)
        stored.update(message.parts)
        conn.execute(
            _insert_ignoring_duplicates(conn, messages_table).values(
                run_id=run_id,
                email_key=key,
                purpose=message.purpose,
                message_id=message.message_id,
                subject=message.subject,
                sender=message.sender,
                size=message.size,
                spec=encode_spec(message.spec),
                transport=message.transport,
                on_unknown=message.on_unknown,
                content_sha=message.content_sha or None,
                created_at=now,
                expires_at=as_utc(message.expires_at, "expires_at"),
            )
        )
        message_pk, stored_sha = conn.execute(
            select(messages_table.c.id, messages_table.c.content_sha).where(
                messages_table.c.run_id == run_id,
                messages_table.c.email_key == key,
            )
        ).one()
        if (stored_sha or "") != message.content_sha:
            # only when another transaction stored this key meanwhile (unfenced notices)
            return 0
        if family is None or all(pk != message_pk for pk, _, _ in family.messages):
            keys.add(message_pk, key, stored_sha)
            family = keys.families[message.email_key]
        if message.parts:
            conn.execute(
                _insert_ignoring_duplicates(conn, part_links_table),
                [{"message_pk": message_pk, "sha256": sha} for sha in message.parts],
            )
        rows = [
            {
                "message_pk": message_pk,
                "run_id": run_id,
                "recipient": address,
                "status": RecipientStatus.QUEUED.value,
                "attempts": 0,
                "next_attempt_at": now,
                "reply": "",
                "updated_at": now,
            }
            for address in addresses
        ]
        if not rows:
            return 0
        # RETURNING counts the rows really inserted on every backend (an executemany's
        # rowcount is not reliable: psycopg reports 0 for INSERT ... ON CONFLICT DO NOTHING)
        inserted = conn.execute(
            _insert_ignoring_duplicates(conn, recipients_table).returning(recipients_table.c.id),
            rows,
        )
        if family.recipients is not None:
            family.recipients.update(a.lower() for a in addresses)
        return len(inserted.all())

    def _store_parts(self, conn: Connection, parts: dict[str, bytes], now: datetime) -> None:
        if not parts:
            return
        known = set(
            conn.execute(
                select(parts_table.c.sha256).where(parts_table.c.sha256.in_(sorted(parts)))
            ).scalars()
        )
        if known:
            # a part that retention is about to forget is used again: keep it
            conn.execute(
                update(parts_table)
                .where(parts_table.c.sha256.in_(sorted(known)))
                .values(last_used_at=now)
            )
        for sha, data in parts.items():
            if sha in known:
                continue
            packed = zlib.compress(data, 6)
            compressed = len(packed) < len(data) * 0.9
            conn.execute(
                _insert_ignoring_duplicates(conn, parts_table).values(
                    sha256=sha,
                    size=len(data),
                    compressed=compressed,
                    data=packed if compressed else data,
                    last_used_at=now,
                )
            )

    @staticmethod
    def forget_unused_parts(conn: Connection, now: datetime) -> int:
        """Delete parts no message links to (and not used in the last hour)."""
        linked = select(part_links_table.c.sha256)
        result = conn.execute(
            delete(parts_table).where(
                parts_table.c.sha256.not_in(linked),
                parts_table.c.last_used_at < now - timedelta(hours=1),
            )
        )
        return max(result.rowcount, 0)

    def load_parts(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """The bytes of the stored parts with these sha256 (missing ones are left out)."""
        wanted = sorted(set(hashes))
        found: dict[str, bytes] = {}
        with self.db.tx(write=False) as conn:
            for start in range(0, len(wanted), _CHUNK):
                rows = conn.execute(
                    select(parts_table).where(
                        parts_table.c.sha256.in_(wanted[start : start + _CHUNK])
                    )
                )
                for row in rows:
                    data = bytes(row.data)
                    found[row.sha256] = zlib.decompress(data) if row.compressed else data
        return found

    # --------------------------------------------------------------- delivery

    def claim_due(
        self,
        *,
        limit: int = 200,
        run_id: str | None = None,
        message_pks: Sequence[int] | None = None,
        claim_seconds: float = CLAIM_SECONDS,
        settled_for: float = 0.0,
        claim: str | None = None,
    ) -> list[DueMessage]:
        """Claim due recipient rows (up to ``limit`` messages) for this node.

        Due: ``queued`` or ``deferred`` with the next attempt reached, not under a live
        claim (of another node, or of another pass of this one). Whole messages are claimed
        (all their due rows), so one SMTP transaction serves all their recipients.
        ``settled_for``: leave alone rows changed in the last that many seconds (the
        background service leaves fresh mail to the run that just queued it). ``claim``:
        the token of this claim (a fresh one by default), in each message's ``claim``;
        the claim lasts ``claim_seconds`` unless :meth:`renew_claims` extends it.
        """
        self.nodes.ensure_registered()
        claim = claim or new_claim()
        r = recipients_table
        with self.db.tx(write=True) as conn:
            now = self.db.db_now(conn)
            due = and_(
                r.c.status.in_([s.value for s in WAITING]),
                r.c.next_attempt_at <= now,
                or_(
                    r.c.claimed_until.is_(None),
                    r.c.claimed_until < now,
                    # held under this very token: a retry after the first call committed
                    # but its answer was lost returns what that call claimed
                    and_(r.c.claimed_by == self.node_id, r.c.claim_token == claim),
                ),
            )
            if run_id is not None:
                due = and_(due, r.c.run_id == run_id)
            if message_pks is not None:
                due = and_(due, r.c.message_pk.in_(list(message_pks)))
            if settled_for:
                due = and_(due, r.c.updated_at <= now - timedelta(seconds=settled_for))
            picked = select(r.c.message_pk).where(due).group_by(r.c.message_pk)
            # oldest first, then in the order they were queued (the order the notebook built them)
            picked = picked.order_by(func.min(r.c.next_attempt_at), r.c.message_pk).limit(limit)
            pks = list(conn.execute(picked).scalars())
            if not pks:
                return []
            conn.execute(
                update(r)
                .where(due, r.c.message_pk.in_(pks))
                .values(
                    claimed_by=self.node_id,
                    claimed_until=now + timedelta(seconds=claim_seconds),
                    claim_token=claim,
                )
            )
            rows = conn.execute(
                select(r, messages_table)
                .join(messages_table, messages_table.c.id == r.c.message_pk)
                .where(
                    r.c.message_pk.in_(pks),
                    r.c.claimed_by == self.node_id,
                    r.c.claim_token == claim,
                    r.c.status.in_([s.value for s in WAITING]),
                )
                .order_by(r.c.message_pk, r.c.id)
            ).mappings()
            messages: dict[int, DueMessage] = {}
            for row in rows:
                pk = row["message_pk"]
                if pk not in messages:
                    messages[pk] = DueMessage(
                        message_pk=pk,
                        run_id=row["run_id"],
                        email_key=row["email_key"],
                        purpose=row["purpose"],
                        message_id=row["message_id"],
                        subject=row["subject"],
                        sender=row["sender"],
                        size=row["size"],
                        spec=decode_spec(bytes(row["spec"])),
                        transport=row["transport"],
                        on_unknown=row["on_unknown"],
                        expires_at=row["expires_at"],
                        claim=claim,
                    )
                messages[pk].recipients.append(
                    QueuedRecipient(row["id"], row["recipient"], row["attempts"])
                )
        return [messages[pk] for pk in pks if pk in messages]

    def _held(self, row_ids: Sequence[int], claim: str | None) -> list[Any]:
        """WHERE clauses: these rows, held by this node (under ``claim`` when given)."""
        clauses = [_rows_in(row_ids), recipients_table.c.claimed_by == self.node_id]
        if claim is not None:
            clauses.append(recipients_table.c.claim_token == claim)
        return clauses

    def mark_sending(self, row_ids: Sequence[int], *, claim: str | None = None) -> set[int]:
        """Move claimed rows from waiting to ``sending`` (just before their SMTP transaction).

        Returns the rows this call moved: a row another claim took meanwhile, or one
        already ``sending`` (another pass is sending it, or a mark whose answer was lost)
        is left out, so a message is marked once and sent once. ``claim``: only rows held
        under that claim token (delivery passes always give it).
        """
        if not row_ids:
            return set()
        r = recipients_table
        with self.db.tx(write=True) as conn:
            moved = conn.execute(
                update(r)
                .where(*self._held(row_ids, claim), r.c.status.in_([s.value for s in WAITING]))
                .values(status=RecipientStatus.SENDING.value, updated_at=self.db.now())
                .returning(r.c.id)
            )
            return set(moved.scalars())

    def unmark_sending(self, row_ids: Sequence[int], *, claim: str | None = None) -> set[int]:
        """Undo :meth:`mark_sending` for rows whose message was not sent after all (the
        server refused it before taking it, or the mark was refused for some of its rows);
        they are ``queued`` again under the same claim. Returns the rows moved back."""
        if not row_ids:
            return set()
        r = recipients_table
        with self.db.tx(write=True) as conn:
            moved = conn.execute(
                update(r)
                .where(*self._held(row_ids, claim), r.c.status == RecipientStatus.SENDING.value)
                .values(status=RecipientStatus.QUEUED.value, updated_at=self.db.now())
                .returning(r.c.id)
            )
            return set(moved.scalars())

    def renew_claims(self, claim_prefix: str, claim_seconds: float = CLAIM_SECONDS) -> int:
        """Extend this node's claims whose token starts with ``claim_prefix`` (a delivery
        pass's claims) on rows still waiting: a message waiting its turn in a slow pass
        is not taken by another pass. Returns the rows renewed."""
        r = recipients_table
        with self.db.tx(write=True) as conn:
            now = self.db.db_now(conn)
            result = conn.execute(
                update(r)
                .where(
                    r.c.claimed_by == self.node_id,
                    r.c.claim_token.startswith(claim_prefix, autoescape=True),
                    r.c.status.in_([s.value for s in WAITING]),
                )
                .values(claimed_until=now + timedelta(seconds=claim_seconds))
            )
            return max(result.rowcount, 0)

    def record(self, answers: Sequence[Answer], *, claim: str | None = None) -> set[int]:
        """Store answers for rows this node holds (under ``claim`` when given); returns the
        rows updated.

        A row another claim has taken since (its claim ran out, or a sweep judged this
        node dead) is left alone: its new holder decides.
        """
        if not answers:
            return set()
        r = recipients_table
        updated: set[int] = set()
        with self.db.tx(write=True) as conn:
            now = self.db.now()
            info = {
                row.id: row
                for row in conn.execute(
                    select(
                        r.c.id,
                        r.c.run_id,
                        r.c.recipient,
                        messages_table.c.email_key,
                        messages_table.c.message_id,
                        runs_table.c.attempt,
                    )
                    .join(messages_table, messages_table.c.id == r.c.message_pk)
                    .join(runs_table, runs_table.c.run_id == r.c.run_id)
                    .where(r.c.id.in_([a.row_id for a in answers]))
                )
            }
            for answer in answers:
                status = RecipientStatus(answer.status)
                final_or_deferred = status in FINAL_RECIPIENT or status is RecipientStatus.DEFERRED
                values: dict[str, Any] = {
                    "status": status.value,
                    "code": answer.code,
                    "reply": _clip(answer.reply or ""),
                    "updated_at": now,
                    "next_attempt_at": answer.next_attempt_at,
                }
                if answer.location is not None:
                    values["location"] = answer.location
                if answer.tried:
                    values.update(attempts=r.c.attempts + 1, last_attempt_at=now)
                if final_or_deferred:
                    values.update(_UNCLAIMED)
                result = conn.execute(
                    update(r)
                    .where(
                        *self._held([answer.row_id], claim),
                        r.c.status.in_([s.value for s in PENDING]),
                    )
                    .values(**values)
                )
                if result.rowcount != 1:
                    continue
                updated.add(answer.row_id)
                row = info.get(answer.row_id)
                if row is not None:
                    conn.execute(
                        insert(deliveries_table).values(
                            run_id=row.run_id,
                            attempt=row.attempt,
                            email_key=row.email_key,
                            message_id=row.message_id,
                            recipient=row.recipient,
                            status=status.value,
                            code=answer.code,
                            reply=_clip(answer.reply or ""),
                            at=now,
                            recipient_pk=answer.row_id,
                        )
                    )
        return updated

    def release(self, row_ids: Sequence[int], *, claim: str | None = None) -> None:
        """Give claimed rows that were not tried back to the queue (e.g. on shutdown);
        with ``claim``, only rows still held under that claim."""
        if not row_ids:
            return
        r = recipients_table
        with self.db.tx(write=True) as conn:
            conn.execute(
                update(r)
                .where(*self._held(row_ids, claim), r.c.status.in_([s.value for s in WAITING]))
                .values(**_UNCLAIMED)
            )

    def sweep_dead_claims(self) -> list[QueueRow]:
        """Settle rows held by dead nodes; returns the rows whose outcome became unknown.

        ``sending`` rows of a dead node may have reached the server: they become
        ``unknown`` (or ``queued`` again for messages with ``on_unknown: resend``). Claimed
        but untried rows are simply released.
        """
        r = recipients_table
        with self.db.tx(write=False) as conn:
            holders = set(
                conn.execute(
                    select(r.c.claimed_by).where(r.c.claimed_by.is_not(None)).distinct()
                ).scalars()
            )
        dead = self.nodes.dead_owners(holders)
        if not dead:
            return []
        touched: list[int] = []
        with self.db.tx(write=True) as conn:
            now = self.db.now()
            for owner, reason in dead.items():
                sending = list(
                    conn.execute(
                        select(r.c.id, messages_table.c.on_unknown)
                        .join(messages_table, messages_table.c.id == r.c.message_pk)
                        .where(r.c.claimed_by == owner, r.c.status == RecipientStatus.SENDING.value)
                    )
                )
                for row in sending:
                    resend = row.on_unknown == "resend"
                    status = RecipientStatus.QUEUED if resend else RecipientStatus.UNKNOWN
                    reply = (
                        f"outcome unknown ({reason} during delivery); sent again "
                        "(on_unknown: resend)"
                        if resend
                        else f"outcome unknown: {reason} during delivery, possibly "
                        "delivered; not sent again (on_unknown: skip)"
                    )
                    done = conn.execute(
                        update(r)
                        .where(
                            r.c.id == row.id,
                            r.c.claimed_by == owner,
                            r.c.status == RecipientStatus.SENDING.value,
                        )
                        .values(
                            status=status.value,
                            reply=_clip(reply),
                            code=None,
                            **_UNCLAIMED,
                            next_attempt_at=now if resend else None,
                            updated_at=now,
                        )
                    )
                    if done.rowcount == 1:
                        touched.append(row.id)
                        self._log(conn, row.id, status.value, None, reply, now)
                conn.execute(
                    update(r)
                    .where(r.c.claimed_by == owner, r.c.status.in_([s.value for s in WAITING]))
                    .values(**_UNCLAIMED)
                )
        return self.rows(row_ids=touched)

    def expire_overdue(self) -> list[QueueRow]:
        """Waiting rows past their message's lifetime become ``expired``; returns them."""
        r = recipients_table
        with self.db.tx(write=True) as conn:
            now = self.db.now()
            overdue = list(
                conn.execute(
                    select(r.c.id, r.c.reply, r.c.code)
                    .join(messages_table, messages_table.c.id == r.c.message_pk)
                    .where(
                        r.c.status.in_([s.value for s in WAITING]),
                        messages_table.c.expires_at <= now,
                        or_(r.c.claimed_until.is_(None), r.c.claimed_until < now),
                    )
                )
            )
            expired = []
            for row in overdue:
                reply = "expired: not delivered within its lifetime" + (
                    f"; last error: {row.reply}" if row.reply else ""
                )
                done = conn.execute(
                    update(r)
                    .where(r.c.id == row.id, r.c.status.in_([s.value for s in WAITING]))
                    .values(
                        status=RecipientStatus.EXPIRED.value,
                        reply=_clip(reply),
                        next_attempt_at=None,
                        **_UNCLAIMED,
                        updated_at=now,
                    )
                )
                if done.rowcount == 1:
                    expired.append(row.id)
                    self._log(conn, row.id, RecipientStatus.EXPIRED.value, row.code, reply, now)
        return self.rows(row_ids=expired)

    def _log(
        self,
        conn: Connection,
        row_id: int,
        status: str,
        code: int | None,
        reply: str,
        now: datetime,
    ) -> None:
        r = recipients_table
        row = conn.execute(
            select(
                r.c.run_id,
                r.c.recipient,
                messages_table.c.email_key,
                messages_table.c.message_id,
                runs_table.c.attempt,
            )
            .join(messages_table, messages_table.c.id == r.c.message_pk)
            .join(runs_table, runs_table.c.run_id == r.c.run_id)
            .where(r.c.id == row_id)
        ).first()
        if row is None:
            return
        conn.execute(
            insert(deliveries_table).values(
                run_id=row.run_id,
                attempt=row.attempt,
                email_key=row.email_key,
                message_id=row.message_id,
                recipient=row.recipient,
                status=status,
                code=code,
                reply=_clip(reply),
                at=now,
                recipient_pk=row_id,
            )
        )

    # ------------------------------------------------------------- operators

    def retry(
        self,
        *,
        message_pk: int | None = None,
        recipient: str | None = None,
        all_: bool = False,
        run_id: str | None = None,
    ) -> list[int]:
        """Make rows due now: deferred (any), or final ones named explicitly.

        ``all_`` retries every deferred row; ``run_id`` the deferred rows of one run
        (``notifier run JOB --resume``); a message id retries that message's deferred,
        expired, unknown, refused and dropped rows (an operator's explicit decision).
        Returns the rows affected.
        """
        r = recipients_table
        if message_pk is None and not all_ and run_id is None:
            raise ValueError("name a message or a run, or pass all_=True")
        with self.db.tx(write=True) as conn:
            now = self.db.now()
            if all_ or run_id is not None:
                where = [
                    r.c.status.in_([RecipientStatus.DEFERRED.value, RecipientStatus.QUEUED.value])
                ]
                if run_id is not None:
                    where.append(r.c.run_id == run_id)
            else:
                where = [
                    r.c.message_pk == message_pk,
                    r.c.status.in_([s.value for s in (*RETRYABLE, RecipientStatus.QUEUED)]),
                ]
            if recipient is not None:
                where.append(func.lower(r.c.recipient) == recipient.lower())
            ids = list(conn.execute(select(r.c.id).where(*where)).scalars())
            if not ids:
                return []
            # The UPDATE repeats the condition: on PostgreSQL (READ COMMITTED) a row that
            # another node marked sending or delivered since the SELECT must stay as it is.
            moved = set(
                conn.execute(
                    update(r)
                    .where(r.c.id.in_(ids), *where)
                    .values(
                        status=RecipientStatus.QUEUED.value,
                        next_attempt_at=now,
                        **_UNCLAIMED,
                        updated_at=now,
                    )
                    .returning(r.c.id)
                ).scalars()
            )
            ids = [row_id for row_id in ids if row_id in moved]
            if ids and message_pk is not None and not all_:
                # an explicit retry of an expired message gives it a new lifetime
                conn.execute(
                    update(messages_table)
                    .where(messages_table.c.id == message_pk, messages_table.c.expires_at <= now)
                    .values(expires_at=now + timedelta(days=1))
                )
        return ids

    def extend_lifetime(self, message_pk: int, until: datetime) -> None:
        """Keep a message alive at least ``until`` (mail held back by a sending limit)."""
        with self.db.tx(write=True) as conn:
            conn.execute(
                update(messages_table)
                .where(messages_table.c.id == message_pk, messages_table.c.expires_at < until)
                .values(expires_at=as_utc(until, "until"))
            )

    def drop(self, *, message_pk: int, recipient: str | None = None) -> list[int]:
        """Drop a message's waiting rows (recorded as ``dropped``, never sent)."""
        r = recipients_table
        with self.db.tx(write=True) as conn:
            now = self.db.now()
            where = [
                r.c.message_pk == message_pk,
                r.c.status.in_([s.value for s in WAITING]),
            ]
            if recipient is not None:
                where.append(func.lower(r.c.recipient) == recipient.lower())
            ids = list(conn.execute(select(r.c.id).where(*where)).scalars())
            dropped = []
            for row_id in ids:
                done = conn.execute(
                    update(r)
                    .where(r.c.id == row_id, r.c.status.in_([s.value for s in WAITING]))
                    .values(
                        status=RecipientStatus.DROPPED.value,
                        reply="dropped by notifier queue drop",
                        next_attempt_at=None,
                        **_UNCLAIMED,
                        updated_at=now,
                    )
                )
                if done.rowcount == 1:  # not one another node marked sending meanwhile
                    dropped.append(row_id)
                    self._log(conn, row_id, RecipientStatus.DROPPED.value, None, "dropped", now)
        return dropped

    # ----------------------------------------------------------------- reading

    def counts(self, run_id: str, *, purpose: str | None = "report") -> Counter[str]:
        """How many of the run's recipient rows (of ``purpose``) are in each status."""
        r = recipients_table
        query = (
            select(r.c.status, func.count())
            .join(messages_table, messages_table.c.id == r.c.message_pk)
            .where(r.c.run_id == run_id)
            .group_by(r.c.status)
        )
        if purpose is not None:
            query = query.where(messages_table.c.purpose == purpose)
        with self.db.tx(write=False) as conn:
            return Counter({status: count for status, count in conn.execute(query)})

    def settled_runs(self) -> list[str]:
        """Runs still ``delivering`` although none of their report mail waits any more
        (e.g. an operator dropped it): ready to be ended."""
        r = recipients_table
        pending = (
            select(r.c.run_id)
            .join(messages_table, messages_table.c.id == r.c.message_pk)
            .where(
                messages_table.c.purpose == "report",
                r.c.status.in_([s.value for s in PENDING]),
            )
        )
        with self.db.tx(write=False) as conn:
            return list(
                conn.execute(
                    select(runs_table.c.run_id).where(
                        runs_table.c.status == RunStatus.DELIVERING.value,
                        runs_table.c.run_id.not_in(pending),
                    )
                ).scalars()
            )

    def next_due(self) -> datetime | None:
        """When the earliest waiting row is due (None when nothing waits)."""
        r = recipients_table
        with self.db.tx(write=False) as conn:
            return conn.execute(
                select(func.min(r.c.next_attempt_at)).where(
                    r.c.status.in_([s.value for s in WAITING])
                )
            ).scalar()

    def rows(
        self,
        *,
        run_ids: Sequence[str] | None = None,
        statuses: Sequence[str] | None = None,
        row_ids: Sequence[int] | None = None,
        message_pk: int | None = None,
        limit: int | None = None,
    ) -> list[QueueRow]:
        """Recipient rows with their message and job, oldest message first."""
        r = recipients_table
        m = messages_table
        query = (
            select(
                r,
                m.c.email_key,
                m.c.purpose,
                m.c.subject,
                m.c.message_id,
                m.c.expires_at,
                m.c.transport,
                runs_table.c.job,
            )
            .join(m, m.c.id == r.c.message_pk)
            .join(runs_table, runs_table.c.run_id == r.c.run_id)
            .order_by(r.c.message_pk, r.c.id)
        )
        if run_ids is not None:
            if not run_ids:
                return []
            query = query.where(r.c.run_id.in_(list(run_ids)))
        if statuses is not None:
            query = query.where(r.c.status.in_(list(statuses)))
        if row_ids is not None:
            if not row_ids:
                return []
            query = query.where(r.c.id.in_(list(row_ids)))
        if message_pk is not None:
            query = query.where(r.c.message_pk == message_pk)
        if limit is not None:
            query = query.limit(limit)
        with self.db.tx(write=False) as conn:
            return [
                QueueRow(
                    row_id=row.id,
                    message_pk=row.message_pk,
                    run_id=row.run_id,
                    job=row.job,
                    email_key=row.email_key,
                    purpose=row.purpose,
                    subject=row.subject,
                    message_id=row.message_id,
                    recipient=row.recipient,
                    status=row.status,
                    attempts=row.attempts,
                    next_attempt_at=row.next_attempt_at,
                    last_attempt_at=row.last_attempt_at,
                    code=row.code,
                    reply=row.reply,
                    location=row.location,
                    expires_at=row.expires_at,
                    transport=row.transport,
                    updated_at=row.updated_at,
                )
                for row in conn.execute(query)
            ]

    def message(self, message_pk: int) -> DueMessage | None:
        """A stored message (spec and metadata) with all its recipient rows."""
        with self.db.tx(write=False) as conn:
            row = conn.execute(
                select(messages_table).where(messages_table.c.id == message_pk)
            ).first()
            if row is None:
                return None
            rcpts = conn.execute(
                select(
                    recipients_table.c.id, recipients_table.c.recipient, recipients_table.c.attempts
                )
                .where(recipients_table.c.message_pk == message_pk)
                .order_by(recipients_table.c.id)
            )
            found = DueMessage(
                message_pk=row.id,
                run_id=row.run_id,
                email_key=row.email_key,
                purpose=row.purpose,
                message_id=row.message_id,
                subject=row.subject,
                sender=row.sender,
                size=row.size,
                spec=decode_spec(bytes(row.spec)),
                transport=row.transport,
                on_unknown=row.on_unknown,
                expires_at=row.expires_at,
                recipients=[QueuedRecipient(i, a, n) for i, a, n in rcpts],
            )
        return found

    def messages_of(self, run_id: str) -> list[int]:
        """The message ids of a run, in the order they were planned."""
        with self.db.tx(write=False) as conn:
            return list(
                conn.execute(
                    select(messages_table.c.id)
                    .where(messages_table.c.run_id == run_id)
                    .order_by(messages_table.c.id)
                ).scalars()
            )
