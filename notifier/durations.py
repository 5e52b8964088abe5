"""Durations as people write them in jobs.yaml: ``90s``, ``10m``, ``1h30m``, ``2d``, or seconds.

Units are ``d`` (days), ``h`` (hours), ``m`` (minutes) and ``s`` (seconds), largest first,
each at most once; amounts may have a decimal part (``1.5h``). A bare number is seconds.
"""

from __future__ import annotations

import math
import re

DURATION_FORM = "a duration like 90s, 10m, 1h30m, 2d, or a number of seconds"

_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_NUMBER = r"(\d+(?:\.\d+)?)"
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
