"""Tuber-quality classifiers on latent codes, their metrics, and baselines.

The thesis classifies a tuber as bad by thresholding one latent component that
a traversal shows to be quality-related ("adds black spots"), fitted on 100
good + 100 bad labelled images. Its 81.3 % accuracy sits below the 81.7 % that
"always bad" scores at the training class ratio, so every figure here comes
with balanced accuracy and a majority-class baseline. The learned alternatives
the thesis names (logistic regression, gradient boosting on the latents) and a
small supervised CNN that sees the pixels are the yardsticks a threshold on a
disentangled component has to beat per labelled image.

Labels are boolean arrays ``bad`` (True = bad, the positive class throughout);
latents are ``(n, d)`` encoder means; images are uint8 ``(n, h, w, 3)``.
Everything is pure: no files, no tracking.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

DIRECTIONS = ("bad_if_above", "bad_if_below")
METHODS = ("threshold", "logistic", "gradient_boosting", "pixel_cnn")

# Gradient-boosting settings: shallow trees and few rounds, because the
# labelled sets are 20-200 images; min_samples_leaf is small so that a
# 10 + 10 draw can still split at all (sklearn's default of 20 cannot).
GRADIENT_BOOSTING_SETTINGS = {
    "max_iter": 100,
    "learning_rate": 0.1,
    "max_depth": 3,
    "min_samples_leaf": 5,
    "l2_regularization": 1.0,
    "early_stopping": False,
}


# --------------------------------------------------------------------------- validation


def _as_latents(latents: Any, name: str = "latents") -> np.ndarray:
    array = np.asarray(latents)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        bad_rows = np.flatnonzero(~np.all(np.isfinite(array), axis=1))
        raise ValueError(
            f"{name} must be finite; {bad_rows.size} row(s) hold NaN or inf, first at row {bad_rows[0]}"
        )
    return array


def _as_labels(bad: Any, name: str = "bad", n: int | None = None) -> np.ndarray:
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


def _require_both_classes(bad: np.ndarray, name: str = "bad") -> None:
    n_bad = int(bad.sum())
    n_good = int(bad.size - n_bad)
    if n_bad == 0 or n_good == 0:
        raise ValueError(
            f"{name} must contain at least one good and one bad labelled image to fit a classifier, "
            f"got {n_good} good and {n_bad} bad"
        )


def _as_components(components: Iterable[int] | None, d: int) -> list[int]:
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


def _as_random_state(random_state: Any) -> int:
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(random_state, Integral) or random_state < 0:
        raise ValueError(f"random_state must be a non-negative integer, got {random_state!r}")
    return int(random_state)


def _as_images(images: Any, name: str = "images") -> np.ndarray:
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


def _check_width(latents: np.ndarray, n_features: int, name: str = "latents") -> None:
    if latents.shape[1] != n_features:
        raise ValueError(
            f"{name} has {latents.shape[1]} components but the classifier was fitted on {n_features}"
        )


# --------------------------------------------------------------------------- threshold rule


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
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if isinstance(self.component, bool) or not isinstance(self.component, Integral) or self.component < 0:
            raise ValueError(f"component must be a non-negative integer, got {self.component!r}")
        if not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold!r}")

    def score(self, latents: Any) -> np.ndarray:
        """Signed distance past the threshold, positive = bad: a score for ROC curves."""
        array = _as_latents(latents)
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
        return self.score(latents) > 0

    def as_dict(self) -> dict:
        """Plain JSON-serialisable fields, for logging and reloading."""
        return {
            "component": int(self.component),
            "threshold": float(self.threshold),
            "direction": str(self.direction),
            "train_balanced_accuracy": float(self.train_balanced_accuracy),
        }

    @classmethod
    def from_dict(cls, fields: dict) -> "ThresholdRule":
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
    array = _as_latents(latents)
    labels = _as_labels(bad, n=array.shape[0])
    _require_both_classes(labels)
    chosen = _as_components(components, array.shape[1])
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


# --------------------------------------------------------------------------- metrics


def _balanced_accuracy(bad_true: np.ndarray, bad_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``bad_true``."""
    recalls = [float(np.mean(bad_pred[bad_true == cls] == cls)) for cls in (False, True) if np.any(bad_true == cls)]
    return float(np.mean(recalls))


def _roc_auc(bad_true: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half; O(n log n)."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_bad = int(bad_true.sum())
    n_good = bad_true.size - n_bad
    return float((ranks[bad_true].sum() - n_bad * (n_bad + 1) / 2.0) / (n_bad * n_good))


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
    truth = _as_labels(bad_true, "bad_true")
    if truth.size == 0:
        raise ValueError("bad_true must hold at least one label, got an empty array")
    pred = _as_labels(bad_pred, "bad_pred", n=truth.size)
    n_bad = int(truth.sum())
    n_good = int(truth.size - n_bad)

    tp = int(np.sum(truth & pred))
    fp = int(np.sum(~truth & pred))
    fn = int(np.sum(truth & ~pred))
    tn = int(np.sum(~truth & ~pred))
    f1_denominator = 2 * tp + fp + fn

    roc_auc = None
    if score is not None:
        values = np.asarray(score, dtype=np.float64)
        if values.shape != truth.shape:
            raise ValueError(f"score must have shape {truth.shape} like bad_true, got {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError("score must be finite; it holds NaN or inf")
        if n_bad and n_good:
            roc_auc = _roc_auc(truth, values)

    if majority_label is None:
        majority = bool(n_bad >= n_good)
    elif isinstance(majority_label, (bool, np.bool_)):
        majority = bool(majority_label)
    else:
        raise TypeError(f"majority_label must be a bool (True = bad) or None, got {majority_label!r}")
    constant = np.full(truth.size, majority)

    return {
        "accuracy": float(np.mean(truth == pred)),
        "balanced_accuracy": _balanced_accuracy(truth, pred),
        "f1_bad": float(2 * tp / f1_denominator) if f1_denominator else 0.0,
        "roc_auc": roc_auc,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "n": int(truth.size),
        "n_bad": n_bad,
        "n_good": n_good,
        "majority_label": majority,
        "majority_accuracy": float(np.mean(truth == majority)),
        "majority_balanced_accuracy": _balanced_accuracy(truth, constant),
    }


# --------------------------------------------------------------------------- learned classifiers on latents


class LatentClassifier:
    """A fitted sklearn estimator restricted to chosen components.

    ``predict_score`` is the probability of bad; ``predict`` thresholds it at
    0.5, which with balanced class weights is the balanced decision.
    """

    def __init__(self, estimator: Any, components: Sequence[int], n_features: int) -> None:
        self.estimator = estimator
        self.components = list(components)
        self.n_features = n_features

    def predict_score(self, latents: Any) -> np.ndarray:
        array = _as_latents(latents)
        _check_width(array, self.n_features)
        bad_column = list(self.estimator.classes_).index(True)
        return self.estimator.predict_proba(array[:, self.components])[:, bad_column]

    def predict(self, latents: Any) -> np.ndarray:
        return self.predict_score(latents) > 0.5


def _prepare_fit(latents: Any, bad: Any, components: Iterable[int] | None, random_state: Any):
    array = _as_latents(latents)
    labels = _as_labels(bad, n=array.shape[0])
    _require_both_classes(labels)
    return array, labels, _as_components(components, array.shape[1]), _as_random_state(random_state)


def fit_logistic(latents: Any, bad: Any, *, components: Iterable[int] | None = None, random_state: int = 0) -> LatentClassifier:
    """Standardised logistic regression with balanced class weights.

    The linear learned counterpart of the threshold: it may combine
    components, so it shows what a hand-picked single component leaves out.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    array, labels, chosen, seed = _prepare_fit(latents, bad, components, random_state)
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed),
    )
    model.fit(array[:, chosen], labels)
    return LatentClassifier(model, chosen, array.shape[1])


def fit_gradient_boosting(
    latents: Any, bad: Any, *, components: Iterable[int] | None = None, random_state: int = 0
) -> LatentClassifier:
    """Histogram gradient boosting with balanced class weights.

    The non-linear learner the thesis names; the small settings in
    ``GRADIENT_BOOSTING_SETTINGS`` suit 20-200 labels.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    array, labels, chosen, seed = _prepare_fit(latents, bad, components, random_state)
    model = HistGradientBoostingClassifier(class_weight="balanced", random_state=seed, **GRADIENT_BOOSTING_SETTINGS)
    model.fit(array[:, chosen], labels)
    return LatentClassifier(model, chosen, array.shape[1])


# --------------------------------------------------------------------------- supervised pixel baseline


def _images_to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)


def _build_pixel_cnn():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 1),
    )


class PixelCNNClassifier:
    """A fitted small CNN on raw pixels; ``predict_score`` is P(bad)."""

    def __init__(self, network: Any, side: int, batch_size: int = 256) -> None:
        self.network = network
        self.side = side
        self.batch_size = batch_size

    def predict_score(self, images: Any) -> np.ndarray:
        import torch

        array = _as_images(images)
        if array.shape[1] != self.side:
            raise ValueError(f"images are {array.shape[1]}x{array.shape[2]} but the CNN was trained on {self.side}x{self.side}")
        self.network.eval()
        scores = []
        with torch.no_grad():
            for start in range(0, array.shape[0], self.batch_size):
                batch = _images_to_tensor(array[start : start + self.batch_size]) - 0.5
                scores.append(torch.sigmoid(self.network(batch)).squeeze(1).numpy())
        return np.concatenate(scores).astype(np.float64)

    def predict(self, images: Any) -> np.ndarray:
        return self.predict_score(images) > 0.5


def fit_pixel_cnn(
    images: Any,
    bad: Any,
    *,
    random_state: int = 0,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
) -> PixelCNNClassifier:
    """A supervised baseline that sees pixels instead of latents.

    Three stride-2 convolutions, global average pooling and a linear head,
    trained with Adam on class-balanced BCE (each class carries half the
    loss) on the CPU. Initial weights and minibatches come from
    ``random_state`` only; the global torch RNG is left as found.
    """
    import torch

    array = _as_images(images)
    labels = _as_labels(bad, n=array.shape[0])
    _require_both_classes(labels)
    seed = _as_random_state(random_state)
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, Real) or not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = _build_pixel_cnn()
    generator = torch.Generator().manual_seed(seed)

    inputs = _images_to_tensor(array) - 0.5
    targets = torch.from_numpy(labels.astype(np.float32))
    n_bad = int(labels.sum())
    n_good = labels.size - n_bad
    sample_weight = torch.where(
        targets > 0.5, torch.tensor(labels.size / (2.0 * n_bad)), torch.tensor(labels.size / (2.0 * n_good))
    )
    optimizer = torch.optim.Adam(network.parameters(), lr=float(lr))
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    size = min(int(batch_size), labels.size)
    order = torch.randperm(labels.size, generator=generator)
    position = 0
    network.train()
    for _ in range(int(steps)):
        if position + size > labels.size:
            order = torch.randperm(labels.size, generator=generator)
            position = 0
        index = order[position : position + size]
        position += size
        logits = network(inputs[index]).squeeze(1)
        weights = sample_weight[index]
        loss = (loss_fn(logits, targets[index]) * weights).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    network.eval()
    return PixelCNNClassifier(network, array.shape[1])


# --------------------------------------------------------------------------- label efficiency


def _balanced_draw(bad: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """size/2 good + size/2 bad indices (bad gets the odd one); fewer if a class runs short."""
    good_index = np.flatnonzero(~bad)
    bad_index = np.flatnonzero(bad)
    n_good = min(size // 2, good_index.size)
    n_bad = min(size - size // 2, bad_index.size)
    return np.concatenate(
        (rng.choice(good_index, size=n_good, replace=False), rng.choice(bad_index, size=n_bad, replace=False))
    )


def label_efficiency(
    train_latents: Any,
    train_bad: Any,
    test_latents: Any,
    test_bad: Any,
    *,
    train_images: Any = None,
    test_images: Any = None,
    sizes: Sequence[int] = (20, 50, 100, 200),
    n_draws: int = 5,
    random_state: int = 0,
    methods: Sequence[str] = METHODS,
    components: Iterable[int] | None = None,
    cnn_steps: int = 300,
) -> pd.DataFrame:
    """Test balanced accuracy of each method against the number of labels.

    For every size and draw a class-balanced subset of the labelled pool is
    drawn (when a class has too few images, all of them are taken; the
    columns ``n_good`` and ``n_bad`` record what was drawn), each method is
    fitted on it and scored on the whole test set. Draw ``k`` of size ``s``
    uses the seed ``(random_state, s, k)``, so it is the same subset for every
    method and does not depend on the other sizes. ``pixel_cnn`` runs only
    when both image arrays are given.

    Columns: method, n_labels, draw, balanced_accuracy, n_good, n_bad.
    """
    pool = _as_latents(train_latents, "train_latents")
    pool_bad = _as_labels(train_bad, "train_bad", n=pool.shape[0])
    _require_both_classes(pool_bad, "train_bad")
    test = _as_latents(test_latents, "test_latents")
    truth = _as_labels(test_bad, "test_bad", n=test.shape[0])
    if test.shape[1] != pool.shape[1]:
        raise ValueError(
            f"test_latents has {test.shape[1]} components but train_latents has {pool.shape[1]}; they must match"
        )
    seed = _as_random_state(random_state)
    chosen = _as_components(components, pool.shape[1])
    if isinstance(n_draws, bool) or not isinstance(n_draws, Integral) or n_draws < 1:
        raise ValueError(f"n_draws must be a positive integer, got {n_draws!r}")
    size_list = list(sizes)
    if not size_list or any(isinstance(s, bool) or not isinstance(s, Integral) or s < 2 for s in size_list):
        raise ValueError(f"sizes must be a non-empty sequence of integers >= 2, got {sizes!r}")
    method_list = list(methods)
    unknown = [m for m in method_list if m not in METHODS]
    if unknown or not method_list:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {methods!r}")

    if (train_images is None) != (test_images is None):
        given = "train_images" if test_images is None else "test_images"
        raise ValueError(f"train_images and test_images must be given together; only {given} was given")
    with_images = train_images is not None
    if with_images:
        pool_images = _as_images(train_images, "train_images")
        test_pixels = _as_images(test_images, "test_images")
        if pool_images.shape[0] != pool.shape[0]:
            raise ValueError(f"train_images has {pool_images.shape[0]} images but train_latents has {pool.shape[0]} rows")
        if test_pixels.shape[0] != test.shape[0]:
            raise ValueError(f"test_images has {test_pixels.shape[0]} images but test_latents has {test.shape[0]} rows")

    rows = []
    for size in size_list:
        for draw in range(int(n_draws)):
            rng = np.random.default_rng((seed, int(size), draw))
            index = _balanced_draw(pool_bad, int(size), rng)
            fit_seed = int(rng.integers(2**31 - 1))
            x, y = pool[index], pool_bad[index]
            for method in method_list:
                if method == "threshold":
                    predicted = fit_threshold_rule(x, y, components=chosen).predict(test)
                elif method == "logistic":
                    predicted = fit_logistic(x, y, components=chosen, random_state=fit_seed).predict(test)
                elif method == "gradient_boosting":
                    predicted = fit_gradient_boosting(x, y, components=chosen, random_state=fit_seed).predict(test)
                else:
                    if not with_images:
                        continue
                    model = fit_pixel_cnn(pool_images[index], y, random_state=fit_seed, steps=cnn_steps)
                    predicted = model.predict(test_pixels)
                rows.append(
                    {
                        "method": method,
                        "n_labels": int(size),
                        "draw": draw,
                        "balanced_accuracy": _balanced_accuracy(truth, predicted),
                        "n_good": int(np.sum(~y)),
                        "n_bad": int(np.sum(y)),
                    }
                )
    return pd.DataFrame(rows, columns=["method", "n_labels", "draw", "balanced_accuracy", "n_good", "n_bad"])


def summarise_label_efficiency(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for one draw) per method and size.

    Columns: method, n_labels, mean_balanced_accuracy, std_balanced_accuracy, n_draws.
    """
    needed = {"method", "n_labels", "balanced_accuracy"}
    if not isinstance(table, pd.DataFrame) or not needed <= set(table.columns):
        columns = list(table.columns) if isinstance(table, pd.DataFrame) else type(table).__name__
        raise ValueError(f"table must be a DataFrame with columns {sorted(needed)}, got {columns}")
    grouped = table.groupby(["method", "n_labels"], sort=False)["balanced_accuracy"]
    summary = grouped.agg(mean_balanced_accuracy="mean", std_balanced_accuracy="std", n_draws="count").reset_index()
    method_order = {m: i for i, m in enumerate(dict.fromkeys(table["method"]))}
    summary["_order"] = summary["method"].map(method_order)
    return summary.sort_values(["_order", "n_labels"]).drop(columns="_order").reset_index(drop=True)
