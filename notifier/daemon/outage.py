"""The daemon while its ledger is unreachable: no slot without a claim, one line, backoff.

A slot runs only once it is claimed in the ledger, so while the database is down (or
unreachable from this node) no slot runs here. :class:`LedgerOutage` keeps the daemon
quiet and patient about it:

* the first failure logs one line (the cause, and that slots are not run meanwhile),
  never a traceback per slot or per second;
* from then on the ledger is tried with backoff (1 s doubling to 10 s): a slot that
  fires in between is counted, not tried, and the recovery loop probes the ledger;
* when a call succeeds again, one line says how long it was gone and which slots were
  not run; the daemon then applies each job's misfire policy to them (as after
  downtime) and marks interrupted whatever it held but no longer executes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

log = logging.getLogger("notifier.daemon")

FIRST_DELAY = 1.0
MAX_DELAY = 10.0


class LedgerOutage:
    """Whether the ledger is reachable, as this daemon last saw it (thread-safe)."""

    def __init__(
        self,
        *,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._next_try = 0.0
        self._delay = first_delay
        self._not_run: list[str] = []  # the first ten, for the log line
        self._not_run_count = 0

    @property
    def down(self) -> bool:
        """True from a failed ledger call until the next successful one."""
        return self._down_since is not None

    def may_try(self) -> bool:
        """False while backing off: do not call the ledger now."""
        with self._lock:
            return self._down_since is None or self._clock() >= self._next_try

    def failed(self, error: BaseException, doing: str) -> None:
        """A ledger call failed (the first failure of an outage logs one line)."""
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = self._clock()
                self._delay = self.first_delay
            else:
                self._delay = min(self._delay * 2, self.max_delay)
            self._next_try = self._clock() + self._delay
        if first:
            reason = " ".join(str(error).split())[:300]
            log.warning(
                "the ledger is unavailable while %s (%s): no slot runs until it is back; "
                "trying again with backoff (up to every %.0f s)",
                doing,
                reason,
                self.max_delay,
            )

    def not_run(self, job: str, slot: datetime) -> None:
        """A slot that was not run because the ledger could not be reached."""
        with self._lock:
            self._not_run_count += 1
            if len(self._not_run) < 10:
                self._not_run.append(f"{job} {slot.isoformat()}")

    def succeeded(self) -> bool:
        """A ledger call worked; True (and one line) when that ends an outage."""
        with self._lock:
            if self._down_since is None:
                return False
            gone = self._clock() - self._down_since
            missed, count = self._not_run, self._not_run_count
            self._not_run, self._not_run_count = [], 0
            self._down_since = None
        shown = ", ".join(missed) + (
            f" and {count - len(missed)} more" if count > len(missed) else ""
        )
        log.warning(
            "the ledger is reachable again after %.0f s; %d slot(s) were not run meanwhile%s",
            gone,
            count,
            f" ({shown}); applying each job's misfire policy to them" if count else "",
        )
        return True
