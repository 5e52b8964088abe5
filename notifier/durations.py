"""Durations as people write them in jobs.yaml: ``90s``, ``10m``, ``1h30m``, ``2d``, or seconds.

Units are ``d`` (days), ``h`` (hours), ``m`` (minutes) and ``s`` (seconds), largest first,
each at most once; amounts may have a decimal part (``1.5h``). A bare number is seconds.

Every duration, timeout and count a user can set (a setting, a jobs.yaml field, a command
line flag) is read by :meth:`Limit.parse`, against a finite range: ``nan``, ``inf``,
negative and out-of-range values are refused with one message naming the range, so no
value can overflow a date, disable a timeout or spin a loop further down. The ranges:

* durations (``keep_runs``, ``deliver_within``, ``cooldown``, misfire ``grace``, retry
  ``delay``, ``NOTIFIER_DELIVERY_LIFETIME``): up to :data:`MAX_DURATION` (10 years);
* timeouts and waits (``timeout``, ``cell_timeout``, ``SMTP_TIMEOUT``,
  ``NOTIFIER_SHUTDOWN_GRACE``, ``NOTIFIER_LEASE_SECONDS``, the retry backoff): up to
  :data:`MAX_TIMEOUT` (1 day);
* counts: each its own sane maximum (see the ``Limit`` constants of their modules).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

DURATION_FORM = "a duration like 90s, 10m, 1h30m, 2d, or a number of seconds"

_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"  # ASCII digits only: "٣" is no number here
_DURATION_RE = re.compile(
    rf"^(?:{_NUMBER}d)?(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?$",
)


def parse_duration(value: object, *, allow_number: bool = True) -> float:
    """Return the number of seconds ``value`` stands for.

    ``value`` is a string like ``"1h30m"`` or, when ``allow_number`` is true, an int or
    float number of seconds (a numeric string such as ``"90"`` counts as a number).
    Raises ValueError naming the value and the expected form; zero and negative
    durations are returned as they are (callers decide their minimum).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_FORM}, got {value!r}")
    if isinstance(value, (int, float)):
        if not allow_number:
            raise ValueError(
                f"a bare number is ambiguous here ({value!r}); write the unit, e.g. '{value}d'"
            )
        if not math.isfinite(value):
            raise ValueError(f"expected {DURATION_FORM}, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected {DURATION_FORM}, got {type(value).__name__} {value!r}")
    text = value.strip().replace(" ", "")
    if re.fullmatch(_NUMBER, text):
        return parse_duration(float(text), allow_number=allow_number)
    match = _DURATION_RE.match(text)
    if not text or match is None:
        raise ValueError(f"invalid duration {value!r}: expected {DURATION_FORM}")
    total = 0.0
    for amount, unit in zip(match.groups(), "dhms", strict=True):
        if amount is not None:
            total += float(amount) * _UNIT_SECONDS[unit]
    if not math.isfinite(total):  # "999...9d" with hundreds of digits
        raise ValueError(f"invalid duration {value!r}: expected {DURATION_FORM}")
    return total


def format_duration(seconds: float) -> str:
    """Render seconds compactly in the same notation: ``5400`` -> ``"1h30m"``."""
    if seconds != int(seconds) or seconds <= 0:
        return f"{seconds:g}s"
    rest = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, rest = divmod(rest, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
YEAR = 365 * DAY
MAX_DURATION = 10 * YEAR  # how long anything is kept or retried
MAX_TIMEOUT = DAY  # how long anything is waited for
MAX_COUNT = 2**63 - 1  # what a database integer holds (ids)

COUNT_FORM = "a whole number"


@dataclass(frozen=True)
class Limit:
    """The finite range a duration (seconds) or a count may take: ``low`` to ``high``.

    ``count=True``: a whole number (``"20"``, ``20``), else a duration in the jobs.yaml
    notation or seconds (``"90s"``, ``"10m"``, ``"600"``, ``600``; with ``unit=True`` the
    unit must be written). Both ends are included.
    """

    low: float
    high: float
    count: bool = False
    unit: bool = False

    def describe(self) -> str:
        """``1s to 1d`` or ``1 to 10000``: the range as a user writes its values."""
        if self.count:
            return f"{int(self.low)} to {int(self.high)}"
        return f"{_shown(self.low)} to {_shown(self.high)}"

    @property
    def form(self) -> str:
        """What a value looks like (a duration like 90s..., or a whole number)."""
        if self.count:
            return COUNT_FORM
        return "a duration with a unit, like 30d" if self.unit else DURATION_FORM

    def parse(self, value: object) -> float:
        """``value`` in seconds (or as a count), checked against the range.

        Raises ValueError saying what is wrong with ``value`` and the allowed range, e.g.
        ``'nan' is not a duration like 90s, ...; allowed: 1s to 1d``. Counts come back as
        ``int``.
        """
        text = value.strip() if isinstance(value, str) else None
        if text is not None and text.startswith("-"):
            raise ValueError(self._problem(value, "is negative"))
        if self.unit and (text is None or re.fullmatch(_NUMBER, text)):
            hint = f"e.g. '{text or value}d'"
            raise ValueError(
                self._problem(value, f"needs a unit (a bare number is ambiguous), {hint}")
            )
        try:
            number = _parse_count(value) if self.count else parse_duration(value)
        except ValueError:
            raise ValueError(self._problem(value, f"is not {self.form}")) from None
        if number < self.low:
            if number < 0:
                raise ValueError(self._problem(value, "is negative"))
            too = "zero" if number == 0 else f"under {self._at(self.low)}"
            raise ValueError(self._problem(value, f"is {too}"))
        if number > self.high:
            raise ValueError(self._problem(value, f"is more than {self._at(self.high)}"))
        return number

    def _at(self, bound: float) -> str:
        return str(int(bound)) if self.count else _shown(bound)

    def _problem(self, value: object, what: str) -> str:
        shown = repr(value.strip() if isinstance(value, str) else value)
        if len(shown) > 40:
            shown = shown[:36] + "...'"
        return f"{shown} {what}; allowed: {self.describe()}"


def _parse_count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = value.strip() if isinstance(value, str) else ""
    if not re.fullmatch(r"\+?[0-9]+", text):
        raise ValueError(f"{value!r} is not {COUNT_FORM}")
    return int(text) if len(text) <= 30 else 10**30  # more than any limit, and cheap


def _shown(seconds: float) -> str:
    return format_duration(seconds) if seconds else "0s"


# The ranges shared by every place that reads such a value (see the module docstring).
TIMEOUT = Limit(1, MAX_TIMEOUT)  # a run, a cell, an SMTP reply: 1s to 1d
DURATION = Limit(1, MAX_DURATION)  # keep something, retry something: 1s to 3650d
OPTIONAL_DURATION = Limit(0, MAX_DURATION)  # cooldown, grace, retry delay: 0 means none
