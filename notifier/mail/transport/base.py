"""The one small interface every transport implements, and its result types.

Like Django's mail backends: a message knows nothing of how it is sent. A
transport takes fully composed messages and returns, per message, what
happened to each recipient. Delivery problems are results, not exceptions, so
a partial refusal is reported and never swallowed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from notifier.mail.model import Outgoing


@dataclass(frozen=True)
class RecipientResult:
    """What the server said about one envelope recipient.

    Not accepted means one of: refused for good (a 5xx), ``transient`` (a 4xx or a lost
    connection: trying later may work) or ``unknown`` (the link dropped after the message
    was sent: the server may have it).
    """

    address: str
    accepted: bool
    code: int | None = None
    reply: str = ""
    transient: bool = False
    unknown: bool = False

    @property
    def outcome(self) -> str:
        """``accepted``, ``refused``, ``deferred`` or ``unknown``."""
        if self.accepted:
            return "accepted"
        if self.unknown:
            return "unknown"
        return "deferred" if self.transient else "refused"


@dataclass
class SendResult:
    """The outcome of one message: per-recipient results, or an error for the whole message."""

    message_id: str
    subject: str
    transport: str
    recipients: list[RecipientResult] = field(default_factory=list)
    error: str | None = None
    location: str | None = None  # where the outbox put it
    attempts: int = 1
    # For an ``error`` without per-recipient answers: would trying later help? (a server
    # that is down or refuses the login: yes; a message too big or badly addressed: no)
    retryable: bool = False
    # when trying again makes sense, if the server's limits say (a daily sending limit
    # frees up then); None: the queue's usual backoff
    retry_at: datetime | None = None

    @classmethod
    def all_accepted(
        cls,
        out: Outgoing,
        transport: str,
        code: int | None,
        reply: str,
        location: str | None = None,
    ) -> SendResult:
        """A result in which every envelope recipient of ``out`` got ``code``/``reply``, accepted.

        For transports that keep the message instead of sending it (outbox, memory).
        """
        return cls(
            message_id=out.message_id,
            subject=out.subject,
            transport=transport,
            recipients=[RecipientResult(a, True, code, reply) for a in out.recipients],
            location=location,
        )

    @property
    def ok(self) -> bool:
        """True when every recipient was accepted and nothing failed."""
        return self.error is None and all(r.accepted for r in self.recipients)

    @property
    def accepted(self) -> list[str]:
        """Recipients the server accepted."""
        return [r.address for r in self.recipients if r.accepted]

    @property
    def refused(self) -> list[RecipientResult]:
        """Recipients the server refused, with its reply."""
        return [r for r in self.recipients if not r.accepted]

    def summary_lines(self) -> list[str]:
        """Human-readable lines, one per recipient, for the CLI."""
        lines = [f"{self.subject!r} {self.message_id} via {self.transport}"]
        if self.location:
            lines.append(f"  saved: {self.location}")
        for r in self.recipients:
            state = "accepted" if r.accepted else "REFUSED"
            reply = " ".join(str(x) for x in (r.code, r.reply) if x)
            detail = f" ({reply})" if reply else ""
            lines.append(f"  {state}: {r.address}{detail}")
        if self.error:
            lines.append(f"  FAILED: {self.error}")
        return lines


ResultCallback = Callable[[int, SendResult], None]
BeforeData = Callable[[], bool]


class DataRefused(Exception):  # noqa: N818 - reads as "the DATA was refused by the caller"
    """A ``before_data`` hook said no: the message was not sent (another node has it)."""


@runtime_checkable
class Session(Protocol):
    """One connection's worth of sending (``with transport.session() as s: s.send(out)``).

    ``broken`` is set (to the reason) once the server cannot be used any more in this
    session: callers stop sending and keep the rest for later.
    """

    broken: str | None

    def send(self, out: Outgoing, before_data: BeforeData | None = None) -> SendResult:
        """Deliver one message; its result (never raises for delivery problems).

        ``before_data`` is called once the server is ready for the message itself (after
        its 354), before any of it is sent: from then on the server may have it. When it
        returns False nothing is sent and :class:`DataRefused` is raised.
        """
        ...

    def close(self) -> None:
        """End the session (QUIT)."""
        ...

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """Delivers composed messages. Implementations: smtp, outbox, memory."""

    name: str

    def send(
        self, messages: Sequence[Outgoing], on_result: ResultCallback | None = None
    ) -> list[SendResult]:
        """Deliver ``messages`` (over one connection where that applies), one result each.

        ``on_result(index, result)`` is called as soon as each message has its answer, so
        callers can record deliveries before the batch ends (nothing is lost on a crash).
        """
        ...

    def session(self) -> Session:
        """A session for sending messages one at a time (the delivery queue uses this)."""
        ...


class SimpleSession:
    """A :class:`Session` for transports without connections (outbox, memory)."""

    def __init__(self, send_one: Callable[[Outgoing], SendResult]) -> None:
        self._send_one = send_one
        self.broken: str | None = None

    def send(self, out: Outgoing, before_data: BeforeData | None = None) -> SendResult:
        """Deliver one message (``before_data`` first, as a server's 354 would)."""
        if before_data is not None and not before_data():
            raise DataRefused("the delivery queue did not allow this message to be sent")
        return self._send_one(out)

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> SimpleSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
