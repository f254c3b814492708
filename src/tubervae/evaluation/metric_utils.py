"""What the supervised disentanglement metrics share: input checks, discretising, train/test rows.

The metrics (:mod:`.mig`, :mod:`.dci`, :mod:`.sap`, :mod:`.factor_vae`, all four at
once in :mod:`.supervised`) follow disentanglement_lib (Locatello et al. 2019,
``evaluation/metrics``), each in its own module as there. What a fixed set of
encoded images forces is decided here, once:

- disentanglement_lib samples fresh ``num_train`` / ``num_test`` points per
  metric (10 000 / 5 000); here the images are split once per metric into
  disjoint random train and test rows, at most ``n_train`` / ``n_test`` of
  them (:func:`train_test_indices`), so the caller bounds the cost.
- its factors are discrete (dSprites' 32 x positions are 32 classes); here a
  continuous factor is cut into ``n_bins`` = 20 equal-width histogram bins
  (:func:`discretize`, the discretiser MIG applies to the codes) wherever the
  published metric treats factors as class labels (:func:`factor_labels`).

Factors may be continuous or discrete. ``discrete=None`` means "decide from
the data": a factor is discrete when all its values are integers and it takes
at most ``DISCRETE_MAX_VALUES`` distinct values (a spot count, a flag).
A constant factor (zero entropy, e.g. a defect absent from every image) has no
meaningful score: its per-factor entries are NaN and it is left out of means.
"""

from __future__ import annotations

import numpy as np

from tubervae.checks import check_array, check_int, check_random_state

__all__ = [
    "DISCRETE_MAX_VALUES",
    "N_BINS",
    "N_TEST",
    "N_TRAIN",
    "check_metric_inputs",
    "constant_factors",
    "discrete_factor_mask",
    "discretize",
    "factor_labels",
    "mean_or_nan",
    "resolve_discrete",
    "top_two_gap",
    "train_test_indices",
]

DISCRETE_MAX_VALUES = 10
N_BINS = 20  # disentanglement_lib's histogram discretiser: discretizer.num_bins = 20
# Default train / test rows for DCI and SAP (disentanglement_lib: 10 000 / 5 000 fresh samples).
# Fewer, for cost: the published DCI learner fits a tree per class per boosting stage, and its time
# grows with the training rows (see dci()); raise them where time allows.
N_TRAIN = 1000
N_TEST = 1000


def check_metric_inputs(representations, factors) -> tuple[np.ndarray, np.ndarray]:
    """Validate the two arrays once, so every metric fails the same clear way."""
    reps = check_array("representations", representations)
    facs = check_array("factors", factors)
    if reps.shape[0] != facs.shape[0]:
        raise ValueError(
            "representations and factors must have the same number of rows (images); "
            f"got {reps.shape[0]} and {facs.shape[0]}"
        )
    if reps.shape[0] < 4:
        raise ValueError(f"need at least 4 images to split into train and test; got n={reps.shape[0]}")
    return reps, facs


def resolve_discrete(facs: np.ndarray, discrete) -> np.ndarray:
    if discrete is None:
        return discrete_factor_mask(facs)
    mask = np.asarray(discrete)
    if mask.dtype != bool or mask.shape != (facs.shape[1],):
        raise ValueError(
            f"discrete must be None or a bool sequence with one entry per factor ({facs.shape[1]}); got {discrete!r}"
        )
    return mask


def constant_factors(facs: np.ndarray) -> np.ndarray:
    return np.ptp(facs, axis=0) == 0


# --------------------------------------------------------------------------- helpers


def discretize(values, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-width bin labels 0..n_bins-1 per column, as numpy.histogram bins them.

    disentanglement_lib's histogram discretiser (``np.digitize`` on
    ``np.histogram`` edges), used by MIG on the codes and here also on
    continuous factors wherever a metric needs class labels; a 1-D input is
    one column.
    """
    n_bins = check_int("n_bins", n_bins, 1)
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (1, 2) or array.size == 0:
        raise ValueError(f"values must be a non-empty 1-D or 2-D array; got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("values must be finite; found NaN or infinity")
    columns = array.reshape(array.shape[0], -1)
    labels = np.empty(columns.shape, dtype=np.int64)
    for j in range(columns.shape[1]):
        edges = np.histogram_bin_edges(columns[:, j], bins=n_bins)
        # Interior edges only: values on an edge go up, the maximum stays in the last bin.
        labels[:, j] = np.searchsorted(edges[1:-1], columns[:, j], side="right")
    return labels.reshape(array.shape)


def discrete_factor_mask(factors, max_values: int = DISCRETE_MAX_VALUES) -> np.ndarray:
    """True for factors that are integer-valued with at most ``max_values`` levels."""
    facs = np.asarray(factors, dtype=np.float64)
    if facs.ndim != 2:
        raise ValueError(f"factors must be a 2-D array (n, k); got shape {facs.shape}")
    max_values = check_int("max_values", max_values, 1)
    integral = np.all(facs == np.round(facs), axis=0)
    levels = np.array([np.unique(facs[:, j]).size for j in range(facs.shape[1])])
    return integral & (levels <= max_values)


def train_test_indices(
    n_samples: int, *, n_train: int = N_TRAIN, n_test: int = N_TEST, random_state
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random train and test row indices (each sorted).

    ``n_train`` and ``n_test`` rows when the data holds that many; otherwise
    all rows, split in the ratio ``n_train : n_test`` (at least one each).
    This stands in for disentanglement_lib's fresh ``num_train`` /
    ``num_test`` samples, and caps the cost of the fitted metrics.
    """
    n_samples = check_int("n_samples", n_samples, 2)
    n_train = check_int("n_train", n_train, 1)
    n_test = check_int("n_test", n_test, 1)
    if n_train + n_test > n_samples:
        n_test = min(max(1, round(n_samples * n_test / (n_train + n_test))), n_samples - 1)
        n_train = n_samples - n_test
    order = check_random_state(random_state).permutation(n_samples)
    return np.sort(order[n_test : n_test + n_train]), np.sort(order[:n_test])


def factor_labels(column: np.ndarray, discrete: bool, n_bins: int) -> np.ndarray:
    """Class labels of one factor: a discrete factor's own levels, else histogram bins."""
    if discrete:
        return np.unique(column, return_inverse=True)[1]
    return discretize(column, n_bins)


def top_two_gap(scores: np.ndarray) -> np.ndarray:
    """Per column: best minus second-best row (second is 0 with a single row)."""
    ordered = np.sort(scores, axis=0)[::-1]
    second = ordered[1] if ordered.shape[0] > 1 else np.zeros(ordered.shape[1])
    return ordered[0] - second


def mean_or_nan(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.mean(finite)) if finite.size else float("nan")
