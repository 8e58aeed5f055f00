"""Durations as written in configuration: ``90``, ``"30s"``, ``"5min"``, ``"1h30m"``, ``"7d"``.

Units are case-sensitive on purpose: ``M`` means "month" to systemd and "minute" to
others, so only the lower-case spellings below are accepted and nothing is guessed.
"""

from __future__ import annotations

import math
import re

ALLOWED_FORMS = (
    'seconds as a number (90) or a string of number+unit parts such as "30s", "5min", '
    '"10m", "26h", "7d", "2w", "1h30m", "0"; units: ms, s, m/min, h, d, w'
)

_SECONDS_PER_UNIT: dict[str, float] = {
    "ms": 0.001,
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip

_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)\s*")

# Largest-first so formatting is greedy; minutes are written "min" because a bare
# "m" is easy to misread as months.
_FORMAT_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


class DurationError(ValueError):
    """A duration that is negative, malformed or not finite."""


def parse_duration(value: object) -> float:
    """Return ``value`` (int/float seconds or a duration string) as float seconds."""
    if isinstance(value, bool):
        raise DurationError(f"a boolean is not a duration; use {ALLOWED_FORMS}")
    if isinstance(value, int | float):
        return _checked(float(value))
    if not isinstance(value, str):
        raise DurationError(f"expected {ALLOWED_FORMS}")
    text = value.strip()
    if text.startswith("-"):
        raise DurationError(f"a duration cannot be negative; use {ALLOWED_FORMS}")
    if _NUMBER.fullmatch(text):
        return _checked(float(text))
    return _checked(_parse_parts(text))


def _parse_parts(text: str) -> float:
    if not text:
        raise DurationError(f"an empty string is not a duration; use {ALLOWED_FORMS}")
    total = 0.0
    position = 0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None or match.group(2) not in _SECONDS_PER_UNIT:
            raise DurationError(f"not a duration; use {ALLOWED_FORMS}")
        amount, unit = match.group(1), match.group(2)
        # Dividing keeps "100ms" exactly 0.1 instead of 100 * 0.001.
        if unit == "ms":
            total += float(amount) / 1000
        else:
            total += float(amount) * _SECONDS_PER_UNIT[unit]
        position = match.end()
    return total


def _checked(seconds: float) -> float:
    if math.isnan(seconds) or seconds < 0:
        raise DurationError(f"a duration cannot be negative; use {ALLOWED_FORMS}")
    if math.isinf(seconds):
        raise DurationError("the duration is too large")
    return seconds


def format_duration(seconds: float) -> str:
    """Render float seconds in the compact form ``parse_duration`` reads back."""
    if seconds < 0 or not math.isfinite(seconds):
        raise DurationError(f"cannot format {seconds!r} as a duration")
    whole = int(seconds)
    millis = round((seconds - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    parts: list[str] = []
    for unit, size in _FORMAT_UNITS:
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return "".join(parts) or "0"
