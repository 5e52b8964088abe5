"""Cause-and-fix text for the classic SMTP failures, shared by the transport and ``doctor``.

:func:`hint` turns an exception (socket, TLS, smtplib, :class:`~notifier.errors.NotifierError`)
or a server reply ``(code, text)`` into a :class:`Hint` with a ``cause`` (what happened, with
the server's own words) and a ``fix`` (what to change, naming the setting). :func:`explain`
joins both into one line for a :class:`~notifier.mail.transport.base.SendResult` error.

Every text passes through :func:`notifier.settings.redact`, so a server that echoes a
credential back cannot leak it into a log or an error.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
from dataclasses import dataclass

from notifier.errors import NotifierError
from notifier.settings import Settings, provider_of_host, redact

__all__ = [
    "Hint",
    "ImplicitTLSGreeting",
    "NoGreeting",
    "Reply",
    "ResolverDown",
    "explain",
    "hint",
    "is_timeout",
    "is_tls_record",
    "reply_text",
]


class ImplicitTLSGreeting(ConnectionError):
    """Where the SMTP greeting was expected the server spoke TLS; ``evidence`` says how."""

    def __init__(self, evidence: str) -> None:
        self.evidence = evidence
        super().__init__(evidence)


class NoGreeting(TimeoutError):
    """No SMTP greeting within the timeout, and the server did not answer TLS either."""


class SlowReply(TimeoutError):
    """The server was sending a reply but did not finish it within the timeout."""


def _slow_reply(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, SlowReply):
            return True
        current = current.__cause__ or current.__context__
    return False


class ResolverDown(socket.gaierror):
    """A host name did not resolve and well-known names (``checked``) did not either."""

    def __init__(self, original: socket.gaierror, checked: tuple[str, ...]) -> None:
        super().__init__(original.errno, original.strerror)
        self.checked = checked


Reply = tuple[int, "str | bytes"]

# OpenSSL verify codes (X509_V_ERR_*) worth a specific sentence.
_HOSTNAME_MISMATCH = 62
_EXPIRED = 10
_SELF_SIGNED = {18, 19}
_UNKNOWN_ISSUER = {2, 20, 21}

_AUTH_CODES = {534, 535}
_AUTH_STATUS = re.compile(r"\b5\.7\.(8|9|14)\b")
_RELAY = re.compile(
    r"relay|sender|send(ing)? as|send mail as|not (owned|authori[sz]ed)|from address|5\.7\.1\b",
    re.IGNORECASE,
)
_SIZE = re.compile(r"\b5\.3\.4\b|size|too (big|large)", re.IGNORECASE)
_STARTTLS_FIRST = re.compile(r"starttls|encrypt|5\.7\.11", re.IGNORECASE)
_WRONG_VERSION = re.compile(
    r"WRONG_VERSION_NUMBER|record layer failure|packet length too long|unknown protocol|"
    r"HTTP_REQUEST|wrong version number",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Hint:
    """What went wrong (``cause``) and what to change (``fix``, None when nothing helps)."""

    cause: str
    fix: str | None = None
    transient: bool = False

    def __str__(self) -> str:
        return f"{self.cause} Fix: {self.fix}" if self.fix else self.cause


def reply_text(code: int, text: str | bytes) -> str:
    """A server reply as one line: ``535 5.7.8 Username and Password not accepted``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    flat = " ".join(text.split())
    return f"{code} {flat}".strip() if code and code > 0 else flat


def is_tls_record(data: bytes | str) -> bool:
    """Do these first bytes from a server start a TLS record (handshake or alert)?"""
    first = data[:1].encode("latin-1") if isinstance(data, str) else data[:1]
    return first in (b"\x15", b"\x16")


def is_timeout(exc: BaseException) -> bool:
    """True for a socket timeout, also when smtplib wrapped it in SMTPServerDisconnected."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (TimeoutError, socket.timeout)):
            return True
        if isinstance(current, smtplib.SMTPServerDisconnected) and "timed out" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def explain(problem: BaseException | Reply, settings: Settings, *, stage: str | None = None) -> str:
    """One line naming the cause and the fix, safe to log and to store (secrets redacted)."""
    return str(hint(problem, settings, stage=stage))


def hint(problem: BaseException | Reply, settings: Settings, *, stage: str | None = None) -> Hint:
    """Diagnose ``problem``; ``stage`` (``connect``, ``greeting``, ``tls``, ``auth``, ``mail``,
    ``rcpt``, ``data``) sharpens the advice when it is known."""
    raw = _diagnose(problem, settings, stage)
    secrets = _secrets(settings)
    return Hint(
        redact(raw.cause, secrets),
        redact(raw.fix, secrets) if raw.fix else None,
        raw.transient,
    )


def _secrets(settings: Settings) -> list[str]:
    values = list(settings.secrets())
    if settings.user and settings.password:
        values.append(f"\0{settings.user}\0{settings.password}")  # the AUTH PLAIN blob
    return values


def _where(settings: Settings) -> str:
    return f"{settings.host}:{settings.port}"


def _diagnose(problem: BaseException | Reply, settings: Settings, stage: str | None) -> Hint:
    if isinstance(problem, tuple):
        code, text = problem
        return _from_reply(int(code), reply_text(int(code), text), settings, stage)
    if isinstance(problem, NotifierError):
        return Hint(problem.message, problem.fix)
    if isinstance(problem, ImplicitTLSGreeting):
        return _implicit_tls_spoken(settings, problem.evidence)
    if isinstance(problem, NoGreeting):
        return _no_greeting(settings)
    if isinstance(problem, smtplib.SMTPAuthenticationError):
        return _from_reply(
            problem.smtp_code, reply_text(problem.smtp_code, problem.smtp_error), settings, "auth"
        )
    if isinstance(problem, smtplib.SMTPConnectError):
        return _from_greeting(problem, settings)
    if isinstance(problem, smtplib.SMTPNotSupportedError):
        return _not_supported(problem, settings)
    if isinstance(problem, smtplib.SMTPResponseException):
        return _from_reply(
            problem.smtp_code, reply_text(problem.smtp_code, problem.smtp_error), settings, stage
        )
    if isinstance(problem, socket.gaierror):
        return _from_dns(problem, settings)
    if isinstance(problem, ssl.SSLCertVerificationError):
        return _from_certificate(problem, settings)
    if isinstance(problem, ssl.SSLError):
        return _from_tls(problem, settings)
    if _slow_reply(problem):
        return Hint(
            f"{_where(settings)} sent a reply during {stage or 'the session'} too slowly: "
            f"not complete within {settings.timeout:g} s (SMTP_TIMEOUT bounds a whole reply).",
            "it is retried; if the server is just slow raise SMTP_TIMEOUT, else report the "
            "server to its administrator",
            transient=True,
        )
    if is_timeout(problem):
        return _from_timeout(settings, stage)
    if isinstance(problem, ConnectionRefusedError):
        return Hint(
            f"Connection to {_where(settings)} was refused: nothing accepts connections on "
            "that port.",
            "check SMTP_HOST and SMTP_PORT (587 for STARTTLS, 465 for implicit TLS) and that the "
            "mail server is running and not firewalled",
            transient=True,
        )
    if isinstance(problem, smtplib.SMTPServerDisconnected):
        return _from_disconnect(problem, settings, stage)
    if isinstance(problem, OSError):
        return Hint(
            f"Network error talking to {_where(settings)}: {problem.strerror or problem}.",
            "check that this machine can reach the mail server (network, VPN, firewall)",
            transient=True,
        )
    return Hint(f"{type(problem).__name__}: {problem}")


def _auth_fix(settings: Settings) -> str:
    generic = (
        "check SMTP_USER and SMTP_PASSWORD; Gmail, Yahoo and Outlook refuse your normal "
        "password over SMTP and need an app password (created after turning on 2-step "
        "verification)"
    )
    return settings.auth_hint or generic


def _from_reply(code: int, text: str, settings: Settings, stage: str | None) -> Hint:
    said = f"the server said: {text}"
    if code in (530, 538) or (code >= 500 and _STARTTLS_FIRST.search(text)):
        if code == 538 or _STARTTLS_FIRST.search(text):
            return Hint(
                f"The server requires an encrypted connection first ({said}).",
                "set SMTP_SECURITY=starttls (port 587) or SMTP_SECURITY=ssl (port 465)",
            )
        return Hint(
            f"The server requires a login before sending ({said}).",
            "set SMTP_USER and SMTP_PASSWORD",
        )
    if code in _AUTH_CODES or (stage == "auth" and code >= 500) or _AUTH_STATUS.search(text):
        return Hint(
            f"Login as SMTP_USER={settings.user} was refused ({said}).", _auth_fix(settings)
        )
    if stage == "auth" and 400 <= code < 500:
        return Hint(f"Login temporarily failed ({said}).", "try again later", transient=True)
    if code == 552 or (code >= 500 and _SIZE.search(text) and stage in (None, "mail", "data")):
        return Hint(
            f"The message is larger than the server accepts ({said}).",
            "send fewer or smaller attachments (link large files instead), or lower "
            "NOTIFIER_MAX_MESSAGE_SIZE so oversized reports fail before sending",
        )
    if code in (550, 551, 553, 554) and _RELAY.search(text) and stage != "rcpt":
        return Hint(
            f"The server will not send mail from {settings.from_address} for this account "
            f"({said}).",
            "set SMTP_FROM to an address the account may send as (usually SMTP_USER itself, "
            "or an alias configured at the provider)",
        )
    if code in (550, 551, 553, 554) and _RELAY.search(text):
        return Hint(
            f"The server refused to relay to this recipient ({said}).",
            "log in (SMTP_USER/SMTP_PASSWORD) so the server relays for you, and make SMTP_FROM "
            "an address the account may send as",
        )
    if code == 421:
        return Hint(
            f"The server closed the session temporarily ({said}).",
            "it will be retried; if it keeps happening you may be over the provider's rate "
            "limit: set SMTP_RATE_PER_MINUTE / SMTP_RATE_PER_DAY",
            transient=True,
        )
    if 400 <= code < 500:
        return Hint(
            f"The server refused temporarily ({said}).",
            "notifier retries SMTP_RETRIES times with backoff; if it persists, send again later",
            transient=True,
        )
    if code == 550 and stage == "rcpt":
        return Hint(f"The recipient was refused ({said}).", "check the recipient address")
    if code >= 500:
        return Hint(f"The server refused permanently ({said}).", None)
    return Hint(f"Unexpected reply ({said}).", None, transient=True)


def _from_greeting(problem: smtplib.SMTPConnectError, settings: Settings) -> Hint:
    code = problem.smtp_code
    text = reply_text(code, problem.smtp_error)
    if code == -1 and settings.security != "ssl" and is_tls_record(problem.smtp_error):
        return _implicit_tls_spoken(settings, "sent a TLS record where the greeting was due")
    if code == -1 and settings.security != "ssl":
        return _implicit_tls_expected(settings, f"it sent something that is not SMTP: {text!r}")
    if 400 <= code < 500:
        return Hint(
            f"{_where(settings)} is not accepting connections right now ({text}).",
            "it will be retried; try again later",
            transient=True,
        )
    return Hint(f"{_where(settings)} refused the session ({text}).", None)


def _not_supported(problem: smtplib.SMTPNotSupportedError, settings: Settings) -> Hint:
    text = str(problem)
    if "auth" in text.lower():
        fix = (
            "this server may allow login only after STARTTLS: set SMTP_SECURITY=starttls "
            "(port 587) or ssl (port 465); if it needs no login, remove SMTP_USER and "
            "SMTP_PASSWORD"
        )
        if settings.security != "none":
            fix = "check you are using the submission port (587 or 465), not 25; " + fix
        return Hint(f"{_where(settings)} does not offer login (no AUTH in EHLO).", fix)
    if "starttls" in text.lower():
        return _no_starttls(settings)
    return Hint(f"{_where(settings)} does not support a needed feature: {text}.", None)


def _no_starttls(settings: Settings) -> Hint:
    return Hint(
        f"{_where(settings)} does not offer STARTTLS, so the connection cannot be encrypted "
        "(notifier never falls back to plaintext).",
        "if the server uses implicit TLS (usually port 465) set SMTP_SECURITY=ssl and "
        "SMTP_PORT=465; use SMTP_SECURITY=none only for a trusted relay on localhost",
    )


_OFFLINE_FIX = (
    "check this machine's network connection (cable or Wi-Fi, VPN, proxy) and DNS: "
    "`getent hosts {host}` (or `nslookup {host}`) must print an address; then try again"
)


def _from_dns(problem: socket.gaierror, settings: Settings) -> Hint:
    host = settings.host
    if isinstance(problem, ResolverDown):
        return Hint(
            f"The mail server name {host!r} could not be resolved ({problem.strerror}), and "
            f"neither could well-known names ({', '.join(problem.checked)}): this machine "
            "cannot resolve names (no network connection, or no DNS server answers).",
            _OFFLINE_FIX.format(host=host),
            transient=True,
        )
    provider = provider_of_host(host)
    if provider is not None and problem.errno != socket.EAI_AGAIN:
        return Hint(
            f"The mail server name {host!r} could not be resolved ({problem.strerror}), "
            f"although it is the right name for {provider}: this machine cannot resolve "
            "names (no network connection, or no DNS server answers).",
            _OFFLINE_FIX.format(host=host),
            transient=True,
        )
    if problem.errno == socket.EAI_AGAIN:
        return Hint(
            f"DNS lookup of {settings.host} failed temporarily ({problem.strerror}).",
            "check this machine's network and DNS; it will be retried",
            transient=True,
        )
    return Hint(
        f"The mail server name {settings.host!r} could not be resolved ({problem.strerror}).",
        "check the spelling of SMTP_HOST (for example smtp.gmail.com), or set SMTP_PROVIDER",
    )


def _from_certificate(problem: ssl.SSLCertVerificationError, settings: Settings) -> Hint:
    detail = problem.verify_message or str(problem)
    code = problem.verify_code
    host = settings.host
    if (
        code == _HOSTNAME_MISMATCH
        or "hostname mismatch" in detail.lower()
        or ("doesn't match" in str(problem))
    ):
        return Hint(
            f"The certificate presented by {host} is for a different name ({detail}).",
            f"set SMTP_HOST to the name the certificate is issued for (the provider's "
            f"documented SMTP host name), not an IP address or alias of {host}",
        )
    if code == _EXPIRED or "expired" in detail.lower():
        return Hint(
            f"The certificate presented by {host} has expired ({detail}).",
            "the server's administrator must renew it; check the machine's clock too",
        )
    ca_hint = (
        f" (SMTP_CA_FILE={settings.ca_file} does not contain the issuing CA)"
        if settings.ca_file
        else ""
    )
    return Hint(
        f"The certificate presented by {host} could not be verified: {detail}{ca_hint}.",
        "if the server uses a private or self-signed CA, set SMTP_CA_FILE to that CA's PEM "
        "file; otherwise check SMTP_HOST points at the real mail server",
    )


def _from_tls(problem: ssl.SSLError, settings: Settings) -> Hint:
    reason = getattr(problem, "reason", None)
    text = f"{reason or ''} {problem}"
    if settings.security == "ssl" and _WRONG_VERSION.search(text):
        return Hint(
            f"{_where(settings)} does not speak TLS from the first byte ({reason or problem}): "
            "it expects plain SMTP upgraded with STARTTLS.",
            "set SMTP_SECURITY=starttls (port 587), or SMTP_PORT=465 for implicit TLS",
        )
    return Hint(
        f"The TLS handshake with {_where(settings)} failed ({reason or problem}).",
        "check SMTP_SECURITY matches the port (ssl for 465, starttls for 587) and that the "
        "server supports TLS 1.2 or newer",
    )


def _from_timeout(settings: Settings, stage: str | None) -> Hint:
    waited = f"{settings.timeout:g} s"
    if stage in (None, "connect") and settings.port == 25:
        return Hint(
            f"Connecting to {_where(settings)} timed out after {waited}: most hosting and "
            "cloud providers block outgoing port 25.",
            "use the submission port: SMTP_PORT=587 with SMTP_SECURITY=starttls (or 465 with ssl)",
            transient=True,
        )
    if stage == "greeting" and settings.security != "ssl":
        return _implicit_tls_expected(settings, f"no greeting within {waited}")
    if stage in (None, "connect"):
        return Hint(
            f"Connecting to {_where(settings)} timed out after {waited}.",
            "check SMTP_HOST and SMTP_PORT and that no firewall drops the traffic; raise "
            "SMTP_TIMEOUT for a slow server",
            transient=True,
        )
    return Hint(
        f"{_where(settings)} stopped answering during {stage or 'the session'} "
        f"(timed out after {waited}).",
        "it is retried; raise SMTP_TIMEOUT if the server is just slow",
        transient=True,
    )


def _implicit_tls_spoken(settings: Settings, evidence: str) -> Hint:
    """The server answered in TLS where the greeting was due: a settings error, never retried."""
    expected = "STARTTLS" if settings.security == "starttls" else "plain SMTP"
    return Hint(
        f"{_where(settings)} {evidence}: this port speaks implicit TLS from the first byte, "
        f"not {expected}.",
        "set SMTP_SECURITY=ssl (or SMTP_SECURE=true) for this port, or use port 587 with "
        "SMTP_SECURITY=starttls",
    )


def _no_greeting(settings: Settings) -> Hint:
    if settings.port == 465:
        return _implicit_tls_expected(settings, f"sent no greeting within {settings.timeout:g} s")
    return Hint(
        f"{_where(settings)} accepted the connection but sent no greeting within "
        f"{settings.timeout:g} s (nor did it answer a TLS handshake): it is overloaded, or "
        "this is not a mail server's port.",
        "check SMTP_HOST and SMTP_PORT; raise SMTP_TIMEOUT for a slow server",
        transient=True,
    )


def _implicit_tls_expected(settings: Settings, what: str) -> Hint:
    if settings.port == 465:
        cause = (
            f"{_where(settings)} accepted the connection but {what}: port 465 expects "
            "implicit TLS from the first byte."
        )
    else:
        cause = (
            f"{_where(settings)} accepted the connection but {what}; a server that waits "
            "silently usually expects implicit TLS."
        )
    return Hint(
        cause,
        "set SMTP_SECURITY=ssl (or SMTP_SECURE=true) for port 465, or use port 587 with "
        "SMTP_SECURITY=starttls",
        transient=settings.port != 465,
    )


def _from_disconnect(
    problem: smtplib.SMTPServerDisconnected, settings: Settings, stage: str | None
) -> Hint:
    if stage == "greeting" and settings.port == 465 and settings.security != "ssl":
        return _implicit_tls_expected(settings, "closed it without an SMTP greeting")
    return Hint(
        f"{_where(settings)} closed the connection during {stage or 'the session'} ({problem}).",
        "it is retried; if it keeps happening check SMTP_SECURITY matches the port",
        transient=True,
    )
