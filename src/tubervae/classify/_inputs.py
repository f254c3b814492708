"""Checks of the arrays every classifier takes: latents, labels, components, images, seeds.

They live in one place so that a bad argument reads the same whichever entry
point it was passed to, and so that each entry point can validate once and then
trust plain float64 latents and boolean labels. Plain int/real/choice checks
come from :mod:`tubervae.checks`; only the array-shaped ones are written here.
"""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral
from typing import Any

import numpy as np


def as_labels(bad: Any, name: str = "bad", n: int | None = None) -> np.ndarray:
    """A 1-D boolean array (True = bad) from booleans or 0/1 numbers, of length ``n`` if given."""
    array = np.asarray(bad)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of booleans (True = bad), got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{name} has {array.shape[0]} labels but the data has {n} rows; lengths must match")
    if array.dtype == np.bool_:
        return array
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name} must be booleans (True = bad) or 0/1 numbers, got dtype {array.dtype}")
    values = np.unique(array)
    if not np.all(np.isin(values, (0, 1))):
        raise ValueError(f"{name} must hold only booleans or 0/1 (1 = bad), got values {values[:10].tolist()}")
    return array.astype(bool)


def require_both_classes(bad: np.ndarray, name: str = "bad") -> None:
    """Fitting needs at least one good and one bad label."""
    n_bad = int(bad.sum())
    n_good = int(bad.size - n_bad)
    if n_bad == 0 or n_good == 0:
        raise ValueError(
            f"{name} must contain at least one good and one bad labelled image to fit a classifier, "
            f"got {n_good} good and {n_bad} bad"
        )


def as_components(components: Iterable[int] | None, d: int) -> list[int]:
    """Distinct component indices in ``0..d-1``; None means all of them."""
    if components is None:
        return list(range(d))
    if isinstance(components, (str, bytes)) or not isinstance(components, Iterable):
        raise TypeError(f"components must be a sequence of component indices, got {components!r}")
    chosen = list(components)
    if not chosen:
        raise ValueError("components must name at least one component, got an empty sequence")
    for c in chosen:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, Integral):
            raise TypeError(f"components must be integers, got {c!r} in {chosen!r}")
        if not 0 <= c < d:
            raise ValueError(f"component {c} is out of range; the latents have components 0..{d - 1}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"components must not repeat, got {chosen!r}")
    return [int(c) for c in chosen]


def as_images(images: Any, name: str = "images") -> np.ndarray:
    """A uint8 ``(n, h, w, 3)`` batch, square with side a power of two >= 16, ``n >= 1``."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 (n, h, w, 3), got dtype {array.dtype}")
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (n, h, w, 3), got {array.shape}")
    n, h, w, _ = array.shape
    if n == 0:
        raise ValueError(f"{name} must hold at least one image, got shape {array.shape}")
    if h != w or h < 16 or h & (h - 1):
        raise ValueError(f"{name} must be square with side a power of two >= 16, got {h}x{w}")
    return array


def check_width(latents: np.ndarray, n_features: int, name: str = "latents") -> None:
    """Latents at prediction time must have as many components as at fit time."""
    if latents.shape[1] != n_features:
        raise ValueError(f"{name} has {latents.shape[1]} components but the classifier was fitted on {n_features}")
