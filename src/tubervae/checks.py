"""Argument checks shared by the pure core: one wording for every bad value.

Each check returns the value in its canonical type (``int``, ``float``, ``str``) or raises
``ValueError`` naming the argument, the rule and what was given, so a caller can validate
once at construction and trust the value afterwards.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np


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


def check_array(name: str, value: Any, *, ndim: int = 2, min_rows: int = 1, min_columns: int = 1) -> np.ndarray:
    """A finite real array of `ndim` dimensions (1 or 2), as float64; booleans count as 0 and 1.

    `min_rows` and `min_columns` (2-D only) say how much data the caller needs to compute anything.
    """
    array = np.asarray(value)
    kind = array.dtype
    if not (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating) or kind == np.bool_):
        raise TypeError(f"{name} must be a numeric array, got dtype {kind}")
    layout = "(n,)" if ndim == 1 else "(n, columns)"
    if array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array {layout}, got shape {array.shape}")
    if array.shape[0] < min_rows or (ndim == 2 and array.shape[1] < min_columns):
        need = f"{min_rows} row(s)" + (f" and {min_columns} column(s)" if ndim == 2 else "")
        raise ValueError(f"{name} must have at least {need}, got shape {array.shape}")
    array = array.astype(np.float64)
    finite = np.isfinite(array)
    if not finite.all():
        where = tuple(int(i) for i in np.argwhere(~finite)[0])
        place = f"row {where[0]}" + (f", column {where[1]}" if ndim == 2 else "")
        raise ValueError(f"{name} must be finite; found {array[where]} at {place}")
    return array


def check_random_state(random_state: Any) -> np.random.Generator:
    """A numpy Generator from a non-negative int seed, or the caller's own Generator (its stream goes on)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(check_seed(random_state))


def check_seed(random_state: Any) -> int:
    """An int seed for what takes one (scikit-learn, torch): the int itself, or one drawn from a Generator."""
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    if isinstance(random_state, bool) or not isinstance(random_state, Integral) or random_state < 0:
        raise ValueError(f"random_state must be a non-negative int or a numpy Generator, got {random_state!r}")
    return int(random_state)


def _bounds_text(minimum, maximum, *, strict: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if strict else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"<= {maximum}")
    return (" " + " and ".join(parts)) if parts else ""
