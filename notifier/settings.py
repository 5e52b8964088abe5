"""Settings from the environment and ``.env``, provider presets, and redaction.

A real environment variable wins over ``.env``. Every contradiction or malformed
value is a :class:`~notifier.errors.ConfigError` that names the variable and the fix.
No ``SMTP_HOST`` at all means the embedded default: mail goes to the local outbox.

The SMTP settings are checked apart from the others (paths, ledger, time zone, workers):
commands that never talk to a mail server load settings with ``smtp=False`` and keep
working while an SMTP value is broken; the problem waits in ``Settings.smtp_error``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from dotenv import dotenv_values

from notifier.durations import DAY, HOUR, MAX_DURATION, TIMEOUT, Limit
from notifier.errors import ConfigError

SECURITY_MODES = ("ssl", "starttls", "none")

# Every default, defined once (the dataclass, the parser and the modules that need one).
DEFAULT_RUN_TIMEOUT = 600.0  # a notebook run's wall-clock limit
DEFAULT_SMTP_TIMEOUT = 30.0
DEFAULT_WORKERS = 4
DEFAULT_SHUTDOWN_GRACE = 30.0
# warm starts: a slot's worker and kernel are prepared this many seconds before it (0: off)
DEFAULT_WARM_LEAD = 5.0
DEFAULT_DELIVERY_LIFETIME = 86400.0  # how long an email keeps being retried
DEFAULT_RETRY_BACKOFF = 30.0
DEFAULT_RETRY_BACKOFF_MAX = 900.0
DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_MAX_MESSAGE_SIZE = 25 * 1024 * 1024
MAX_MESSAGE_SIZE = 1024 * 1024 * 1024  # no mail server takes more (most stop at 25-150 MB)
MAX_WORKERS = 256  # each worker is a kernel process
# parallel connections to a server of your own (no provider preset); Postfix allows 50 per
# client by default (smtpd_client_connection_count_limit), Exchange 20 per source
DEFAULT_CONNECTIONS = 4


@dataclass(frozen=True)
class Provider:
    """Connection defaults of a well-known mail service, plus the hint shown on 535."""

    host: str
    port: int
    security: str
    auth_hint: str
    # parallel connections for bulk sending (SMTP_CONNECTIONS): what the service tolerates
    connections: int = 4


PROVIDERS: dict[str, Provider] = {
    "gmail": Provider(
        "smtp.gmail.com",
        587,
        "starttls",
        "Gmail refuses your normal password over SMTP. Turn on 2-Step Verification, create an "
        "app password at https://myaccount.google.com/apppasswords and put its 16 letters in "
        "SMTP_PASSWORD (SMTP_USER is your full Gmail address).",
        # Gmail refuses or throttles more than a few simultaneous SMTP sessions per account
        connections=2,
    ),
    "outlook": Provider(
        "smtp-mail.outlook.com",
        587,
        "starttls",
        "Outlook.com needs an app password when 2-step verification is on "
        "(account.microsoft.com > Security > App passwords); Microsoft 365 tenants must "
        "enable 'Authenticated SMTP' for the mailbox or SMTP AUTH is refused.",
        # Exchange Online: at most 3 concurrent connections per mailbox
        connections=2,
    ),
    "yahoo": Provider(
        "smtp.mail.yahoo.com",
        465,
        "ssl",
        "Yahoo requires an app password: Account Security > Generate app password, then use "
        "it as SMTP_PASSWORD with your full Yahoo address as SMTP_USER.",
        connections=2,
    ),
    "mailru": Provider(
        "smtp.mail.ru",
        465,
        "ssl",
        "Mail.ru requires a password for external applications: Settings > Security > "
        "Passwords for external applications.",
        connections=2,
    ),
    "sendgrid": Provider(
        "smtp.sendgrid.net",
        587,
        "starttls",
        "SendGrid's SMTP user is literally 'apikey' and the password is an API key with "
        "'Mail Send' permission.",
        # a relay built for volume: parallel connections are what it recommends
        connections=8,
    ),
}

# Hosts that identify a provider even when SMTP_PROVIDER is not set, for the 535 hint.
_PROVIDER_HOSTS = {p.host: name for name, p in PROVIDERS.items()} | {
    "smtp.office365.com": "outlook",
    "smtp.yandex.ru": "mailru",
}


def provider_of_host(host: str | None) -> str | None:
    """The provider whose documented SMTP host ``host`` is (``smtp.gmail.com``: gmail)."""
    return _PROVIDER_HOSTS.get((host or "").lower().rstrip("."))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Secret(str):
    """A string that never shows itself in ``repr`` or f-string debugging output."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class Settings:
    """Resolved settings. ``host is None`` means mail goes to the outbox."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: Secret | None = field(default=None, repr=False)
    sender: str | None = None
    security: str = "starttls"
    timeout: float = DEFAULT_SMTP_TIMEOUT
    ca_file: Path | None = None
    verify: bool = True
    provider: str | None = None
    allow_plaintext_auth: bool = False
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    rate_per_minute: int | None = None
    rate_per_day: int | None = None
    retries: int = 3
    helo_name: str | None = None
    # SMTP_CONNECTIONS; None: the provider preset's, else DEFAULT_CONNECTIONS
    smtp_connections: int | None = None
    outbox_dir: Path = Path("outbox")
    runs_dir: Path = Path("runs")
    db_url: str = "sqlite:///notifier.db"
    timezone: str = "UTC"
    workers: int = DEFAULT_WORKERS
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    # NOTIFIER_WARM_LEAD: prepare each slot's worker and kernel this long before it; 0 = off
    warm_lead: float = DEFAULT_WARM_LEAD
    # NOTIFIER_WARM_FORK_SERVER: fork prepared workers from one server that imported
    # papermill and nbconvert once (less CPU in bursts); off: each worker imports them
    warm_fork_server: bool = True
    # the outbound queue: how long a report keeps being retried, and the retry backoff
    delivery_lifetime: float = DEFAULT_DELIVERY_LIFETIME
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    # a node is dead when it has not renewed its lease for this long
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    # NOTIFIER_TRANSPORT: smtp | outbox | memory; None = smtp when SMTP_HOST is set, else outbox
    transport: str | None = None
    # Loaded with smtp=False: the SMTP problem that was set aside (the SMTP fields then hold
    # only what could be read); None when the SMTP settings are valid.
    smtp_error: ConfigError | None = field(default=None, repr=False, compare=False)
    # the .env file(s) these settings were read from (hidden from notebook kernels)
    env_files: tuple[Path, ...] = field(default=(), repr=False, compare=False)

    @property
    def uses_outbox(self) -> bool:
        """True when mail goes to the local outbox (no SMTP server, or NOTIFIER_TRANSPORT)."""
        return self.transport == "outbox" or (self.transport is None and self.host is None)

    @property
    def connections(self) -> int:
        """Parallel SMTP connections for delivering many emails (``SMTP_CONNECTIONS``)."""
        if self.smtp_connections:
            return self.smtp_connections
        name = self.provider or provider_of_host(self.host)
        return PROVIDERS[name].connections if name in PROVIDERS else DEFAULT_CONNECTIONS

    @property
    def from_address(self) -> str:
        """The sender to use: SMTP_FROM, else SMTP_USER if it is an address, else a local one."""
        if self.sender:
            return self.sender
        if self.user and "@" in self.user:
            return self.user
        return "notifier@localhost"

    @property
    def auth_hint(self) -> str | None:
        """Provider-specific advice for a 535 authentication failure."""
        name = self.provider or provider_of_host(self.host)
        return PROVIDERS[name].auth_hint if name in PROVIDERS else None

    def secrets(self) -> list[str]:
        """Values that must never appear in logs, notebooks, archives or the ledger."""
        return [self.password] if self.password else []

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (used by tests and the CLI)."""
        return replace(self, **changes)


# Kept out of kernels: the SMTP credentials, the ledger URL (a PostgreSQL URL holds one) and
# the dashboard token (a notebook could otherwise print it into its output).
SECRET_VARIABLES = ("SMTP_PASSWORD", "SMTP_PASS", "NOTIFIER_DB_URL", "NOTIFIER_WEB_TOKEN")


def read_environment(
    env: Mapping[str, str] | None = None, dotenv_path: str | os.PathLike[str] | None = ".env"
) -> dict[str, str]:
    """Merge ``.env`` (if present) under the real environment; real variables win."""
    merged: dict[str, str] = {}
    if dotenv_path is not None and Path(dotenv_path).is_file():
        _check_utf8(Path(dotenv_path))
        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(os.environ if env is None else env)
    return merged


def _check_utf8(path: Path) -> None:
    """ConfigError with file:line when ``path`` is not UTF-8 (python-dotenv would crash)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read it ({exc.strerror}).", "check the file's permissions"
        ) from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}).",
            f"save {path.name} as UTF-8 (most editors: 'Save with encoding')",
        ) from None


def load_settings(
    env: Mapping[str, str] | None = None,
    dotenv_path: str | os.PathLike[str] | None = ".env",
    *,
    smtp: bool = True,
) -> Settings:
    """Read and validate settings; raise ConfigError naming the variable and the fix.

    ``smtp=False``: see :func:`parse_settings`.
    """
    values = read_environment(env, dotenv_path)
    settings = parse_settings(values, smtp=smtp)
    if dotenv_path is not None and Path(dotenv_path).is_file():
        settings = replace(settings, env_files=(Path(dotenv_path).resolve(),))
    return settings


def _get(values: Mapping[str, str], name: str) -> str | None:
    raw = values.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    return raw or None


def _parse_bool(values: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(values, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean.", f"set {name}=true or {name}=false")


# Every numeric setting: (its allowed range, an example). The ranges are finite so that no
# value can overflow a date or make a wait endless (see notifier.durations).
_LIMITS: dict[str, tuple[Limit, str]] = {
    "SMTP_TIMEOUT": (TIMEOUT, "30"),
    "SMTP_RETRIES": (Limit(0, 100, count=True), "3"),
    "SMTP_RATE_PER_MINUTE": (Limit(1, 100_000, count=True), "30"),
    "SMTP_RATE_PER_DAY": (Limit(1, 10_000_000, count=True), "500"),
    "SMTP_CONNECTIONS": (Limit(1, 64, count=True), "4"),
    "NOTIFIER_MAX_MESSAGE_SIZE": (Limit(1024, MAX_MESSAGE_SIZE, count=True), "26214400"),
    "NOTIFIER_WORKERS": (Limit(1, MAX_WORKERS, count=True), "4"),
    "NOTIFIER_SHUTDOWN_GRACE": (TIMEOUT, "30"),
    "NOTIFIER_DELIVERY_LIFETIME": (Limit(1, MAX_DURATION), "1d"),
    "NOTIFIER_RETRY_BACKOFF": (Limit(0.1, DAY), "30s"),
    "NOTIFIER_RETRY_BACKOFF_MAX": (Limit(0.1, DAY), "15m"),
    "NOTIFIER_LEASE_SECONDS": (Limit(2, DAY), "60"),
    "NOTIFIER_WARM_LEAD": (Limit(0, HOUR), "5s"),  # 0: warm starts off
}


def setting_limit(name: str) -> Limit:
    """The range a numeric setting (``SMTP_TIMEOUT``, ``NOTIFIER_WORKERS``...) may take."""
    return _LIMITS[name][0]


def _parse_limited(values: Mapping[str, str], name: str) -> float | None:
    """A duration or count setting checked against its range (see notifier.durations)."""
    raw = _get(values, name)
    if raw is None:
        return None
    limit, example = _LIMITS[name]
    try:
        return limit.parse(raw)
    except ValueError as exc:
        kind = "a whole number" if limit.count else "a duration"
        raise ConfigError(
            f"{name}={exc}.", f"use {kind} in that range, e.g. {name}={example}"
        ) from None


def _parse_int(values: Mapping[str, str], name: str) -> int | None:
    number = _parse_limited(values, name)
    return None if number is None else int(number)


def _parse_seconds(values: Mapping[str, str], name: str, default: float) -> float:
    number = _parse_limited(values, name)
    return default if number is None else float(number)


PORT = Limit(1, 65535, count=True)


def _check_db_url(values: Mapping[str, str]) -> str:
    """NOTIFIER_DB_URL, parsed once here so that a malformed one is one clear error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = _get(values, "NOTIFIER_DB_URL") or "sqlite:///notifier.db"
    try:
        port = make_url(url).port
        reason = None
        if port is not None:
            try:
                PORT.parse(port)
            except ValueError as problem:
                reason = f"its port {problem}"
    except (ArgumentError, ValueError) as exc:
        # never the URL itself in the message: it may hold a password
        reason = (
            "its port is not a number" if isinstance(exc, ValueError) else "it cannot be parsed"
        )
    if reason is not None:
        raise ConfigError(
            f"NOTIFIER_DB_URL is not a database URL: {reason}.",
            "use a URL such as sqlite:///notifier.db or "
            "postgresql+psycopg://user:password@host:5432/dbname",
        ) from None
    return url


TRANSPORTS = ("smtp", "outbox", "memory")


def _parse_transport(values: Mapping[str, str]) -> str | None:
    raw = _get(values, "NOTIFIER_TRANSPORT")
    if raw is None:
        return None
    if raw.lower() not in TRANSPORTS:
        raise ConfigError(
            f"NOTIFIER_TRANSPORT={raw!r} is not one of {', '.join(TRANSPORTS)}.",
            "leave it unset (SMTP when SMTP_HOST is set, else the outbox), or set smtp, "
            "outbox, or memory (tests: nothing leaves the process)",
        )
    if raw.lower() == "smtp" and not (_get(values, "SMTP_HOST") or _get(values, "SMTP_PROVIDER")):
        raise ConfigError(
            "NOTIFIER_TRANSPORT=smtp but no SMTP server is set.",
            "set SMTP_HOST (or SMTP_PROVIDER), or unset NOTIFIER_TRANSPORT to use the outbox",
        )
    return raw.lower()


def _parse_security(values: Mapping[str, str]) -> str | None:
    raw = _get(values, "SMTP_SECURITY")
    secure = _get(values, "SMTP_SECURE")
    implicit: bool | None = None  # what SMTP_SECURE says: implicit TLS or not
    if secure is not None:
        if secure.lower() in _TRUE:
            implicit = True
        elif secure.lower() in _FALSE:
            implicit = False
        else:
            raise ConfigError(
                f"SMTP_SECURE={secure!r} is not true or false.",
                "SMTP_SECURE=true means implicit TLS (465), false means STARTTLS (587); "
                "or set SMTP_SECURITY=ssl|starttls|none",
            )
    if raw is None:
        return None if implicit is None else ("ssl" if implicit else "starttls")
    mode = raw.lower()
    if mode == "tls":  # a common spelling for implicit TLS in other tools
        mode = "ssl"
    if mode not in SECURITY_MODES:
        raise ConfigError(
            f"SMTP_SECURITY={raw!r} is not one of ssl, starttls, none.",
            "use ssl for implicit TLS (port 465) or starttls (port 587)",
        )
    # SMTP_SECURE=false with SMTP_SECURITY=none agree (no implicit TLS); none is the precise one.
    if implicit is not None and implicit != (mode == "ssl"):
        says = "implicit TLS" if implicit else "no implicit TLS (STARTTLS)"
        raise ConfigError(
            f"SMTP_SECURE={secure!r} ({says}) and SMTP_SECURITY={raw!r} contradict each other.",
            "remove SMTP_SECURE and keep only SMTP_SECURITY=ssl|starttls|none "
            "(ssl for port 465, starttls for 587)",
        )
    return mode


def parse_settings(values: Mapping[str, str], *, smtp: bool = True) -> Settings:
    """Validate a flat mapping of variables into :class:`Settings`.

    With ``smtp=False`` (commands that never connect to a mail server: ``list``,
    ``history``, ``send --dry-run``) a bad SMTP setting does not raise: it is kept in
    ``Settings.smtp_error`` and the SMTP fields hold what could be read (the password too,
    so it is still redacted). Every other setting is checked either way.
    """
    general = _general_fields(values)
    try:
        mail = _smtp_fields(values)
    except ConfigError as error:
        if smtp:
            raise
        mail = _smtp_fields_unchecked(values, error)
    return Settings(**mail, **general)


def _general_fields(values: Mapping[str, str]) -> dict[str, object]:
    """Settings every command needs: message size, folders, ledger, time zone, workers."""
    max_size = _parse_int(values, "NOTIFIER_MAX_MESSAGE_SIZE")
    timezone = _get(values, "NOTIFIER_TIMEZONE") or "UTC"
    _check_timezone(timezone)
    backoff = _parse_seconds(values, "NOTIFIER_RETRY_BACKOFF", DEFAULT_RETRY_BACKOFF)
    backoff_max = _parse_seconds(
        values, "NOTIFIER_RETRY_BACKOFF_MAX", max(DEFAULT_RETRY_BACKOFF_MAX, backoff)
    )
    if backoff_max < backoff:
        raise ConfigError(
            "NOTIFIER_RETRY_BACKOFF_MAX is shorter than NOTIFIER_RETRY_BACKOFF.",
            "make the maximum at least the first delay, e.g. 30s and 15m",
        )
    return {
        "max_message_size": max_size if max_size is not None else DEFAULT_MAX_MESSAGE_SIZE,
        "outbox_dir": Path(_get(values, "NOTIFIER_OUTBOX") or "outbox"),
        "runs_dir": Path(_get(values, "NOTIFIER_RUNS_DIR") or "runs"),
        "db_url": _check_db_url(values),
        "timezone": timezone,
        "workers": _parse_int(values, "NOTIFIER_WORKERS") or DEFAULT_WORKERS,
        "shutdown_grace": _parse_seconds(values, "NOTIFIER_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE),
        "warm_lead": _parse_seconds(values, "NOTIFIER_WARM_LEAD", DEFAULT_WARM_LEAD),
        "warm_fork_server": _parse_bool(values, "NOTIFIER_WARM_FORK_SERVER", True),
        "transport": _parse_transport(values),
        "delivery_lifetime": _parse_seconds(
            values, "NOTIFIER_DELIVERY_LIFETIME", DEFAULT_DELIVERY_LIFETIME
        ),
        "retry_backoff": backoff,
        "retry_backoff_max": backoff_max,
        "lease_seconds": _parse_seconds(values, "NOTIFIER_LEASE_SECONDS", DEFAULT_LEASE_SECONDS),
    }


def _smtp_fields_unchecked(values: Mapping[str, str], error: ConfigError) -> dict[str, object]:
    """What can be read of broken SMTP settings (sender, login, host) plus the error."""
    provider = PROVIDERS.get((_get(values, "SMTP_PROVIDER") or "").lower())
    sender = _get(values, "SMTP_FROM")
    if sender is not None and ("@" not in sender or "\n" in sender or "\r" in sender):
        sender = None
    password = _get(values, "SMTP_PASSWORD") or _get(values, "SMTP_PASS")
    return {
        "host": _get(values, "SMTP_HOST") or (provider.host if provider else None),
        "user": _get(values, "SMTP_USER"),
        "password": Secret(password) if password else None,
        "sender": sender,
        "smtp_error": error,
    }


def _smtp_fields(values: Mapping[str, str]) -> dict[str, object]:
    """The SMTP settings, validated; ConfigError names the variable and the fix."""
    provider_name = _get(values, "SMTP_PROVIDER")
    provider = None
    if provider_name is not None:
        provider_name = provider_name.lower()
        provider = PROVIDERS.get(provider_name)
        if provider is None:
            raise ConfigError(
                f"SMTP_PROVIDER={provider_name!r} is not a known provider.",
                f"use one of {', '.join(PROVIDERS)}, or leave it empty and set SMTP_HOST, "
                "SMTP_PORT and SMTP_SECURITY yourself",
            )

    host = _get(values, "SMTP_HOST") or (provider.host if provider else None)
    raw_port = _get(values, "SMTP_PORT")
    if raw_port is not None and not (
        raw_port.isascii() and raw_port.isdigit() and 0 < int(raw_port) < 65536
    ):
        raise ConfigError(
            f"SMTP_PORT={raw_port!r} is not a port number.",
            "use 587 (STARTTLS) or 465 (implicit TLS); 25 is usually blocked by hosting providers",
        )
    port = int(raw_port) if raw_port is not None else None
    security = _parse_security(values)

    if security is None and port is None and provider is not None:
        security, port = provider.security, provider.port
    if security is None:
        security = {465: "ssl", 587: "starttls"}.get(port or 0, "starttls")
    if port is None:
        port = {"ssl": 465, "starttls": 587, "none": 25}[security]
    if security == "ssl" and port == 587:
        raise ConfigError(
            "SMTP_SECURITY=ssl (implicit TLS) with SMTP_PORT=587 contradict each other: "
            "port 587 speaks plain SMTP and upgrades with STARTTLS.",
            "set SMTP_SECURITY=starttls, or SMTP_PORT=465",
        )
    if security == "starttls" and port == 465:
        raise ConfigError(
            "SMTP_SECURITY=starttls with SMTP_PORT=465 contradict each other: "
            "port 465 expects TLS from the first byte (implicit TLS).",
            "set SMTP_SECURITY=ssl (or SMTP_SECURE=true), or SMTP_PORT=587",
        )

    user = _get(values, "SMTP_USER")
    password = _get(values, "SMTP_PASSWORD") or _get(values, "SMTP_PASS")
    if password and not user:
        raise ConfigError(
            "SMTP_PASSWORD is set but SMTP_USER is not.",
            "set SMTP_USER to the account name (usually your full email address)",
        )
    if user and not password and host is not None:
        raise ConfigError(
            "SMTP_USER is set but SMTP_PASSWORD is not.",
            "set SMTP_PASSWORD (for Gmail and Yahoo: an app password), or remove SMTP_USER "
            "for a server that needs no login",
        )
    if host is None and (user or raw_port):
        raise ConfigError(
            "SMTP_USER or SMTP_PORT is set but SMTP_HOST is not.",
            "set SMTP_HOST (or SMTP_PROVIDER=gmail|outlook|yahoo|mailru|sendgrid); "
            "with no SMTP settings at all, mail goes to the local outbox",
        )

    ca_raw = _get(values, "SMTP_CA_FILE")
    ca_file = Path(ca_raw).expanduser() if ca_raw else None
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(
            f"SMTP_CA_FILE={ca_raw!r} does not exist.",
            "point it at a PEM file with your server's CA certificate",
        )

    sender = _get(values, "SMTP_FROM")
    if sender is not None and ("@" not in sender or "\n" in sender or "\r" in sender):
        raise ConfigError(
            f"SMTP_FROM={sender!r} is not an email address.",
            "for example SMTP_FROM='Reports <reports@example.com>'",
        )

    retries = _parse_int(values, "SMTP_RETRIES")
    return {
        "host": host,
        "port": port if host is not None else None,
        "user": user,
        "password": Secret(password) if password else None,
        "sender": sender,
        "security": security,
        "timeout": _parse_seconds(values, "SMTP_TIMEOUT", DEFAULT_SMTP_TIMEOUT),
        "ca_file": ca_file,
        "verify": _parse_bool(values, "SMTP_VERIFY", True),
        "provider": provider_name,
        "allow_plaintext_auth": _parse_bool(values, "SMTP_ALLOW_PLAINTEXT_AUTH", False),
        "rate_per_minute": _parse_int(values, "SMTP_RATE_PER_MINUTE"),
        "rate_per_day": _parse_int(values, "SMTP_RATE_PER_DAY"),
        "retries": retries if retries is not None else 3,
        "helo_name": _get(values, "SMTP_HELO_NAME"),
        "smtp_connections": _parse_int(values, "SMTP_CONNECTIONS"),
    }


def _check_timezone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"NOTIFIER_TIMEZONE={name!r} is not an IANA time zone.",
            "for example NOTIFIER_TIMEZONE=Europe/Berlin",
        ) from None


# Shorter secrets are not masked: replacing every "port" or "p" would garble all text
# (and such a password is no secret). Real app passwords and API keys are 16+ characters.
MIN_REDACTED_LENGTH = 6


def redact(text: str, secrets: list[str]) -> str:
    """Replace every occurrence of each secret (and its common encodings) with ``***``."""
    import base64
    import html
    import json

    for secret in secrets:
        if len(secret) < MIN_REDACTED_LENGTH:
            continue
        variants = {
            secret,
            base64.b64encode(secret.encode()).decode(),
            json.dumps(secret)[1:-1],  # as written inside a JSON string (.ipynb, result.json)
            json.dumps(secret, ensure_ascii=False)[1:-1],
            html.escape(secret),  # as written in HTML
        }
        for variant in sorted(variants, key=len, reverse=True):
            text = text.replace(variant, "***")
    return text


def kernel_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for notebook kernels: everything but the SMTP credentials."""
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if k not in SECRET_VARIABLES}
