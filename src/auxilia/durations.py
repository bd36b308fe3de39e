"""Wall-clock durations as a user writes them: ``15m``, ``90s``, ``1h30m``, ``2.5m``, ``600``.

One parser for every place that reads a duration (``train.time``, a sweep's ``budget: time:``),
and one canonical spelling, so that ``90s`` and ``1m30s`` are the same budget in
``config.yaml``, in a resume check and in a sweep's record.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["DURATION_FORMS", "canonical_duration", "format_duration", "parse_duration"]

DURATION_FORMS = "15m, 90s, 1h30m, 2.5m or a number of seconds (600)"
"""The valid forms, as an error message lists them."""

_UNITS = (("h", ("h", "hr", "hrs", "hour", "hours"), 3600.0),
          ("m", ("m", "min", "mins", "minute", "minutes"), 60.0),
          ("s", ("s", "sec", "secs", "second", "seconds"), 1.0))
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*")


def parse_duration(value: Any) -> float | None:
    """Seconds of a duration; None when ``value`` is not one, or not finite and > 0.

    A number (or a string of one) is seconds; a string may chain ``<number><unit>`` parts
    with units ``h``, ``m``, ``s`` (``hour``, ``min``, ``sec`` and plurals too), each at most
    once and from the largest down: ``1h30m``, ``2.5m``, ``1m 30s``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None  # a bool is an int to Python, never a duration
    seconds = _parse_text(value.strip().lower()) if isinstance(value, str) else float(value)
    if seconds is None or not (0 < seconds < math.inf):
        return None
    return seconds


def canonical_duration(value: Any) -> str:
    """``value`` in the canonical spelling (``90s`` → ``1m30s``).

    Raises:
        ValueError: ``value`` is not a duration > 0 (the message lists the valid forms).
    """
    seconds = parse_duration(value)
    if seconds is None:
        raise ValueError(f"expected a duration, {DURATION_FORMS}, greater than 0; got {value!r}")
    return format_duration(seconds)


def _parse_text(text: str) -> float | None:
    try:
        return float(text)  # "600": seconds ("inf" and "nan" are refused by the caller)
    except ValueError:
        pass
    total, at, next_unit = 0.0, 0, 0
    for match in _PART.finditer(text):
        if match.start() != at:
            return None
        at = match.end()
        index = next((i for i, (_, names, _) in enumerate(_UNITS) if match[2] in names), None)
        if index is None or index < next_unit:  # unknown, repeated or out of order
            return None
        total += float(match[1]) * _UNITS[index][2]
        next_unit = index + 1
    return total if at == len(text) and at > 0 else None


def format_duration(seconds: float) -> str:
    """The canonical spelling: ``5400`` → ``"1h30m"``, ``150`` → ``"2m30s"``, ``6`` → ``"6s"``.

    :func:`parse_duration` reads it back to the same number of seconds (to the microsecond).
    """
    rest = round(float(seconds), 6)
    hours = int(rest // 3600)
    rest = round(rest - 3600 * hours, 6)
    minutes = int(rest // 60)
    rest = round(rest - 60 * minutes, 6)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "",
             _decimal(rest) + "s" if rest or not (hours or minutes) else ""]
    return "".join(parts)


def _decimal(value: float) -> str:
    """``6.5`` → ``"6.5"``, ``6.0`` → ``"6"``: up to microseconds, no exponent."""
    return f"{value:.6f}".rstrip("0").rstrip(".")
