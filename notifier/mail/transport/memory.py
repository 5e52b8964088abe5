"""In-memory transport for tests: the real MIME is built, nothing leaves the process.

``NOTIFIER_TRANSPORT=memory`` gives transports that share one list, :data:`outbox`
(like ``django.core.mail.outbox``), so a test can read what a run sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from notifier.mail.transport.base import Outgoing, ResultCallback, SendResult, SimpleSession

outbox: list[Outgoing] = []


class MemoryTransport:
    """Keeps every message in ``self.sent`` (like Django's locmem backend).

    ``shared=True``: ``self.sent`` is the module's :data:`outbox`, shared by all of them.
    """

    name = "memory"

    def __init__(self, *, shared: bool = False) -> None:
        self.sent: list[Outgoing] = outbox if shared else []

    def send(
        self, messages: Sequence[Outgoing], on_result: ResultCallback | None = None
    ) -> list[SendResult]:
        """Keep each message in ``self.sent``; every recipient counts as accepted."""
        results = []
        for out in messages:
            results.append(self._keep(out))
            if on_result is not None:
                on_result(len(results) - 1, results[-1])
        return results

    def session(self) -> SimpleSession:
        """Messages one at a time (each kept, each accepted)."""
        return SimpleSession(self._keep)

    def _keep(self, out: Outgoing) -> SendResult:
        self.sent.append(out)
        return SendResult.all_accepted(out, self.name, 250, "kept in memory")
