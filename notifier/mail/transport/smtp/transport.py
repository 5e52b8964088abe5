"""SMTP transport on stdlib :mod:`smtplib`: one connection per batch, per-recipient results.

How a batch goes out
--------------------
* One connection for the whole ``send()`` call (reopened if the server drops it), with
  implicit TLS (``ssl``), STARTTLS (``starttls``, never a silent fallback to plaintext) or
  plain SMTP (``none``). Certificates are verified against the system store or
  ``SMTP_CA_FILE``. AUTH happens only when ``SMTP_USER`` is set, and never over an
  unencrypted link unless ``SMTP_ALLOW_PLAINTEXT_AUTH=true``.
* Each message is one SMTP transaction written by this module (MAIL, RCPT..., DATA), so
  every recipient gets the server's own code and text. When the server offers PIPELINING,
  MAIL, all RCPTs and DATA go out in one write: two round trips per message instead of
  three plus one per recipient.
* Transient failures (4xx, a dropped connection, a timeout) are retried with exponential
  backoff and jitter up to ``SMTP_RETRIES`` times; a retry is addressed only to the
  recipients that failed temporarily, never to ones already accepted. 5xx is final.
  Once the final ``.`` of DATA has gone out, a lost link (EOF, reset, timeout) before the
  server's reply leaves the outcome unknown: the server may have queued the message, so it
  is not retried (that could deliver it twice); its recipients are reported as not
  confirmed, and the batch goes on over a new connection.
* Too-large messages (``NOTIFIER_MAX_MESSAGE_SIZE`` or the server's ``SIZE``) fail before
  DATA; the rest of the batch still goes.
* Rate limits count recipients (as providers do): ``SMTP_RATE_PER_MINUTE`` is a sliding
  window kept in this process and shared by every transport for the same account (user,
  host, port), so a new transport per send (or per parallel connection) does not reset
  it; the transport sleeps until there is room. ``SMTP_RATE_PER_DAY`` is a rolling 24-hour
  window shared by every process through a small SQLite file,
  ``<outbox parent>/.notifier-state/smtp-rate.sqlite3`` (see ``notifier.mail.ratelimit``);
  when it is reached the message goes to the recipients that still fit, the others fail
  with a clear, retryable error naming when the window frees up (``retry_at``), and the
  session stops sending instead of waiting a day.

Failures a user can cause (DNS, refused, timeout, TLS, login, refusals) come back as
:class:`~notifier.mail.transport.base.SendResult` errors whose text names the cause and the fix
(:mod:`notifier.mail.hints`); ``send`` raises only for programmer errors. Nothing here
logs or returns the password.
"""

from __future__ import annotations

import logging
import random
import smtplib
import sqlite3
import ssl
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from notifier.errors import DeliveryError
from notifier.mail.hints import Hint, hint
from notifier.mail.model import Outgoing
from notifier.mail.ratelimit import (
    MINUTE_SECONDS,
    RATE_FILE_NAME,
    DailyLimit,
    default_state_dir,
    minute_window,
)
from notifier.mail.transport.base import (
    DataRefused,
    RecipientResult,
    ResultCallback,
    SendResult,
)
from notifier.mail.transport.smtp.connection import (
    SessionError,
    open_session,
    plaintext_auth_error,
    tls_context,
)
from notifier.mail.transport.smtp.wire import (
    BAD_ADDRESS,
    CONTROL,
    MAYBE_DELIVERED,
    Conversation,
    Outcome,
    OutcomeUnknown,
    Reply,
    ServerClosing,
    bare,
    is_positive,
    is_transient,
    payload,
)
from notifier.settings import Settings, redact

log = logging.getLogger("notifier.smtp")


class _Abort(Exception):
    """The server cannot be used any more in this batch; ``text`` goes to every later message."""

    def __init__(self, text: str, result: SendResult, retry_at: datetime | None = None) -> None:
        self.text = text
        self.result = result
        self.retry_at = retry_at
        super().__init__(text)


class SMTPTransport:
    """Delivers composed messages over SMTP; see the module docstring for the behaviour.

    The per-minute rate window lives in a process-wide registry (:func:`minute_window`),
    shared by every instance for the same account. An instance holds one connection, so it
    is not thread-safe (use one per thread).

    ``backoff`` and ``backoff_cap`` shape the retry delays (``backoff * 2**n``, capped,
    with jitter); ``clock``/``sleep``/``wall`` and ``rate_window`` exist so tests can drive the
    rate limiter without waiting; ``state_dir`` overrides :func:`default_state_dir`.
    """

    name = "smtp"

    def __init__(
        self,
        settings: Settings,
        *,
        backoff: float = 0.5,
        backoff_cap: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
        rate_window: float = MINUTE_SECONDS,
        state_dir: Path | None = None,
    ) -> None:
        if settings.host is None or settings.port is None:
            raise ValueError("SMTPTransport needs settings.host and settings.port; use the outbox")
        self.settings = settings
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.rate_window = rate_window
        self._clock = clock
        self._sleep = sleep
        self._context: ssl.SSLContext | None = None  # made on first use (loading CAs is slow)
        self._session: Conversation | None = None
        self._before_data: Callable[[], bool] | None = None
        self._minute = minute_window(settings)
        self.connections_opened = 0
        self._secrets = list(settings.secrets())
        if settings.user and settings.password:
            self._secrets.append(f"\0{settings.user}\0{settings.password}")
        self._daily: DailyLimit | None = None
        if settings.rate_per_day:
            directory = state_dir if state_dir is not None else default_state_dir(settings)
            account = f"{settings.user or '-'}@{settings.host}:{settings.port}"
            self._daily = DailyLimit(
                directory / RATE_FILE_NAME, settings.rate_per_day, account, wall
            )
        if not settings.verify:
            log.warning(
                "TLS certificate verification is OFF for %s (SMTP_VERIFY=false): anyone on the "
                "network path can read the password and the mail. Prefer SMTP_CA_FILE.",
                settings.host,
            )

    # -- public ------------------------------------------------------------------------------

    def send(
        self, messages: Sequence[Outgoing], on_result: ResultCallback | None = None
    ) -> list[SendResult]:
        """Deliver ``messages`` over one connection; one :class:`SendResult` each, in order.

        ``on_result(index, result)`` runs as soon as each message has its answer.
        """
        if isinstance(messages, Outgoing):
            raise TypeError("send() takes a sequence of Outgoing; wrap a single one in a list")
        batch = list(messages)
        for item in batch:
            if not isinstance(item, Outgoing):
                raise TypeError(f"send() takes Outgoing objects, not {type(item).__name__}")
        if not batch:
            return []
        results: list[SendResult] = []
        with self.session() as session:
            for out in batch:
                results.append(session.send(out) if session.broken is None else session.skip(out))
                if on_result is not None:
                    on_result(len(results) - 1, results[-1])
        return results

    def session(self) -> SMTPSession:
        """One connection for sending messages one at a time (reopened when dropped)."""
        return SMTPSession(self)

    def close(self) -> None:
        """QUIT and close the connection if one is open (send() does this itself)."""
        conversation, self._session = self._session, None
        if conversation is None:
            return
        try:
            conversation.conn.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            conversation.close()

    # -- per message -------------------------------------------------------------------------

    def _send_one(self, out: Outgoing) -> SendResult:
        problem = self._check(out)
        if problem is not None:
            self._log(logging.WARNING, "not sending %s: %s", out.message_id, problem)
            return self._failed(out, problem)
        token = None
        held: tuple[str, ...] = ()
        limit_text = ""
        retry_at = None
        if self._daily is not None:
            try:
                grant = self._daily.reserve(len(out.recipients))
            except (sqlite3.Error, OSError) as exc:
                text = (
                    f"Cannot keep the daily message count (recipients) in {self._daily.path} ({exc}); "
                    "the message was not sent. Fix: make that folder writable, or unset "
                    "SMTP_RATE_PER_DAY."
                )
                raise _Abort(text, self._failed(out, text)) from None
            if grant.granted < len(out.recipients):
                assert grant.free_at is not None
                retry_at = datetime.fromtimestamp(grant.free_at, timezone.utc)
                limit_text = (
                    f"Daily sending limit reached: {grant.count} recipients in the last 24 "
                    f"hours (SMTP_RATE_PER_DAY={self._daily.cap}); not sent to this recipient "
                    f"yet: it is deferred until the limit frees up "
                    f"({retry_at.isoformat(timespec='minutes')}). Fix: nothing to do (the "
                    "queue sends it then, or `notifier run JOB --resume`), or raise "
                    "SMTP_RATE_PER_DAY if your provider allows more (Gmail: about 500 "
                    "recipients a day)."
                )
            if not grant.granted:
                raise _Abort(limit_text, self._failed(out, limit_text), retry_at)
            token = grant.token
            held = out.recipients[grant.granted :]
            if held:
                out = out.with_envelope(out.sender, out.recipients[: grant.granted])
        self._wait_for_minute_slot(len(out.recipients))
        try:
            result = self._deliver(out)
        except _Abort as abort:
            if token is not None and not abort.result.accepted:
                self._release(token)
            raise
        except DataRefused:
            if token is not None:
                self._release(token)
            raise
        if token is not None:
            # recipients that got nothing give their room back; an unknown outcome keeps it
            unused = [r for r in result.recipients if not r.accepted and r.reply != MAYBE_DELIVERED]
            if not result.recipients:
                self._release(token)
            elif unused:
                self._release(token, len(unused))
        if held:
            result.recipients += [
                RecipientResult(address, False, None, limit_text, transient=True)
                for address in held
            ]
            result.retry_at = retry_at
            raise _Abort(limit_text, result, retry_at)
        return result

    def _release(self, token: int, recipients: int | None = None) -> None:
        assert self._daily is not None
        try:
            self._daily.release(token, recipients)
        except (sqlite3.Error, OSError) as exc:  # the count stays too high: harmless
            self._log(logging.WARNING, "could not update %s: %s", self._daily.path, exc)

    def _check(self, out: Outgoing) -> str | None:
        if not out.recipients:
            return "The message has no recipients. Fix: add at least one To, Cc or Bcc address."
        for address in (out.sender, *out.recipients):
            if CONTROL.search(address) or BAD_ADDRESS.search(bare(address)):
                return (
                    f"{address!r} is not a valid envelope address (spaces, <>, or control "
                    "characters). Fix: use a plain address such as name@example.com."
                )
        limit = self.settings.max_message_size
        if out.size > limit:
            return (
                f"The message is {out.size:,} bytes, larger than NOTIFIER_MAX_MESSAGE_SIZE="
                f"{limit:,} bytes; it was not sent. Fix: send fewer or smaller attachments (link "
                "large files instead), or raise NOTIFIER_MAX_MESSAGE_SIZE if your server "
                "accepts more."
            )
        return None

    def _deliver(self, out: Outgoing) -> SendResult:
        """One message, with retries that address only the recipients still pending."""
        settings = self.settings
        result = SendResult(out.message_id, out.subject, self.name)
        body = payload(out.data)
        order = list(dict.fromkeys(bare(r) for r in out.recipients))
        final: dict[str, RecipientResult] = {}
        pending = list(order)
        last_reply: dict[str, Reply] = {}
        problem: Hint | None = None
        connection_trouble = False
        attempts = 0
        while pending:
            attempts += 1
            conversation: Conversation | None = None
            try:
                conversation = self._ensure_session()
                conversation.check(out, pending, settings.host)
                conversation.before_data = self._before_data
                outcome = conversation.transaction(out, pending, body)
            except SessionError as exc:
                problem, connection_trouble = exc.hint, True
                if not exc.transient:
                    failed = self._finish(result, order, final, {}, exc.hint, attempts)
                    raise _Abort(str(exc.hint), failed) from None
            except DeliveryError as exc:  # this server cannot take this message (size, UTF-8)
                problem, connection_trouble = hint(exc, settings), False
                self._log(logging.WARNING, "not sending %s: %s", out.message_id, problem)
                break
            except OutcomeUnknown as exc:
                # Retrying could deliver the message twice: report it, move on to the next.
                self._drop_session()
                detail = hint(exc.original, settings, stage="data").cause.rstrip(".")
                problem = Hint(
                    f"The connection was lost after the message was sent ({detail}): the "
                    "server may have delivered it, so it was not retried to avoid a duplicate.",
                    "check with the recipients whether it arrived before sending it again",
                )
                # Only recipients the server had taken at RCPT may have it; the others
                # were refused (final) or deferred (retried: they cannot have it yet).
                deferred = []
                for address in pending:
                    code, text = exc.rcpt.get(address, Reply(250, ""))
                    if is_positive(code):
                        final[address] = RecipientResult(
                            address, False, None, MAYBE_DELIVERED, unknown=True
                        )
                    elif is_transient(code):
                        deferred.append(address)
                        last_reply[address] = Reply(code, text)
                    else:
                        final[address] = RecipientResult(address, False, code, text)
                pending, connection_trouble = deferred, False
            except ServerClosing as exc:
                self._drop_session()
                problem, connection_trouble = hint(exc.reply, settings), False
                for address in pending:
                    last_reply[address] = exc.reply
            except (OSError, smtplib.SMTPException) as exc:
                stage = conversation.stage if conversation is not None else "connect"
                self._drop_session()
                problem = hint(exc, settings, stage=stage)
                problem = Hint(problem.cause, problem.fix, True)
                connection_trouble = True
            else:
                connection_trouble = False
                pending, problem = self._apply(outcome, pending, final, last_reply)
            if not pending or attempts > settings.retries:
                break
            delay = self._backoff_delay(attempts)
            self._log(
                logging.WARNING,
                "%s: attempt %d failed for %d recipient(s) (%s); retrying in %.2f s",
                out.message_id or out.subject,
                attempts,
                len(pending),
                problem,
                delay,
            )
            self._sleep(delay)
        result = self._finish(result, order, final, last_reply, problem, attempts)
        if pending and connection_trouble:
            # The server stopped answering: later messages would only wait for it too.
            raise _Abort(f"Not sent: an earlier message could not be delivered. {problem}", result)
        return result

    def _apply(
        self,
        outcome: Outcome,
        pending: list[str],
        final: dict[str, RecipientResult],
        last_reply: dict[str, Reply],
    ) -> tuple[list[str], Hint | None]:
        """Fold one transaction's replies into ``final``; return what to retry and why."""
        settings = self.settings
        retry: list[str] = []
        problem: Hint | None = None

        def settle(address: str, reply: Reply, stage: str) -> None:
            nonlocal problem
            code, text = reply
            if is_positive(code):
                final[address] = RecipientResult(address, True, code, text)
            elif is_transient(code) or code < 200:
                retry.append(address)
                last_reply[address] = reply
                problem = hint(reply, settings, stage=stage)
            else:
                final[address] = RecipientResult(address, False, code, text)
                if problem is None or not problem.transient:
                    problem = hint(reply, settings, stage=stage)

        assert outcome.mail is not None
        if not is_positive(outcome.mail[0]):
            for address in pending:
                settle(address, outcome.mail, "mail")
            return retry, problem
        candidates = []
        for address in pending:
            reply = outcome.rcpt[address]
            if is_positive(reply[0]):
                candidates.append(address)
            else:
                settle(address, reply, "rcpt")
        if candidates:
            assert outcome.data is not None
            for address in candidates:
                settle(address, outcome.data, "data")
        return retry, problem

    def _finish(
        self,
        result: SendResult,
        order: list[str],
        final: dict[str, RecipientResult],
        last_reply: dict[str, Reply],
        problem: Hint | None,
        attempts: int,
    ) -> SendResult:
        recipients = []
        for address in order:
            if address in final:
                recipients.append(final[address])
            elif address in last_reply:
                code, text = last_reply[address]
                recipients.append(RecipientResult(address, False, code, text, transient=True))
            elif final or last_reply:
                reason = f"not delivered: {problem.cause}" if problem else "not delivered"
                recipients.append(RecipientResult(address, False, None, reason, transient=True))
        result.recipients = recipients
        result.attempts = attempts
        result.retryable = not recipients and problem is not None and problem.transient
        if not any(r.accepted for r in recipients):
            reason = str(problem) if problem else "No recipient was accepted."
            if recipients and not _maybe_delivered(result):
                reason = f"Not delivered to any recipient ({attempts} attempt(s)): {reason}"
            result.error = self._redact(reason)
        for r in recipients:
            if not r.accepted:
                self._log(
                    logging.WARNING,
                    "%s: %s %s (%s %s)",
                    result.message_id or result.subject,
                    r.address,
                    "not confirmed" if r.reply == MAYBE_DELIVERED else "not delivered",
                    r.code,
                    r.reply,
                )
        return result

    # -- connection management ---------------------------------------------------------------

    def _ensure_session(self) -> Conversation:
        conversation = self._session
        if conversation is not None:
            if conversation.usable():
                return conversation
            # Closed, or the server spoke out of turn (EOF or an unsolicited 421): start afresh.
            self._log(logging.INFO, "server closed the connection; reconnecting")
            self._drop_session()
        if self._context is None and self.settings.security != "none":
            self._context = tls_context(self.settings)
        conn = open_session(self.settings, self._context)
        self.connections_opened += 1
        conversation = Conversation.start(conn, self._redact)
        tls = ""
        sock = conn.sock
        if isinstance(sock, ssl.SSLSocket):
            tls = f" ({sock.version()})"
        self._log(
            logging.INFO,
            "connected to %s:%s%s, security=%s%s%s",
            self.settings.host,
            self.settings.port,
            tls,
            self.settings.security,
            f", logged in as {self.settings.user}" if self.settings.user else "",
            ", PIPELINING" if conversation.pipelining else "",
        )
        self._session = conversation
        return conversation

    def _drop_session(self) -> None:
        conversation, self._session = self._session, None
        if conversation is not None:
            conversation.close()

    def _backoff_delay(self, attempt: int) -> float:
        ceiling = min(self.backoff_cap, self.backoff * (2 ** (attempt - 1)))
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto

    def _wait_for_minute_slot(self, recipients: int = 1) -> None:
        """Take room for ``recipients`` in the account's shared per-minute window, sleeping
        until there is some (a message to more recipients than the cap waits for an empty
        window).

        The window's lock is held while sleeping, so waiting senders take their turn.
        """
        cap = self.settings.rate_per_minute
        if not cap:
            return
        window = self._minute
        with window.lock:
            recent = window.recent
            now = self._clock()
            while recent and recent[0][0] <= now - self.rate_window:
                recent.popleft()
            while recent and sum(n for _, n in recent) + recipients > cap:
                wait = recent[0][0] + self.rate_window - now
                self._log(
                    logging.INFO,
                    "rate limit SMTP_RATE_PER_MINUTE=%d (recipients) reached; waiting %.1f s",
                    cap,
                    wait,
                )
                self._sleep(max(wait, 0.0))
                now = self._clock()
                while recent and recent[0][0] <= now - self.rate_window:
                    recent.popleft()
            recent.append((now, recipients))

    # -- helpers -----------------------------------------------------------------------------

    def _failed(self, out: Outgoing, text: str, attempts: int = 0) -> SendResult:
        return SendResult(
            out.message_id,
            out.subject,
            self.name,
            recipients=[],
            error=self._redact(text),
            attempts=attempts,
        )

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _log(self, level: int, message: str, *args: object) -> None:
        if log.isEnabledFor(level):
            log.log(level, "%s", self._redact(message % args if args else message))


class SMTPSession:
    """Messages one at a time over the transport's connection; see :meth:`SMTPTransport.session`.

    Once the server cannot be used any more (it stayed unreachable through the retries,
    refused the login, or the daily limit was reached), ``broken`` holds the reason and
    :meth:`skip` answers the remaining messages without trying them (retryable).
    """

    def __init__(self, transport: SMTPTransport) -> None:
        self.transport = transport
        self.sent = 0
        self.delivered = 0
        refusal = plaintext_auth_error(transport.settings)
        self.broken: str | None = str(hint(refusal, transport.settings)) if refusal else None
        # when the server's limits allow trying again (a daily limit), once broken by them
        self.retry_at: datetime | None = None

    def send(self, out: Outgoing, before_data: Callable[[], bool] | None = None) -> SendResult:
        """Deliver one message (retrying transient failures); its result.

        ``before_data`` runs right after the server's 354, before the message itself goes
        out; when it returns False the message is not sent (:class:`DataRefused`).
        """
        if self.broken is not None:
            return self.skip(out)
        self.sent += 1
        self.transport._before_data = before_data
        try:
            result = self.transport._send_one(out)
        except _Abort as abort:
            self.broken = abort.text
            self.retry_at = abort.retry_at
            abort.result.retryable = True
            abort.result.retry_at = abort.retry_at
            result = abort.result
        finally:
            self.transport._before_data = None
        if result.accepted:
            self.delivered += 1
        return result

    def skip(self, out: Outgoing) -> SendResult:
        """The result of a message not tried because the session is broken (retryable)."""
        result = self.transport._failed(out, self.broken or "not sent")
        result.retryable = True
        result.retry_at = self.retry_at
        return result

    def close(self) -> None:
        """QUIT, close, and log what this session did."""
        transport = self.transport
        transport.close()
        if self.broken is not None:
            transport._log(logging.ERROR, "SMTP delivery stopped: %s", self.broken)
        if self.sent:
            transport._log(
                logging.INFO,
                "%d of %d message(s) delivered via %s:%s over %d connection(s)",
                self.delivered,
                self.sent,
                transport.settings.host,
                transport.settings.port,
                transport.connections_opened,
            )

    def __enter__(self) -> SMTPSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _maybe_delivered(result: SendResult) -> bool:
    """Did the link fail after the end of DATA for some recipient (outcome unknown)?"""
    return any(r.reply == MAYBE_DELIVERED and not r.accepted for r in result.recipients)
