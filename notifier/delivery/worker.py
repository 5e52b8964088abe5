"""The delivery worker: sends what the outbound queue holds and records every answer.

One pass (:meth:`Deliverer.deliver`) claims the due messages in batches and hands them to
up to ``SMTP_CONNECTIONS`` sessions per transport (threads, each with its own connection,
taking messages from one shared lane, so messages are built while others are on the
wire); a session whose server connection fails for good stops taking messages and leaves
them to the others. For each message a session: sends it, marking its rows ``sending`` when the server
is ready for the message itself (its 354 reply to DATA: before that a crash is harmless,
as the server cannot have the message), and records each recipient's answer. Temporary failures (4xx, a
server that is down, a refused login, a timeout) become ``deferred`` with the next try
after an exponential backoff; permanent ones (5xx, a message the server can never take)
``refused``; a link lost after the final dot ``unknown`` (not sent again unless the job
says ``on_unknown: resend``). Past its lifetime a message ``expires``.

A pass claims under tokens of its own (one per claim) and keeps those claims alive while
its messages wait for a session (:class:`_ClaimKeeper`), so another pass of the same node
(the daemon's delivery service next to a run) never takes a message this pass still
holds; and a message's rows are marked ``sending`` only by the claim that took them, so
even a claim that ran out cannot make two passes send the same email.

A ledger write that fails (a locked SQLite file, a database restart) never aborts the
pass: the answer is kept in memory and the write retried until it succeeds. If the
process dies first, the rows stay ``sending`` and are reported as "outcome unknown",
never sent twice. Anything unexpected that raises while a message is handled (a bug, a
setting no server call can take) is recorded too, once: ``deferred`` with "internal
error: ..." and the usual backoff when the server cannot have the message yet, ``unknown``
once it may have it (after its 354); the session is then replaced, never reused
mid-transaction.

When the last report email of a run is settled, the run ends ``succeeded`` (all
delivered) or ``failed``, and the run's failure recipients get one notice listing what
was not delivered, queued in the same transaction that ends the run.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.utils import parseaddr

from notifier.delivery.backoff import Backoff
from notifier.delivery.notices import delivery_problems_email, one_line
from notifier.delivery.planning import outgoing_from, plan_email, spec_parts
from notifier.errors import MessageError
from notifier.ledger import Ledger, LedgerError, Run
from notifier.ledger.queue import (
    CLAIM_SECONDS,
    Answer,
    DueMessage,
    NewMessage,
    OutboundQueue,
    QueueRow,
    new_claim,
)
from notifier.ledger.retry import Patience
from notifier.ledger.statuses import PENDING, RecipientStatus, RunStatus
from notifier.mail.transport.base import DataRefused, SendResult, Session, Transport
from notifier.settings import Settings

log = logging.getLogger("notifier.delivery")

TransportFactory = Callable[[str], Transport]
_SIZE_WORDS = ("SIZE", "larger than", "too large", "too big")
_PARTS_BUDGET = 64 * 1024 * 1024  # part bytes kept in memory by one delivery pass


@dataclass(frozen=True)
class Outcome:
    """What one delivery pass did for one recipient of one message (for the CLI's summary)."""

    message_pk: int
    run_id: str
    purpose: str
    subject: str
    recipient: str
    status: RecipientStatus
    code: int | None
    reply: str
    next_attempt_at: datetime | None
    location: str | None
    transport: str


OutcomeCallback = Callable[[Outcome], None]


def _bare(address: str) -> str:
    return (parseaddr(address)[1] or address).strip().lower()


class Deliverer:
    """Sends due queue entries through transports; safe to use from several threads.

    ``transports(kind)`` returns a fresh transport for ``"default"`` (the configured
    server, or the outbox when none is set) or ``"outbox"`` (dry runs). ``claim_seconds``:
    how long a claim lasts unless renewed (renewed every quarter of it while a pass runs).
    """

    def __init__(
        self,
        ledger: Ledger,
        settings: Settings,
        transports: TransportFactory,
        *,
        stopping: threading.Event | None = None,
        backoff: Backoff | None = None,
        notify: bool = True,
        claim_seconds: float = CLAIM_SECONDS,
    ) -> None:
        self.ledger = ledger
        self.queue = ledger.queue
        self.settings = settings
        self.transports = transports
        self.stopping = stopping or threading.Event()
        self.backoff = backoff or Backoff(settings.retry_backoff, settings.retry_backoff_max)
        self._patience = Patience(log, stopping=self.stopping, grace=settings.shutdown_grace)
        self.notify = notify  # False: settle runs without mailing their problems
        self.claim_seconds = claim_seconds

    # ------------------------------------------------------------------ passes

    def deliver(
        self,
        *,
        run_id: str | None = None,
        message_pks: Sequence[int] | None = None,
        limit: int = 100,
        max_passes: int = 1000,
        settled_for: float = 0.0,
        on_outcome: OutcomeCallback | None = None,
    ) -> list[Outcome]:
        """Send everything due now (of ``run_id`` / ``message_pks``); every answer recorded.

        Returns what happened to each recipient tried (or deferred without a try because
        the server was unusable); ``on_outcome`` is called with each as it is recorded (a
        progress bar). Deferred entries stay in the queue for a later pass. Claims
        ``limit`` messages at a time, so memory stays bounded however many are due.
        """
        runs: set[str] = set()
        lanes: dict[str, _Lane] = {}
        this_pass = new_claim()
        keeper = _ClaimKeeper(self.queue, f"{this_pass}.", self.claim_seconds)
        try:
            for number in range(max_passes):
                if self.stopping.is_set():
                    break
                due = self._patience.call(
                    lambda claim=f"{this_pass}.{number}": self.queue.claim_due(
                        limit=limit,
                        run_id=run_id,
                        message_pks=message_pks,
                        settled_for=settled_for,
                        claim=claim,
                        claim_seconds=self.claim_seconds,
                    ),
                    "claiming due mail",
                    give_up=[],
                )
                if due:
                    keeper.start()
                if not due:
                    # mail still on the wire may come back due at once (on_unknown: resend)
                    if not any(lane.busy() for lane in lanes.values()):
                        break
                    for lane in lanes.values():
                        lane.wait_until_idle()
                    continue
                runs.update(message.run_id for message in due)
                for message in due:
                    lane = lanes.get(message.transport)
                    if lane is None:
                        lane = lanes[message.transport] = _Lane(self, message.transport, on_outcome)
                    lane.put(message)  # waits while the sessions have enough to do
        finally:
            for lane in lanes.values():
                lane.close()
            keeper.stop()
        self.settle(runs)
        return [outcome for lane in lanes.values() for outcome in lane.outcomes]

    def housekeeping(self) -> None:
        """Settle rows of dead nodes, expire overdue mail, and end runs whose mail is settled."""
        runs: set[str] = set(self.queue.settled_runs())
        for row in self.queue.sweep_dead_claims():
            log.warning(
                "%s: %r to %s: %s", row.job, row.subject, row.recipient, row.reply or row.status
            )
            runs.add(row.run_id)
        for row in self.queue.expire_overdue():
            log.error("%s: %r to %s expired: %s", row.job, row.subject, row.recipient, row.reply)
            runs.add(row.run_id)
        self.settle(runs)

    # -------------------------------------------------------------- one batch

    def _send_one(
        self,
        session: Session,
        kind: str,
        message: DueMessage,
        parts: dict[str, bytes],
        handed: _Handed | None = None,
    ) -> list[Outcome]:
        """Send one claimed message and record every answer. ``handed.marked`` tells, if
        this raises, whether the server may have the message (its rows are ``sending``)."""
        handed = handed or _Handed()
        claim = message.claim or None
        now = self.ledger.db.now()
        rows = message.recipients
        if now >= message.expires_at:
            reply = "expired: not delivered within its lifetime"
            return self._record(
                message,
                [Answer(r.row_id, RecipientStatus.EXPIRED, None, reply) for r in rows],
                kind,
            )
        if session.broken is not None:
            # not tried: the server is unusable in this session (down, login refused, limit)
            retry_at = getattr(session, "retry_at", None)
            answers = self._deferred(message, rows, session.broken, now, retry_at)
            return self._record(message, answers, kind)
        missing = [sha for sha in spec_parts(message.spec) if sha not in parts]
        if missing:
            if sum(map(len, parts.values())) > _PARTS_BUDGET:
                parts.clear()
            parts.update(self.queue.load_parts(missing))
        try:
            outgoing = outgoing_from(message, parts, [r.address for r in rows])
        except (MessageError, LookupError) as error:
            reply = f"cannot be rebuilt for sending: {one_line(str(error), 300)}"
            return self._record(
                message,
                [Answer(r.row_id, RecipientStatus.REFUSED, None, reply) for r in rows],
                kind,
            )
        ids = [r.row_id for r in rows]

        def unmark() -> None:
            self._patience.call(
                lambda: self.queue.unmark_sending(ids, claim=claim),
                "undoing a mark",
                give_up=None,
            )

        def before_data() -> bool:
            # the server said 354: mark the rows before the message itself goes out
            marked = self._patience.call(
                lambda: self.queue.mark_sending(ids, claim=claim),
                "marking mail as sending",
                give_up=set(),
            )
            if marked == set(ids):
                handed.marked = True
                return True
            # Another claim took some rows meanwhile, or they were already sending (a mark
            # whose answer was lost): send nothing, and give back what this claim marked
            # (the server does not have the message).
            unmark()
            return False

        try:
            result = session.send(outgoing, before_data)
            if self._too_large(message, result):
                log.warning(
                    "%r was too large for the server; sending it without its attachments",
                    message.subject,
                )
                smaller = outgoing_from(
                    message, parts, [r.address for r in rows], attachments=False
                )
                if handed.marked:
                    # refused for good, so not delivered: the smaller one is marked anew
                    unmark()
                    handed.marked = False
                result = session.send(smaller, before_data)
        except DataRefused:
            # another node took the rows (or the ledger is gone while stopping): not sent
            self._release([message])
            return []
        return self._record(message, self._answers(message, rows, result, now), kind, result)

    @staticmethod
    def _too_large(message: DueMessage, result: SendResult) -> bool:
        return (
            bool(message.spec.get("optional_attachments") and message.spec.get("attachments"))
            and not result.accepted
            and not result.retryable
            and not any(r.transient or r.unknown for r in result.recipients)
            and any(word in (result.error or "") for word in _SIZE_WORDS)
        )

    def _answers(
        self, message: DueMessage, rows: list, result: SendResult, now: datetime
    ) -> list[Answer]:
        by_address = {_bare(r.address): r for r in result.recipients}
        answers = []
        for row in rows:
            answer = by_address.get(_bare(row.address))
            failures = row.attempts + 1
            if answer is None:
                if result.retryable:
                    answers.append(
                        self._defer(
                            message,
                            row.row_id,
                            None,
                            result.error or "",
                            now,
                            failures,
                            result.retry_at,
                        )
                    )
                else:
                    reason = result.error or "not delivered"
                    answers.append(Answer(row.row_id, RecipientStatus.REFUSED, None, reason))
            elif answer.accepted:
                answers.append(
                    Answer(
                        row.row_id,
                        RecipientStatus.DELIVERED,
                        answer.code,
                        answer.reply,
                        location=result.location,
                    )
                )
            elif answer.unknown and message.on_unknown == "resend":
                # sent again, after the usual backoff (a server that always drops the link
                # after the dot must not be hammered)
                reply = f"{answer.reply}; to be sent again (on_unknown: resend)"
                answers.append(self._defer(message, row.row_id, None, reply, now, failures))
            elif answer.unknown:
                answers.append(Answer(row.row_id, RecipientStatus.UNKNOWN, None, answer.reply))
            elif answer.transient:
                reply = f"{answer.code} {answer.reply}".strip() if answer.code else answer.reply
                answers.append(
                    self._defer(
                        message, row.row_id, answer.code, reply, now, failures, result.retry_at
                    )
                )
            else:
                answers.append(
                    Answer(row.row_id, RecipientStatus.REFUSED, answer.code, answer.reply)
                )
        return answers

    def _deferred(
        self,
        message: DueMessage,
        rows: list,
        reason: str,
        now: datetime,
        retry_at: datetime | None = None,
    ) -> list[Answer]:
        answers = (
            self._defer(message, r.row_id, None, reason, now, max(r.attempts, 1), retry_at)
            for r in rows
        )
        return [replace(answer, tried=False) for answer in answers]

    def _defer(
        self,
        message: DueMessage,
        row_id: int,
        code: int | None,
        reply: str,
        now: datetime,
        failures: int,
        retry_at: datetime | None = None,
    ) -> Answer:
        """Deferred until the backoff's next try, or ``retry_at`` when the sending limit says
        when it frees up (a daily limit). Mail held back by our own limit is not stale: its
        lifetime is extended past that moment instead of letting it expire."""
        if retry_at is not None and retry_at > now:
            if retry_at >= message.expires_at:
                until = retry_at + timedelta(hours=1)
                self._patience.call(
                    lambda: self.queue.extend_lifetime(message.message_pk, until),
                    "extending the lifetime of mail held back by a sending limit",
                    give_up=None,
                )
                message.expires_at = until
            return Answer(row_id, RecipientStatus.DEFERRED, code, reply, retry_at)
        retry_at = self.backoff.next_attempt(now, failures)
        if retry_at >= message.expires_at:
            text = f"expired: not delivered within its lifetime; last error: {reply}"
            return Answer(row_id, RecipientStatus.EXPIRED, code, text)
        return Answer(row_id, RecipientStatus.DEFERRED, code, reply, retry_at)

    def _unexpected(
        self, message: DueMessage, kind: str, error: BaseException, handed: bool
    ) -> list[Outcome]:
        """Record what an unexpected error left (instead of releasing the message, which
        the pass would claim again at once): deferred with the usual backoff while the
        server cannot have the message, an unknown outcome once it may have it."""
        now = self.ledger.db.now()
        text = one_line(str(error), 300)
        what = f"{type(error).__name__}: {text}" if text else type(error).__name__
        if not handed:
            reason = f"internal error: {what}"
            answers = [
                self._defer(message, r.row_id, None, reason, now, r.attempts + 1)
                for r in message.recipients
            ]
        elif message.on_unknown == "resend":
            reason = (
                f"outcome unknown: internal error after the server was ready for the message "
                f"({what}); to be sent again (on_unknown: resend)"
            )
            answers = [
                self._defer(message, r.row_id, None, reason, now, r.attempts + 1)
                for r in message.recipients
            ]
        else:
            reason = (
                f"outcome unknown: internal error after the server was ready for the message "
                f"({what}); possibly delivered, not sent again (on_unknown: skip)"
            )
            answers = [
                Answer(r.row_id, RecipientStatus.UNKNOWN, None, reason) for r in message.recipients
            ]
        return self._record(message, answers, kind)

    def _record(
        self,
        message: DueMessage,
        answers: list[Answer],
        kind: str,
        result: SendResult | None = None,
    ) -> list[Outcome]:
        # Never give up on a write while running: the process keeps the answer until the
        # ledger takes it (a lost answer would make the row "outcome unknown").
        self._patience.call(
            lambda: self.queue.record(answers, claim=message.claim or None),
            "recording delivery results",
            give_up=set(),
            wait=True,
        )
        addresses = {r.row_id: r.address for r in message.recipients}
        outcomes = []
        for answer in answers:
            outcomes.append(
                Outcome(
                    message_pk=message.message_pk,
                    run_id=message.run_id,
                    purpose=message.purpose,
                    subject=message.subject,
                    recipient=addresses.get(answer.row_id, "?"),
                    status=answer.status,
                    code=answer.code,
                    reply=answer.reply,
                    next_attempt_at=answer.next_attempt_at,
                    location=answer.location,
                    transport=kind,
                )
            )
            self._log(message, outcomes[-1])
        return outcomes

    @staticmethod
    def _log(message: DueMessage, outcome: Outcome) -> None:
        what = f"{message.purpose} {message.subject!r} to {outcome.recipient}"
        if outcome.status is RecipientStatus.DELIVERED:
            where = f" ({outcome.location})" if outcome.location else ""
            log.debug("%s: delivered%s", what, where)
        elif outcome.status is RecipientStatus.DEFERRED:
            when = (
                outcome.next_attempt_at.isoformat(timespec="seconds")
                if outcome.next_attempt_at
                else "?"
            )
            log.warning("%s: deferred, next try at %s: %s", what, when, outcome.reply)
        else:
            log.error("%s: %s: %s", what, outcome.status.value, outcome.reply)

    def _release(self, messages: list[DueMessage]) -> None:
        claims: dict[str, list[int]] = {}
        for message in messages:
            claims.setdefault(message.claim, []).extend(r.row_id for r in message.recipients)
        for claim, ids in claims.items():
            try:
                self.queue.release(ids, claim=claim or None)
            except LedgerError as error:  # the claims run out by themselves
                log.warning("could not release %d queued row(s): %s", len(ids), error)

    # -------------------------------------------------------------- settling

    def settle(self, run_ids: set[str]) -> None:
        """End the ``delivering`` runs among ``run_ids`` whose report mail is all final."""
        for run_id in sorted(run_ids):
            try:
                self._settle(run_id)
            except LedgerError as error:  # settled again by the next pass or housekeeping
                log.warning("could not settle run %s yet: %s", run_id, error)

    def _settle(self, run_id: str) -> None:
        run = self.ledger.get(run_id)
        if run is None or run.status != RunStatus.DELIVERING.value:
            return
        report = self.queue.counts(run_id, purpose="report")
        if any(report.get(s.value) for s in PENDING):
            return
        rows = [r for r in self.queue.rows(run_ids=[run_id]) if r.purpose == "report"]
        problems = [r for r in rows if r.status != RecipientStatus.DELIVERED.value]
        status = RunStatus.FAILED if problems else RunStatus.SUCCEEDED
        error = self._problem_summary(problems) if problems else None
        notices = self._problems_notice(run, problems) if problems and self.notify else []
        # the notice is queued in the transaction that ends the run: both or neither
        if not self.ledger.complete_delivery(run_id, status.value, error=error, notices=notices):
            return  # another node settled it
        if notices:
            self.deliver(run_id=run.run_id)

    @staticmethod
    def _problem_summary(problems: list[QueueRow]) -> str:
        counts: dict[str, int] = {}
        for row in problems:
            counts[row.status] = counts.get(row.status, 0) + 1
        head = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        first = problems[0]
        detail = f"{first.recipient}: {first.code or ''} {first.reply}".replace("  ", " ")
        return f"delivery failed ({head}); e.g. {one_line(detail, 300)}"

    def _problems_notice(self, run: Run, problems: list[QueueRow]) -> list[NewMessage]:
        """The notice telling the run's failure recipients what was not delivered (none
        when there is nobody to tell, or it cannot be built: logged)."""
        recipients = [
            r
            for r in (run.failure_recipients or ())
            if _bare(r) not in {_bare(p.recipient) for p in problems}
        ]
        if not recipients:
            log.error(
                "%s: %d email(s) not delivered and nobody to tell (set on_failure:)",
                run.job,
                len(problems),
            )
            return []
        mail = delivery_problems_email(
            name=run.job,
            run_id=run.run_id,
            problems=[
                (p.subject, p.recipient, p.status, f"{p.code or ''} {p.reply}".strip())
                for p in problems
            ],
            recipients=recipients,
        )
        try:
            return [
                plan_email(
                    mail,
                    purpose="notice",
                    default_sender=self.settings.from_address,
                    max_size=self.settings.max_message_size,
                    expires_at=self.ledger.db.now()
                    + timedelta(seconds=self.settings.delivery_lifetime),
                    key="delivery-problems",
                )
            ]
        except MessageError as error:
            log.error("%s: could not build the delivery notice: %s", run.job, error)
            return []

    # ---------------------------------------------------------------- ledger


class _Lane:
    """The sessions of one transport kind in a delivery pass, and the messages they share.

    The pass puts claimed messages in; up to ``connections`` threads (one session, so one
    connection, each) take them one at a time. A thread whose session broke leaves the
    rest to the healthy ones; the last thread standing answers what remains as deferred
    (the server is unusable), as a single session always did.
    """

    def __init__(self, deliverer: Deliverer, kind: str, on_outcome: OutcomeCallback | None):
        self.deliverer = deliverer
        self.kind = kind
        self.on_outcome = on_outcome
        first = deliverer.transports(kind)
        self.connections = (
            max(1, deliverer.settings.connections) if getattr(first, "name", "") == "smtp" else 1
        )
        self._spare: Transport | None = first
        self.outcomes: list[Outcome] = []
        self.parts: dict[str, bytes] = {}
        self._pending: deque[DueMessage] = deque()
        self._busy = 0
        self._threads: list[threading.Thread] = []
        self._healthy = 0
        self._closed = False
        self._explained = False  # one traceback per lane for unexpected errors, not one each
        self._cond = threading.Condition()

    def put(self, message: DueMessage) -> None:
        """Queue ``message`` for a session (waits while enough are already waiting)."""
        with self._cond:
            while len(self._pending) >= 2 * self.connections and self._alive():
                self._cond.wait(0.5)
            self._pending.append(message)
            idle = len(self._threads) - self._busy
            if len(self._threads) < self.connections and len(self._pending) > idle:
                self._start()
            self._cond.notify_all()

    def busy(self) -> bool:
        """Are messages waiting or being sent?"""
        with self._cond:
            return bool(self._pending or self._busy)

    def wait_until_idle(self) -> None:
        """Wait until every message put in has its answer recorded."""
        with self._cond:
            while (self._pending or self._busy) and self._alive():
                self._cond.wait(0.5)

    def close(self) -> None:
        """No more messages: let the sessions finish and end (QUIT); give back leftovers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        if self._pending:  # every session died: the claims are given back
            self.deliverer._release(list(self._pending))
            self._pending.clear()

    def _alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def _start(self) -> None:
        thread = threading.Thread(
            target=self._run, name=f"deliver-{self.kind}-{len(self._threads) + 1}", daemon=True
        )
        self._threads.append(thread)
        self._healthy += 1
        thread.start()

    def _take(self, broken: bool) -> DueMessage | None:
        with self._cond:
            while True:
                if self._pending:
                    if broken and self._healthy > 0:
                        return None  # a working connection sends it
                    self._busy += 1
                    message = self._pending.popleft()
                    self._cond.notify_all()
                    return message
                if self._closed:
                    return None
                self._cond.wait()

    def _done(self, outcomes: list[Outcome]) -> None:
        with self._cond:
            self._busy -= 1
            self.outcomes += outcomes
            if self.on_outcome is not None:
                for outcome in outcomes:
                    try:
                        self.on_outcome(outcome)
                    except Exception:  # a progress display must never stop delivery
                        log.debug("on_outcome failed", exc_info=True)
            self._cond.notify_all()

    def _run(self) -> None:
        deliverer = self.deliverer
        with self._cond:
            transport, self._spare = self._spare, None
        transport = transport or deliverer.transports(self.kind)
        broken = False
        try:
            while True:  # a new session after an unexpected error: never reuse one mid-way
                with self._session(transport) as session:
                    replace_session = False
                    while not replace_session:
                        message = self._take(broken)
                        if message is None:
                            return
                        outcomes: list[Outcome] = []
                        handed = _Handed()
                        try:
                            if deliverer.stopping.is_set():
                                deliverer._release([message])
                            else:
                                outcomes = deliverer._send_one(
                                    session, transport.name, message, self.parts, handed
                                )
                        except Exception as error:
                            outcomes = self._unexpected(transport.name, message, handed, error)
                            replace_session = True
                        finally:
                            self._done(outcomes)
                        if session.broken is not None and not broken:
                            broken = True
                            with self._cond:
                                self._healthy -= 1
                                self._cond.notify_all()
        finally:
            if not broken:
                with self._cond:
                    self._healthy -= 1
                    self._cond.notify_all()

    def _session(self, transport: Transport) -> Session:
        try:
            return transport.session()
        except Exception as error:  # answered like a server that cannot be used
            if not self._explained:
                self._explained = True
                log.exception("could not start a %s session", transport.name)
            return _NoSession(f"internal error: {type(error).__name__}: {one_line(str(error))}")

    def _unexpected(
        self, kind: str, message: DueMessage, handed: _Handed, error: Exception
    ) -> list[Outcome]:
        """One traceback per lane; the message's recipients are recorded, not released
        (released, the pass would claim it again at once, and fail again, in a loop)."""
        if not self._explained:
            self._explained = True
            log.error(
                "delivery of %r failed unexpectedly (an internal error)",
                message.subject,
                exc_info=error,
            )
        try:
            return self.deliverer._unexpected(message, kind, error, handed.marked)
        except Exception:
            log.exception("could not record the internal error for %r", message.subject)
            self.deliverer._release([message])
            return []


@dataclass
class _Handed:
    """Whether a message's rows are marked ``sending`` (the server may have it)."""

    marked: bool = False


class _NoSession:
    """A session that could not be made: every message is answered "not tried"."""

    def __init__(self, reason: str) -> None:
        self.broken: str | None = reason

    def send(self, out: object, before_data: object = None) -> SendResult:
        """Never called (``broken`` is set)."""
        raise RuntimeError(self.broken)

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> _NoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ClaimKeeper:
    """Keeps a delivery pass's claims alive while their messages wait for a session.

    A pass claims up to ``limit`` messages at a time and a slow server (or a low
    ``SMTP_RATE_PER_MINUTE``) can take longer than a claim lasts to get through them: the
    waiting ones are renewed every quarter of ``claim_seconds``. If a renewal fails, the
    claim may run out and another pass take the message; this pass's mark is then refused
    and it does not send it (never twice).
    """

    def __init__(self, queue: OutboundQueue, prefix: str, claim_seconds: float) -> None:
        self.queue = queue
        self.prefix = prefix
        self.claim_seconds = claim_seconds
        self.interval = max(claim_seconds / 4, 0.05)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start renewing (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="deliver-claims", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the pass is over: its rows are answered or released)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.queue.renew_claims(self.prefix, self.claim_seconds)
            except LedgerError as error:
                log.debug("could not renew this pass's claims: %s", error)


def default_transports(settings: Settings) -> TransportFactory:
    """``default``: SMTP when configured, else the outbox; ``outbox``: the outbox."""
    from notifier.mail.transport import transport_for

    def make(kind: str) -> Transport:
        return transport_for(settings, dry_run=kind == "outbox")

    return make


def summarize(outcomes: list[Outcome]) -> dict[str, int]:
    """How many recipients ended in each status."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status.value] = counts.get(outcome.status.value, 0) + 1
    return counts


__all__ = ["Deliverer", "Outcome", "default_transports", "summarize"]
