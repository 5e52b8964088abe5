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
* Rate limits: ``SMTP_RATE_PER_MINUTE`` is a sliding window kept in this process and
  shared by every transport for the same account (user, host, port), so a new transport
  per send does not reset it; the transport sleeps until a slot is free.
  ``SMTP_RATE_PER_DAY`` is a rolling 24-hour window shared by every process through a
  small SQLite file, ``<outbox parent>/.notifier-state/smtp-rate.sqlite3`` (see
  ``notifier.mail.ratelimit``); when it is reached the message fails with a clear error
  instead of waiting a day.

Failures a user can cause (DNS, refused, timeout, TLS, login, refusals) come back as
:class:`~notifier.mail.transport.base.SendResult` errors whose text names the cause and the fix
(:mod:`notifier.mail.hints`); ``send`` raises only for programmer errors. Nothing here
logs or returns the password.
"""

from __future__ import annotations

import logging
import random
import re
import select
import smtplib
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path

from notifier.errors import DeliveryError
from notifier.mail.hints import (
    Hint,
    ImplicitTLSGreeting,
    NoGreeting,
    ResolverDown,
    hint,
    is_tls_record,
)
from notifier.mail.ratelimit import (
    MINUTE_SECONDS,
    RATE_FILE_NAME,
    DailyLimit,
    default_state_dir,
    minute_window,
)
from notifier.mail.transport.base import (
    DataRefused,
    Outgoing,
    RecipientResult,
    ResultCallback,
    SendResult,
)
from notifier.settings import Settings, redact

__all__ = [
    "DataRefused",
    "SMTPConnection",
    "SMTPSSLConnection",
    "SMTPTransport",
    "SessionError",
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

log = logging.getLogger("notifier.smtp")

_CRLF = b"\r\n"
_LEADING_DOT = re.compile(rb"(?m)^\.")
_BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_BAD_ADDRESS = re.compile(r"[\s<>\x00-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_AUTH_PREFERENCE = ("PLAIN", "LOGIN", "CRAM-MD5")


# --------------------------------------------------------------------------------------------
# Connecting: DNS with a deadline, TLS context, session setup
# --------------------------------------------------------------------------------------------


def resolve(host: str, port: int, timeout: float) -> list[tuple]:
    """``getaddrinfo`` for a TCP connection, with a deadline (the stdlib call has none).

    A lookup that takes longer than ``timeout`` raises ``socket.gaierror(EAI_AGAIN)``; the
    worker thread is left to finish on its own (it is a daemon).
    """
    try:  # an IP literal needs no lookup and no thread
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    box: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["result"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="notifier-dns", daemon=True).start()
    if not done.wait(timeout):
        raise socket.gaierror(socket.EAI_AGAIN, f"DNS lookup timed out after {timeout:g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def open_socket(
    host: str, port: int, timeout: float, source_address: tuple[str, int] | None = None
) -> socket.socket:
    """A connected TCP socket (each resolved address tried in turn, each with ``timeout``)."""
    last: OSError | None = None
    for family, kind, proto, _name, address in resolve(host, port, timeout):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or socket.gaierror(socket.EAI_NONAME, f"no address for {host}")


# Names that resolve wherever DNS works: when SMTP_HOST does not resolve and these do not
# either, the machine is offline (tests point this at names that cannot resolve).
REFERENCE_NAMES: tuple[str, ...] = ("smtp.gmail.com", "example.com")


def names_resolve(names: Sequence[str] | None = None, timeout: float = 5.0) -> bool:
    """True when any of ``names`` (default :data:`REFERENCE_NAMES`) resolves: DNS works."""
    for name in REFERENCE_NAMES if names is None else names:
        try:
            resolve(name, 25, timeout)
        except OSError:
            continue
        return True
    return False


def check_resolver(
    error: socket.gaierror, host: str, timeout: float, names: Sequence[str] | None = None
) -> socket.gaierror:
    """``error`` as :class:`ResolverDown` when other names fail too, else unchanged.

    Not needed for a provider's documented host (its hint already says "no network") nor
    for a temporary failure (EAI_AGAIN, whose hint says to check the network).
    """
    from notifier.settings import provider_of_host

    if error.errno == socket.EAI_AGAIN or provider_of_host(host) is not None:
        return error
    checked = tuple(REFERENCE_NAMES if names is None else names)
    if names_resolve(checked, min(timeout, 5.0)):
        return error
    return ResolverDown(error, checked)


def tls_context(settings: Settings) -> ssl.SSLContext:
    """A client context that verifies the server (system CAs, or ``SMTP_CA_FILE``).

    ``SMTP_VERIFY=false`` turns verification off; callers warn about it.
    """
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@lru_cache(maxsize=1)
def local_hostname() -> str:
    """The EHLO name when SMTP_HELO_NAME is unset (computed once: getfqdn can be slow)."""
    fqdn = socket.getfqdn()
    return fqdn if "." in fqdn else "localhost.localdomain"


class _ConnectMixin:
    """What :class:`SMTPConnection` and :class:`SMTPSSLConnection` share.

    ``connect`` remembers the host (for TLS SNI and the certificate check) and
    ``_get_socket`` opens the TCP connection through :func:`open_socket` (DNS deadline,
    TCP_NODELAY), or takes the one given, then lets :meth:`_wrap` secure it, keeping
    ``stage`` up to date so a failure can be explained: ``connect``, ``tls``, then
    ``greeting``. On a link that is not TLS yet, the server's first bytes are checked
    before smtplib reads them as a greeting (:func:`_await_greeting`).
    """

    stage = "connect"
    _host: str
    _given: socket.socket | None = None
    source_address: tuple[str, int] | None

    def connect(
        self,
        host: str = "localhost",
        port: int = 0,
        source_address: tuple[str, int] | None = None,
        *,
        sock: socket.socket | None = None,
    ) -> tuple[int, bytes]:
        """Connect to ``host:port`` and read the greeting; ``(code, text)`` as smtplib returns.

        ``sock``: an already connected socket (plain, or TLS for implicit TLS) to use instead
        of opening one; ``doctor`` checks TCP, TLS and SMTP over one connection this way.
        Raises ``OSError`` (DNS, refused, timeout, TLS, :class:`ImplicitTLSGreeting`,
        :class:`NoGreeting`) or ``smtplib.SMTPServerDisconnected``.
        """
        self._host = host  # smtplib only sets this when the host is given to __init__
        self._given = sock
        try:
            return super().connect(host, port, source_address)  # type: ignore[misc]
        finally:
            self._given = None

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        self.stage = "connect"
        sock = self._given or open_socket(host, port, timeout, self.source_address)
        try:
            sock = self._wrap(sock)
            self.stage = "greeting"
            if not isinstance(sock, ssl.SSLSocket):
                _await_greeting(sock, host, timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def _wrap(self, sock: socket.socket) -> socket.socket:
        """Secure a freshly connected socket before the greeting (nothing to do for plain SMTP)."""
        return sock


def _await_greeting(sock: socket.socket, host: str, timeout: float) -> None:
    """Wait for the server's first bytes; raise when they will not be an SMTP greeting.

    An implicit-TLS server waits silently for the client's handshake, so a STARTTLS or
    plain client would wait out the timeout, and again on every retry. After a silent
    timeout one TLS handshake on this (now useless) connection tells a TLS port
    (:class:`ImplicitTLSGreeting`, never retried) from a slow server (:class:`NoGreeting`).
    A TLS record where the greeting was due (an alert) is the same settings error.
    """
    sock.settimeout(timeout)
    try:
        first = sock.recv(1, socket.MSG_PEEK)  # smtplib reads the greeting itself afterwards
    except TimeoutError:
        if _handshake_succeeds(sock, host, min(timeout / 2, 5.0)):
            raise ImplicitTLSGreeting(
                f"sent no SMTP greeting within {timeout:g} s but completed a TLS handshake"
            ) from None
        raise NoGreeting(f"timed out: no greeting within {timeout:g} s") from None
    if is_tls_record(first):
        raise ImplicitTLSGreeting("sent a TLS record where the greeting was due")


def _handshake_succeeds(sock: socket.socket, host: str, timeout: float) -> bool:
    """Does the server complete a TLS handshake (certificate not checked: a probe only)?"""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock.settimeout(timeout)
    try:
        with context.wrap_socket(sock, server_hostname=host or None):
            return True
    except (OSError, ValueError):
        return False


def quit_quietly(conn: smtplib.SMTP, wait: float) -> None:
    """Say QUIT (waiting at most ``wait`` seconds for the reply), then close; never raises.

    A server logs a client that just drops the link as an error ("lost connection after
    AUTH"); QUIT ends the session cleanly.
    """
    try:
        if conn.sock is not None:
            conn.sock.settimeout(wait)
            conn.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        conn.close()


def _session_in_step(exc: BaseException) -> bool:
    """After this failure, is the SMTP dialogue still in step (the server answered)?"""
    if isinstance(exc, (DeliveryError, smtplib.SMTPNotSupportedError)):
        return True
    return isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 100


class SMTPConnection(_ConnectMixin, smtplib.SMTP):
    """smtplib.SMTP with a DNS deadline, TCP_NODELAY, and the ``stage`` it reached.

    Create it without a host, then call ``connect(host, port)``.
    """


class SMTPSSLConnection(_ConnectMixin, smtplib.SMTP_SSL):
    """smtplib.SMTP_SSL (implicit TLS) with a DNS deadline, TCP_NODELAY and ``stage``."""

    def _wrap(self, sock: socket.socket) -> socket.socket:
        """The TLS handshake, verifying the certificate for the host given to ``connect``."""
        self.stage = "tls"
        return self.context.wrap_socket(sock, server_hostname=self._host)


class SessionError(Exception):
    """Opening an SMTP session failed; ``hint`` names cause and fix, ``stage`` where it broke.

    ``str()`` is the redacted hint text, safe to show and to log.
    """

    def __init__(self, stage: str, original: BaseException, diagnosis: Hint) -> None:
        self.stage = stage
        self.original = original
        self.hint = diagnosis
        super().__init__(str(diagnosis))

    @property
    def transient(self) -> bool:
        """True when trying again later might work (4xx, timeouts, refused connections)."""
        return self.hint.transient


def _no_starttls_error(settings: Settings) -> DeliveryError:
    return DeliveryError(
        f"{settings.host}:{settings.port} does not offer STARTTLS, so the connection cannot be "
        "encrypted (notifier never falls back to plaintext).",
        "if the server uses implicit TLS (usually port 465) set SMTP_SECURITY=ssl and "
        "SMTP_PORT=465; use SMTP_SECURITY=none only for a trusted relay on localhost",
    )


def plaintext_auth_error(settings: Settings) -> DeliveryError | None:
    """The refusal to send a password over an unencrypted link, or None when it is allowed."""
    if settings.user and settings.security == "none" and not settings.allow_plaintext_auth:
        return DeliveryError(
            "Refusing to send SMTP_PASSWORD over an unencrypted connection (SMTP_SECURITY=none).",
            "use SMTP_SECURITY=starttls (port 587) or ssl (port 465); only for a trusted relay "
            "on this machine or network set SMTP_ALLOW_PLAINTEXT_AUTH=true",
        )
    return None


def greet(conn: smtplib.SMTP) -> None:
    """EHLO, falling back to HELO for a server without ESMTP."""
    code, _ = conn.ehlo()
    if code != 250:
        code, reply = conn.helo()
        if code != 250:
            raise smtplib.SMTPHeloError(code, reply)


def login(conn: smtplib.SMTP, settings: Settings) -> str:
    """AUTH with the first mechanism the server offers (PLAIN, LOGIN, CRAM-MD5); its name.

    Only one mechanism is tried: a wrong password is sent once, not once per mechanism.
    """
    if not conn.has_extn("auth"):
        raise smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
    offered = conn.esmtp_features["auth"].upper().split()
    mechanism = next((m for m in _AUTH_PREFERENCE if m in offered), None)
    if mechanism is None:
        raise DeliveryError(
            f"{settings.host} offers no login method notifier supports ({' '.join(offered)}).",
            "use a server or port that offers AUTH PLAIN or LOGIN (usually 587 or 465)",
        )
    conn.user, conn.password = settings.user, str(settings.password or "")
    try:
        handler = getattr(conn, "auth_" + mechanism.lower().replace("-", "_"))
        conn.auth(mechanism, handler, initial_response_ok=True)
    finally:
        conn.password = ""  # do not keep the secret on a long-lived object
    return mechanism


def open_session(
    settings: Settings, context: ssl.SSLContext | None = None, *, authenticate: bool = True
) -> smtplib.SMTP:
    """Connect, greet, secure (ssl/starttls) and log in as ``settings`` say.

    Raises :class:`SessionError` (with a cause-and-fix hint) for anything that goes wrong.
    """
    assert settings.host is not None and settings.port is not None, "no SMTP host configured"
    refusal = plaintext_auth_error(settings) if authenticate else None
    if refusal is not None:
        raise SessionError("auth", refusal, hint(refusal, settings))
    if context is None and settings.security != "none":
        context = tls_context(settings)
    helo = settings.helo_name or local_hostname()
    conn: SMTPConnection | SMTPSSLConnection
    if settings.security == "ssl":
        conn = SMTPSSLConnection(local_hostname=helo, timeout=settings.timeout, context=context)
    else:
        conn = SMTPConnection(local_hostname=helo, timeout=settings.timeout)
    try:
        code, reply = conn.connect(settings.host, settings.port)
        if code != 220:
            raise smtplib.SMTPConnectError(code, reply)
        conn.stage = "ehlo"
        greet(conn)
        if settings.security == "starttls":
            conn.stage = "starttls"
            if not conn.has_extn("starttls"):
                raise _no_starttls_error(settings)
            conn.starttls(context=context)
            conn.stage = "ehlo"
            greet(conn)
        if authenticate and settings.user:
            conn.stage = "auth"
            login(conn, settings)
    except (OSError, smtplib.SMTPException, DeliveryError) as exc:
        stage = conn.stage
        if _session_in_step(exc):  # e.g. 535: end the session, do not just drop the link
            quit_quietly(conn, min(settings.timeout, 5.0))
        conn.close()
        problem: BaseException = exc
        if isinstance(exc, socket.gaierror) and stage == "connect":
            problem = check_resolver(exc, settings.host, settings.timeout)
        raise SessionError(stage, problem, hint(problem, settings, stage=stage)) from None
    return conn


# --------------------------------------------------------------------------------------------
# The transport
# --------------------------------------------------------------------------------------------


@dataclass
class _Session:
    conn: smtplib.SMTP
    pipelining: bool
    size_limit: int | None
    smtputf8: bool
    eightbit: bool
    needs_rset: bool = False


@dataclass
class _Outcome:
    mail: tuple[int, str] | None = None
    rcpt: dict[str, tuple[int, str]] = field(default_factory=dict)
    data: tuple[int, str] | None = None


class _ServerClosing(Exception):
    """The server answered 421: it is closing the channel."""

    def __init__(self, code: int, text: str) -> None:
        self.code, self.text = code, text
        super().__init__(f"{code} {text}")


MAYBE_DELIVERED = (
    "connection lost after the message was sent: the server may have delivered it; "
    "not retried to avoid a duplicate"
)


class _OutcomeUnknown(Exception):
    """The link failed after the end of DATA was sent, before the server's reply."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        self.rcpt: dict[str, tuple[int, str]] = {}  # the RCPT replies of that transaction
        super().__init__(str(original))


class _Abort(Exception):
    """The server cannot be used any more in this batch; ``text`` goes to every later message."""

    def __init__(self, text: str, result: SendResult) -> None:
        self.text = text
        self.result = result
        super().__init__(text)


def _is2(code: int) -> bool:
    return 200 <= code < 300


def _is4(code: int) -> bool:
    return 400 <= code < 500


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
        self._session: _Session | None = None
        self._stage = "connect"
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
        session, self._session = self._session, None
        if session is None:
            return
        try:
            session.conn.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            session.conn.close()

    # -- per message -------------------------------------------------------------------------

    def _send_one(self, out: Outgoing) -> SendResult:
        problem = self._check(out)
        if problem is not None:
            self._log(logging.WARNING, "not sending %s: %s", out.message_id, problem)
            return self._failed(out, problem)
        token = None
        if self._daily is not None:
            try:
                token, count = self._daily.reserve()
            except (sqlite3.Error, OSError) as exc:
                text = (
                    f"Cannot keep the daily message count in {self._daily.path} ({exc}); "
                    "the message was not sent. Fix: make that folder writable, or unset "
                    "SMTP_RATE_PER_DAY."
                )
                raise _Abort(text, self._failed(out, text)) from None
            if token is None:
                text = (
                    f"Daily sending limit reached: {count} messages in the last 24 hours "
                    f"(SMTP_RATE_PER_DAY={self._daily.cap}); the message was not sent. Fix: "
                    "send it again later (it can be retried), or raise SMTP_RATE_PER_DAY if "
                    "your provider allows more (Gmail allows about 500 a day)."
                )
                raise _Abort(text, self._failed(out, text))
        self._wait_for_minute_slot()
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
        if token is not None and not result.accepted and not _maybe_delivered(result):
            self._release(token)  # nobody got it; an unknown outcome keeps its slot
        return result

    def _release(self, token: float) -> None:
        assert self._daily is not None
        try:
            self._daily.release(token)
        except (sqlite3.Error, OSError) as exc:  # the count stays one too high: harmless
            self._log(logging.WARNING, "could not update %s: %s", self._daily.path, exc)

    def _check(self, out: Outgoing) -> str | None:
        if not out.recipients:
            return "The message has no recipients. Fix: add at least one To, Cc or Bcc address."
        for address in (out.sender, *out.recipients):
            if _CONTROL.search(address) or _BAD_ADDRESS.search(_bare(address)):
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
        payload = _payload(out.data)
        order = list(dict.fromkeys(_bare(r) for r in out.recipients))
        final: dict[str, RecipientResult] = {}
        pending = list(order)
        last_reply: dict[str, tuple[int, str]] = {}
        problem: Hint | None = None
        connection_trouble = False
        attempts = 0
        while pending:
            attempts += 1
            try:
                session = self._ensure_session()
                self._check_against_server(out, session, pending)
                outcome = self._transaction(session, out, pending, payload)
            except SessionError as exc:
                problem, connection_trouble = exc.hint, True
                if not exc.transient:
                    failed = self._finish(result, order, final, {}, exc.hint, attempts)
                    raise _Abort(str(exc.hint), failed) from None
            except DeliveryError as exc:  # this server cannot take this message (size, UTF-8)
                problem, connection_trouble = hint(exc, settings), False
                self._log(logging.WARNING, "not sending %s: %s", out.message_id, problem)
                break
            except _OutcomeUnknown as exc:
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
                    code, text = exc.rcpt.get(address, (250, ""))
                    if _is2(code):
                        final[address] = RecipientResult(
                            address, False, None, MAYBE_DELIVERED, unknown=True
                        )
                    elif _is4(code):
                        deferred.append(address)
                        last_reply[address] = (code, text)
                    else:
                        final[address] = RecipientResult(address, False, code, text)
                pending, connection_trouble = deferred, False
            except _ServerClosing as exc:
                self._drop_session()
                problem, connection_trouble = hint((exc.code, exc.text), settings), False
                for address in pending:
                    last_reply[address] = (exc.code, exc.text)
            except (OSError, smtplib.SMTPException) as exc:
                self._drop_session()
                problem = hint(exc, settings, stage=self._stage)
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
        outcome: _Outcome,
        pending: list[str],
        final: dict[str, RecipientResult],
        last_reply: dict[str, tuple[int, str]],
    ) -> tuple[list[str], Hint | None]:
        """Fold one transaction's replies into ``final``; return what to retry and why."""
        settings = self.settings
        retry: list[str] = []
        problem: Hint | None = None

        def settle(address: str, reply: tuple[int, str], stage: str) -> None:
            nonlocal problem
            code, text = reply
            if _is2(code):
                final[address] = RecipientResult(address, True, code, text)
            elif _is4(code) or code < 200:
                retry.append(address)
                last_reply[address] = reply
                problem = hint(reply, settings, stage=stage)
            else:
                final[address] = RecipientResult(address, False, code, text)
                if problem is None or not problem.transient:
                    problem = hint(reply, settings, stage=stage)

        assert outcome.mail is not None
        if not _is2(outcome.mail[0]):
            for address in pending:
                settle(address, outcome.mail, "mail")
            return retry, problem
        candidates = []
        for address in pending:
            reply = outcome.rcpt[address]
            if _is2(reply[0]):
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
        last_reply: dict[str, tuple[int, str]],
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

    # -- the SMTP transaction ----------------------------------------------------------------

    def _transaction(
        self, session: _Session, out: Outgoing, pending: list[str], payload: bytes
    ) -> _Outcome:
        conn = session.conn
        params, utf8 = self._mail_parameters(session, out, pending)
        encoding = "utf-8" if utf8 else "ascii"
        mail = f"MAIL FROM:<{_bare(out.sender)}>{params}\r\n".encode(encoding)
        rcpts = [f"RCPT TO:<{address}>\r\n".encode(encoding) for address in pending]
        outcome = _Outcome()
        reset = session.needs_rset
        session.needs_rset = True  # until a final reply closes the transaction
        if session.pipelining:
            self._stage = "mail"
            conn.send((b"RSET\r\n" if reset else b"") + mail + b"".join(rcpts) + b"DATA\r\n")
            if reset:
                self._reply(conn)
            outcome.mail = self._reply(conn)
            self._stage = "rcpt"
            for address in pending:
                outcome.rcpt[address] = self._reply(conn)
            self._stage = "data"
            go_ahead = self._reply(conn)
            usable = _is2(outcome.mail[0]) and any(_is2(c) for c, _ in outcome.rcpt.values())
            if go_ahead[0] == 354:
                if usable:
                    self._confirm_data(conn)
                    outcome.data = self._end_of_data(conn, payload, outcome)
                    session.needs_rset = False
                else:  # RFC 2920: a server may accept DATA with no valid recipient
                    conn.send(b".\r\n")
                    self._reply(conn)
            elif usable:
                outcome.data = go_ahead
            return outcome
        if reset:
            self._stage = "mail"
            conn.send(b"RSET\r\n")
            self._reply(conn)
        self._stage = "mail"
        conn.send(mail)
        outcome.mail = self._reply(conn)
        if not _is2(outcome.mail[0]):
            return outcome
        self._stage = "rcpt"
        for address, command in zip(pending, rcpts, strict=True):
            conn.send(command)
            outcome.rcpt[address] = self._reply(conn)
        if not any(_is2(c) for c, _ in outcome.rcpt.values()):
            return outcome
        self._stage = "data"
        conn.send(b"DATA\r\n")
        go_ahead = self._reply(conn)
        if go_ahead[0] != 354:
            outcome.data = go_ahead
            return outcome
        self._confirm_data(conn)
        outcome.data = self._end_of_data(conn, payload, outcome)
        session.needs_rset = False
        return outcome

    def _confirm_data(self, conn: smtplib.SMTP) -> None:
        """Ask the caller's ``before_data`` hook (the queue marks the rows ``sending``).

        Until here the server cannot have the message, so a crash is harmless; from here
        on, a crash leaves its outcome unknown. A hook that says no ends the connection
        (the server drops a DATA that never ends) and raises :class:`DataRefused`.
        """
        hook = self._before_data
        if hook is None or hook():
            return
        conn.close()
        self._session = None
        raise DataRefused("the delivery queue did not allow this message to be sent")

    def _end_of_data(
        self, conn: smtplib.SMTP, payload: bytes, outcome: _Outcome
    ) -> tuple[int, str]:
        """Send the message with its final dot and return the server's verdict.

        A failure while sending is safe to retry: the final dot did not get through, so the
        server discards the partial message. Once it has been sent, a lost link (EOF, reset,
        timeout, an unreadable reply) raises :class:`_OutcomeUnknown`: the server may have
        queued the message. A ``421`` reply is an answer (not queued) and stays retryable.
        """
        conn.send(payload)
        try:
            return self._reply(conn)
        except (OSError, smtplib.SMTPException) as exc:
            unknown = _OutcomeUnknown(exc)
            unknown.rcpt = dict(outcome.rcpt)
            raise unknown from exc

    def _reply(self, conn: smtplib.SMTP) -> tuple[int, str]:
        code, raw = conn.getreply()
        text = self._redact(raw.decode("utf-8", "replace"))
        if code == 421:
            conn.close()
            raise _ServerClosing(code, text)
        if code < 100:
            conn.close()
            raise smtplib.SMTPResponseException(code, f"unreadable reply from server: {text!r}")
        return code, text

    def _mail_parameters(
        self, session: _Session, out: Outgoing, pending: list[str]
    ) -> tuple[str, bool]:
        params = []
        if session.size_limit is not None:
            params.append(f"SIZE={out.size}")
        if session.eightbit and not out.data.isascii():
            params.append("BODY=8BITMIME")
        utf8 = not all(a.isascii() for a in (out.sender, *pending))
        if utf8:
            params.append("SMTPUTF8")
        return ("".join(" " + p for p in params), utf8)

    def _check_against_server(self, out: Outgoing, session: _Session, pending: list[str]) -> None:
        """Raise DeliveryError for a message this server will refuse anyway (before MAIL)."""
        limit = session.size_limit
        if limit and out.size > limit:
            raise DeliveryError(
                f"The message is {out.size:,} bytes but {self.settings.host} accepts at most "
                f"{limit:,} bytes (its SIZE limit); it was not sent.",
                "send fewer or smaller attachments (link large files instead)",
            )
        if not session.smtputf8 and not all(a.isascii() for a in (out.sender, *pending)):
            raise DeliveryError(
                "An envelope address contains non-ASCII characters and the server does not "
                "support SMTPUTF8.",
                "use an ASCII form of the address, or a server that supports SMTPUTF8",
            )

    # -- connection management ---------------------------------------------------------------

    def _ensure_session(self) -> _Session:
        if self._session is not None:
            sock = self._session.conn.sock
            if sock is not None and _still_usable(sock):
                return self._session
            # Closed, or the server spoke out of turn (EOF or an unsolicited 421): start afresh.
            self._log(logging.INFO, "server closed the connection; reconnecting")
            self._drop_session()
        self._stage = "connect"
        if self._context is None and self.settings.security != "none":
            self._context = tls_context(self.settings)
        conn = open_session(self.settings, self._context)
        self.connections_opened += 1
        features = conn.esmtp_features
        size = features.get("size", "").strip()
        session = _Session(
            conn=conn,
            pipelining="pipelining" in features,
            size_limit=int(size) if size.isdigit() and int(size) > 0 else None,
            smtputf8="smtputf8" in features,
            eightbit="8bitmime" in features,
        )
        if "size" in features and session.size_limit is None:
            session.size_limit = 0  # SIZE offered without a number: send SIZE=, no limit
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
            ", PIPELINING" if session.pipelining else "",
        )
        self._session = session
        return session

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.conn.close()

    def _backoff_delay(self, attempt: int) -> float:
        ceiling = min(self.backoff_cap, self.backoff * (2 ** (attempt - 1)))
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto

    def _wait_for_minute_slot(self) -> None:
        """Take a slot in the account's shared per-minute window, sleeping until one is free.

        The window's lock is held while sleeping, so waiting senders take slots in turn.
        """
        cap = self.settings.rate_per_minute
        if not cap:
            return
        window = self._minute
        with window.lock:
            recent = window.recent
            now = self._clock()
            while recent and recent[0] <= now - self.rate_window:
                recent.popleft()
            if len(recent) >= cap:
                wait = recent[0] + self.rate_window - now
                self._log(
                    logging.INFO,
                    "rate limit SMTP_RATE_PER_MINUTE=%d reached; waiting %.1f s",
                    cap,
                    wait,
                )
                self._sleep(max(wait, 0.0))
                now = self._clock()
                while recent and recent[0] <= now - self.rate_window:
                    recent.popleft()
            recent.append(now)

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
            abort.result.retryable = True
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


def _still_usable(sock: socket.socket) -> bool:
    """Is an idle connection still good for the next transaction?

    Between transactions the server has nothing to say. If the socket is readable it
    either closed (EOF), spoke out of turn (an unsolicited 421), or, with TLS 1.3, sent a
    protocol record such as a session ticket; only the last leaves the connection usable.
    """
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    if not readable:
        return True
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        sock.recv(1)  # b"" (EOF) or application data: either way, start afresh
    except (ssl.SSLWantReadError, BlockingIOError):
        return True  # TLS housekeeping only, no application data
    except OSError:
        return False
    finally:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass
    return False


def _bare(address: str) -> str:
    """The addr-spec of ``address`` (``Name <a@b>`` becomes ``a@b``)."""
    address = address.strip()
    if "<" in address:
        return parseaddr(address)[1] or address
    return address


def _payload(data: bytes) -> bytes:
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
