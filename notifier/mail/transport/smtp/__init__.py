"""The SMTP transport, in three layers: ``connection`` (DNS, TCP, TLS, EHLO, login, with a
cause-and-fix hint for every failure), ``wire`` (one transaction per message on an open
connection, typed replies, pipelining, the moment before DATA) and ``transport``
(retries that never resend to accepted recipients, per-recipient results, rate limits).
"""

from notifier.mail.transport.base import DataRefused
from notifier.mail.transport.smtp.connection import (
    SessionError,
    SMTPConnection,
    SMTPSSLConnection,
    check_resolver,
    greet,
    local_hostname,
    login,
    names_resolve,
    open_session,
    open_socket,
    plaintext_auth_error,
    quit_quietly,
    resolve,
    tls_context,
)
from notifier.mail.transport.smtp.transport import SMTPSession, SMTPTransport
from notifier.mail.transport.smtp.wire import MAYBE_DELIVERED, Conversation, Reply

__all__ = [
    "MAYBE_DELIVERED",
    "Conversation",
    "DataRefused",
    "Reply",
    "SMTPConnection",
    "SMTPSSLConnection",
    "SMTPSession",
    "SMTPTransport",
    "SessionError",
    "check_resolver",
    "greet",
    "local_hostname",
    "login",
    "names_resolve",
    "open_session",
    "open_socket",
    "plaintext_auth_error",
    "quit_quietly",
    "resolve",
    "tls_context",
]
