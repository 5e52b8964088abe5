"""Connecting to an SMTP server: DNS with a deadline, TCP, TLS (implicit or STARTTLS),
EHLO and login, each failure explained by a cause-and-fix hint.

Certificates are verified against the system store or ``SMTP_CA_FILE``; STARTTLS never
falls back to plaintext; AUTH happens only when ``SMTP_USER`` is set, and never over an
unencrypted link unless ``SMTP_ALLOW_PLAINTEXT_AUTH=true``. A session that fails after the
server spoke ends with QUIT. Nothing here logs or returns the password.
"""

from __future__ import annotations

import select
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from functools import lru_cache

from notifier.errors import DeliveryError
from notifier.mail.hints import (
    Hint,
    ImplicitTLSGreeting,
    NoGreeting,
    ResolverDown,
    SlowReply,
    hint,
    is_tls_record,
)
from notifier.settings import Settings

_AUTH_PREFERENCE = ("PLAIN", "LOGIN", "CRAM-MD5")


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


class _DeadlineReader:
    """What smtplib reads replies from (its ``file``), with a deadline for a whole reply.

    A socket timeout bounds one ``recv`` only, so a server trickling a byte just before
    each timeout could hold a reply (and the connection, and a worker) for ever; smtplib
    reads through ``sock.makefile()``, whose ``readline`` never gives up. Here every
    ``recv`` waits at most what is left of the reply's deadline (:meth:`start`), and then
    :class:`SlowReply` (a TimeoutError) ends the reply (smtplib turns it into
    SMTPServerDisconnected; the hint says the server was too slow).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.deadline: float | None = None
        self.budget = 0.0
        self.begun = False  # some of this reply arrived

    def start(self, budget: float | None) -> None:
        """A new reply: it must be complete within ``budget`` seconds (None: no deadline)."""
        self.budget = budget or 0.0
        self.begun = bool(self.buffer)
        self.deadline = None if budget is None else time.monotonic() + budget

    def readline(self, limit: int = -1) -> bytes:
        """One line (up to ``limit`` bytes) from the buffer and the socket, within the deadline."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0 and (limit < 0 or end < limit):
                cut = end + 1
                break
            if 0 <= limit <= len(self.buffer):
                cut = limit
                break
            chunk = self._recv()
            self.begun = True
            if not chunk:  # EOF: what there is (smtplib reports the closed link)
                cut = len(self.buffer)
                break
            self.buffer += chunk
        line, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return line

    def _recv(self) -> bytes:
        if self.deadline is None:
            return self.sock.recv(8192)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SlowReply(f"timed out: no complete reply within {self.budget:g} s")
        previous = self.sock.gettimeout()
        self.sock.settimeout(left if previous is None else min(left, previous))
        try:
            return self.sock.recv(8192)
        except TimeoutError:
            if self.begun:  # the reply had begun: it came too slowly
                raise SlowReply(f"timed out: no complete reply within {self.budget:g} s") from None
            raise
        finally:
            self.sock.settimeout(previous)

    def close(self) -> None:
        """Forget the buffer (smtplib closes the socket itself)."""
        self.buffer = b""


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

    def getreply(self) -> tuple[int, bytes]:
        """smtplib's reply reader, with the whole reply due within the socket's timeout.

        The budget is the socket's current timeout (``SMTP_TIMEOUT``, or the shorter wait
        ``quit_quietly`` sets), counted from here to the reply's last line, however the
        server spreads its bytes (see :class:`_DeadlineReader`).
        """
        sock = self.sock  # type: ignore[attr-defined]
        if sock is not None:
            reader = self.file  # type: ignore[has-type]
            if not isinstance(reader, _DeadlineReader) or reader.sock is not sock:
                reader = self.file = _DeadlineReader(sock)  # new link, or TLS after STARTTLS
            reader.start(sock.gettimeout())
        return super().getreply()  # type: ignore[misc]


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


def still_usable(sock: socket.socket) -> bool:
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
