"""Argument checks shared by both halves: one wording, one notion of "a number".

``bool`` is never accepted as a number (``True`` is an ``int`` in Python, and a flag
passed where a count belongs is a bug); NaN and infinities are never accepted as seconds.
"""

from __future__ import annotations

import math

from .errors import ConfigurationError

__all__ = ["check_int", "check_seconds"]


def check_int(name: str, value: object, *, minimum: int) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``; else ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_seconds(
    name: str, value: object, *, allow_zero: bool = False, allow_none: bool = False
) -> float | None:
    """``value`` if it is a finite number of seconds, > 0 (>= 0 with ``allow_zero``), or
    None with ``allow_none``; else ConfigurationError."""
    if value is None and allow_none:
        return None
    if type(value) is float and 0 < value < math.inf:
        return value  # the common case, checked cheaply: sessions are made per message
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(
            f"{name} must be a finite number of seconds {bound}, got {value!r}"
        )
    return float(value)
