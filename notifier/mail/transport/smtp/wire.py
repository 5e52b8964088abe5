"""The SMTP conversation on an open connection: one transaction per message, typed replies.

:class:`Conversation` writes each transaction itself (MAIL, RCPT..., DATA) so that every
recipient gets the server's own code and text. When the server offers PIPELINING, MAIL,
all RCPTs and DATA go out in one write: two round trips per message instead of three plus
one per recipient. Between the server's 354 and the message itself it asks the caller
(``before_data``): until then the server cannot have the message; after the final dot a
lost link leaves the outcome unknown (:class:`OutcomeUnknown`).
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import NamedTuple

from notifier.errors import DeliveryError
from notifier.mail.model import Outgoing
from notifier.mail.transport.base import DataRefused
from notifier.mail.transport.smtp.connection import still_usable

_CRLF = b"\r\n"
_LEADING_DOT = re.compile(rb"(?m)^\.")
_BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")
BAD_ADDRESS = re.compile(r"[\s<>\x00-\x1f\x7f]")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")

MAYBE_DELIVERED = (
    "connection lost after the message was sent: the server may have delivered it; "
    "not retried to avoid a duplicate"
)


class Reply(NamedTuple):
    """A server reply: its code and its text (redacted)."""

    code: int
    text: str

    @property
    def positive(self) -> bool:
        """2xx: done."""
        return 200 <= self.code < 300

    @property
    def transient(self) -> bool:
        """4xx (or no real code): trying again later may work."""
        return 400 <= self.code < 500 or self.code < 200


def is_positive(code: int) -> bool:
    """2xx."""
    return 200 <= code < 300


def is_transient(code: int) -> bool:
    """4xx."""
    return 400 <= code < 500


class ServerClosing(Exception):  # noqa: N818 - reads as "the server is closing"
    """The server answered 421: it is closing the channel (nothing was queued)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(f"{reply.code} {reply.text}")


class OutcomeUnknown(Exception):  # noqa: N818 - the outcome is what is unknown
    """The link failed after the end of DATA was sent, before the server's reply."""

    def __init__(self, original: BaseException, rcpt: dict[str, Reply]) -> None:
        self.original = original
        self.rcpt = rcpt  # the RCPT replies of that transaction
        super().__init__(str(original))


@dataclass
class Outcome:
    """The replies of one transaction."""

    mail: Reply | None = None
    rcpt: dict[str, Reply] = field(default_factory=dict)
    data: Reply | None = None


@dataclass
class Conversation:
    """One logged-in SMTP connection and what its server offers."""

    conn: smtplib.SMTP
    pipelining: bool
    size_limit: int | None
    smtputf8: bool
    eightbit: bool
    redact: Callable[[str], str] = lambda text: text
    needs_rset: bool = False
    stage: str = "mail"
    before_data: Callable[[], bool] | None = None

    @classmethod
    def start(cls, conn: smtplib.SMTP, redact: Callable[[str], str]) -> Conversation:
        """A conversation on a connection :func:`open_session` returned."""
        features = conn.esmtp_features
        size = features.get("size", "").strip()
        conversation = cls(
            conn=conn,
            pipelining="pipelining" in features,
            size_limit=int(size) if size.isdigit() and int(size) > 0 else None,
            smtputf8="smtputf8" in features,
            eightbit="8bitmime" in features,
            redact=redact,
        )
        if "size" in features and conversation.size_limit is None:
            conversation.size_limit = 0  # SIZE offered without a number: send SIZE=, no limit
        return conversation

    def usable(self) -> bool:
        """Can the next transaction go over this connection (it may have been dropped)?"""
        sock = self.conn.sock
        return sock is not None and still_usable(sock)

    def close(self) -> None:
        """Close the connection without a word (see the transport for QUIT)."""
        self.conn.close()

    def check(self, out: Outgoing, pending: list[str], host: str | None) -> None:
        """Raise DeliveryError for a message this server will refuse anyway (before MAIL)."""
        limit = self.size_limit
        if limit and out.size > limit:
            raise DeliveryError(
                f"The message is {out.size:,} bytes but {host} accepts at most "
                f"{limit:,} bytes (its SIZE limit); it was not sent.",
                "send fewer or smaller attachments (link large files instead)",
            )
        if not self.smtputf8 and not all(a.isascii() for a in (out.sender, *pending)):
            raise DeliveryError(
                "An envelope address contains non-ASCII characters and the server does not "
                "support SMTPUTF8.",
                "use an ASCII form of the address, or a server that supports SMTPUTF8",
            )

    def transaction(self, out: Outgoing, pending: list[str], payload: bytes) -> Outcome:
        """MAIL, RCPT for each of ``pending``, DATA: the server's replies."""
        conn = self.conn
        params, utf8 = self._mail_parameters(out, pending)
        encoding = "utf-8" if utf8 else "ascii"
        mail = f"MAIL FROM:<{bare(out.sender)}>{params}\r\n".encode(encoding)
        rcpts = [f"RCPT TO:<{address}>\r\n".encode(encoding) for address in pending]
        outcome = Outcome()
        reset = self.needs_rset
        self.needs_rset = True  # until a final reply closes the transaction
        if self.pipelining:
            self.stage = "mail"
            conn.send((b"RSET\r\n" if reset else b"") + mail + b"".join(rcpts) + b"DATA\r\n")
            if reset:
                self._reply()
            outcome.mail = self._reply()
            self.stage = "rcpt"
            for address in pending:
                outcome.rcpt[address] = self._reply()
            self.stage = "data"
            go_ahead = self._reply()
            usable = outcome.mail.positive and any(r.positive for r in outcome.rcpt.values())
            if go_ahead.code == 354:
                if usable:
                    self._confirm_data()
                    outcome.data = self._end_of_data(payload, outcome)
                    self.needs_rset = False
                else:  # RFC 2920: a server may accept DATA with no valid recipient
                    conn.send(b".\r\n")
                    self._reply()
            elif usable:
                outcome.data = go_ahead
            return outcome
        if reset:
            self.stage = "mail"
            conn.send(b"RSET\r\n")
            self._reply()
        self.stage = "mail"
        conn.send(mail)
        outcome.mail = self._reply()
        if not outcome.mail.positive:
            return outcome
        self.stage = "rcpt"
        for address, command in zip(pending, rcpts, strict=True):
            conn.send(command)
            outcome.rcpt[address] = self._reply()
        if not any(r.positive for r in outcome.rcpt.values()):
            return outcome
        self.stage = "data"
        conn.send(b"DATA\r\n")
        go_ahead = self._reply()
        if go_ahead.code != 354:
            outcome.data = go_ahead
            return outcome
        self._confirm_data()
        outcome.data = self._end_of_data(payload, outcome)
        self.needs_rset = False
        return outcome

    def _confirm_data(self) -> None:
        """Ask the caller's ``before_data`` hook (the queue marks the rows ``sending``).

        Until here the server cannot have the message, so a crash is harmless; from here
        on, a crash leaves its outcome unknown. A hook that says no ends the connection
        (the server drops a DATA that never ends) and raises :class:`DataRefused`.
        """
        hook = self.before_data
        if hook is None or hook():
            return
        self.conn.close()
        raise DataRefused("the delivery queue did not allow this message to be sent")

    def _end_of_data(self, payload: bytes, outcome: Outcome) -> Reply:
        """Send the message with its final dot and return the server's verdict.

        A failure while sending is safe to retry: the final dot did not get through, so the
        server discards the partial message. Once it has been sent, a lost link (EOF, reset,
        timeout, an unreadable reply) raises :class:`OutcomeUnknown`: the server may have
        queued the message. A ``421`` reply is an answer (not queued) and stays retryable.
        """
        self.conn.send(payload)
        try:
            return self._reply()
        except (OSError, smtplib.SMTPException) as exc:
            raise OutcomeUnknown(exc, dict(outcome.rcpt)) from exc

    def _reply(self) -> Reply:
        code, raw = self.conn.getreply()
        text = self.redact(raw.decode("utf-8", "replace"))
        if code == 421:
            self.conn.close()
            raise ServerClosing(Reply(code, text))
        if code < 100:
            self.conn.close()
            raise smtplib.SMTPResponseException(code, f"unreadable reply from server: {text!r}")
        return Reply(code, text)

    def _mail_parameters(self, out: Outgoing, pending: list[str]) -> tuple[str, bool]:
        params = []
        if self.size_limit is not None:
            params.append(f"SIZE={out.size}")
        if self.eightbit and not out.data.isascii():
            params.append("BODY=8BITMIME")
        utf8 = not all(a.isascii() for a in (out.sender, *pending))
        if utf8:
            params.append("SMTPUTF8")
        return ("".join(" " + p for p in params), utf8)


def bare(address: str) -> str:
    """The addr-spec of ``address`` (``Name <a@b>`` becomes ``a@b``)."""
    address = address.strip()
    if "<" in address:
        return parseaddr(address)[1] or address
    return address


def payload(data: bytes) -> bytes:
    """The DATA body: CRLF line endings, leading dots doubled, and the final ``.``.

    Written for speed: the checks are C-level ``count``/``in`` scans, and the regular
    expressions only run on the rare message that needs them.
    """
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _BARE_EOL.sub(_CRLF, data)
    if b"\n." in data or data.startswith(b"."):
        data = _LEADING_DOT.sub(b"..", data)
    if not data.endswith(_CRLF):
        data += _CRLF
    return data + b".\r\n"
