"""Waiting out a ledger that is briefly unavailable (a locked SQLite file, a database
restart) instead of failing: a call is retried with a growing pause, and the outage is
logged in one line when it starts and one when it ends, never a line per try."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from notifier.errors import LedgerError

T = TypeVar("T")
DEFAULT_PATIENCE = 600.0  # seconds: longer than this, the ledger is gone, not busy


class Patience:
    """Retries ledger calls; one per component that talks to the ledger (thread-safe).

    ``stopping``: once set, calls that change nothing yet give up at once, and writes that
    must not be lost (``wait=True``) keep trying for ``grace`` seconds more.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        stopping: threading.Event | None = None,
        grace: float = 30.0,
        patience: float = DEFAULT_PATIENCE,
    ) -> None:
        self.log = logger
        self.stopping = stopping or threading.Event()
        self.grace = grace
        self.patience = patience
        self._trouble = False

    def call(
        self,
        call: Callable[[], T],
        what: str,
        *,
        give_up: T | None = None,
        wait: bool = False,
        raise_on_give_up: bool = False,
    ) -> T:
        """``call()``, retried while it raises LedgerError; ``give_up`` when it never works
        (or the LedgerError itself with ``raise_on_give_up``)."""
        delay = 0.2
        deadline: float | None = None
        limit = time.monotonic() + self.patience
        while True:
            try:
                value = call()
            except LedgerError as error:
                if not self._trouble:
                    self._trouble = True
                    self.log.warning(
                        "the ledger is unavailable while %s (%s); keeping what is to be "
                        "written in memory and retrying",
                        what,
                        str(error).splitlines()[0][:300],
                    )
                if self.stopping.is_set():
                    if not wait:
                        return self._give_up(error, give_up, raise_on_give_up)
                    deadline = deadline or time.monotonic() + self.grace
                if time.monotonic() > min(deadline or limit, limit):
                    self.log.error("giving up %s: the ledger stayed unavailable", what)
                    return self._give_up(error, give_up, raise_on_give_up)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self._trouble:
                self._trouble = False
                self.log.warning("the ledger is available again (%s)", what)
            return value

    @staticmethod
    def _give_up(error: LedgerError, give_up: T | None, raise_it: bool) -> T:
        if raise_it:
            raise error
        return give_up  # type: ignore[return-value]
