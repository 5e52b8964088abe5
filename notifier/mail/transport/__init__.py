"""Transports: how composed messages leave (smtp), or don't (outbox, memory).

Like Django's ``get_connection``, the transport comes from a setting, so tests and users
can pick one without code: ``NOTIFIER_TRANSPORT=smtp|outbox|memory``; unset means SMTP
when ``SMTP_HOST`` is set, else the outbox. Every transport takes composed messages
(:class:`~notifier.mail.model.Outgoing`) and answers per recipient.
"""

from __future__ import annotations

from notifier.mail.model import Outgoing
from notifier.mail.transport.base import RecipientResult, SendResult, Transport
from notifier.settings import Settings

__all__ = [
    "Outgoing",
    "RecipientResult",
    "SendResult",
    "Transport",
    "get_transport",
    "transport_for",
]


def get_transport(settings: Settings, *, dry_run: bool = False) -> Transport:
    """The transport ``settings`` select (``dry_run``: the outbox, whatever is set)."""
    if dry_run or settings.uses_outbox:
        from notifier.mail.transport.outbox import OutboxTransport

        return OutboxTransport(settings.outbox_dir)
    if settings.transport == "memory":
        from notifier.mail.transport.memory import MemoryTransport

        return MemoryTransport(shared=True)
    from notifier.mail.transport.smtp import SMTPTransport

    return SMTPTransport(settings)


transport_for = get_transport  # the name the rest of notifier used first
