"""Argument checks shared by the pure core: one wording for every bad value.

Each check returns the value in its canonical type (``int``, ``float``, ``str``) or raises
``ValueError`` naming the argument, the rule and what was given, so a caller can validate
once at construction and trust the value afterwards.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool) within ``[minimum, maximum]``."""
    bounds = _bounds_text(minimum, maximum, strict=False)
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an int{bounds}, got {value!r} ({type(value).__name__})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int{bounds}, got {value!r}")
    return int(value)


def check_real(
    name: str, value: Any, minimum: float | None = None, *, strict: bool = False, maximum: float | None = None
) -> float:
    """A finite real number (not a bool) ``>= minimum`` (``> minimum`` when ``strict``) and ``<= maximum``."""
    bounds = _bounds_text(minimum, maximum, strict=strict)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a finite number{bounds}, got {value!r} ({type(value).__name__})")
    number = float(value)
    too_low = minimum is not None and (number < minimum or (strict and number == minimum))
    too_high = maximum is not None and number > maximum
    if not math.isfinite(number) or too_low or too_high:
        raise ValueError(f"{name} must be a finite number{bounds}, got {value!r}")
    return number


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """One of the strings in ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _bounds_text(minimum, maximum, *, strict: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if strict else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"<= {maximum}")
    return (" " + " and ".join(parts)) if parts else ""
