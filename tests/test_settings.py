"""Settings from env and .env: every variable, every contradiction, and redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifier.errors import ConfigError
from notifier.settings import (
    DEFAULT_MAX_MESSAGE_SIZE,
    PROVIDERS,
    kernel_environment,
    load_settings,
    parse_settings,
    redact,
)


def test_no_settings_at_all_means_the_outbox() -> None:
    settings = parse_settings({})
    assert settings.uses_outbox and settings.host is None and settings.port is None
    assert settings.from_address == "notifier@localhost"
    assert (settings.timeout, settings.verify, settings.retries) == (30.0, True, 3)
    assert settings.max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 25 * 1024 * 1024
    assert (settings.outbox_dir, settings.runs_dir) == (Path("outbox"), Path("runs"))
    assert settings.db_url == "sqlite:///notifier.db"
    assert (settings.rate_per_minute, settings.rate_per_day) == (None, None)
    assert (settings.workers, settings.shutdown_grace, settings.timezone) == (4, 30.0, "UTC")


def test_every_variable_is_read() -> None:
    settings = parse_settings(
        {
            "SMTP_HOST": "mail.example.com",
            "SMTP_PORT": "2525",
            "SMTP_USER": "me@example.com",
            "SMTP_PASSWORD": "pw",
            "SMTP_FROM": "Reports <reports@example.com>",
            "SMTP_SECURITY": "starttls",
            "SMTP_TIMEOUT": "7.5",
            "SMTP_VERIFY": "false",
            "SMTP_ALLOW_PLAINTEXT_AUTH": "yes",
            "SMTP_RETRIES": "5",
            "SMTP_RATE_PER_MINUTE": "20",
            "SMTP_RATE_PER_DAY": "500",
            "SMTP_HELO_NAME": "reports.example.com",
            "NOTIFIER_MAX_MESSAGE_SIZE": "1048576",
            "NOTIFIER_OUTBOX": "/srv/out",
            "NOTIFIER_RUNS_DIR": "/srv/runs",
            "NOTIFIER_DB_URL": "sqlite:////srv/l.db",
            "NOTIFIER_TIMEZONE": "Europe/Berlin",
            "NOTIFIER_WORKERS": "2",
            "NOTIFIER_SHUTDOWN_GRACE": "5",
            "NOTIFIER_WARM_LEAD": "10s",
            "NOTIFIER_WARM_FORK_SERVER": "false",
        }
    )
    assert (settings.host, settings.port, settings.security) == (
        "mail.example.com",
        2525,
        "starttls",
    )
    assert (settings.user, settings.password) == ("me@example.com", "pw")
    assert settings.from_address == "Reports <reports@example.com>"
    assert (settings.timeout, settings.verify, settings.allow_plaintext_auth) == (7.5, False, True)
    assert (settings.retries, settings.rate_per_minute, settings.rate_per_day) == (5, 20, 500)
    assert settings.helo_name == "reports.example.com"
    assert settings.max_message_size == 1048576
    assert (settings.outbox_dir, settings.runs_dir) == (Path("/srv/out"), Path("/srv/runs"))
    assert settings.db_url == "sqlite:////srv/l.db"
    assert (settings.timezone, settings.workers, settings.shutdown_grace) == (
        "Europe/Berlin",
        2,
        5.0,
    )
    assert (settings.warm_lead, settings.warm_fork_server) == (10.0, False)
    assert parse_settings({}).warm_fork_server is True


def test_smtp_pass_is_accepted_and_the_password_never_shows() -> None:
    settings = parse_settings({"SMTP_HOST": "h", "SMTP_USER": "u", "SMTP_PASS": "s3cret"})
    assert settings.password == "s3cret"
    assert "s3cret" not in repr(settings) and "s3cret" not in repr(settings.password)
    assert settings.secrets() == ["s3cret"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"SMTP_PORT": "465"}, ("ssl", 465)),
        ({"SMTP_PORT": "587"}, ("starttls", 587)),
        ({"SMTP_PORT": "25"}, ("starttls", 25)),
        ({"SMTP_SECURITY": "ssl"}, ("ssl", 465)),
        ({"SMTP_SECURITY": "tls"}, ("ssl", 465)),
        ({"SMTP_SECURITY": "starttls"}, ("starttls", 587)),
        ({"SMTP_SECURITY": "none"}, ("none", 25)),
        ({"SMTP_SECURE": "true"}, ("ssl", 465)),
        ({"SMTP_SECURE": "false"}, ("starttls", 587)),
        ({}, ("starttls", 587)),
    ],
)
def test_port_and_security_infer_each_other(values: dict, expected: tuple) -> None:
    settings = parse_settings({"SMTP_HOST": "mail.example.com", **values})
    assert (settings.security, settings.port) == expected


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_providers_fill_host_port_and_security(name: str) -> None:
    preset = PROVIDERS[name]
    settings = parse_settings(
        {"SMTP_PROVIDER": name.upper(), "SMTP_USER": "u", "SMTP_PASSWORD": "p"}
    )
    assert (settings.host, settings.port, settings.security) == (
        preset.host,
        preset.port,
        preset.security,
    )
    assert settings.auth_hint == preset.auth_hint


def test_explicit_values_win_over_the_provider() -> None:
    settings = parse_settings(
        {"SMTP_PROVIDER": "gmail", "SMTP_PORT": "465", "SMTP_USER": "u", "SMTP_PASSWORD": "p"}
    )
    assert (settings.host, settings.port, settings.security) == ("smtp.gmail.com", 465, "ssl")
    custom = parse_settings({"SMTP_PROVIDER": "gmail", "SMTP_HOST": "relay.example.com"})
    assert custom.host == "relay.example.com"


def test_the_gmail_hint_is_found_by_host_too() -> None:
    settings = parse_settings(
        {"SMTP_HOST": "smtp.gmail.com", "SMTP_USER": "u", "SMTP_PASSWORD": "p"}
    )
    assert "app password" in (settings.auth_hint or "")


@pytest.mark.parametrize(
    ("values", "named", "fix"),
    [
        (
            {"SMTP_HOST": "h", "SMTP_SECURITY": "ssl", "SMTP_PORT": "587"},
            "SMTP_PORT=587",
            "starttls",
        ),
        (
            {"SMTP_HOST": "h", "SMTP_SECURITY": "starttls", "SMTP_PORT": "465"},
            "465",
            "SMTP_SECURITY=ssl",
        ),
        ({"SMTP_HOST": "h", "SMTP_SECURE": "true", "SMTP_PORT": "587"}, "587", "starttls"),
        ({"SMTP_PROVIDER": "gmial"}, "gmial", "gmail"),
        ({"SMTP_HOST": "h", "SMTP_PORT": "abc"}, "SMTP_PORT='abc'", "587"),
        ({"SMTP_HOST": "h", "SMTP_PORT": "70000"}, "SMTP_PORT='70000'", "587"),
        ({"SMTP_HOST": "h", "SMTP_PASSWORD": "p"}, "SMTP_USER is not", "SMTP_USER"),
        ({"SMTP_HOST": "h", "SMTP_USER": "u"}, "SMTP_PASSWORD is not", "app password"),
        ({"SMTP_USER": "u", "SMTP_PASSWORD": "p"}, "SMTP_HOST is not", "SMTP_PROVIDER"),
        ({"SMTP_HOST": "h", "SMTP_SECURITY": "tls1.3"}, "SMTP_SECURITY='tls1.3'", "ssl"),
        ({"SMTP_HOST": "h", "SMTP_SECURE": "maybe"}, "SMTP_SECURE='maybe'", "SMTP_SECURITY"),
        ({"SMTP_HOST": "h", "SMTP_VERIFY": "perhaps"}, "SMTP_VERIFY='perhaps'", "true"),
        ({"SMTP_HOST": "h", "SMTP_TIMEOUT": "0"}, "SMTP_TIMEOUT='0'", "SMTP_TIMEOUT=30"),
        ({"SMTP_HOST": "h", "SMTP_TIMEOUT": "soon"}, "SMTP_TIMEOUT='soon'", "SMTP_TIMEOUT=30"),
        ({"SMTP_HOST": "h", "SMTP_RETRIES": "-1"}, "SMTP_RETRIES='-1'", "number"),
        ({"SMTP_HOST": "h", "SMTP_RATE_PER_DAY": "0"}, "SMTP_RATE_PER_DAY='0'", "number"),
        ({"SMTP_HOST": "h", "SMTP_CA_FILE": "/no/such/ca.pem"}, "SMTP_CA_FILE", "PEM"),
        ({"SMTP_HOST": "h", "SMTP_FROM": "not an address"}, "SMTP_FROM", "example.com"),
        ({"SMTP_HOST": "h", "SMTP_FROM": "a@b.c\nBcc: x@y.z"}, "SMTP_FROM", "example.com"),
        ({"NOTIFIER_MAX_MESSAGE_SIZE": "10"}, "NOTIFIER_MAX_MESSAGE_SIZE='10'", "number"),
        ({"NOTIFIER_TIMEZONE": "Mars/Base"}, "NOTIFIER_TIMEZONE='Mars/Base'", "Europe/Berlin"),
        ({"NOTIFIER_WORKERS": "0"}, "NOTIFIER_WORKERS='0'", "number"),
    ],
)
def test_every_contradiction_and_malformed_value_names_the_variable_and_the_fix(
    values: dict, named: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(values)
    assert named in caught.value.message
    assert fix in (caught.value.fix or "")
    assert caught.value.exit_code == 2


def test_a_real_environment_variable_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SMTP_HOST=from-file.example.com\nSMTP_PORT=465\n# a comment\n")
    from_file = load_settings(env={}, dotenv_path=dotenv)
    assert (from_file.host, from_file.port, from_file.security) == (
        "from-file.example.com",
        465,
        "ssl",
    )
    overridden = load_settings(env={"SMTP_HOST": "real.example.com"}, dotenv_path=dotenv)
    assert (overridden.host, overridden.port) == ("real.example.com", 465)
    assert load_settings(env={}, dotenv_path=tmp_path / "missing.env").uses_outbox


def test_redact_catches_plain_base64_json_and_html_forms() -> None:
    secret = 'p"a\\ss<wörd>'
    import base64
    import html
    import json

    text = " | ".join(
        [
            secret,
            base64.b64encode(secret.encode()).decode(),
            json.dumps(secret),
            json.dumps(secret, ensure_ascii=False),
            html.escape(secret),
        ]
    )
    cleaned = redact(text, [secret])
    assert "ss<w" not in cleaned and "ss&lt;w" not in cleaned and "ss\\u003cw" not in cleaned
    assert base64.b64encode(secret.encode()).decode() not in cleaned
    assert cleaned.count("***") == 5


def test_kernels_get_no_credentials() -> None:
    env = {
        "SMTP_PASSWORD": "a",
        "SMTP_PASS": "b",
        "NOTIFIER_DB_URL": "postgresql://u:pw@h/db",
        "X": "1",
    }
    assert kernel_environment(env) == {"X": "1"}


@pytest.mark.parametrize(
    ("secure", "security", "expected"),
    [
        ("true", "ssl", "ssl"),
        ("yes", "tls", "ssl"),
        ("false", "starttls", "starttls"),
        ("false", "none", "none"),  # both say: no implicit TLS; SMTP_SECURITY is the precise one
        ("true", "none", None),
        ("true", "starttls", None),
        ("false", "ssl", None),
        ("false", "tls", None),
        ("maybe", "ssl", None),  # a malformed SMTP_SECURE is an error even next to SMTP_SECURITY
    ],
)
def test_smtp_secure_and_smtp_security_must_agree(
    secure: str, security: str, expected: str | None
) -> None:
    values = {"SMTP_HOST": "h", "SMTP_SECURE": secure, "SMTP_SECURITY": security}
    if expected is not None:
        assert parse_settings(values).security == expected
        return
    with pytest.raises(ConfigError) as caught:
        parse_settings(values)
    assert f"SMTP_SECURE={secure!r}" in caught.value.message
    assert "SMTP_SECURITY" in caught.value.message or "SMTP_SECURITY" in (caught.value.fix or "")
    assert caught.value.exit_code == 2


def test_a_dotenv_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_bytes(b"# settings\nSMTP_HOST=smtp.example.com\nSMTP_FROM=R\xe9ports <r@x.org>\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, dotenv_path=dotenv)
    assert f"{dotenv}:3" in caught.value.message and "UTF-8" in caught.value.message
    assert "UTF-8" in (caught.value.fix or "")


def test_settings_without_smtp_validation_keep_every_other_setting() -> None:
    values = {
        "SMTP_HOST": "smtp.example.com",
        "SMTP_PORT": "abc",
        "SMTP_USER": "me@example.com",
        "SMTP_PASSWORD": "a-long-password",
        "SMTP_FROM": "Reports <reports@example.com>",
        "NOTIFIER_DB_URL": "sqlite:////srv/ledger.db",
        "NOTIFIER_TIMEZONE": "Europe/Berlin",
        "NOTIFIER_WORKERS": "2",
        "NOTIFIER_MAX_MESSAGE_SIZE": "1048576",
    }
    with pytest.raises(ConfigError, match="SMTP_PORT='abc'"):
        parse_settings(values)
    settings = parse_settings(values, smtp=False)
    assert (settings.db_url, settings.timezone, settings.workers) == (
        "sqlite:////srv/ledger.db",
        "Europe/Berlin",
        2,
    )
    assert settings.max_message_size == 1048576
    assert settings.from_address == "Reports <reports@example.com>"
    assert settings.secrets() == ["a-long-password"]  # still redacted everywhere
    assert settings.smtp_error is not None and "SMTP_PORT='abc'" in settings.smtp_error.message
    assert parse_settings({"SMTP_HOST": "h"}, smtp=False).smtp_error is None
    # the other settings are still checked
    with pytest.raises(ConfigError, match="NOTIFIER_TIMEZONE"):
        parse_settings({**values, "NOTIFIER_TIMEZONE": "Mars/Base"}, smtp=False)


# Every numeric setting refuses what would overflow a date, disable a wait or spin a loop
# further down (nan, inf, negative, zero where meaningless, absurdly large): one ConfigError
# that names the variable and the allowed range.
_BAD_NUMBERS = ("nan", "inf", "-inf", "-1", "1e309", "9" * 400)
_RANGES = {
    "SMTP_TIMEOUT": ("0", "2d", "1s to 1d"),
    "NOTIFIER_SHUTDOWN_GRACE": ("0", "2d", "1s to 1d"),
    "NOTIFIER_LEASE_SECONDS": ("1", "9999999999d", "2s to 1d"),
    "NOTIFIER_RETRY_BACKOFF": ("0", "99999999d", "0.1s to 1d"),
    "NOTIFIER_RETRY_BACKOFF_MAX": ("0", "2d", "0.1s to 1d"),
    "NOTIFIER_DELIVERY_LIFETIME": ("0", "99999999d", "1s to 3650d"),
    "NOTIFIER_WORKERS": ("0", "99999999999999999999", "1 to 256"),
    "NOTIFIER_MAX_MESSAGE_SIZE": ("1023", "99999999999999999999", "1024 to 1073741824"),
    "SMTP_RETRIES": ("-1", "101", "0 to 100"),
    "SMTP_RATE_PER_MINUTE": ("0", "100001", "1 to 100000"),
    "SMTP_RATE_PER_DAY": ("0", "99999999999999999999", "1 to 10000000"),
    "SMTP_CONNECTIONS": ("0", "65", "1 to 64"),
}


@pytest.mark.parametrize("name", sorted(_RANGES))
def test_every_numeric_setting_has_a_finite_range(name: str) -> None:
    too_small, too_large, allowed = _RANGES[name]
    for raw in (*_BAD_NUMBERS, too_small, too_large, "soon"):
        with pytest.raises(ConfigError) as caught:
            parse_settings({"SMTP_HOST": "h", name: raw})
        message = caught.value.message
        assert message.startswith(f"{name}='"), message
        assert f"allowed: {allowed}." in message, message
        assert "\n" not in message and len(message) < 200, message
        assert name in (caught.value.fix or "")


def test_durations_are_read_in_the_jobs_yaml_notation() -> None:
    settings = parse_settings(
        {
            "SMTP_HOST": "h",
            "SMTP_TIMEOUT": "1m",
            "NOTIFIER_LEASE_SECONDS": "1d",  # the top of the range is allowed
            "NOTIFIER_DELIVERY_LIFETIME": "3650d",
            "NOTIFIER_SHUTDOWN_GRACE": "1",
        }
    )
    assert (settings.timeout, settings.lease_seconds) == (60.0, 86400.0)
    assert (settings.delivery_lifetime, settings.shutdown_grace) == (3650 * 86400.0, 1.0)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:secret-password@db.example.com:abc/ledger",
        "postgresql+psycopg://u:secret-password@db.example.com:99999999999999999999x/l",
        "not a url at all secret-password",
    ],
)
def test_a_malformed_ledger_url_is_one_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"NOTIFIER_DB_URL": url}, smtp=False)
    assert "NOTIFIER_DB_URL" in caught.value.message
    assert "secret-password" not in str(caught.value)
    assert "postgresql+psycopg://" in (caught.value.fix or "")


@pytest.mark.parametrize(
    ("name", "raw"),
    [("SMTP_PORT", "²"), ("SMTP_PORT", "٥٨٧"), ("NOTIFIER_WORKERS", "٣"), ("SMTP_TIMEOUT", "٣")],
)
def test_digits_of_other_scripts_are_no_numbers(name: str, raw: str) -> None:
    # str.isdigit() and \d accept them; int() takes some and refuses others: one error
    values = {"SMTP_HOST": "smtp.example.com", name: raw}
    with pytest.raises(ConfigError, match=name):
        parse_settings(values)
