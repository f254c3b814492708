"""The thesis's classifier: one latent component and one cut, and the search for the best cut.

A traversal shows which component is quality-related; the rule then only needs
a threshold and a direction, fitted on the labelled images. The search scores
every cut of every component by balanced accuracy (the training labels need
not be balanced) in O(n log n) per component, with exact ties, so that the
ranking of components is reproducible and the chosen cut is the one least
sensitive to new data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tubervae.checks import check_array, check_choice, check_int
from tubervae.classify._inputs import as_components, as_labels, require_both_classes

__all__ = ["DIRECTIONS", "ThresholdRule", "fit_threshold_rule", "rank_threshold_rules", "validation_rows"]

DIRECTIONS = ("bad_if_above", "bad_if_below")


@dataclass(frozen=True)
class ThresholdRule:
    """One component and one cut: the thesis's classifier.

    ``bad_if_above`` calls an image bad when its component value exceeds the
    threshold; ``bad_if_below`` when it falls under it.
    """

    component: int
    threshold: float
    direction: str
    train_balanced_accuracy: float

    def __post_init__(self) -> None:
        check_choice("direction", self.direction, DIRECTIONS)
        check_int("component", self.component, minimum=0)
        if not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold!r}")

    def decision_function(self, latents: Any) -> np.ndarray:
        """Signed distance past the threshold, positive = bad: a score for ROC curves."""
        array = check_array("latents", latents)
        if self.component >= array.shape[1]:
            raise ValueError(
                f"the rule uses component {self.component} but latents have only {array.shape[1]} components"
            )
        values = array[:, self.component]
        if self.direction == "bad_if_above":
            return values - self.threshold
        return self.threshold - values

    def predict(self, latents: Any) -> np.ndarray:
        """Boolean array, True = bad."""
        return self.decision_function(latents) > 0

    def as_dict(self) -> dict:
        """Plain JSON-serialisable fields, for logging and reloading."""
        return {
            "component": int(self.component),
            "threshold": float(self.threshold),
            "direction": str(self.direction),
            "train_balanced_accuracy": float(self.train_balanced_accuracy),
        }

    @classmethod
    def from_dict(cls, fields: dict) -> ThresholdRule:
        return cls(
            component=int(fields["component"]),
            threshold=float(fields["threshold"]),
            direction=str(fields["direction"]),
            train_balanced_accuracy=float(fields["train_balanced_accuracy"]),
        )


def _best_cut(values: np.ndarray, bad: np.ndarray, n_bad: int, n_good: int) -> tuple[float, str, float, float]:
    """Best threshold of one component by one sort and cumulative counts.

    Balanced accuracy is compared through the exact integer numerator
    TP*G + TN*B (denominator 2*B*G), so ties are exact; among tied cuts the
    widest gap between neighbouring values wins, as the cut least sensitive
    to new data.

    The AUC comes from the same counts (Mann-Whitney, ties count half) rather
    than from ``roc_auc_score``: its integer numerator decides the preferred
    direction exactly at AUC = 1/2, and components with equal AUC get equal
    floats, which the ranking's AUC tie-break relies on.
    """
    unique, inverse = np.unique(values, return_inverse=True)
    bad_at = np.bincount(inverse, weights=bad, minlength=unique.size).astype(np.int64)
    all_at = np.bincount(inverse, minlength=unique.size).astype(np.int64)
    good_at = all_at - bad_at

    # AUC of the raw value as a bad-score (Mann-Whitney, ties count half).
    good_below = np.concatenate(([0], np.cumsum(good_at)[:-1]))
    auc = float(np.sum(bad_at * (2 * good_below + good_at))) / (2.0 * n_bad * n_good)
    preferred = "bad_if_above" if auc >= 0.5 else "bad_if_below"
    auc_corrected = max(auc, 1.0 - auc)

    if unique.size == 1:
        # A constant component: the cut at its value calls everything good.
        return float(unique[0]), preferred, 0.5, auc_corrected

    # Cut k lies between unique[k] and unique[k + 1]: counts at or below it.
    bad_le = np.cumsum(bad_at)[:-1]
    good_le = np.cumsum(good_at)[:-1]
    numerator = {
        "bad_if_above": (n_bad - bad_le) * n_good + good_le * n_bad,
        "bad_if_below": bad_le * n_good + (n_good - good_le) * n_bad,
    }
    best = {key: int(num.max()) for key, num in numerator.items()}
    if best["bad_if_above"] != best["bad_if_below"]:
        direction = max(best, key=best.get)
    else:
        direction = preferred
    ties = np.flatnonzero(numerator[direction] == best[direction])
    gaps = unique[ties + 1] - unique[ties]
    k = int(ties[int(np.argmax(gaps))])
    threshold = float(unique[k] + (unique[k + 1] - unique[k]) / 2.0)
    balanced_accuracy = best[direction] / (2.0 * n_bad * n_good)
    return threshold, direction, balanced_accuracy, auc_corrected


def rank_threshold_rules(latents: Any, bad: Any, *, components: Iterable[int] | None = None) -> pd.DataFrame:
    """Best single-component threshold for every component, best first.

    Candidate thresholds are the midpoints between sorted distinct values, in
    both directions; one sort plus cumulative counts makes it O(n log n) per
    component. ``roc_auc`` is that of the component value as a score,
    direction-corrected (>= 0.5), so a component that orders the classes well
    but whose best cut is unlucky still shows. Rows are sorted by balanced
    accuracy, then AUC, then lower component index.

    Columns: component, direction, threshold, balanced_accuracy, roc_auc.
    """
    array = check_array("latents", latents)
    labels = as_labels(bad, n=array.shape[0])
    require_both_classes(labels)
    chosen = as_components(components, array.shape[1])
    n_bad = int(labels.sum())
    n_good = int(labels.size - n_bad)
    weights = labels.astype(np.float64)
    rows = []
    for c in chosen:
        threshold, direction, balanced_accuracy, auc = _best_cut(array[:, c], weights, n_bad, n_good)
        rows.append(
            {
                "component": c,
                "direction": direction,
                "threshold": threshold,
                "balanced_accuracy": float(balanced_accuracy),
                "roc_auc": float(auc),
            }
        )
    table = pd.DataFrame(rows, columns=["component", "direction", "threshold", "balanced_accuracy", "roc_auc"])
    order = np.lexsort(
        (table["component"].to_numpy(), -table["roc_auc"].to_numpy(), -table["balanced_accuracy"].to_numpy())
    )
    return table.iloc[order].reset_index(drop=True)


def fit_threshold_rule(latents: Any, bad: Any, components: Iterable[int] | None = None) -> ThresholdRule:
    """The top-ranked rule of :func:`rank_threshold_rules`."""
    top = rank_threshold_rules(latents, bad, components=components).iloc[0]
    return ThresholdRule(
        component=int(top["component"]),
        threshold=float(top["threshold"]),
        direction=str(top["direction"]),
        train_balanced_accuracy=float(top["balanced_accuracy"]),
    )


def validation_rows(labelled_guide_mask: Any, guided: bool) -> np.ndarray:
    """Which labelled rows a model's rule may be fitted and validated on (boolean, one per labelled row).

    A guided model's component was trained to separate its guide rows (``labelled_guide_mask`` True),
    so they separate perfectly on it and say nothing of new photos: its rule and every estimate of it
    use the holdout rows alone. An unguided model saw no label, so every labelled row serves.
    """
    mask = np.asarray(labelled_guide_mask)
    if mask.ndim != 1 or mask.dtype != bool:
        raise ValueError(
            f"labelled_guide_mask must be a 1-D boolean array (True = the guidance saw the row), got {mask.dtype} "
            f"with shape {mask.shape}"
        )
    if not isinstance(guided, (bool, np.bool_)):
        raise TypeError(f"guided must be a bool, got {guided!r}")
    return ~mask if guided else np.ones(mask.shape, dtype=bool)
