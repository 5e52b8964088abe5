"""SMTPTransport against a real aiosmtpd server on 127.0.0.1: what the SERVER received."""

from __future__ import annotations

import base64
import logging
import socket
import sqlite3
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from smtp_server import Behaviour, SMTPTestServer, settings_for

from notifier.mail.model import Outgoing
from notifier.mail.ratelimit import reset_minute_windows
from notifier.mail.transport import transport_for
from notifier.mail.transport.smtp import MAYBE_DELIVERED, SMTPTransport
from notifier.settings import Settings

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:Session.login_data is deprecated"),
]

SENDER = "reports@example.com"


def _larger_than_socket_buffers() -> int:
    """Bigger than the client's largest TCP send buffer (Linux ``tcp_wmem`` max, 4 MiB by
    default) plus the drop_in_data server's small receive buffer: the client is still
    sending when that server resets the link."""
    try:
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        wmem_max = 4 * 1024 * 1024
    return max(6 * 1024 * 1024, wmem_max + 2 * 1024 * 1024)


LARGER_THAN_SOCKET_BUFFERS = _larger_than_socket_buffers()


@pytest.fixture(autouse=True)
def _fresh_minute_windows():
    """The per-minute windows are process-wide; a reused port must not inherit one."""
    reset_minute_windows()
    yield
    reset_minute_windows()


PASSWORD = "correct-horse-battery"


def make(
    n: int = 0,
    to: tuple[str, ...] = ("alice@example.com",),
    cc: tuple[str, ...] = (),
    bcc: tuple[str, ...] = (),
    body: str = "Hello from the report.\n",
    html: str | None = None,
) -> Outgoing:
    """A message built with stdlib EmailMessage; Bcc only in the envelope."""
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = f"report {n}"
    message["Message-ID"] = f"<report-{n}@example.com>"
    message.set_content(body)
    if html:
        message.add_alternative(html, subtype="html")
    return Outgoing(message, SENDER, (*to, *cc, *bcc))


def transport(settings: Settings, **kwargs) -> SMTPTransport:
    kwargs.setdefault("backoff", 0.01)
    return SMTPTransport(settings, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_no_secret(text: str, secret: str = PASSWORD) -> None:
    assert secret not in text
    assert base64.b64encode(secret.encode()).decode() not in text


# -- security modes ----------------------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_plain_delivery_reports_each_recipient(smtp_server_factory, pipelining, caplog):
    server = smtp_server_factory("plain", pipelining=pipelining)
    caplog.set_level(logging.INFO, logger="notifier.smtp")
    out = make(to=("alice@example.com", "bob@example.com"))
    [result] = transport(settings_for(server)).send([out])

    assert ("PIPELINING" in caplog.text) == pipelining

    assert result.ok and result.error is None and result.attempts == 1
    assert [(r.address, r.accepted, r.code) for r in result.recipients] == [
        ("alice@example.com", True, 250),
        ("bob@example.com", True, 250),
    ]
    assert "queued" in result.recipients[0].reply
    [got] = server.messages
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ["alice@example.com", "bob@example.com"]
    assert got.message["Subject"] == "report 0"
    assert got.message.get_content() == "Hello from the report.\n"


def test_transport_for_picks_smtp(smtp_server_factory):
    server = smtp_server_factory("plain")
    assert isinstance(transport_for(settings_for(server)), SMTPTransport)


def test_starttls_with_test_ca_and_login(smtp_server_factory):
    server = smtp_server_factory("starttls", auth={"alice": PASSWORD})
    [result] = transport(settings_for(server)).send([make()])

    assert result.ok, result.error
    [got] = server.messages
    assert got.tls and got.login == "alice"
    assert got.helo == "client.test"  # SMTP_HELO_NAME
    assert [(a.user, a.ok) for a in server.logins] == [("alice", True)]


def test_implicit_tls_with_test_ca_and_login(smtp_server_factory):
    server = smtp_server_factory("ssl", auth={"alice": PASSWORD})
    [result] = transport(settings_for(server)).send([make()])

    assert result.ok, result.error
    [got] = server.messages
    assert got.tls and got.login == "alice"


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
def test_unknown_ca_fails_verification_with_fix(smtp_server_factory, mode):
    server = smtp_server_factory(mode)
    started = time.monotonic()
    results = transport(settings_for(server, ca_file=None)).send([make(1), make(2)])

    assert time.monotonic() - started < 5  # a certificate problem is not retried
    for result in results:
        assert not result.ok
        assert "could not be verified" in result.error
        assert "127.0.0.1" in result.error and "SMTP_CA_FILE" in result.error
        assert "SMTP_VERIFY" not in result.error  # never suggest turning checks off
    assert server.messages == [] and server.counts["MAIL"] == 0


def test_verify_false_delivers_and_warns_once(smtp_server_factory, caplog):
    server = smtp_server_factory("ssl")
    caplog.set_level(logging.WARNING, logger="notifier.smtp")
    results = transport(settings_for(server, ca_file=None, verify=False)).send([make(1), make(2)])
    assert all(r.ok for r in results)
    warnings = [r for r in caplog.records if "verification is OFF" in r.getMessage()]
    assert len(warnings) == 1


def test_starttls_not_offered_never_falls_back_to_plaintext(smtp_server_factory):
    server = smtp_server_factory("plain")
    [result] = transport(settings_for(server, security="starttls")).send([make()])

    assert not result.ok
    assert "does not offer STARTTLS" in result.error and "SMTP_SECURITY" in result.error
    assert server.counts["MAIL"] == 0 and server.messages == []


# -- authentication ----------------------------------------------------------------------------


def test_wrong_password_is_explained_and_never_shown(smtp_server_factory, caplog):
    server = smtp_server_factory("starttls", auth={"alice": "the-real-one"})
    caplog.set_level(logging.DEBUG)
    settings = settings_for(server, password=PASSWORD, provider="gmail")
    results = transport(settings).send([make(1), make(2)])

    for result in results:
        assert not result.ok
        assert "535" in result.error and "SMTP_USER=alice" in result.error
        assert "app password" in result.error  # the provider's hint
        assert_no_secret(result.error)
        assert_no_secret("\n".join(result.summary_lines()))
    # one login attempt with one mechanism: a wrong password is not retried
    assert [(a.user, a.ok) for a in server.logins] == [("alice", False)]
    assert server.messages == []
    assert_no_secret(caplog.text)
    assert "535" in caplog.text


def test_auth_over_plaintext_is_refused_before_connecting(smtp_server_factory):
    server = smtp_server_factory("plain", auth={"alice": PASSWORD})
    [result] = transport(settings_for(server)).send([make()])

    assert not result.ok
    assert "unencrypted" in result.error and "SMTP_ALLOW_PLAINTEXT_AUTH" in result.error
    assert server.counts["connections"] == 0 and server.logins == []


def test_auth_over_plaintext_when_explicitly_allowed(smtp_server_factory):
    server = smtp_server_factory("plain", auth={"alice": PASSWORD})
    [result] = transport(settings_for(server, allow_plaintext_auth=True)).send([make()])

    assert result.ok, result.error
    assert server.messages[0].login == "alice"


# -- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fail_at", "reply", "attempts"),
    [
        ("MAIL", "421 4.7.0 Too busy, closing", 3),
        ("MAIL", "451 4.3.0 Try again later", 3),
        ("RCPT", "451 4.3.0 Try again later", 2),  # both RCPTs of attempt 1 get the 451
        ("DATA", "451 4.3.0 Queue trouble", 3),
    ],
)
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_transient_failures_are_retried_and_delivered_once(
    smtp_server_factory, pipelining, fail_at, reply, attempts
):
    behaviour = Behaviour(fail_first=2, fail_at=fail_at, fail_reply=reply)
    server = smtp_server_factory("plain", behaviour=behaviour, pipelining=pipelining)
    out = make(to=("alice@example.com", "bob@example.com"))
    [result] = transport(settings_for(server, retries=3)).send([out])

    assert result.ok, result.error
    assert result.attempts == attempts
    assert server.delivered_to("alice@example.com") == 1
    assert server.delivered_to("bob@example.com") == 1
    assert len(server.messages) == 1
    if reply.startswith("421"):
        assert server.counts["connections"] == 3  # the server hung up each time


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_retries_exhausted_reports_the_temporary_reply(smtp_server_factory, pipelining):
    behaviour = Behaviour(fail_first=10, fail_at="MAIL")
    server = smtp_server_factory("plain", behaviour=behaviour, pipelining=pipelining)
    [result, second] = transport(settings_for(server, retries=2)).send([make(1), make(2)])

    assert not result.ok and result.attempts == 3
    assert "451" in result.error and "temporarily" in result.error
    assert [(r.accepted, r.code) for r in result.recipients] == [(False, 451)]
    assert server.messages == []
    assert second.attempts == 3  # a reply (not a dead connection): the next message still tries


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_retry_goes_only_to_recipients_that_failed_temporarily(smtp_server_factory, pipelining):
    behaviour = Behaviour(defer={"bob@example.com": 1})
    server = smtp_server_factory("plain", behaviour=behaviour, pipelining=pipelining)
    out = make(to=("alice@example.com", "bob@example.com", "carol@example.com"))
    [result] = transport(settings_for(server)).send([out])

    assert result.ok, result.error
    assert result.attempts == 2
    assert [m.rcpt_tos for m in server.messages] == [
        ["alice@example.com", "carol@example.com"],
        ["bob@example.com"],
    ]
    for address in out.recipients:
        assert server.delivered_to(address) == 1


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_connection_dropped_during_data_is_retried_and_delivered_once(
    smtp_server_factory, pipelining
):
    # The server resets the link after one line of content, before the final dot, while
    # the client is still sending: nothing was queued, so the retry cannot duplicate.
    server = smtp_server_factory(
        "plain", behaviour=Behaviour(drop_in_data=1), pipelining=pipelining
    )
    body = ("d" * 76 + "\n") * (LARGER_THAN_SOCKET_BUFFERS // 77)
    out = make(body=body)
    settings = settings_for(server, max_message_size=4 * LARGER_THAN_SOCKET_BUFFERS)
    [result] = transport(settings).send([out])

    assert result.ok, result.error
    assert result.attempts == 2
    assert server.counts["dropped_in_data"] == 1
    assert server.counts["DATA"] == 2 and server.counts["connections"] == 2
    assert server.delivered_to("alice@example.com") == 1
    assert server.messages[0].message.get_content() == body


@pytest.mark.parametrize(
    ("silence", "timeout"), [(0.0, 2.0), (1.5, 0.5)], ids=["closed", "timed-out"]
)
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_link_lost_after_the_final_dot_is_not_retried(
    smtp_server_factory, tmp_path, pipelining, silence, timeout
):
    # The server read the whole message, final dot included, and may have queued it (this
    # one did): a retry would deliver it twice, so the outcome is reported as unknown.
    behaviour = Behaviour(drop_after_data=1, silence_after_data=silence)
    server = smtp_server_factory("plain", behaviour=behaviour, pipelining=pipelining)
    settings = settings_for(server, retries=3, timeout=timeout, rate_per_day=10)
    first, second = transport(settings, state_dir=tmp_path).send(
        [make(1, to=("alice@example.com", "bob@example.com")), make(2)]
    )

    assert [m.message["Subject"] for m in server.messages] == ["report 1", "report 2"]
    assert server.counts["dropped_after_data"] == 1 and server.counts["DATA"] == 2
    assert not first.ok and first.attempts == 1 and first.accepted == []
    assert [(r.address, r.accepted, r.reply) for r in first.recipients] == [
        ("alice@example.com", False, MAYBE_DELIVERED),
        ("bob@example.com", False, MAYBE_DELIVERED),
    ]
    assert "may have delivered it" in first.error and "not retried" in first.error
    assert "Not delivered" not in first.error
    assert any(
        "REFUSED: alice@example.com (connection lost after" in line
        for line in first.summary_lines()
    )
    # the batch goes on, over a new connection
    assert second.ok, second.error
    assert server.counts["connections"] == 2
    # the message may have gone out: its slot in the daily count is kept
    with sqlite3.connect(tmp_path / "smtp-rate.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM sends").fetchone() == (2,)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_link_lost_after_the_dot_settles_refused_and_deferred_recipients(
    smtp_server_factory, pipelining
):
    # Only a recipient taken at RCPT can have the message; a deferred one is retried
    # (it cannot have it yet) and a refused one keeps the server's 550.
    behaviour = Behaviour(
        drop_after_data=1, refuse=("carol@example.com",), defer={"bob@example.com": 1}
    )
    server = smtp_server_factory("plain", behaviour=behaviour, pipelining=pipelining)
    to = ("alice@example.com", "bob@example.com", "carol@example.com")
    [result] = transport(settings_for(server, retries=2, timeout=2.0)).send([make(1, to=to)])

    outcome = {r.address: (r.accepted, r.code, r.reply[:30]) for r in result.recipients}
    assert outcome["alice@example.com"] == (False, None, MAYBE_DELIVERED[:30])
    assert outcome["bob@example.com"][:2] == (True, 250)  # retried alone, delivered
    assert outcome["carol@example.com"][:2] == (False, 550)
    envelopes = [sorted(m.rcpt_tos) for m in server.messages]
    assert envelopes == [["alice@example.com"], ["bob@example.com"]]


def test_a_421_after_the_final_dot_is_an_answer_and_is_retried(smtp_server_factory):
    # 421 is the server saying it did not take the message: not an unknown outcome.
    behaviour = Behaviour(fail_first=1, fail_at="DATA", fail_reply="421 4.3.2 Shutting down")
    server = smtp_server_factory("plain", behaviour=behaviour)
    [result] = transport(settings_for(server)).send([make()])

    assert result.ok, result.error
    assert result.attempts == 2 and len(server.messages) == 1


def test_stalled_server_times_out(smtp_server_factory):
    server = smtp_server_factory("stall")
    settings = settings_for(server, timeout=1.0, retries=0)
    started = time.monotonic()
    first, second = transport(settings).send([make(1), make(2)])
    elapsed = time.monotonic() - started

    assert elapsed < 3.0
    assert "timed out" in first.error or "no greeting" in first.error
    assert "SMTP_SECURITY=ssl" in first.error or "SMTP_TIMEOUT" in first.error
    assert second.error and "earlier message" in second.error  # not another wait
    assert server._stall.accepted == 1


def test_stalled_server_retry_count(smtp_server_factory):
    server = smtp_server_factory("stall")
    started = time.monotonic()
    [result] = transport(settings_for(server, timeout=0.5, retries=1)).send([make()])

    assert result.attempts == 2 and result.error
    assert time.monotonic() - started < 3.0
    assert server._stall.accepted == 2


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_one_refused_recipient_is_reported_and_others_delivered(smtp_server_factory, pipelining):
    server = smtp_server_factory(
        "plain", behaviour=Behaviour(refuse={"nobody@example.com"}), pipelining=pipelining
    )
    out = make(to=("alice@example.com", "nobody@example.com", "bob@example.com"))
    [result] = transport(settings_for(server)).send([out])

    assert result.error is None and not result.ok
    assert result.accepted == ["alice@example.com", "bob@example.com"]
    [refused] = result.refused
    assert refused.address == "nobody@example.com" and refused.code == 550
    assert "User unknown" in refused.reply
    assert server.messages[0].rcpt_tos == ["alice@example.com", "bob@example.com"]
    assert server.rcpt_log.count("nobody@example.com") == 1  # 5xx is not retried
    assert any("REFUSED: nobody@example.com (550" in line for line in result.summary_lines())


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_all_recipients_refused_sets_error(smtp_server_factory, pipelining):
    server = smtp_server_factory(
        "plain", behaviour=Behaviour(refuse={"nobody@example.com"}), pipelining=pipelining
    )
    [result] = transport(settings_for(server)).send([make(to=("nobody@example.com",))])

    assert result.error and "550" in result.error
    assert [(r.address, r.code) for r in result.refused] == [("nobody@example.com", 550)]
    assert server.counts["DATA"] == 0 and result.attempts == 1


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_server_size_limit_refuses_before_data(smtp_server_factory, pipelining):
    server = smtp_server_factory(
        "plain", behaviour=Behaviour(size_limit=4000), pipelining=pipelining
    )
    small = make(1)
    large = make(2, body="x" * 70 + "\n" * 1 + ("y" * 70 + "\n") * 100)
    results = transport(settings_for(server)).send([large, small])

    assert not results[0].ok
    assert f"{large.size:,} bytes" in results[0].error and "4,000 bytes" in results[0].error
    assert results[1].ok
    assert server.counts["MAIL"] == 1 and server.counts["DATA"] == 1
    assert [m.message["Subject"] for m in server.messages] == ["report 1"]


def test_max_message_size_setting(smtp_server_factory):
    server = smtp_server_factory("plain")
    large = make(2, body=("z" * 70 + "\n") * 40)
    results = transport(settings_for(server, max_message_size=2048)).send([make(1), large])

    assert results[0].ok
    assert "NOTIFIER_MAX_MESSAGE_SIZE=2,048" in results[1].error
    assert f"{large.size:,} bytes" in results[1].error
    assert len(server.messages) == 1


# -- one connection, many messages -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["starttls", "ssl", "plain"])
def test_many_messages_share_one_connection(smtp_server_factory, mode):
    auth = {"alice": PASSWORD} if mode != "plain" else None
    server = smtp_server_factory(mode, auth=auth)
    messages = [make(i, to=(f"user{i}@example.com",)) for i in range(25)]
    results = transport(settings_for(server)).send(messages)

    assert all(r.ok for r in results)
    assert server.counts["connections"] == 1 and len(server.logins) == (1 if auth else 0)
    assert [m.message["Subject"] for m in server.messages] == [f"report {i}" for i in range(25)]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_reconnects_when_server_closes_between_messages(smtp_server_factory, pipelining):
    server = smtp_server_factory("plain", behaviour=Behaviour(close_after=2), pipelining=pipelining)
    results = transport(settings_for(server)).send([make(i) for i in range(5)])

    assert all(r.ok for r in results), [r.error for r in results]
    assert server.counts["connections"] == 3
    assert len(server.messages) == 5


def test_bcc_is_in_the_envelope_but_not_the_headers(smtp_server_factory):
    server = smtp_server_factory("plain")
    out = make(to=("alice@example.com",), cc=("bob@example.com",), bcc=("boss@example.com",))
    [result] = transport(settings_for(server)).send([out])

    assert result.ok
    [got] = server.messages
    assert got.rcpt_tos == ["alice@example.com", "bob@example.com", "boss@example.com"]
    assert got.message["Bcc"] is None
    assert b"boss@example.com" not in got.data
    assert got.message["Cc"] == "bob@example.com"


def test_content_survives_dot_stuffing_and_unicode(smtp_server_factory):
    server = smtp_server_factory("plain")
    body = ".starts with a dot\n..two dots\n.\nÜmlaut and € sign\n"
    out = make(body=body, html="<p>.<b>Grüße</b></p>")
    [result] = transport(settings_for(server)).send([out])

    assert result.ok
    got = server.messages[0].message
    assert got.get_body(("plain",)).get_content() == body
    assert "Grüße" in got.get_body(("html",)).get_content()


def test_non_ascii_address_uses_smtputf8(smtp_server_factory):
    server = smtp_server_factory("plain")
    [result] = transport(settings_for(server)).send([make(to=("jürgen@example.com",))])
    assert result.ok, result.error
    assert server.messages[0].rcpt_tos == ["jürgen@example.com"]


def test_non_ascii_address_without_server_support_fails_clearly(smtp_server_factory):
    server = smtp_server_factory("plain", smtputf8=False)
    results = transport(settings_for(server)).send([make(1, to=("jürgen@example.com",)), make(2)])
    assert "SMTPUTF8" in results[0].error and results[1].ok
    assert server.counts["MAIL"] == 1


# -- rate limits -------------------------------------------------------------------------------


def test_rate_per_minute_sleeps_until_a_slot_is_free(smtp_server_factory):
    server = smtp_server_factory("plain")
    now = [1000.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    settings = settings_for(server, rate_per_minute=2)
    results = transport(settings, clock=lambda: now[0], sleep=sleep).send(
        [make(i) for i in range(5)]
    )
    assert all(r.ok for r in results)
    assert sleeps == [60.0, 60.0]
    assert len(server.messages) == 5


def test_rate_per_minute_is_shared_by_transports_for_the_same_account(smtp_server_factory):
    # The scheduler builds a new transport for every send: the window must outlive it.
    server = smtp_server_factory("plain")
    now = [1000.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    settings = settings_for(server, rate_per_minute=2)
    first = transport(settings, clock=lambda: now[0], sleep=sleep).send([make(1), make(2)])
    assert sleeps == []
    now[0] += 10.0
    [third] = transport(settings, clock=lambda: now[0], sleep=sleep).send([make(3)])

    assert all(r.ok for r in [*first, third])
    assert sleeps == [50.0]  # until the first send of the shared window is a minute old
    # another account (here: another server) has a window of its own
    other = smtp_server_factory("plain")
    [elsewhere] = transport(
        settings_for(other, rate_per_minute=2), clock=lambda: now[0], sleep=sleep
    ).send([make(4)])
    assert elsewhere.ok and sleeps == [50.0]


def test_rate_per_minute_is_shared_by_threads(smtp_server_factory):
    server = smtp_server_factory("plain")
    settings = settings_for(server, rate_per_minute=2)
    results = []

    def worker(n: int) -> None:
        results.extend(transport(settings, rate_window=0.3).send([make(n)]))

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 6 and all(r.ok for r in results)
    assert time.monotonic() - started >= 0.6  # 6 sends, 2 per 0.3 s window
    assert len(server.messages) == 6


def test_rate_per_minute_with_a_tiny_real_window(smtp_server_factory):
    server = smtp_server_factory("plain")
    settings = settings_for(server, rate_per_minute=2)
    started = time.monotonic()
    results = transport(settings, rate_window=0.2).send([make(i) for i in range(5)])

    assert all(r.ok for r in results)
    assert time.monotonic() - started >= 0.4
    assert server.counts["connections"] == 1


def test_rate_per_day_is_shared_across_transports(smtp_server_factory, tmp_path):
    server = smtp_server_factory("plain")
    settings = settings_for(server, rate_per_day=2)
    first = transport(settings, state_dir=tmp_path).send([make(1), make(2), make(3)])

    assert [r.ok for r in first] == [True, True, False]
    assert "Daily sending limit reached" in first[2].error
    assert "SMTP_RATE_PER_DAY=2" in first[2].error
    # another process (here: another transport on the same state file) sees the count
    [again] = transport(settings, state_dir=tmp_path).send([make(4)])
    assert "Daily sending limit reached" in again.error
    assert len(server.messages) == 2
    assert (tmp_path / "smtp-rate.sqlite3").is_file()


def test_rate_per_day_gives_the_slot_back_when_nothing_was_delivered(smtp_server_factory, tmp_path):
    server = smtp_server_factory("plain", behaviour=Behaviour(refuse={"nobody@example.com"}))
    settings = settings_for(server, rate_per_day=1)
    t = transport(settings, state_dir=tmp_path)
    [refused] = t.send([make(1, to=("nobody@example.com",))])
    [delivered] = t.send([make(2)])
    assert refused.error and delivered.ok


def test_rate_per_day_state_that_cannot_be_written_is_a_result(smtp_server, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state folder should be")
    settings = settings_for(smtp_server, rate_per_day=5)
    [result] = transport(settings, state_dir=blocker).send([make()])
    assert "Cannot keep the daily message count" in result.error
    assert "SMTP_RATE_PER_DAY" in result.error and smtp_server.messages == []


# -- unreachable servers -----------------------------------------------------------------------


def test_unknown_host_is_a_result_not_an_exception(monkeypatch):
    # other names resolve (this machine has DNS): the name itself is wrong
    monkeypatch.setattr("notifier.mail.transport.smtp.connection.REFERENCE_NAMES", ("localhost",))
    settings = Settings(host="nonexistent.invalid", port=587, timeout=2, retries=3)
    results = transport(settings).send([make(1), make(2)])
    for result in results:
        assert "could not be resolved" in result.error and "SMTP_HOST" in result.error
    assert results[0].attempts == 1  # a misspelt host is not retried


def test_a_host_that_does_not_resolve_while_no_name_does_means_no_network(monkeypatch):
    monkeypatch.setattr(
        "notifier.mail.transport.smtp.connection.REFERENCE_NAMES", ("also-missing.invalid",)
    )
    settings = Settings(host="nonexistent.invalid", port=587, timeout=2, retries=0)
    [result] = transport(settings).send([make(1)])
    assert "this machine cannot resolve names" in result.error
    assert "neither could well-known names (also-missing.invalid)" in result.error
    assert "getent hosts nonexistent.invalid" in result.error
    assert "spelling" not in result.error


def test_refused_connection_is_retried_then_reported():
    settings = Settings(host="127.0.0.1", port=free_port(), security="none", retries=1, timeout=1)
    first, second = transport(settings).send([make(1), make(2)])
    assert "refused" in first.error and "SMTP_PORT" in first.error
    assert first.attempts == 2
    assert "refused" in second.error and second.attempts == 0


def test_programmer_errors_raise():
    settings = Settings(host="127.0.0.1", port=free_port())
    with pytest.raises(TypeError):
        SMTPTransport(settings).send(make())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SMTPTransport(settings).send(["not a message"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        SMTPTransport(Settings())


def test_header_injection_in_envelope_address_is_refused(smtp_server: SMTPTestServer):
    out = make()
    bad = Outgoing(out.message, "x@example.com>\r\nRCPT TO:<evil@example.com", out.recipients)
    [result] = transport(settings_for(smtp_server)).send([bad])
    assert "not a valid envelope address" in result.error
    assert smtp_server.counts["MAIL"] == 0


# -- the session setup: wrong TLS mode, failed login -------------------------------------------


def test_starttls_against_an_implicit_tls_port_fails_at_once(smtp_server_factory):
    # Before: four connections, each waiting out the greeting timeout (2 min with defaults).
    server = smtp_server_factory("ssl")
    settings = settings_for(server, security="starttls", timeout=1.0, retries=3)
    first, second = transport(settings).send([make(1), make(2)])

    assert first.attempts == 1
    assert "completed a TLS handshake" in first.error and "implicit TLS" in first.error
    assert "SMTP_SECURITY=ssl" in first.error
    assert second.error == first.error and second.attempts == 0  # no second wait either
    assert server.counts["connections"] == 1


class _TLSFirstServer:
    """Answers every connection with a TLS alert record instead of an SMTP greeting."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            conn.sendall(b"\x15\x03\x03\x00\x02\x02\x46")  # alert: protocol_version
            time.sleep(0.2)
            conn.close()

    def close(self) -> None:
        self.listener.close()


def test_a_tls_record_instead_of_the_greeting_fails_at_once():
    server = _TLSFirstServer()
    try:
        settings = Settings(host="127.0.0.1", port=server.port, security="none", retries=3)
        [result] = transport(settings).send([make()])
    finally:
        server.close()
    assert result.attempts == 1 and server.accepted == 1
    assert "sent a TLS record" in result.error and "SMTP_SECURITY=ssl" in result.error


def test_a_failed_login_ends_the_session_with_quit(smtp_server_factory):
    server = smtp_server_factory("starttls", auth={"alice": "the-real-one"})
    [result] = transport(settings_for(server, password=PASSWORD)).send([make()])

    assert "535" in result.error
    assert server.counts["connections"] == 1 and server.counts["QUIT"] == 1


def test_a_missing_starttls_ends_the_session_with_quit(smtp_server_factory):
    server = smtp_server_factory("plain")
    [result] = transport(settings_for(server, security="starttls")).send([make()])

    assert "does not offer STARTTLS" in result.error
    assert server.counts["QUIT"] == 1


# -- a server that trickles its replies --------------------------------------------------------


class TricklingServer:
    """A real TCP server on 127.0.0.1 that answers like SMTP, but sends ``slow`` (the reply
    to the ``after``-th command, 0 = the greeting) one byte every ``pause`` seconds: each
    byte comes well within the client's socket timeout, the whole reply never does."""

    def __init__(self, slow: bytes, after: int = 0, pause: float = 0.25) -> None:
        self.slow, self.after, self.pause = slow, after, pause
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.trickled = 0  # bytes of the slow reply sent before the client gave up
        self.hung_up = threading.Event()  # the client closed the link mid-reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            try:
                if self.after:
                    conn.sendall(b"220 trickle.test ESMTP\r\n")
                    for _ in range(self.after - 1):
                        conn.recv(1024)
                        conn.sendall(b"250 trickle.test\r\n")
                    conn.recv(1024)
                for byte in self.slow:
                    conn.sendall(bytes([byte]))
                    self.trickled += 1
                    time.sleep(self.pause)
            except OSError:
                pass  # the client closed the link: sending fails a byte or two later
            finally:
                self.hung_up.set()  # ... or the whole reply went out

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=60)


@pytest.mark.parametrize(
    ("after", "stage"), [(0, "greeting"), (1, "EHLO reply")], ids=["greeting", "ehlo"]
)
def test_a_server_trickling_a_reply_cannot_hold_the_connection_past_the_timeout(after, stage):
    """SMTP_TIMEOUT bounds a whole reply, not each byte: a 60-byte reply at 4 bytes a second
    (each byte inside the 1 s socket timeout) is given up after about 1 s, the connection
    closed while the server is still trickling, and the message reported as not sent."""
    slow = b"220 " + b"t" * 54 + b"\r\n" if after == 0 else b"250 " + b"t" * 54 + b"\r\n"
    server = TricklingServer(slow, after=after)
    try:
        settings = Settings(
            host="127.0.0.1",
            port=server.port,
            security="none",
            sender=SENDER,
            timeout=1.0,
            retries=0,
            helo_name="client.test",
        )
        [result] = transport(settings).send([make()])
        assert not result.ok and result.error, (stage, result)
        assert "too slowly: not complete within 1 s" in result.error, result.error
        assert "SMTP_TIMEOUT" in result.error
        assert server.hung_up.wait(30)
        assert server.trickled < len(slow), (stage, server.trickled)  # given up mid-reply
    finally:
        server.close()
