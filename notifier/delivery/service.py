"""The daemon's delivery service: a background thread that keeps the queue moving.

Runs deliver their own mail right after they are planned; this thread takes care of the
rest: deferred mail whose next try has come (after a mail outage), mail left by a node
that died, expiry, and ending runs whose mail is settled. It sleeps until the next row is
due (at most ``poll`` seconds, so that mail queued or retried by another process is
noticed) and wakes at once when :meth:`DeliveryService.wake` is called.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

from notifier.delivery.worker import Deliverer
from notifier.ledger import LedgerError

log = logging.getLogger("notifier.delivery")

FRESH_SECONDS = 5.0


class DeliveryService:
    """Runs :class:`Deliverer` passes in a thread until :meth:`stop`."""

    def __init__(
        self, deliverer: Deliverer, *, poll: float = 10.0, housekeeping_every: float = 10.0
    ) -> None:
        self.deliverer = deliverer
        self.poll = poll
        self.housekeeping_every = housekeeping_every
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trouble_logged = False

    def start(self) -> None:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._loop, name="delivery", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue now (something was queued or retried)."""
        self._wake.set()

    def request_stop(self) -> None:
        """Start no new pass (the one under way goes on until its deliverer is stopped)."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> bool:
        """Request a stop and wait up to ``timeout`` for the pass under way; True when done."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _loop(self) -> None:
        last_housekeeping = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_housekeeping >= self.housekeeping_every:
                    last_housekeeping = time.monotonic()
                    self.deliverer.housekeeping()
                # fresh mail is the business of the run that queued it (it is sending it
                # right now); the service takes what waits: deferred, or left by a dead node
                self.deliverer.deliver(settled_for=FRESH_SECONDS)
                wait = self._until_next_due()
                if self._trouble_logged:
                    self._trouble_logged = False
                    log.warning("delivery service: the ledger is reachable again")
            except LedgerError as error:
                if not self._trouble_logged:  # one line, not one per pass
                    self._trouble_logged = True
                    log.warning("delivery service: the ledger is unavailable (%s); retrying", error)
                wait = self.poll
            except Exception:  # never let the service die: log and go on
                log.exception("delivery service: a pass failed; trying again")
                wait = self.poll
            self._wake.wait(wait)
            self._wake.clear()

    def _until_next_due(self) -> float:
        due = self.deliverer.queue.next_due()
        if due is None:
            return self.poll
        seconds = (due - datetime.now(timezone.utc)).total_seconds()
        return min(max(seconds, 0.25), self.poll)
