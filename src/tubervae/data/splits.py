"""Deterministic splits of the photo set: train, held-out test, the labelled 200, the UDR probe."""

from __future__ import annotations

import hashlib

import numpy as np

GOOD, BAD, UNLABELLED = 0, 1, -1
LABEL_CODES = {"good": GOOD, "bad": BAD, "": UNLABELLED}


def encode_labels(labels) -> np.ndarray:
    """'good'/'bad'/'' (or None/NaN) → 0/1/−1 as int8."""
    out = np.empty(len(labels), dtype=np.int8)
    for i, label in enumerate(labels):
        key = "" if label is None or (isinstance(label, float) and np.isnan(label)) else str(label).strip().lower()
        if key not in LABEL_CODES:
            raise ValueError(f"label {label!r} at row {i} is not 'good', 'bad' or empty")
        out[i] = LABEL_CODES[key]
    return out


def split_indices(
    labels: np.ndarray, *, test_fraction: float, labelled_per_class: int, probe_size: int, seed: int
) -> dict[str, np.ndarray]:
    """Row indices of each split.

    The test set takes `test_fraction` of every class present, good, bad and unlabelled alike, so
    that a folder with few labels or none still holds out photos for the reconstruction error and
    the factor scores. `labelled` (the few labels the user has, thesis: 100 good + 100 bad) and
    `udr_probe` (the images every model encodes for UDR) are drawn from train, so
    nothing the classifier is scored on was seen while choosing its threshold.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.isin(labels, (GOOD, BAD, UNLABELLED)).all():
        raise ValueError("labels must be a 1-D array of 0 (good), 1 (bad) or -1 (unlabelled)")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    test = []
    # Unlabelled photos join the draw only when present: an all-labelled set keeps its earlier split.
    classes = (GOOD, BAD, UNLABELLED) if (labels == UNLABELLED).any() else (GOOD, BAD)
    for cls in classes:
        members = rng.permutation(np.flatnonzero(labels == cls))
        test.append(members[: int(round(test_fraction * len(members)))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    if len(train) < probe_size:
        raise ValueError(
            f"the UDR probe needs {probe_size} training images but only {len(train)} remain after the "
            f"test split; lower preprocess.probe_size or add photos"
        )
    labelled = []
    for cls in (GOOD, BAD):
        members = rng.permutation(train[labels[train] == cls])
        labelled.append(members[:labelled_per_class])
    labelled = np.sort(np.concatenate(labelled))
    probe = np.sort(rng.choice(train, size=probe_size, replace=False))
    return {"train": train, "test": test, "labelled": labelled, "udr_probe": probe}


def guide_mask(labels: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """Which photos of the labelled split a guided family's head may train on (True), per class.

    `fraction` of each class (rounded), drawn with `seed` on a stream of its own, so the other splits
    stay as they were. The rest, the holdout labels, are never seen by the guidance: they alone place
    a guided component's threshold and estimate it, since labels that guided a component separate
    perfectly on it and would overstate any rule read from it. Unlabelled rows are never guides.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.isin(labels, (GOOD, BAD, UNLABELLED)).all():
        raise ValueError("labels must be a 1-D array of 0 (good), 1 (bad) or -1 (unlabelled)")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"fraction (preprocess.guide_fraction) must be in [0, 1), got {fraction!r}")
    rng = np.random.default_rng([seed, 0x6D1DE])  # a stream apart from split_indices' draws
    mask = np.zeros(len(labels), dtype=bool)
    for cls in (GOOD, BAD):
        members = rng.permutation(np.flatnonzero(labels == cls))
        mask[members[: int(round(fraction * len(members)))]] = True
    return mask


def fingerprint(*arrays: np.ndarray) -> str:
    """A short content hash: the data version that every run records."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]
