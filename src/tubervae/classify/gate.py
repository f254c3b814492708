"""The promotion gate: nothing becomes a champion before it has beaten chance and the current champion.

A rule's balanced accuracy is estimated on labels it was not fitted on: repeated stratified
cross-validation of the whole rule-fitting procedure (its own choices, such as how many cuts,
are made again inside every fold), each repeat's out-of-fold predictions scored once. The
interval is a percentile bootstrap over the labelled photos (resampled within each class, so
every resample holds both), of the mean over repeats: it measures how much the figure would
move on another 200 labels, which the spread over repeats alone does not.

A challenger is promoted only when its interval's lower end is above chance (0.5) and its
estimate is not below the current champion's, estimated on the same labels with the same
folds. ``force`` promotes it anyway, and the reason says so.

Labels that trained a guidance head (``guide`` True in the labelled split) would flatter any rule
on the guided component, so the gate's labels are the others (:func:`holdout_rows`).

Pure: no files, no tracking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tubervae.checks import check_array, check_int, check_real, check_seed
from tubervae.classify._inputs import as_labels, require_both_classes
from tubervae.classify.any_rule import RuleSettings, fit_served_rule

__all__ = [
    "CHANCE",
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_LEVEL",
    "DEFAULT_REPEATS",
    "Estimate",
    "bootstrap_interval",
    "decide_promotion",
    "estimate_rule",
    "estimate_served_rule",
    "holdout_rows",
    "model_card",
    "out_of_fold_predictions",
    "repeated_folds",
]

CHANCE = 0.5  # balanced accuracy of a rule that knows nothing, whatever the class ratio
DEFAULT_REPEATS = 5
DEFAULT_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95

Fold = tuple[np.ndarray, np.ndarray]  # (rows to fit on, rows to predict)


def holdout_rows(guide: Any, n: int) -> np.ndarray:
    """Which labelled rows the gate may estimate on: those no guidance head trained on (``guide`` False)
    when any row is marked, else all ``n``. ``guide`` None (no such array in the split) marks none."""
    n = check_int("n", n, minimum=0)
    if guide is None:
        return np.ones(n, bool)
    marked = np.asarray(guide)
    if marked.shape != (n,) or marked.dtype != bool:
        raise ValueError(f"guide must be a boolean array of shape ({n},), got {marked.dtype} {marked.shape}")
    return ~marked if marked.any() else np.ones(n, bool)


@dataclass(frozen=True)
class Estimate:
    """A selection score: its value and, for a cross-validated one, the interval and how it was made.

    ``low``/``high`` are None for a score without an interval (UDR); ``per_repeat`` holds each
    repeat's out-of-fold balanced accuracy.
    """

    value: float
    low: float | None = None
    high: float | None = None
    per_repeat: tuple[float, ...] = ()
    n_labels: int = 0
    n_folds: int = 0
    level: float = DEFAULT_LEVEL
    name: str = "balanced accuracy"

    def describe(self) -> str:
        """``0.612 [0.550, 0.671]``, or ``0.612`` without an interval."""
        if self.low is None or self.high is None:
            return f"{self.value:.3f}"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "value": float(self.value),
            "low": None if self.low is None else float(self.low),
            "high": None if self.high is None else float(self.high),
            "level": float(self.level),
            "per_repeat": [float(v) for v in self.per_repeat],
            "n_labels": int(self.n_labels),
            "n_folds": int(self.n_folds),
            "n_repeats": len(self.per_repeat),
        }


def repeated_folds(bad: Any, *, n_folds: int, n_repeats: int, random_state: int = 0) -> list[list[Fold]]:
    """``n_repeats`` stratified ``n_folds``-fold splits of the labels, each shuffled with its own seed.

    The fold count drops to the smaller class's size when that is below ``n_folds``. The folds
    depend only on the labels and the seed, so two rules estimated on the same labels share them.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = as_labels(bad)
    require_both_classes(labels)
    n_folds = check_int("n_folds", n_folds, minimum=2)
    n_repeats = check_int("n_repeats", n_repeats, minimum=1)
    seed = check_seed(random_state)
    folds = min(n_folds, int(labels.sum()), int((~labels).sum()))
    if folds < 2:
        raise ValueError(
            f"cross-validation needs at least 2 photos of each class, got {int(labels.sum())} bad and "
            f"{int((~labels).sum())} good"
        )
    return [
        list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + r).split(labels, labels))
        for r in range(n_repeats)
    ]


def out_of_fold_predictions(
    fit: Callable[[np.ndarray, np.ndarray], Any], latents: Any, bad: Any, folds: Sequence[Sequence[Fold]]
) -> np.ndarray:
    """Boolean ``(repeats, n)``: each photo's verdict by the rule ``fit`` made without it, per repeat.

    ``fit(latents, bad)`` returns anything with ``predict(latents) -> bool array``.
    """
    array = check_array("latents", latents)
    labels = as_labels(bad, n=array.shape[0])
    out = np.zeros((len(folds), labels.size), bool)
    for r, repeat in enumerate(folds):
        seen = np.zeros(labels.size, bool)
        for train, held in repeat:
            out[r, held] = np.asarray(fit(array[train], labels[train]).predict(array[held]), bool)
            seen[held] = True
        if not seen.all():
            raise ValueError(f"repeat {r}'s folds leave {int((~seen).sum())} photos unpredicted")
    return out


def _balanced_accuracies(bad: np.ndarray, predictions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each row of ``predictions`` (r, n) under each row of ``weights`` (b, n) → (b, r)."""
    hit = predictions == bad  # (r, n)
    bad_w, good_w = weights * bad, weights * ~bad  # (b, n)
    recall_bad = (bad_w @ hit.T) / bad_w.sum(axis=1, keepdims=True)
    recall_good = (good_w @ hit.T) / good_w.sum(axis=1, keepdims=True)
    return (recall_bad + recall_good) / 2.0


def bootstrap_interval(
    bad: Any,
    predictions: Any,
    *,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    random_state: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean-over-repeats balanced accuracy of ``predictions`` (r, n), resampling
    the photos with replacement within each class."""
    labels = as_labels(bad)
    require_both_classes(labels)
    pred = np.atleast_2d(np.asarray(predictions, bool))
    if pred.shape[1] != labels.size:
        raise ValueError(f"predictions must have {labels.size} columns like bad, got shape {pred.shape}")
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, minimum=10)
    level = check_real("level", level, 0.0, maximum=1.0, strict=True)
    rng = np.random.default_rng(check_seed(random_state))
    weights = np.zeros((n_bootstrap, labels.size))
    for members in (np.flatnonzero(labels), np.flatnonzero(~labels)):
        draws = rng.choice(members, size=(n_bootstrap, members.size), replace=True)
        np.add.at(weights, (np.arange(n_bootstrap)[:, None], draws), 1.0)
    means = _balanced_accuracies(labels, pred, weights).mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def estimate_rule(
    fit: Callable[[np.ndarray, np.ndarray], Any],
    latents: Any,
    bad: Any,
    *,
    n_folds: int = 5,
    n_repeats: int = DEFAULT_REPEATS,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    random_state: int = 0,
) -> Estimate:
    """Out-of-fold balanced accuracy of the procedure ``fit`` on ``(latents, bad)``: the mean over
    ``n_repeats`` repeats of stratified ``n_folds``-fold cross-validation, with a bootstrap interval.

    The folds come from :func:`repeated_folds` with ``random_state``: the same labels and seed give the
    same folds, so a challenger and a champion estimated alike are compared on the same splits.
    """
    labels = as_labels(bad)
    folds = repeated_folds(labels, n_folds=n_folds, n_repeats=n_repeats, random_state=random_state)
    predictions = out_of_fold_predictions(fit, latents, labels, folds)
    per_repeat = _balanced_accuracies(labels, predictions, np.ones((1, labels.size)))[0]
    low, high = bootstrap_interval(labels, predictions, n_bootstrap=n_bootstrap, level=level, random_state=random_state)
    return Estimate(
        value=float(per_repeat.mean()),
        low=low,
        high=high,
        per_repeat=tuple(float(v) for v in per_repeat),
        n_labels=int(labels.size),
        n_folds=len(folds[0]),
        level=float(level),
    )


def estimate_served_rule(
    latents: Any,
    bad: Any,
    kl: Any,
    settings: RuleSettings,
    *,
    n_repeats: int = DEFAULT_REPEATS,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
) -> Estimate:
    """:func:`estimate_rule` of a model's served rule (``any_rule.fit_served_rule`` over the candidate
    components of its mean KL ``kl``), with ``settings.n_folds`` folds seeded by ``settings.random_state``:
    what both gates (the VAE's and the classifier's) judge a model by."""
    return estimate_rule(
        lambda z, labels: fit_served_rule(z, labels, kl, settings),
        latents,
        bad,
        n_folds=settings.n_folds,
        n_repeats=n_repeats,
        n_bootstrap=n_bootstrap,
        random_state=settings.random_state,
    )


def decide_promotion(
    challenger_estimate: Estimate,
    champion_estimate: Estimate | None,
    *,
    force: bool,
    chance: float | None = CHANCE,
) -> tuple[bool, str]:
    """Whether the challenger becomes champion, and why, in one sentence naming both figures.

    Promoted when its interval's lower end is above ``chance`` (``chance`` None: a score without a
    chance level, UDR, skips that test; a score without an interval fails it) and its value is not
    below ``champion_estimate``'s (None: there is no comparable champion). ``force`` promotes in any
    case; the reason then starts with "forced" and says what the gate would have done.
    """
    if not isinstance(force, (bool, np.bool_)):
        raise TypeError(f"force must be a bool, got {force!r}")
    if not isinstance(challenger_estimate, Estimate):
        raise TypeError(f"challenger_estimate must be an Estimate, got {type(challenger_estimate).__name__}")
    if champion_estimate is not None and not isinstance(champion_estimate, Estimate):
        raise TypeError(f"champion_estimate must be an Estimate or None, got {type(champion_estimate).__name__}")
    name = challenger_estimate.name
    figures = f"challenger {name} {challenger_estimate.describe()}, " + (
        f"champion {champion_estimate.describe()} on the same labels"
        if champion_estimate is not None
        else "no champion to compare with"
    )
    failures = []
    if chance is not None:
        low = challenger_estimate.low
        if low is None:
            failures.append(f"it has no interval to set against chance ({chance:g})")
        elif not low > chance:
            failures.append(f"its interval's lower end {low:.3f} is not above chance ({chance:g})")
    if champion_estimate is not None and challenger_estimate.value < champion_estimate.value:
        failures.append(f"its {challenger_estimate.value:.3f} is below the champion's {champion_estimate.value:.3f}")
    passed = not failures
    if passed:
        tests = (["it beats chance"] if chance is not None else []) + (
            ["it is not below the champion"] if champion_estimate is not None else []
        )
        why = "promoted" + (f": {' and '.join(tests)}" if tests else "")
    else:
        why = "not promoted: " + " and ".join(failures)
    if force:
        what = "the gate would have promoted it too" if passed else f"the gate would have refused it: {why}"
        return True, f"forced promotion (force_promotion is set; {what}); {figures}"
    return passed, f"{why}; {figures}"


def model_card(title: str, sections: dict[str, dict[str, Any]]) -> str:
    """A registered version's description in Markdown: a title, then one bullet list per section."""
    lines = [f"# {title}"]
    for heading, entries in sections.items():
        lines += ["", f"## {heading}"]
        lines += [f"- **{key}**: {value}" for key, value in entries.items()]
    return "\n".join(lines) + "\n"
