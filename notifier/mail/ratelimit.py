"""SMTP rate limits, counted in recipients: per minute in the process, per day across
processes (SQLite).

Providers count recipients, not messages (Gmail's ~500 a day is 500 recipients: one email
to 3 people uses 3). The daily count is kept in ``.notifier-state/smtp-rate.sqlite3``
beside the outbox folder so that every process and every parallel connection sending for
the same account shares it; when it is reached, :meth:`DailyLimit.reserve` says when the
rolling window frees up again, and the queue defers the rest until then.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from notifier.settings import Settings

STATE_DIR_NAME = ".notifier-state"
RATE_FILE_NAME = "smtp-rate.sqlite3"
DAY_SECONDS = 86400.0
MINUTE_SECONDS = 60.0


def default_state_dir(settings: Settings) -> Path:
    """Where the per-day counter lives: ``.notifier-state`` beside the outbox folder."""
    return settings.outbox_dir.parent / STATE_DIR_NAME


@dataclass(frozen=True)
class Grant:
    """What :meth:`DailyLimit.reserve` allowed: ``granted`` of the recipients asked for.

    ``token`` identifies the reservation (None when nothing was granted); ``count`` is the
    recipients counted in the last 24 hours, this grant included; ``free_at`` (wall clock)
    is when the window frees room again once it is full.
    """

    token: int | None
    granted: int
    count: int
    free_at: float | None


class DailyLimit:
    """A rolling 24-hour recipient count per account, shared by processes through SQLite."""

    def __init__(self, path: Path, cap: int, account: str, wall: Callable[[], float]) -> None:
        self.path = path
        self.cap = cap
        self.account = account
        self._wall = wall

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.execute(
            "CREATE TABLE IF NOT EXISTS sends "
            "(account TEXT NOT NULL, at REAL NOT NULL, n INTEGER NOT NULL DEFAULT 1)"
        )
        columns = {row[1] for row in db.execute("PRAGMA table_info(sends)")}
        if "n" not in columns:  # a file written when the limit counted messages
            db.execute("ALTER TABLE sends ADD COLUMN n INTEGER NOT NULL DEFAULT 1")
        db.execute("CREATE INDEX IF NOT EXISTS sends_account_at ON sends (account, at)")
        return db

    def reserve(self, recipients: int = 1) -> Grant:
        """Take room for up to ``recipients`` recipients (fewer when the cap is near)."""
        now = self._wall()
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM sends WHERE at < ?", (now - DAY_SECONDS,))
            (count,) = db.execute(
                "SELECT COALESCE(SUM(n), 0) FROM sends WHERE account = ?", (self.account,)
            ).fetchone()
            granted = max(0, min(recipients, self.cap - count))
            token = None
            if granted:
                cursor = db.execute(
                    "INSERT INTO sends (account, at, n) VALUES (?, ?, ?)",
                    (self.account, now, granted),
                )
                token = cursor.lastrowid
            free_at = None
            if granted < recipients:
                (oldest,) = db.execute(
                    "SELECT MIN(at) FROM sends WHERE account = ?", (self.account,)
                ).fetchone()
                free_at = (oldest if oldest is not None else now) + DAY_SECONDS
            db.execute("COMMIT")
            return Grant(token, granted, count + granted, free_at)
        finally:
            db.close()

    def release(self, token: int, recipients: int | None = None) -> None:
        """Give room back: all of a reservation, or ``recipients`` of it (they got nothing)."""
        db = self._connect()
        try:
            if recipients is None:
                db.execute("DELETE FROM sends WHERE rowid = ?", (token,))
            else:
                db.execute("UPDATE sends SET n = n - ? WHERE rowid = ?", (recipients, token))
                db.execute("DELETE FROM sends WHERE rowid = ? AND n <= 0", (token,))
        finally:
            db.close()


class MinuteWindow:
    """The recipients sent to in the last minute for one account, as (time, count) pairs,
    shared by every transport (and so every parallel connection) in the process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recent: deque[tuple[float, int]] = deque()


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
