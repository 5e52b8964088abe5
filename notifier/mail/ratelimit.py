"""SMTP rate limits: per minute in the process, per day across processes (SQLite).

Gmail allows about 500 messages a day; the daily count is kept in
``.notifier-state/smtp-rate.sqlite3`` beside the outbox folder so that every
process sending for the same account shares it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from notifier.settings import Settings

STATE_DIR_NAME = ".notifier-state"
RATE_FILE_NAME = "smtp-rate.sqlite3"
DAY_SECONDS = 86400.0
MINUTE_SECONDS = 60.0


def default_state_dir(settings: Settings) -> Path:
    """Where the per-day counter lives: ``.notifier-state`` beside the outbox folder."""
    return settings.outbox_dir.parent / STATE_DIR_NAME


class DailyLimit:
    """A rolling 24-hour message count per account, shared by processes through SQLite."""

    def __init__(self, path: Path, cap: int, account: str, wall: Callable[[], float]) -> None:
        self.path = path
        self.cap = cap
        self.account = account
        self._wall = wall

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS sends (account TEXT NOT NULL, at REAL NOT NULL)")
        db.execute("CREATE INDEX IF NOT EXISTS sends_account_at ON sends (account, at)")
        return db

    def reserve(self) -> tuple[float | None, int]:
        """Take a slot: ``(token, count)``; token is None when the cap is reached."""
        now = self._wall()
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM sends WHERE at < ?", (now - DAY_SECONDS,))
            (count,) = db.execute(
                "SELECT COUNT(*) FROM sends WHERE account = ?", (self.account,)
            ).fetchone()
            if count >= self.cap:
                db.execute("COMMIT")
                return None, count
            db.execute("INSERT INTO sends (account, at) VALUES (?, ?)", (self.account, now))
            db.execute("COMMIT")
            return now, count + 1
        finally:
            db.close()

    def release(self, token: float) -> None:
        """Give a slot back (the message reached nobody)."""
        db = self._connect()
        try:
            db.execute(
                "DELETE FROM sends WHERE rowid IN "
                "(SELECT rowid FROM sends WHERE account = ? AND at = ? LIMIT 1)",
                (self.account, token),
            )
        finally:
            db.close()


class MinuteWindow:
    """The sends of the last minute for one account, shared by every transport in the process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recent: deque[float] = deque()


_MINUTE_WINDOWS: dict[tuple[str, str, int], MinuteWindow] = {}
_MINUTE_WINDOWS_LOCK = threading.Lock()


def minute_window(settings: Settings) -> MinuteWindow:
    """The process-wide per-minute window for ``settings``' account: (user, host, port)."""
    assert settings.host is not None and settings.port is not None, "no SMTP host configured"
    key = (settings.user or "", settings.host, settings.port)
    with _MINUTE_WINDOWS_LOCK:
        return _MINUTE_WINDOWS.setdefault(key, MinuteWindow())


def reset_minute_windows() -> None:
    """Forget every per-minute window (for tests that drive the limiter with a fake clock)."""
    with _MINUTE_WINDOWS_LOCK:
        _MINUTE_WINDOWS.clear()
