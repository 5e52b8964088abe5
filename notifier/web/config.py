"""Where the dashboard listens and whether it needs a token.

127.0.0.1 (the default) needs none. Any other address never serves without one:
``NOTIFIER_WEB_TOKEN`` (environment or the project's ``.env``), else a random token made at
start and printed once, in the URL, as Jupyter does.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from notifier.durations import Limit
from notifier.errors import UsageError

WEB_PORT = Limit(0, 65535, count=True)  # 0: any free port

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_VARIABLE = "NOTIFIER_WEB_TOKEN"
MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: only this machine can connect."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebConfig:
    """The dashboard's address and its access token (None: loopback without a token)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    token_generated: bool = False

    def __repr__(self) -> str:  # the token never shows in a log line or traceback
        return f"WebConfig(host={self.host!r}, port={self.port}, token={'set' if self.token else None})"

    @property
    def loopback(self) -> bool:
        """True when only this machine can reach the dashboard."""
        return is_loopback(self.host)

    def url(self, port: int | None = None, *, with_token: bool = True) -> str:
        """The address to open (with ``?token=`` when one is needed)."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1" if host != "::" else "[::1]"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        url = f"http://{host}:{port or self.port}/"
        if self.token and with_token:
            url += f"?token={quote(self.token, safe='')}"
        return url


def web_config(host: str | None, port: int | None, environment: Mapping[str, str]) -> WebConfig:
    """The dashboard's configuration from the command line and the environment (+ .env).

    A non-loopback address without ``NOTIFIER_WEB_TOKEN`` gets a generated token; a token
    that is set but too short is refused (UsageError, exit 2).
    """
    host = host or environment.get("NOTIFIER_WEB_HOST") or DEFAULT_HOST
    if port is None:
        raw = environment.get("NOTIFIER_WEB_PORT", "")
        try:
            port = int(WEB_PORT.parse(raw)) if raw else DEFAULT_PORT
        except ValueError as problem:
            raise UsageError(
                f"NOTIFIER_WEB_PORT={problem}.", "e.g. NOTIFIER_WEB_PORT=8765 (0: any free port)"
            ) from None
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a port number.", "use 1-65535, e.g. 8765")
    token = environment.get(TOKEN_VARIABLE) or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise UsageError(
            f"{TOKEN_VARIABLE} is too short ({len(token)} characters): anyone could guess it.",
            f"use at least {MIN_TOKEN_LENGTH} random characters, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(24))'",
        )
    generated = False
    if token is None and not is_loopback(host):
        token, generated = secrets.token_urlsafe(24), True
    return WebConfig(host=host, port=port, token=token, token_generated=generated)
