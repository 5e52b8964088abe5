"""Step-by-step SMTP diagnosis: settings, DNS, TCP, TLS mode, certificate, EHLO, login, test.

TCP, TLS mode, certificate, EHLO and login are checked over one connection, which ends
with QUIT (mail servers log bare probe connections and dropped sessions as errors); the
test message goes through the transport, as real mail does.

:func:`diagnose` returns a list of :class:`Step`; it stops after the first failure that makes
the later steps meaningless (no point checking the certificate of a host that does not
resolve). Each failed step carries a ``remedy`` naming the setting to change; the texts come
from :mod:`notifier.mail.hints`, the same ones the transport puts in its results.

The password is never part of any step: every text is passed through
:func:`notifier.settings.redact` before it is returned.
"""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from notifier.errors import ConfigError, DeliveryError
from notifier.mail.hints import Hint, hint, reply_text
from notifier.mail.model import Outgoing
from notifier.mail.transport.smtp import (
    SMTPConnection,
    SMTPSSLConnection,
    SMTPTransport,
    check_resolver,
    greet,
    local_hostname,
    login,
    plaintext_auth_error,
    quit_quietly,
    resolve,
    tls_context,
)
from notifier.settings import Settings, load_settings, redact

__all__ = ["Step", "diagnose", "format_steps", "TEST_SUBJECT"]

TEST_SUBJECT = "notifier doctor test"
_MAX_WAIT = 10.0  # doctor is interactive: never wait longer than this for one answer


@dataclass(frozen=True)
class Step:
    """One check: ``ok`` is True (passed), False (failed) or None (skipped / for information)."""

    name: str
    ok: bool | None
    detail: str
    remedy: str | None = None


class _Stop(Exception):
    """A step failed in a way that makes the remaining steps meaningless."""


def diagnose(
    settings: Settings | None = None,
    send_test_to: str | None = None,
    *,
    reference_names: Sequence[str] | None = None,
) -> list[Step]:
    """Check the SMTP setup step by step; with ``send_test_to``, send a real test message.

    ``settings=None`` loads them with :func:`notifier.settings.load_settings` (environment and
    ``./.env``); a :class:`~notifier.errors.ConfigError` becomes the failed first step.
    When SMTP_HOST does not resolve, ``reference_names`` (default: well-known names) are
    looked up to tell a wrong name from a machine without network.
    """
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            return [Step("Settings", False, exc.message, exc.fix)]
    steps: list[Step] = []
    try:
        _Doctor(settings, steps, reference_names).run(send_test_to)
    except _Stop:
        pass
    secrets = list(settings.secrets())
    if settings.user and settings.password:
        secrets.append(f"\0{settings.user}\0{settings.password}")
    return [
        replace(
            s,
            detail=redact(s.detail, secrets),
            remedy=redact(s.remedy, secrets) if s.remedy else None,
        )
        for s in steps
    ]


def format_steps(steps: list[Step]) -> list[str]:
    """The CLI lines: ``  ok   DNS: ...``, ``  FAIL TCP connect: ...`` and ``       fix: ...``."""
    lines = []
    for step in steps:
        label = {True: "ok", False: "FAIL", None: "--"}[step.ok]
        detail_lines = step.detail.splitlines() or [""]
        lines.append(f"  {label:<4} {step.name}: {detail_lines[0]}")
        lines.extend(f"       {extra}" for extra in detail_lines[1:])
        if step.remedy and step.ok is not True:
            lines.append(f"       fix: {step.remedy}")
    return lines


class _Doctor:
    def __init__(
        self, settings: Settings, steps: list[Step], reference_names: Sequence[str] | None
    ) -> None:
        self.s = settings
        self.steps = steps
        self.reference_names = reference_names
        self.wait = min(settings.timeout, _MAX_WAIT)
        self.where = f"{settings.host}:{settings.port}"

    # -- bookkeeping -------------------------------------------------------------------------

    def ok(self, name: str, detail: str, remedy: str | None = None) -> None:
        self.steps.append(Step(name, True, detail, remedy))

    def info(self, name: str, detail: str, remedy: str | None = None) -> None:
        self.steps.append(Step(name, None, detail, remedy))

    def fail(self, name: str, detail: str, remedy: str | None, *, stop: bool = True) -> None:
        self.steps.append(Step(name, False, detail, remedy))
        if stop:
            raise _Stop

    def fail_hint(self, name: str, diagnosis: Hint) -> None:
        self.fail(name, diagnosis.cause, diagnosis.fix)

    # -- the steps ---------------------------------------------------------------------------

    def run(self, send_test_to: str | None) -> None:
        if not self.settings_step(send_test_to):
            return
        addresses = self.dns_step()
        sock = self.tcp_step(addresses)
        conn = self.session_steps(sock)  # TLS mode, certificate, EHLO: the same connection
        try:
            self.ehlo_step(conn)
            self.login_step(conn)
        finally:
            quit_quietly(conn, self.wait)
        if send_test_to:
            self.send_step(send_test_to)

    def settings_step(self, send_test_to: str | None) -> bool:
        s = self.s
        if s.uses_outbox:
            folder = s.outbox_dir.resolve()
            self.ok(
                "Settings",
                f"no SMTP_HOST: mail goes to the outbox folder {folder} (open index.html there "
                "in a browser). That is fine for trying things out.",
            )
            self.info(
                "SMTP",
                "not checked: nothing to connect to",
                "to send real mail set SMTP_PROVIDER (gmail, outlook, yahoo, ...) or SMTP_HOST, "
                "plus SMTP_USER and SMTP_PASSWORD, in .env",
            )
            if send_test_to:
                self.outbox_test(send_test_to)
            return False
        login_text = (
            f"user {s.user}, password set (hidden)" if s.user else "no login (SMTP_USER not set)"
        )
        parts = [f"{self.where}", f"security={s.security}", login_text, f"from {s.from_address}"]
        if s.ca_file:
            parts.append(f"CA file {s.ca_file}")
        if s.provider:
            parts.append(f"provider {s.provider}")
        self.ok("Settings", ", ".join(parts))
        if not s.verify:
            self.info(
                "Verification",
                "TLS certificate verification is OFF (SMTP_VERIFY=false)",
                "set SMTP_CA_FILE to your server's CA instead and remove SMTP_VERIFY=false",
            )
        return True

    def dns_step(self) -> list[tuple]:
        assert self.s.host is not None and self.s.port is not None
        try:
            infos = resolve(self.s.host, self.s.port, self.wait)
        except socket.gaierror as exc:
            problem = check_resolver(exc, self.s.host, self.wait, self.reference_names)
            self.fail_hint("DNS", hint(problem, self.s, stage="connect"))
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        self.ok("DNS", f"{self.s.host} -> {', '.join(addresses)}")
        return infos

    def tcp_step(self, infos: list[tuple]) -> socket.socket:
        last: OSError | None = None
        for family, kind, proto, _name, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(self.wait)
            started = time.monotonic()
            try:
                sock.connect(address)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            took = (time.monotonic() - started) * 1000
            self.ok("TCP connect", f"{address[0]} port {address[1]} ({took:.0f} ms)")
            return sock
        assert last is not None
        settings = replace(self.s, timeout=self.wait)
        self.fail_hint("TCP connect", hint(last, settings, stage="connect"))
        raise AssertionError("unreachable")

    def session_steps(self, sock: socket.socket) -> smtplib.SMTP:
        """TLS mode, certificate and the greeting over the connection of the TCP step.

        One connection serves every check (a mail server logs a bare probe connection as
        an error); only a failed certificate check opens a second one, to show what the
        server presents.
        """
        s = self.s
        conn = SMTPConnection(local_hostname=s.helo_name or local_hostname(), timeout=self.wait)
        context = tls_context(s)
        if s.security == "ssl":
            tls = self._implicit_tls(sock, context)
            self._greeting(conn, tls)
            self._report_certificate(tls)
        else:
            self._greeting(conn, sock)
        stage = "ehlo"
        try:
            greet(conn)
            if s.security == "starttls":
                if not conn.has_extn("starttls"):
                    quit_quietly(conn, self.wait)
                    self.fail_hint("STARTTLS", hint(smtplib.SMTPNotSupportedError("STARTTLS"), s))
                stage = "tls"
                conn.starttls(context=context)
                stage = "ehlo"
                greet(conn)
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            self._certificate_failed(exc)
        except (OSError, smtplib.SMTPException) as exc:
            if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 100:
                quit_quietly(conn, self.wait)
            conn.close()
            name = "Certificate" if stage == "tls" else "EHLO"
            self.fail_hint(name, hint(exc, replace(s, timeout=self.wait), stage=stage))
        if s.security == "none":
            self.info(
                "Certificate",
                "no TLS (SMTP_SECURITY=none): mail travels unencrypted",
                "use SMTP_SECURITY=starttls or ssl unless this is a relay on a trusted network",
            )
        elif s.security == "starttls":
            assert isinstance(conn.sock, ssl.SSLSocket)
            self._report_certificate(conn.sock)
        return conn

    def _greeting(self, conn: SMTPConnection, sock: socket.socket) -> None:
        """Read the greeting on ``sock``; report the TLS mode step (ok or failed)."""
        name = "TLS mode"
        try:
            code, reply = conn.connect(self.s.host or "", self.s.port or 0, sock=sock)
        except (OSError, smtplib.SMTPException) as exc:
            conn.close()
            self.fail_hint(name, hint(exc, replace(self.s, timeout=self.wait), stage="greeting"))
        text = _printable(reply)
        if code != 220:
            quit_quietly(conn, self.wait)
            self.fail(
                name,
                f"{self.where} answered but refuses sessions: {code} {text}",
                "try again later; if it persists, ask the mail server's administrator",
            )
        if isinstance(conn.sock, ssl.SSLSocket):
            self.ok(name, f"implicit TLS: handshake OK ({conn.sock.version()}), greeting {code}")
        else:
            upgrade = "; STARTTLS comes next" if self.s.security == "starttls" else ""
            self.ok(name, f"plain SMTP greeting: {code} {text}{upgrade}")

    def _implicit_tls(self, sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
        """The TLS handshake of SMTP_SECURITY=ssl, verifying the certificate."""
        name = "TLS mode"
        tls = context.wrap_socket(sock, server_hostname=self.s.host, do_handshake_on_connect=False)
        try:
            banner = self._handshake(tls)
        except ssl.SSLCertVerificationError as exc:
            tls.close()
            self.ok(name, "implicit TLS: the server speaks TLS from the first byte")
            self._certificate_failed(exc)
        except ssl.SSLError as exc:
            tls.close()
            self.fail_hint(name, hint(exc, self.s, stage="tls"))
        except OSError as exc:
            tls.close()
            self.fail_hint(name, hint(exc, replace(self.s, timeout=self.wait), stage="tls"))
        if banner is not None:
            tls.close()
            self.fail(
                name,
                f"SMTP_SECURITY=ssl expects TLS from the first byte, but {self.where} greeted "
                f"in plaintext: {_printable(banner)!r}. This port speaks plain SMTP and "
                "upgrades with STARTTLS.",
                "set SMTP_SECURITY=starttls (usually port 587), or SMTP_PORT=465 for implicit TLS",
            )
        return tls

    def _handshake(self, tls: ssl.SSLSocket) -> bytes | None:
        """Complete the handshake; or return the plaintext greeting the server sent instead.

        The server's first bytes are peeked at (not consumed) through a second descriptor of
        the same connection: a plain SMTP server greets first, a TLS one waits for us.
        """
        with socket.fromfd(tls.fileno(), tls.family, tls.type) as raw:
            raw.setblocking(False)
            try:
                first = raw.recv(512, socket.MSG_PEEK)
            except BlockingIOError:  # nothing yet: send our hello, then look at the answer
                tls.setblocking(False)
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                else:
                    tls.settimeout(self.wait)
                    return None
                raw.settimeout(self.wait)
                first = raw.recv(512, socket.MSG_PEEK)
        if first[:1].isdigit():
            return first
        tls.settimeout(self.wait)
        tls.do_handshake()
        return None

    def _report_certificate(self, sock: ssl.SSLSocket) -> None:
        if not self.s.verify:
            self.info("Certificate", f"not verified (SMTP_VERIFY=false); {sock.version()}")
        else:
            cert = sock.getpeercert() or {}
            self.ok("Certificate", f"{_describe(cert)}; {sock.version()}; verified")

    def _certificate_failed(self, exc: ssl.SSLCertVerificationError) -> None:
        diagnosis = hint(exc, self.s)
        seen = self._describe_unverified()
        detail = diagnosis.cause + (f"\nthe server presented: {seen}" if seen else "")
        self.fail("Certificate", detail, diagnosis.fix)

    def ehlo_step(self, conn: smtplib.SMTP) -> None:
        features = conn.esmtp_features
        shown = []
        auth = features.get("auth", "").split()
        shown.append(f"AUTH {' '.join(auth)}" if auth else "no AUTH")
        size = features.get("size", "").strip()
        if size.isdigit() and int(size) > 0:
            shown.append(f"SIZE {int(size):,} bytes ({int(size) / 1048576:.1f} MB)")
        elif "size" in features:
            shown.append("SIZE (no limit given)")
        for name in ("starttls", "pipelining", "8bitmime", "smtputf8"):
            if name in features:
                shown.append(name.upper())
            elif name == "starttls" and self.s.security == "starttls":
                shown.append("STARTTLS (in use)")
        secure = isinstance(conn.sock, ssl.SSLSocket)
        self.ok("EHLO", f"{'(over TLS) ' if secure else ''}{', '.join(shown)}")

    def login_step(self, conn: smtplib.SMTP) -> None:
        s = self.s
        if not s.user:
            self.info("Login", "skipped: SMTP_USER is not set (fine for a relay that needs none)")
            return
        refusal = plaintext_auth_error(s)
        if refusal is not None:
            self.fail("Login", refusal.message, refusal.fix)
        try:
            mechanism = login(conn, s)
        except (OSError, smtplib.SMTPException) as exc:
            if not isinstance(exc, smtplib.SMTPResponseException):
                conn.close()  # the link broke: no QUIT to wait for
            self.fail_hint("Login", hint(exc, s, stage="auth"))
        except DeliveryError as exc:  # no mechanism we support
            self.fail("Login", exc.message, exc.fix)
        self.ok("Login", f"logged in as {s.user} (AUTH {mechanism})")

    def send_step(self, address: str) -> None:
        settings = self.s.with_overrides(retries=0)
        transport = SMTPTransport(settings)
        result = transport.send([_test_message(settings, address)])[0]
        lines = [
            f"{r.address}: {'accepted' if r.accepted else 'REFUSED'} ({reply_text(r.code or 0, r.reply)})"
            for r in result.recipients
        ]
        detail = "; ".join(lines) if lines else "not sent"
        if result.ok:
            self.ok("Test message", f"sent {TEST_SUBJECT!r} to {detail}")
        else:
            self.fail("Test message", f"{detail}: {result.error or 'refused'}", None, stop=False)

    def outbox_test(self, address: str) -> None:
        from notifier.mail.transport import transport_for

        try:
            result = transport_for(self.s).send([_test_message(self.s, address)])[0]
        except Exception as exc:  # the outbox is another module; report, never crash doctor
            self.fail("Test message", f"could not write to the outbox: {exc}", None, stop=False)
            return
        self.ok("Test message", f"written to the outbox: {result.location}")

    # -- probes ------------------------------------------------------------------------------

    def _describe_unverified(self) -> str | None:
        """Subject and issuer of the certificate the server presents, read without trust."""
        s = self.s
        context = _unverified_context()
        try:
            if s.security == "ssl":
                conn: smtplib.SMTP = SMTPSSLConnection(
                    local_hostname="doctor.invalid", timeout=self.wait, context=context
                )
                conn.connect(s.host, s.port)
            else:
                conn = SMTPConnection(local_hostname="doctor.invalid", timeout=self.wait)
                conn.connect(s.host, s.port)
                conn.starttls(context=context)
            try:
                sock = conn.sock
                assert isinstance(sock, ssl.SSLSocket)
                der = sock.getpeercert(binary_form=True)
            finally:
                quit_quietly(conn, self.wait)
        except (OSError, smtplib.SMTPException, AssertionError):
            return None
        return _describe(_decode_der(der)) if der else None


def _unverified_context() -> ssl.SSLContext:
    """For probing only (what does the server speak, what does it present); never for mail."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _printable(data: bytes) -> str:
    return " ".join(data.decode("utf-8", "replace").split())[:200]


_NAME_KEYS = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU"}


def _name(parts: tuple) -> str:
    fields = dict(item for rdn in parts for item in rdn)
    for key, short in _NAME_KEYS.items():
        if key in fields:
            return f"{short}={fields[key]}"
    return "?"


def _describe(cert: dict) -> str:
    if not cert:
        return "no certificate details"
    parts = [f"subject {_name(cert.get('subject', ()))}", f"issuer {_name(cert.get('issuer', ()))}"]
    names = [
        value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")
    ]
    if names:
        parts.append(f"names {', '.join(names[:6])}")
    not_after = cert.get("notAfter")
    if not_after:
        expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), tz=timezone.utc)
        days = (expires - datetime.now(timezone.utc)).days
        soon = " - renew soon!" if 0 <= days < 14 else ""
        parts.append(f"expires {expires:%Y-%m-%d} ({days} days{soon})")
    return ", ".join(parts)


def _decode_der(der: bytes) -> dict:
    """Certificate fields from DER without extra libraries (CPython's own decoder)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return {}
    handle, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(handle, "w") as pem:
            pem.write(ssl.DER_cert_to_PEM_cert(der))
        return decode(path)
    except Exception:  # a private helper: details are a bonus, not a requirement
        return {}
    finally:
        os.unlink(path)


def _test_message(settings: Settings, address: str) -> Outgoing:
    message = EmailMessage()
    message["From"] = settings.from_address
    message["To"] = address
    message["Subject"] = TEST_SUBJECT
    message["Date"] = format_datetime(datetime.now(timezone.utc))
    message["Message-ID"] = make_msgid(domain="notifier.mail.doctor")
    message.set_content(
        "This is a test message from `notifier doctor --send-test`.\n\n"
        f"It was sent through {settings.host}:{settings.port} (security={settings.security}).\n"
        "If you can read this, notifier can deliver your reports.\n"
    )
    return Outgoing(message, settings.from_address, (address,))
