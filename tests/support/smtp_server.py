"""A real SMTP server on 127.0.0.1 for tests (and benchmarks), built on aiosmtpd.

::

    with SMTPTestServer("starttls", auth={"alice": "s3cret"}) as server:
        settings = settings_for(server)            # host, port, security, CA file, login
        SMTPTransport(settings).send([...])
        server.messages[0].rcpt_tos, server.messages[0].message["Subject"]

Modes: ``plain`` (no TLS), ``starttls`` (STARTTLS required before MAIL), ``ssl`` (implicit
TLS), ``stall`` (accepts TCP and never says a word; connections are closed after
``stall_seconds`` so nothing hangs). Certificates come from a throwaway CA made by trustme
for ``localhost`` and ``127.0.0.1``; ``server.ca_file`` is its PEM, for ``SMTP_CA_FILE``.

The server advertises PIPELINING unless ``pipelining=False`` (aiosmtpd does not by itself,
but real submission servers do). Misbehaviour is described by :class:`Behaviour` (temporary failures for the first N
attempts, a refused recipient, a connection dropped during DATA or after its final dot, a
small SIZE).
Everything the server saw is recorded: ``messages`` (accepted mail), ``counts`` (MAIL, RCPT,
DATA, AUTH and QUIT commands, and connections), ``logins`` (AUTH attempts: user and whether
the password was right).
"""

from __future__ import annotations

import asyncio
import atexit
import email
import email.policy
import shutil
import socket
import ssl
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from notifier.settings import Secret, Settings

# aiosmtpd itself sets the deprecated attribute on every successful AUTH.
warnings.filterwarnings("ignore", message="Session.login_data is deprecated")

_SMALL_RCVBUF = 16384  # bytes; see Behaviour.drop_in_data
MODES = ("plain", "starttls", "ssl", "stall")
_SECURITY = {"plain": "none", "starttls": "starttls", "ssl": "ssl", "stall": "starttls"}


@dataclass
class Behaviour:
    """How the server misbehaves. Counters are per server, across connections.

    ``fail_first`` commands named ``fail_at`` (MAIL, RCPT or DATA) get ``fail_reply``;
    a 421 reply also closes the connection, as real servers do. ``refuse`` recipients get
    ``550 5.1.1``; ``defer`` maps a recipient to how many times it gets ``451`` first.
    ``drop_in_data`` resets the connection in the middle of the first N DATA commands:
    after the 354 and the first line of content, *before* the final dot, so nothing is
    queued (the listening socket then gets a small receive buffer, so a client sending a
    message larger than the socket buffers sees the reset while still sending it).
    ``drop_after_data`` reads the first N messages completely, final dot included, records
    them in ``messages`` (queued, as a real server may have), stays silent for
    ``silence_after_data`` seconds and closes the connection without replying: the client
    cannot know whether the message was taken. ``size_limit`` is advertised as SIZE and
    enforced. ``close_after`` closes each connection after that many accepted messages
    (like an idle or per-connection limit).
    """

    fail_first: int = 0
    fail_at: str = "MAIL"
    fail_reply: str = "451 4.3.0 Try again later"
    refuse: Collection[str] = ()
    defer: Mapping[str, int] = field(default_factory=dict)
    drop_in_data: int = 0
    drop_after_data: int = 0
    silence_after_data: float = 0.0
    size_limit: int | None = None
    close_after: int | None = None
    # the message is taken (recorded) at the final dot, the 250 comes this much later
    reply_delay_after_data: float = 0.0


@dataclass
class Received:
    """One message the server accepted (250 after DATA): envelope, raw bytes, parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message: EmailMessage
    login: str | None
    tls: bool
    connection: int
    helo: str | None


@dataclass
class LoginAttempt:
    user: str
    ok: bool
    mechanism: str


_CA: trustme.CA | None = None
_CA_LOCK = threading.Lock()
_PEM_DIR: Path | None = None


def test_ca() -> tuple[trustme.CA, Path, Path, Path]:
    """The session-wide test CA and PEM paths: (ca, ca_file, cert_chain, key)."""
    global _CA, _PEM_DIR
    with _CA_LOCK:
        if _CA is None:
            _CA = trustme.CA()
            leaf = _CA.issue_cert("localhost", "127.0.0.1")
            _PEM_DIR = Path(tempfile.mkdtemp(prefix="notifier-test-ca-"))
            atexit.register(shutil.rmtree, _PEM_DIR, ignore_errors=True)
            _CA.cert_pem.write_to_path(str(_PEM_DIR / "ca.pem"))
            leaf.private_key_pem.write_to_path(str(_PEM_DIR / "key.pem"))
            with open(_PEM_DIR / "chain.pem", "wb") as chain:
                for blob in leaf.cert_chain_pems:
                    chain.write(blob.bytes())
        assert _PEM_DIR is not None
        return _CA, _PEM_DIR / "ca.pem", _PEM_DIR / "chain.pem", _PEM_DIR / "key.pem"


def _server_context() -> ssl.SSLContext:
    _, _, chain, key = test_ca()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(chain), str(key))
    return context


class _Handler:
    """aiosmtpd hooks: records everything and applies the :class:`Behaviour`."""

    def __init__(self, server: SMTPTestServer) -> None:
        self.server = server

    def _fail(self, command: str) -> str | None:
        b = self.server.behaviour
        with self.server.lock:
            if b.fail_at != command or self.server._failed >= b.fail_first:
                return None
            self.server._failed += 1
        return b.fail_reply

    async def _answer_and_maybe_close(self, smtp: SMTP, reply: str) -> str | None:
        if not reply.startswith("421"):
            return reply
        await smtp.push(reply)
        smtp.transport.close()
        await asyncio.sleep(30)  # cancelled when the connection is gone
        return None

    async def handle_EHLO(self, smtp, session, envelope, hostname, responses):  # noqa: N802
        session.host_name = hostname
        if self.server.pipelining:  # aiosmtpd reads commands in order, so it copes with it
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_QUIT(self, smtp, session, envelope):  # noqa: N802
        self.server._count("QUIT")  # a client that just drops the link never gets here
        return "221 Bye"

    async def handle_MAIL(self, smtp, session, envelope, address, mail_options):  # noqa: N802
        self.server._count("MAIL")
        reply = self._fail("MAIL")
        if reply:
            return await self._answer_and_maybe_close(smtp, reply)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, smtp, session, envelope, address, rcpt_options):  # noqa: N802
        self.server._count("RCPT")
        self.server.rcpt_log.append(address)
        reply = self._fail("RCPT")
        if reply:
            return await self._answer_and_maybe_close(smtp, reply)
        if address in self.server.behaviour.refuse:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        with self.server.lock:
            left = self.server._deferred.get(address, 0)
            if left > 0:
                self.server._deferred[address] = left - 1
                return f"451 4.2.0 <{address}>: Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, smtp, session, envelope):  # noqa: N802
        self.server._count("DATA")
        reply = self._fail("DATA")
        if reply:
            return await self._answer_and_maybe_close(smtp, reply)
        data = envelope.original_content or b""
        with self.server.lock:
            self.server.messages.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=data,
                    message=_parse(data),
                    login=_login_name(session),
                    tls=session.ssl is not None
                    or smtp.transport.get_extra_info("sslcontext") is not None,
                    connection=getattr(smtp, "_connection_number", 0),
                    helo=session.host_name,
                )
            )
        if self.server._take("_dropped_after", self.server.behaviour.drop_after_data):
            self.server._count("dropped_after_data")
            await asyncio.sleep(self.server.behaviour.silence_after_data)
            smtp.transport.close()  # no reply: the client sees EOF after its final dot
            await asyncio.sleep(30)  # cancelled when the connection is gone
            return None
        if self.server.behaviour.reply_delay_after_data:
            self.server._count("slow_replies")
            await asyncio.sleep(self.server.behaviour.reply_delay_after_data)
        smtp._accepted = getattr(smtp, "_accepted", 0) + 1
        limit = self.server.behaviour.close_after
        if limit and smtp._accepted >= limit:
            await smtp.push("250 2.0.0 OK: queued")
            smtp.transport.close()
            await asyncio.sleep(30)  # cancelled when the connection is gone
        return "250 2.0.0 OK: queued"


def _parse(data: bytes) -> EmailMessage:
    """The message as a mail client sees it (line endings normalised to ``\n``)."""
    message = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _login_name(session: Any) -> str | None:
    data = getattr(session, "auth_data", None)
    if isinstance(data, LoginPassword):
        return data.login.decode()
    return None


class _SMTP(SMTP):
    """aiosmtpd's protocol, able to drop a connection in the middle of DATA content."""

    def __init__(self, owner: SMTPTestServer, *args: Any, **kwargs: Any) -> None:
        self._owner = owner
        super().__init__(*args, **kwargs)

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802
        server = self._owner
        ready = self.envelope is not None and self.envelope.rcpt_tos and not arg
        if not ready or not server._take("_dropped", server.behaviour.drop_in_data):
            return await super().smtp_DATA(arg)
        server._count("DATA")
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        await self._reader.readuntil(b"\r\n")  # one line of content; the final dot is to come
        server._count("dropped_in_data")
        self.transport.abort()  # unread data pending: the client gets a reset, nothing queued
        await asyncio.sleep(30)  # cancelled when the connection is gone


class _Controller(Controller):
    """A Controller bound to an OS-chosen free port that counts connections."""

    def __init__(self, server: SMTPTestServer, port: int = 0, **kwargs: Any) -> None:
        self._owner = server
        super().__init__(_Handler(server), hostname="127.0.0.1", port=port, **kwargs)

    def factory(self) -> SMTP:
        smtp = _SMTP(self._owner, self.handler, **self.SMTP_kwargs)
        smtp._connection_number = self._owner._count("connections")  # type: ignore[attr-defined]
        return smtp

    def _trigger_server(self) -> None:
        assert self.server is not None
        listener = self.server.sockets[0]
        if self._owner.behaviour.drop_in_data:  # inherited by accepted connections
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SMALL_RCVBUF)
        self.port = listener.getsockname()[1]
        super()._trigger_server()


class SMTPTestServer:
    """Context manager running an SMTP server on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        mode: str = "plain",
        *,
        auth: Mapping[str, str] | None = None,
        behaviour: Behaviour | None = None,
        pipelining: bool = True,
        smtputf8: bool = True,
        stall_seconds: float = 10.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.auth = dict(auth) if auth else None
        self.behaviour = behaviour or Behaviour()
        self.pipelining = pipelining
        self.smtputf8 = smtputf8
        self.stall_seconds = stall_seconds
        self.host = "127.0.0.1"
        self.port = 0
        self.messages: list[Received] = []
        self.counts: Counter[str] = Counter()
        self.logins: list[LoginAttempt] = []
        self.rcpt_log: list[str] = []
        self.lock = threading.Lock()
        self._failed = 0
        self._dropped = 0
        self._dropped_after = 0
        self._deferred = dict(self.behaviour.defer)
        self._controller: _Controller | None = None
        self._stall: _Staller | None = None
        self.ca_file: Path = test_ca()[1]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SMTPTestServer:
        if self.mode == "stall":
            self._stall = _Staller(self.stall_seconds)
            self.port = self._stall.port
            return self
        kwargs: dict[str, Any] = {
            "server_hostname": "localhost",
            "data_size_limit": self.behaviour.size_limit,
            "ident": "notifier-test-smtpd",
            "enable_SMTPUTF8": self.smtputf8,
            "timeout": 30,
        }
        if self.auth is not None:
            kwargs["authenticator"] = self._authenticate
        if self.mode == "starttls":
            kwargs.update(tls_context=_server_context(), require_starttls=True)
        elif self.mode == "ssl":
            # aiosmtpd only counts STARTTLS as TLS for auth_require_tls; implicit TLS is TLS.
            kwargs.update(ssl_context=_server_context(), auth_require_tls=False)
        else:
            kwargs.update(auth_require_tls=False)  # plain: AUTH offered, for the refusal tests
        # a restart (after stop()) listens on the same port: an outage, not a new server
        self._controller = _Controller(self, port=self.port, **kwargs)
        self._controller.start()
        self.port = self._controller.port
        with self.lock:
            self.counts.clear()  # forget the controller's own start-up probe
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._stall is not None:
            self._stall.stop()
            self._stall = None

    def __enter__(self) -> SMTPTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what happened -----------------------------------------------------------------------

    @property
    def security(self) -> str:
        """The SMTP_SECURITY value that matches this server."""
        return _SECURITY[self.mode]

    def delivered_to(self, address: str) -> int:
        """How many accepted messages had ``address`` in the envelope."""
        return sum(m.rcpt_tos.count(address) for m in self.messages)

    def _take(self, counter: str, limit: int) -> bool:
        """Use up one of ``limit`` misbehaviours counted in ``self.<counter>``; False when spent."""
        with self.lock:
            used = getattr(self, counter)
            if used >= limit:
                return False
            setattr(self, counter, used + 1)
            return True

    def _count(self, what: str) -> int:
        with self.lock:
            self.counts[what] += 1
            return self.counts[what]

    def _authenticate(self, smtp, session, envelope, mechanism, auth_data) -> AuthResult:
        self._count("AUTH")
        if not isinstance(auth_data, LoginPassword) or self.auth is None:
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode()
        ok = self.auth.get(user) == auth_data.password.decode()
        with self.lock:
            self.logins.append(LoginAttempt(user, ok, mechanism))
        if ok:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(
            success=False,
            handled=False,
            message="535 5.7.8 Username and Password not accepted",
        )


class _Staller:
    """Accepts TCP connections and never answers; closes each after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._held: list[tuple[float, socket.socket]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="smtp-stall", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
                self.accepted += 1
                self._held.append((time.monotonic() + self.seconds, conn))
            except (TimeoutError, OSError):
                pass
            now = time.monotonic()
            for entry in [e for e in self._held if e[0] <= now]:
                entry[1].close()
                self._held.remove(entry)
        for _, conn in self._held:
            conn.close()
        self.listener.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def settings_for(server: SMTPTestServer, **overrides: Any) -> Settings:
    """Settings that reach ``server``: host, port, matching security, the test CA, its login.

    Tests get short timeouts and few retries by default; pass overrides for anything else
    (``password="wrong"`` is wrapped in :class:`~notifier.settings.Secret`).
    """
    user = password = None
    if server.auth:
        user, password = next(iter(server.auth.items()))
    values: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "security": server.security,
        "ca_file": server.ca_file,
        "user": user,
        "password": password,
        "sender": "reports@example.com",
        "timeout": 2.0,
        "retries": 2,
        "helo_name": "client.test",
    }
    values.update(overrides)
    if values.get("password") is not None:
        values["password"] = Secret(values["password"])
    return Settings(**values)
