"""When a deferred email is tried again: exponential backoff with jitter, capped.

The n-th temporary failure waits ``first * 2**(n-1)`` seconds, at most ``maximum``, times
a random factor in [0.75, 1.0] so that many deferred emails do not all knock at once. With
the defaults (30 s, 15 min) the tries after an outage come 30 s, 1, 2, 4, 8 and then every
15 min until the email's lifetime (1 day for reports) runs out, much like Postfix
(``minimal_backoff_time`` 300 s ... ``maximal_backoff_time`` 4000 s) but sooner, because a
report at 08:00 is worth more at 08:05 than at 09:00. Whatever the settings say, a delay
is at most :data:`LONGEST` (a year: longer than any email lives), so no value can make the
next try a time that cannot be written down (an OverflowError inside the delivery worker).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from notifier.settings import DEFAULT_RETRY_BACKOFF, DEFAULT_RETRY_BACKOFF_MAX

LONGEST = 365 * 24 * 3600.0  # seconds


@dataclass(frozen=True)
class Backoff:
    """Delays for the queue's retries (seconds)."""

    first: float = DEFAULT_RETRY_BACKOFF
    maximum: float = DEFAULT_RETRY_BACKOFF_MAX

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th temporary failure (1, 2, ...)."""
        exponent = min(max(failures, 1) - 1, 30)
        ceiling = min(self.maximum, self.first * (2**exponent), LONGEST)
        if not math.isfinite(ceiling) or ceiling < 0:  # NaN (inf is taken by the min)
            ceiling = LONGEST if math.isnan(ceiling) else 0.0
        return ceiling * random.uniform(0.75, 1.0)  # noqa: S311 - jitter, not crypto

    def next_attempt(self, now: datetime, failures: int) -> datetime:
        """When to try again after the ``failures``-th temporary failure."""
        return now + timedelta(seconds=self.delay(failures))
