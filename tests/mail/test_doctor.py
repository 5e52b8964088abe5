"""``notifier doctor`` against real servers on 127.0.0.1, one broken setup at a time."""

from __future__ import annotations

import argparse
import base64
import os
import socket

import pytest
from smtp_server import settings_for

from notifier.cli import doctor as doctor_command
from notifier.mail.doctor import TEST_SUBJECT, Step, diagnose, format_steps
from notifier.settings import Settings

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:Session.login_data is deprecated"),
]

PASSWORD = "doctor-secret-pw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def by_name(steps: list[Step]) -> dict[str, Step]:
    return {step.name: step for step in steps}


def failed(steps: list[Step]) -> Step:
    [step] = [s for s in steps if s.ok is False]
    return step


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """Run ``notifier doctor`` in an empty folder with only the given SMTP_* variables."""
    for key in list(os.environ):
        if key.startswith(("SMTP_", "NOTIFIER_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)

    def run(env: dict[str, object] | None = None, dotenv: str | None = None, send_test=None):
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, str(value))
        if dotenv is not None:
            (tmp_path / ".env").write_text(dotenv)
        code = doctor_command.run(argparse.Namespace(send_test=send_test))
        return code, capsys.readouterr().out

    return run


def env_for(server, **extra: object) -> dict[str, object]:
    values: dict[str, object] = {
        "SMTP_HOST": server.host,
        "SMTP_PORT": server.port,
        "SMTP_SECURITY": server.security,
        "SMTP_CA_FILE": server.ca_file,
        "SMTP_FROM": "reports@example.com",
        "SMTP_TIMEOUT": 2,
    }
    if server.auth:
        user, password = next(iter(server.auth.items()))
        values.update(SMTP_USER=user, SMTP_PASSWORD=password)
    values.update(extra)
    return values


def assert_no_secret(text: str, secret: str = PASSWORD) -> None:
    assert secret not in text
    assert base64.b64encode(secret.encode()).decode() not in text


# -- through the command line ------------------------------------------------------------------


def test_success_with_send_test_from_dotenv(cli, smtp_server_factory):
    server = smtp_server_factory("starttls", auth={"alice": PASSWORD})
    dotenv = "".join(f"{k}={v}\n" for k, v in env_for(server).items())
    code, out = cli(dotenv=dotenv, send_test="bob@example.com")

    assert code == 0, out
    assert "  ok   DNS: 127.0.0.1 -> 127.0.0.1" in out
    assert "  ok   Login: logged in as alice (AUTH PLAIN)" in out
    assert (
        "  ok   Test message: sent 'notifier doctor test' to bob@example.com: accepted (250" in out
    )
    assert "FAIL" not in out and "All checks passed." in out
    for step in ("Settings", "TCP connect", "TLS mode", "Certificate", "EHLO"):
        assert f"  ok   {step}: " in out
    assert "password set (hidden)" in out
    assert_no_secret(out)
    [got] = server.messages
    assert got.rcpt_tos == ["bob@example.com"]
    assert got.message["Subject"] == TEST_SUBJECT
    assert got.login == "alice" and got.tls
    assert "notifier doctor" in got.message.get_content()


def test_wrong_password_shows_the_provider_hint_and_never_the_password(cli, smtp_server_factory):
    server = smtp_server_factory("starttls", auth={"alice": "the-real-one"})
    code, out = cli(
        env_for(server, SMTP_USER="alice", SMTP_PASSWORD=PASSWORD, SMTP_PROVIDER="gmail")
    )

    assert code == 1
    assert "  FAIL Login: Login as SMTP_USER=alice was refused" in out
    assert "535 5.7.8" in out
    assert "       fix: Gmail refuses your normal password" in out and "app password" in out
    assert_no_secret(out)
    assert [(a.user, a.ok) for a in server.logins] == [("alice", False)]


def test_missing_password_is_the_failed_first_step(cli):
    code, out = cli({"SMTP_HOST": "smtp.example.com", "SMTP_USER": "me@example.com"})

    assert code == 2  # bad settings, as for every command
    lines = out.splitlines()
    assert lines[1] == "  FAIL Settings: SMTP_USER is set but SMTP_PASSWORD is not."
    assert lines[2].startswith("       fix: set SMTP_PASSWORD")
    assert "DNS" not in out


def test_no_smtp_host_means_outbox(cli, tmp_path):
    code, out = cli({})
    assert code == 0
    assert "  ok   Settings: no SMTP_HOST: mail goes to the outbox folder" in out
    assert str(tmp_path / "outbox") in out and "trying things" in out


# -- each broken setup -------------------------------------------------------------------------


def test_ssl_set_on_a_starttls_port(smtp_server_factory):
    server = smtp_server_factory("starttls")
    steps = diagnose(settings_for(server, security="ssl", timeout=1))

    step = steps[-1]
    assert (step.name, step.ok) == ("TLS mode", False)
    assert "greeted in plaintext" in step.detail and "220" in step.detail
    assert "SMTP_SECURITY=starttls" in step.remedy
    assert [s.ok for s in steps[:-1]] == [True, True, True]


def test_starttls_set_on_an_implicit_tls_port(smtp_server_factory):
    server = smtp_server_factory("ssl")
    steps = diagnose(settings_for(server, security="starttls", timeout=1))

    step = steps[-1]
    assert (step.name, step.ok) == ("TLS mode", False)
    assert "implicit TLS" in step.detail and "TLS handshake" in step.detail
    assert "SMTP_SECURITY=ssl" in step.remedy


def test_closed_port_is_refused():
    steps = diagnose(Settings(host="127.0.0.1", port=free_port(), timeout=1))
    step = steps[-1]
    assert (step.name, step.ok) == ("TCP connect", False)
    assert "refused" in step.detail and "SMTP_PORT" in step.remedy
    assert by_name(steps)["DNS"].ok


def test_unknown_host():
    # other names resolve ("localhost" stands for them: this machine has no internet)
    settings = Settings(host="nonexistent.invalid", port=587, timeout=2)
    steps = diagnose(settings, reference_names=("localhost",))
    step = steps[-1]
    assert (step.name, step.ok) == ("DNS", False)
    assert "nonexistent.invalid" in step.detail and "SMTP_HOST" in step.remedy
    assert len(steps) == 2


def test_no_network_is_not_called_a_misspelt_host():
    settings = Settings(host="smtp.nonexistent.invalid", port=587, timeout=2)
    step = diagnose(settings, reference_names=("also-missing.invalid",))[-1]
    assert (step.name, step.ok) == ("DNS", False)
    assert "this machine cannot resolve names" in step.detail
    assert "neither could well-known names (also-missing.invalid)" in step.detail
    assert "getent hosts smtp.nonexistent.invalid" in step.remedy
    assert "spelling" not in step.remedy


# -- one connection, ended with QUIT -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
@pytest.mark.parametrize("password", [PASSWORD, "wrong-password"])
def test_every_check_uses_one_connection_that_ends_with_quit(smtp_server_factory, mode, password):
    server = smtp_server_factory(mode, auth={"alice": PASSWORD})
    steps = diagnose(settings_for(server, password=password))

    assert by_name(steps)["EHLO"].ok
    assert by_name(steps)["Login"].ok is (password == PASSWORD)
    assert server.counts["connections"] == 1, "no extra bare TCP connection"
    assert server.counts["QUIT"] == 1, "the session ends with QUIT, also after a 535"


@pytest.mark.parametrize(
    ("mode", "security"), [("starttls", "ssl"), ("ssl", "starttls"), ("plain", "starttls")]
)
def test_a_wrong_tls_mode_is_found_on_the_same_connection(smtp_server_factory, mode, security):
    server = smtp_server_factory(mode)
    steps = diagnose(settings_for(server, security=security, timeout=1))
    assert steps[-1].ok is False
    assert server.counts["connections"] == 1


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_certificate_verify_failure(smtp_server_factory, mode):
    server = smtp_server_factory(mode)
    steps = diagnose(settings_for(server, ca_file=None))

    step = failed(steps)
    assert step.name == "Certificate" and steps[-1] is step
    assert "127.0.0.1" in step.detail and "could not be verified" in step.detail
    assert "the server presented: subject O=trustme" in step.detail
    assert "SMTP_CA_FILE" in step.remedy and "SMTP_VERIFY" not in step.remedy
    assert by_name(steps)["TLS mode"].ok


def test_certificate_details_when_verified(smtp_server_factory):
    server = smtp_server_factory("ssl", auth={"alice": PASSWORD})
    steps = by_name(diagnose(settings_for(server)))
    assert steps["TLS mode"].detail.startswith("implicit TLS: handshake OK")
    cert = steps["Certificate"].detail
    assert "issuer O=trustme" in cert and "names localhost, 127.0.0.1" in cert
    assert "expires" in cert and "verified" in cert
    assert "AUTH" in steps["EHLO"].detail and "over TLS" in steps["EHLO"].detail


def test_ehlo_capabilities_are_listed(smtp_server_factory):
    from smtp_server import Behaviour

    server = smtp_server_factory("plain", behaviour=Behaviour(size_limit=10_485_760))
    steps = by_name(diagnose(settings_for(server)))
    ehlo = steps["EHLO"].detail
    for feature in ("SIZE 10,485,760 bytes (10.0 MB)", "PIPELINING", "8BITMIME", "SMTPUTF8"):
        assert feature in ehlo
    assert steps["Certificate"].ok is None  # security=none: nothing to verify
    assert steps["Login"].ok is None


def test_starttls_not_offered(smtp_server_factory):
    server = smtp_server_factory("plain")
    step = failed(diagnose(settings_for(server, security="starttls")))
    assert step.name == "STARTTLS" and "does not offer STARTTLS" in step.detail
    assert "SMTP_SECURITY=ssl" in step.remedy


def test_plaintext_login_refused_before_the_password_is_sent(smtp_server_factory):
    server = smtp_server_factory("plain", auth={"alice": PASSWORD})
    steps = diagnose(settings_for(server))
    step = failed(steps)
    assert step.name == "Login" and "SMTP_ALLOW_PLAINTEXT_AUTH" in step.remedy
    assert server.logins == []
    assert_no_secret(" ".join(s.detail + (s.remedy or "") for s in steps))


def test_failed_test_message_shows_the_server_reply(smtp_server_factory):
    from smtp_server import Behaviour

    server = smtp_server_factory("plain", behaviour=Behaviour(refuse={"nobody@example.com"}))
    steps = diagnose(settings_for(server), send_test_to="nobody@example.com")
    step = failed(steps)
    assert step.name == "Test message"
    assert "REFUSED (550 5.1.1" in step.detail


def test_registered_in_the_cli():
    from notifier.cli import build_parser

    args = build_parser().parse_args(["doctor", "--send-test", "me@example.com"])
    assert args.handler is doctor_command.run and args.send_test == "me@example.com"


def test_format_steps():
    lines = format_steps(
        [
            Step("DNS", True, "smtp.example.com -> 1.2.3.4"),
            Step("TCP connect", False, "refused", "check SMTP_PORT"),
            Step("Login", None, "skipped"),
        ]
    )
    assert lines == [
        "  ok   DNS: smtp.example.com -> 1.2.3.4",
        "  FAIL TCP connect: refused",
        "       fix: check SMTP_PORT",
        "  --   Login: skipped",
    ]
