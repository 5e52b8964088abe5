"""Transports: how composed messages leave (smtp), or don't (outbox, memory)."""

from __future__ import annotations

from notifier.mail.transport.base import Outgoing, RecipientResult, SendResult, Transport
from notifier.settings import Settings

__all__ = ["Outgoing", "RecipientResult", "SendResult", "Transport", "transport_for"]


def transport_for(settings: Settings, *, dry_run: bool = False) -> Transport:
    """The SMTP transport when a server is configured, else (or with dry_run) the outbox."""
    if dry_run or settings.uses_outbox:
        from notifier.mail.transport.outbox import OutboxTransport

        return OutboxTransport(settings.outbox_dir)
    from notifier.mail.transport.smtp import SMTPTransport

    return SMTPTransport(settings)
