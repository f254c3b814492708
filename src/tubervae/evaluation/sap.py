"""The SAP score (Kumar et al. 2018): the gap in single-component predictiveness.

The published definition is disentanglement_lib's sap_score.py (the default,
``method="svm"``); :func:`sap` says what the other ``method`` options change.
The shared checks, labels and train/test rows are in :mod:`.metric_utils`.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from tubervae.checks import check_choice, check_int, check_random_state, check_seed
from tubervae.config import SAP_METHODS
from tubervae.evaluation.metric_utils import (
    N_BINS,
    N_TEST,
    N_TRAIN,
    check_metric_inputs,
    constant_factors,
    factor_labels,
    mean_or_nan,
    resolve_discrete,
    top_two_gap,
    train_test_indices,
)

__all__ = ["sap", "sap_from_scores"]


def sap_from_scores(scores) -> dict:
    """SAP from a score matrix S (d × k): per factor, best minus second-best component.

    disentanglement_lib's ``_compute_avg_diff_top_two``: the mean of the
    per-factor gaps; NaN columns (constant factors) are left out.
    """
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"scores must be a non-empty 2-D array (components, factors); got shape {matrix.shape}")
    per_factor = top_two_gap(matrix)
    return {"sap": mean_or_nan(per_factor), "sap_per_factor": per_factor, "sap_matrix": matrix}


def _svm_accuracy(x_train, y_train, x_test, y_test, seed: int) -> float:
    """disentanglement_lib's discrete SAP score of one component: LinearSVC test accuracy."""
    classifier = LinearSVC(C=0.01, class_weight="balanced", random_state=seed)
    with warnings.catch_warnings():
        # A component that carries nothing about the factor may not converge; its score is low either way.
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x_train[:, None], y_train)
    return float(np.mean(classifier.predict(x_test[:, None]) == y_test))


def _squared_correlations(reps: np.ndarray, target: np.ndarray) -> np.ndarray:
    """disentanglement_lib's continuous SAP score: cov² / (var_z var_y), 0 for a constant component."""
    offset = target - target.mean()
    if not np.any(offset):  # constant on these rows: nothing to explain, every gap 0
        return np.zeros(reps.shape[1])
    centred = reps - reps.mean(axis=0)
    rep_var = np.sum(centred**2, axis=0) / (reps.shape[0] - 1)
    covariance = centred.T @ offset / (reps.shape[0] - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = covariance**2 / (rep_var * np.sum(offset**2) / (reps.shape[0] - 1))
    return np.where(rep_var > 1e-12, r2, 0.0)


def sap(
    representations,
    factors,
    *,
    random_state,
    method: str = "svm",
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    n_bins: int = N_BINS,
    discrete=None,
) -> dict:
    """SAP score (Kumar et al. 2018): mean gap in single-component predictiveness.

    A score S[i, j] says how well component i alone predicts factor j; per
    factor the gap between the two best components, averaged over factors
    (:func:`sap_from_scores`). ``method``:

    - ``"svm"`` (default, the published one: disentanglement_lib sap_score.py
      with ``continuous_factors=False``, its setting in the study): every
      factor is a class label (discrete levels; continuous factors cut into
      ``n_bins`` = 20 histogram bins) and S[i, j] is the test accuracy of
      ``LinearSVC(C=0.01, class_weight="balanced")`` fitted on component i
      alone. Accuracy has chance level 1/levels, not 0, so a perfect
      one-to-one code of a balanced binary factor scores 1 − 0.5 = 0.5, and a
      linear one-vs-rest classifier on one feature cannot pick out the middle
      bins of a 20-bin factor: expect small values. Measured on 9
      simulator-like factors (7 continuous): a code aligned with the factors
      (noise 0.1 std) scores 0.05, pure noise 0.002; ``"mixed"`` gives 0.89
      and 0.001, ``"correlation"`` 0.99 and 0.002.
    - ``"correlation"`` (published ``continuous_factors=True``): S[i, j] is
      the squared Pearson correlation (R² of a linear fit) of component i and
      factor j on the training rows (up to ``n_train``; no test rows).
    - ``"mixed"``: the correlation for continuous factors and the LinearSVC
      for discrete ones, so each factor is scored the way its kind suggests.

    The LinearSVC is fitted on ``n_train`` rows and scored on ``n_test``
    others. A factor constant on the training rows scores the same with
    every component (gap 0); a constant factor gets NaN.
    """
    reps, facs = check_metric_inputs(representations, factors)
    method = check_choice("method", method, SAP_METHODS)
    n_bins = check_int("n_bins", n_bins, 2)
    mask = resolve_discrete(facs, discrete)
    rng = check_random_state(random_state)
    n = reps.shape[0]
    if method == "correlation":
        train, test = np.sort(rng.permutation(n)[: check_int("n_train", n_train, 2)]), np.empty(0, dtype=np.int64)
    else:
        train, test = train_test_indices(n, n_train=n_train, n_test=n_test, random_state=rng)
    d, k = reps.shape[1], facs.shape[1]
    constant = constant_factors(facs)
    scores = np.full((d, k), np.nan)
    for j in np.flatnonzero(~constant):
        seed = check_seed(rng)
        if method == "correlation" or (method == "mixed" and not mask[j]):
            scores[:, j] = _squared_correlations(reps[train], facs[train, j])
            continue
        labels = factor_labels(facs[:, j], bool(mask[j]), n_bins)
        y_train, y_test = labels[train], labels[test]
        if np.unique(y_train).size < 2:
            scores[:, j] = np.mean(y_test == y_train[0])
            continue
        for i in range(d):
            scores[i, j] = _svm_accuracy(reps[train, i], y_train, reps[test, i], y_test, seed)
    result = sap_from_scores(scores)
    result.update(sap_method=method, sap_num_train=int(train.size), sap_num_test=int(test.size))
    return result
