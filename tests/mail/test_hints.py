"""The cause-and-fix texts shared by the SMTP transport and doctor."""

from __future__ import annotations

import smtplib
import socket
import ssl

import pytest

from notifier.errors import DeliveryError
from notifier.mail.hints import explain, hint, is_timeout
from notifier.settings import Secret, Settings


def settings(**overrides) -> Settings:
    values = {"host": "smtp.example.com", "port": 587, "security": "starttls", "user": "me"}
    values.update(overrides)
    return Settings(**values)


def test_bad_credentials_use_the_provider_hint():
    gmail = settings(host="smtp.gmail.com", user="me@gmail.com")
    text = explain(
        smtplib.SMTPAuthenticationError(535, b"5.7.8 Username and Password not accepted"), gmail
    )
    assert "535 5.7.8" in text and "SMTP_USER=me@gmail.com" in text
    assert "apppasswords" in text  # Gmail's app-password page

    yahoo = settings(provider="yahoo")
    assert "Yahoo requires an app password" in explain((535, "5.7.0 bad"), yahoo)


@pytest.mark.parametrize(
    "reply",
    [
        (534, "5.7.9 Application-specific password required"),
        (534, "5.7.14 Please log in via your web browser"),
        (535, "5.7.8 Error: authentication failed"),
    ],
)
def test_auth_replies_without_provider_get_the_generic_app_password_advice(reply):
    text = explain(reply, settings())
    assert "refused" in text and "app password" in text and "SMTP_PASSWORD" in text


def test_password_is_redacted_even_if_the_server_echoes_it():
    s = settings(password=Secret("hunter2-secret"))
    text = explain((535, "5.7.8 bad password hunter2-secret"), s)
    assert "hunter2-secret" not in text and "***" in text


def test_port_25_timeout_says_providers_block_it():
    text = explain(TimeoutError("timed out"), settings(port=25, security="none"), stage="connect")
    assert "block outgoing port 25" in text and "SMTP_PORT=587" in text
    assert "SMTP_SECURITY=starttls" in text


def test_wrong_version_on_ssl_means_starttls_port():
    err = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    err.reason = "WRONG_VERSION_NUMBER"
    text = explain(err, settings(security="ssl"))
    assert "SMTP_SECURITY=starttls" in text and "465" in text

    record = ssl.SSLError(1, "[SSL] record layer failure (_ssl.c:1000)")
    assert "SMTP_SECURITY=starttls" in explain(record, settings(security="ssl"))


def test_silence_on_465_means_implicit_tls():
    disconnected = smtplib.SMTPServerDisconnected("Connection unexpectedly closed: timed out")
    assert is_timeout(disconnected)
    text = explain(disconnected, settings(port=465, security="starttls"), stage="greeting")
    assert "port 465 expects implicit TLS" in text and "SMTP_SECURITY=ssl" in text

    garbage = smtplib.SMTPConnectError(-1, b"\x15\x03\x03\x00\x02\x02\x16")
    assert "SMTP_SECURITY=ssl" in explain(garbage, settings(port=465, security="none"))


def test_certificate_failures_name_the_host_and_suggest_ca_file():
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_code, err.verify_message = 20, "unable to get local issuer certificate"
    text = explain(err, settings())
    assert "smtp.example.com" in text and "SMTP_CA_FILE" in text
    assert "SMTP_VERIFY" not in text

    mismatch = ssl.SSLCertVerificationError(1, "certificate verify failed")
    mismatch.verify_code = 62
    mismatch.verify_message = "Hostname mismatch, certificate is not valid for 'mail.example.com'."
    text = explain(mismatch, settings(host="mail.example.com"))
    assert "different name" in text and "SMTP_HOST" in text


def test_dns_refused_and_generic_network_errors():
    dns = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    text = explain(dns, settings(host="smtp.gmial.com"))
    assert "smtp.gmial.com" in text and "spelling of SMTP_HOST" in text
    assert not hint(dns, settings()).transient

    refused = explain(ConnectionRefusedError(111, "Connection refused"), settings())
    assert "refused" in refused and "SMTP_PORT" in refused


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ((530, "5.7.0 Must issue a STARTTLS command first"), "SMTP_SECURITY=starttls"),
        ((538, "5.7.11 Encryption required for requested authentication mechanism"), "encrypted"),
        ((553, "5.7.1 <x@other.com>: Sender address rejected: not owned by user me"), "SMTP_FROM"),
        ((554, "5.7.1 Relay access denied"), "SMTP_FROM"),
        ((550, "5.7.1 Sending as this address is not allowed"), "SMTP_FROM"),
        ((552, "5.3.4 Message size exceeds fixed limit"), "smaller attachments"),
        ((421, "4.7.0 Too many connections"), "SMTP_RATE_PER_MINUTE"),
    ],
)
def test_classic_replies(reply, expected):
    assert expected in explain(reply, settings(), stage="mail")


def test_notifier_errors_keep_their_fix():
    error = DeliveryError("No STARTTLS.", "set SMTP_SECURITY=ssl")
    assert explain(error, settings()) == "No STARTTLS. Fix: set SMTP_SECURITY=ssl"


def test_transient_classification():
    assert hint((451, "4.3.0 later"), settings()).transient
    assert not hint((550, "5.1.1 unknown"), settings(), stage="rcpt").transient
    assert hint(TimeoutError(), settings(), stage="data").transient


def test_a_provider_host_that_does_not_resolve_means_no_network_not_a_typo():
    dns = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    for preset in (
        settings(host="smtp.gmail.com", port=587, provider="gmail"),
        settings(host="smtp.mail.yahoo.com", port=465, security="ssl"),  # no SMTP_PROVIDER
    ):
        diagnosis = hint(dns, preset, stage="connect")
        assert "cannot resolve names" in diagnosis.cause and preset.host in diagnosis.cause
        assert "spelling" not in str(diagnosis)
        assert f"getent hosts {preset.host}" in diagnosis.fix and diagnosis.transient


def test_a_name_that_does_not_resolve_while_others_fail_too_means_no_network():
    from notifier.mail.hints import ResolverDown

    dns = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    down = ResolverDown(dns, ("smtp.gmail.com", "example.com"))
    diagnosis = hint(down, settings(host="mail.corp.example"), stage="connect")
    assert "'mail.corp.example' could not be resolved" in diagnosis.cause
    assert "neither could well-known names (smtp.gmail.com, example.com)" in diagnosis.cause
    assert "cannot resolve names" in diagnosis.cause and "spelling" not in str(diagnosis)
    assert "getent hosts mail.corp.example" in diagnosis.fix


@pytest.mark.parametrize("port", [465, 2465])
def test_tls_where_the_greeting_was_due_is_a_settings_error_never_retried(port):
    from notifier.mail.hints import ImplicitTLSGreeting

    s = settings(port=port, security="none" if port == 465 else "starttls")
    record = smtplib.SMTPConnectError(-1, b"\x15\x03\x03\x00\x02\x02\x16")
    handshake = ImplicitTLSGreeting("sent no SMTP greeting in 30 s but completed a TLS handshake")
    for problem in (record, handshake):
        diagnosis = hint(problem, s, stage="greeting")
        assert "implicit TLS" in diagnosis.cause and "SMTP_SECURITY=ssl" in diagnosis.fix
        assert not diagnosis.transient


def test_silence_without_tls_is_retried_except_on_465():
    from notifier.mail.hints import NoGreeting

    silent = NoGreeting("timed out")
    assert is_timeout(silent)
    elsewhere = hint(silent, settings(port=2525, timeout=3), stage="greeting")
    assert "no greeting within 3 s" in elsewhere.cause and "SMTP_TIMEOUT" in elsewhere.fix
    assert elsewhere.transient
    on_465 = hint(silent, settings(port=465, security="none"), stage="greeting")
    assert "port 465 expects implicit TLS" in on_465.cause and not on_465.transient
