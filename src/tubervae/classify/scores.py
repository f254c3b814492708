"""The figures every classifier here is reported with, from scikit-learn.

Plain accuracy flatters a classifier on a skewed test set (the thesis's 81.3 %
sits below "always bad"), so :func:`binary_metrics` puts balanced accuracy,
F1, ROC AUC, the confusion matrix and a majority-class baseline beside it. The
numbers themselves are sklearn's; this module only fixes the conventions (bad
is the positive class, which class counts as present) and makes the result
JSON-ready.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from tubervae.classify._inputs import as_labels

__all__ = ["balanced_accuracy", "binary_metrics"]


def balanced_accuracy(bad_true: np.ndarray, bad_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``bad_true`` (sklearn's ``balanced_accuracy_score``).

    With one class present sklearn drops the absent class's undefined recall,
    so the result is that class's recall, as documented here; but it warns
    that ``y_pred`` holds a class ``y_true`` lacks, or, when both hold the same
    single class, that the confusion matrix has one label. Both cases are
    expected (a test set may be all bad), so those two warnings are silenced.
    """
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true", category=UserWarning)
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        return float(balanced_accuracy_score(bad_true, bad_pred))


def binary_metrics(bad_true: Any, bad_pred: Any, score: Any = None, *, majority_label: bool | None = None) -> dict:
    """Accuracy next to the figures that expose a skewed test set.

    Returns plain ints/floats (JSON-ready):
    ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present
    in ``bad_true``), ``f1_bad`` (F1 with bad positive; 0.0 when there is no
    bad image and no bad prediction), ``roc_auc`` (None without ``score`` or
    with one class), ``confusion_matrix`` = ``[[tn, fp], [fn, tp]]`` (rows =
    true good/bad, columns = predicted good/bad, bad positive; sklearn's
    layout), ``n``, ``n_bad``, ``n_good``, ``majority_label``, and the
    accuracy and balanced accuracy of always predicting ``majority_label``.

    ``majority_label`` should be the majority class of the *training* labels
    (True = bad); left None it is the majority of ``bad_true``, ties to bad.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

    truth = as_labels(bad_true, "bad_true")
    if truth.size == 0:
        raise ValueError("bad_true must hold at least one label, got an empty array")
    pred = as_labels(bad_pred, "bad_pred", n=truth.size)
    n_bad = int(truth.sum())
    n_good = int(truth.size - n_bad)

    roc_auc = None
    if score is not None:
        values = np.asarray(score, dtype=np.float64)
        if values.shape != truth.shape:
            raise ValueError(f"score must have shape {truth.shape} like bad_true, got {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError("score must be finite; it holds NaN or inf")
        if n_bad and n_good:
            roc_auc = float(roc_auc_score(truth, values))

    if majority_label is None:
        majority = bool(n_bad >= n_good)
    elif isinstance(majority_label, (bool, np.bool_)):
        majority = bool(majority_label)
    else:
        raise TypeError(f"majority_label must be a bool (True = bad) or None, got {majority_label!r}")
    constant = np.full(truth.size, majority)

    # labels= fixes the 2x2 layout even when only one class occurs in truth and prediction.
    counts = confusion_matrix(truth, pred, labels=[False, True])
    return {
        "accuracy": float(accuracy_score(truth, pred)),
        "balanced_accuracy": balanced_accuracy(truth, pred),
        "f1_bad": float(f1_score(truth, pred, pos_label=True, zero_division=0.0)),
        "roc_auc": roc_auc,
        "confusion_matrix": [[int(v) for v in row] for row in counts],
        "n": int(truth.size),
        "n_bad": n_bad,
        "n_good": n_good,
        "majority_label": majority,
        "majority_accuracy": float(accuracy_score(truth, constant)),
        "majority_balanced_accuracy": balanced_accuracy(truth, constant),
    }
