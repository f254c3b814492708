"""Bad if ANY of a few components passes its threshold: the thesis's rule, one defect per component.

A tuber is bad for black spots OR greening OR rot, and a disentangled code
carries each defect on its own component, so one cut on one component misses
the other defects (a perfect spot detector alone is capped near 0.77 balanced
accuracy). An OR of up to three threshold rules stays readable ("bad if z3 >
0.41 or z7 < -1.2") while it can cover every defect.

The rules are chosen greedily on the labels: first the thesis's best single
cut (:func:`~tubervae.classify.rules.fit_threshold_rule`), then, while it
helps, the cut on an unused component that most raises the balanced accuracy
of the OR. An image the rules already call bad stays bad, so a new cut only
changes the images not yet fired, and its search is again one sort and
cumulative counts per component with exact integer comparisons. How many rules
to keep is decided by stratified cross-validation on the labelled set, because
every added cut raises the training figure whether or not it generalises.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tubervae.checks import check_array, check_int, check_real, check_seed
from tubervae.classify._inputs import as_components, as_labels, require_both_classes
from tubervae.classify.rules import DIRECTIONS, ThresholdRule, fit_threshold_rule
from tubervae.config import INFORMATIVE_KL, Params

__all__ = [
    "DEFAULT_MAX_RULES",
    "DEFAULT_N_FOLDS",
    "AnyOfRule",
    "ModelRules",
    "RuleSettings",
    "candidate_components",
    "fit_any_of_rule",
    "fit_rules",
    "fit_served_rule",
    "greedy_any_of_rule",
    "job_score",
]

DEFAULT_MAX_RULES = 3  # spots, greening, rot
DEFAULT_N_FOLDS = 5
_CV_TIE = 1e-12  # mean CV balanced accuracies this close count as equal: fewer rules win


@dataclass(frozen=True)
class AnyOfRule:
    """Bad if any member rule calls the image bad; each member on its own component.

    ``scales`` (one per rule, > 0) put the members' distances past their
    thresholds on one footing for :meth:`decision_function`: the component's standard
    deviation on the latents it was fitted on. ``cv_balanced_accuracy[k - 1]``
    is the mean cross-validated balanced accuracy of the first ``k`` greedy
    rules, the evidence for how many were kept (empty when not
    cross-validated). A one-rule ``AnyOfRule`` is the thesis's rule.
    """

    rules: tuple[ThresholdRule, ...]
    scales: tuple[float, ...]
    train_balanced_accuracy: float
    cv_balanced_accuracy: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        rules = self.rules
        if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence) or not rules:
            raise ValueError(f"rules must be a non-empty sequence of ThresholdRule, got {rules!r}")
        if not all(isinstance(r, ThresholdRule) for r in rules):
            raise ValueError(f"rules must hold only ThresholdRule objects, got {[type(r).__name__ for r in rules]}")
        components = [r.component for r in rules]
        if len(set(components)) != len(components):
            raise ValueError(f"each rule must use its own component, got components {components}")
        if isinstance(self.scales, (str, bytes)) or not isinstance(self.scales, Sequence):
            raise ValueError(f"scales must be a sequence of positive numbers, got {self.scales!r}")
        if len(self.scales) != len(rules):
            raise ValueError(f"scales has {len(self.scales)} values but there are {len(rules)} rules; one per rule")
        scales = tuple(check_real(f"scales[{j}]", s, 0.0, strict=True) for j, s in enumerate(self.scales))
        if isinstance(self.cv_balanced_accuracy, (str, bytes)) or not isinstance(self.cv_balanced_accuracy, Sequence):
            raise ValueError(f"cv_balanced_accuracy must be a sequence of numbers, got {self.cv_balanced_accuracy!r}")
        cv = tuple(
            check_real(f"cv_balanced_accuracy[{k}]", v, 0.0, maximum=1.0)
            for k, v in enumerate(self.cv_balanced_accuracy)
        )
        train = check_real("train_balanced_accuracy", self.train_balanced_accuracy, 0.0, maximum=1.0)
        object.__setattr__(self, "rules", tuple(rules))
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "cv_balanced_accuracy", cv)
        object.__setattr__(self, "train_balanced_accuracy", train)

    @classmethod
    def from_threshold_rule(cls, rule: ThresholdRule, scale: float = 1.0) -> AnyOfRule:
        """The thesis's single rule as a one-rule OR; with scale 1 its score is the rule's own."""
        if not isinstance(rule, ThresholdRule):
            raise ValueError(f"rule must be a ThresholdRule, got {type(rule).__name__}")
        return cls((rule,), (scale,), train_balanced_accuracy=rule.train_balanced_accuracy)

    @property
    def components(self) -> tuple[int, ...]:
        return tuple(r.component for r in self.rules)

    def fired(self, latents: Any) -> np.ndarray:
        """Boolean ``(n, k)``: which member rule calls which image bad, so a verdict can be explained."""
        array = check_array("latents", latents)
        return np.column_stack([r.predict(array) for r in self.rules])

    def predict(self, latents: Any) -> np.ndarray:
        """Boolean array, True = bad: the OR of the member rules."""
        return self.fired(latents).any(axis=1)

    def decision_function(self, latents: Any) -> np.ndarray:
        """Bad-score for ROC curves: the largest member distance past its threshold, in units of its scale.

        Positive exactly where :meth:`predict` says bad.
        """
        array = check_array("latents", latents)
        return np.max(
            np.column_stack([r.decision_function(array) / s for r, s in zip(self.rules, self.scales)]), axis=1
        )

    def describe(self) -> str:
        """The rule as a person reads it, e.g. ``bad if z3 > 0.412 or z7 < -1.2``."""
        signs = {"bad_if_above": ">", "bad_if_below": "<"}
        return "bad if " + " or ".join(f"z{r.component} {signs[r.direction]} {r.threshold:.4g}" for r in self.rules)

    def as_dict(self) -> dict:
        """Plain JSON-serialisable fields, for logging and reloading; each rule carries its scale."""
        return {
            "rules": [{**r.as_dict(), "scale": float(s)} for r, s in zip(self.rules, self.scales)],
            "train_balanced_accuracy": float(self.train_balanced_accuracy),
            "cv_balanced_accuracy": [float(v) for v in self.cv_balanced_accuracy],
        }

    @classmethod
    def from_dict(cls, fields: dict) -> AnyOfRule:
        if not isinstance(fields, dict) or not isinstance(fields.get("rules"), list):
            raise ValueError("an AnyOfRule dict must have a 'rules' list (see AnyOfRule.as_dict)")
        missing = [k for k in ("train_balanced_accuracy",) if k not in fields]
        for j, entry in enumerate(fields["rules"]):
            if not isinstance(entry, dict):
                raise ValueError(f"rules[{j}] must be a dict, got {type(entry).__name__}")
            missing += [f"rules[{j}].{k}" for k in ThresholdRule.__dataclass_fields__ if k not in entry]
            missing += [f"rules[{j}].scale"] if "scale" not in entry else []
        if missing:
            raise ValueError(f"an AnyOfRule dict lacks {missing}")
        return cls(
            rules=tuple(ThresholdRule.from_dict(entry) for entry in fields["rules"]),
            scales=tuple(float(entry["scale"]) for entry in fields["rules"]),
            train_balanced_accuracy=float(fields["train_balanced_accuracy"]),
            cv_balanced_accuracy=tuple(float(v) for v in fields.get("cv_balanced_accuracy", ())),
        )


def _numerator(pred: np.ndarray, bad: np.ndarray, n_bad: int, n_good: int) -> int:
    """Balanced accuracy times 2*B*G, as an exact integer (TP*G + TN*B), so that ties are exact."""
    return int(np.sum(pred & bad)) * n_good + int(np.sum(~pred & ~bad)) * n_bad


def _scales(array: np.ndarray) -> np.ndarray:
    """Each component's standard deviation; 1 where it is zero, so that a constant component still scores."""
    std = array.std(axis=0)
    return np.where(std > 0, std, 1.0)


def _best_added_cut(
    values: np.ndarray, bad: np.ndarray, n_bad: int, n_good: int, scale: float
) -> tuple[int, float, str, float] | None:
    """Best cut of one component over the images not yet fired, by one sort and cumulative counts.

    ``values`` and ``bad`` hold only those images; ``n_bad`` and ``n_good`` are
    the class sizes of the whole labelled set, which weigh balanced accuracy.
    Firing ``b`` more bad and ``g`` more good images raises its numerator
    TP*G + TN*B by the integer gain ``b*G - g*B``. Among cuts of equal gain the
    widest gap (in units of ``scale``, so that components compare) wins, then
    ``bad_if_above``, then the lower threshold. Returns (gain, scaled gap,
    direction, threshold), or None when the values leave no cut.
    """
    unique, inverse = np.unique(values, return_inverse=True)
    if unique.size < 2:
        return None
    bad_at = np.bincount(inverse[bad], minlength=unique.size)
    good_at = np.bincount(inverse, minlength=unique.size) - bad_at
    bad_le, good_le = np.cumsum(bad_at)[:-1], np.cumsum(good_at)[:-1]  # at or below cut k
    rest_bad, rest_good = int(bad_at.sum()), int(good_at.sum())
    gains = {
        "bad_if_above": (rest_bad - bad_le) * n_good - (rest_good - good_le) * n_bad,
        "bad_if_below": bad_le * n_good - good_le * n_bad,
    }
    gaps = (unique[1:] - unique[:-1]) / scale
    best = None
    for direction in DIRECTIONS:
        top = int(gains[direction].max())
        ties = np.flatnonzero(gains[direction] == top)
        k = int(ties[int(np.argmax(gaps[ties]))])
        if best is None or (top, gaps[k]) > best[:2]:
            best = (top, float(gaps[k]), direction, float(unique[k] + (unique[k + 1] - unique[k]) / 2.0))
    return best


def _greedy_rules(array: np.ndarray, bad: np.ndarray, candidates: list[int], max_rules: int) -> list[ThresholdRule]:
    """Up to ``max_rules`` rules, each the cut that most raises the OR's balanced accuracy; stops when none does.

    Each member's ``train_balanced_accuracy`` is that of the member alone.
    Inputs are already validated. Greedy rules are nested: the first ``k`` of
    ``max_rules`` are the ``k``-rule fit, which cross-validation relies on.
    """
    n_bad = int(bad.sum())
    n_good = int(bad.size - n_bad)
    rules = [fit_threshold_rule(array, bad, components=candidates)]
    fired = rules[0].predict(array)
    scales = _scales(array)
    while len(rules) < max_rules:
        rest = ~fired
        used = {r.component for r in rules}
        best, best_component = None, -1
        for c in sorted(set(candidates) - used):
            cut = _best_added_cut(array[rest, c], bad[rest], n_bad, n_good, float(scales[c]))
            if cut is not None and (best is None or cut[:2] > best[:2]):
                best, best_component = cut, c
        if best is None or best[0] <= 0:
            break
        rule = ThresholdRule(best_component, best[3], best[2], train_balanced_accuracy=0.0)
        pred = rule.predict(array)
        alone = _numerator(pred, bad, n_bad, n_good) / (2.0 * n_bad * n_good)
        rules.append(replace(rule, train_balanced_accuracy=alone))
        fired |= pred
    return rules


def _assemble(array: np.ndarray, bad: np.ndarray, rules: list[ThresholdRule], cv: tuple[float, ...]) -> AnyOfRule:
    """The fitted rules with their scales and the OR's training balanced accuracy."""
    scales = _scales(array)
    n_bad = int(bad.sum())
    n_good = int(bad.size - n_bad)
    pred = np.column_stack([r.predict(array) for r in rules]).any(axis=1)
    train = _numerator(pred, bad, n_bad, n_good) / (2.0 * n_bad * n_good)
    return AnyOfRule(tuple(rules), tuple(float(scales[r.component]) for r in rules), train, cv)


def _validated(latents: Any, bad: Any, components: Iterable[int] | None, max_rules: Any):
    array = check_array("latents", latents)
    labels = as_labels(bad, n=array.shape[0])
    require_both_classes(labels)
    candidates = as_components(components, array.shape[1])
    return array, labels, candidates, check_int("max_rules", max_rules, minimum=1)


def greedy_any_of_rule(
    latents: Any, bad: Any, *, components: Iterable[int] | None = None, max_rules: int = DEFAULT_MAX_RULES
) -> AnyOfRule:
    """The greedy OR of up to ``max_rules`` cuts on the candidate ``components``, without cross-validation.

    The first rule is :func:`~tubervae.classify.rules.fit_threshold_rule`'s;
    each next one is the cut on an unused component that most raises the
    training balanced accuracy of the OR, and the search stops early when no
    cut raises it. It fits the labels as well as ``max_rules`` cuts can, noise
    included: :func:`fit_any_of_rule` decides how many rules to trust.
    """
    array, labels, candidates, max_rules = _validated(latents, bad, components, max_rules)
    return _assemble(array, labels, _greedy_rules(array, labels, candidates, max_rules), ())


def fit_any_of_rule(
    latents: Any,
    bad: Any,
    *,
    components: Iterable[int] | None = None,
    max_rules: int = DEFAULT_MAX_RULES,
    n_folds: int = DEFAULT_N_FOLDS,
    random_state: int = 0,
) -> AnyOfRule:
    """The greedy OR with as many rules (1..``max_rules``) as stratified cross-validation supports.

    For every fold the greedy rules are fitted on the other folds and the OR
    of their first ``k`` is scored on the fold; the ``k`` with the best mean
    balanced accuracy wins, ties to fewer rules, and the greedy fit on all
    labels with that ``k`` is returned (it may hold fewer rules, when no
    further cut raises its training figure). The fold count drops to the size
    of the smaller class when that is below ``n_folds``; with one image in a
    class there is no cross-validation and the result is the single best cut.
    Deterministic for a fixed ``random_state``.
    """
    from sklearn.model_selection import StratifiedKFold

    array, labels, candidates, max_rules = _validated(latents, bad, components, max_rules)
    n_folds = check_int("n_folds", n_folds, minimum=2)
    seed = check_seed(random_state)
    folds = min(n_folds, int(labels.sum()), int((~labels).sum()))
    if folds < 2:
        return _assemble(array, labels, _greedy_rules(array, labels, candidates, 1), ())
    scores = np.zeros((folds, max_rules))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for f, (train, held) in enumerate(splitter.split(array, labels)):
        rules = _greedy_rules(array[train], labels[train], candidates, max_rules)
        fired = np.column_stack([r.predict(array[held]) for r in rules])
        truth = labels[held]
        n_bad = int(truth.sum())
        n_good = int(truth.size - n_bad)
        for k in range(max_rules):
            pred = fired[:, : k + 1].any(axis=1)
            scores[f, k] = _numerator(pred, truth, n_bad, n_good) / (2.0 * n_bad * n_good)
    cv = scores.mean(axis=0)
    k_best = int(np.flatnonzero(cv >= cv.max() - _CV_TIE)[0]) + 1
    rules = _greedy_rules(array, labels, candidates, k_best)
    return _assemble(array, labels, rules, tuple(float(v) for v in cv))


def candidate_components(kl: Any, kl_threshold: float = INFORMATIVE_KL) -> list[int]:
    """The components a model's rules may cut: its informative ones (mean KL ``kl`` above
    ``kl_threshold``), all of them when none is."""
    values = np.asarray(kl, dtype=float)  # a NaN (never informative) is allowed, as in the UDR tables
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"kl must be a non-empty 1-D array (one mean KL per component), got shape {values.shape}")
    threshold = check_real("kl_threshold", kl_threshold)
    return [int(j) for j in np.flatnonzero(values > threshold)] or list(range(values.size))


@dataclass(frozen=True)
class RuleSettings:
    """What a model's rules are fitted with, for every caller alike: the KL cut-off that picks the candidate
    components (``udr.kl_threshold``), the OR's most cuts (``classify.max_rules``), the folds that choose how
    many (``classify.cv_folds``) and their seed (``classify.seed``)."""

    kl_threshold: float = INFORMATIVE_KL
    max_rules: int = DEFAULT_MAX_RULES
    n_folds: int = DEFAULT_N_FOLDS
    random_state: int = 0

    @classmethod
    def from_params(cls, params: Params) -> RuleSettings:
        """The configured settings (params.yaml's udr.kl_threshold and classify section)."""
        cfg = params.classify
        return cls(params.udr.kl_threshold, cfg.max_rules, cfg.cv_folds, cfg.seed)


@dataclass(frozen=True)
class ModelRules:
    """A model's rules fitted on its latents: the candidate components, the one-cut rule and the served OR."""

    candidates: list[int]
    threshold: ThresholdRule
    any_rule: AnyOfRule


def fit_served_rule(latents: Any, bad: Any, kl: Any, settings: RuleSettings = RuleSettings()) -> AnyOfRule:
    """The served rule of a model: the OR of up to ``settings.max_rules`` cuts on its candidate components
    (:func:`candidate_components` of its mean KL ``kl``), the count chosen by cross-validation.

    The one procedure behind the served model, the promotion gates (which cross-validate it) and the
    job score, so that they all judge the same rule.
    """
    return fit_any_of_rule(
        latents,
        bad,
        components=candidate_components(kl, settings.kl_threshold),
        max_rules=settings.max_rules,
        n_folds=settings.n_folds,
        random_state=settings.random_state,
    )


def fit_rules(
    latents: Any,
    bad: Any,
    kl: Any,
    settings: RuleSettings = RuleSettings(),
    *,
    threshold_components: Iterable[int] | None = None,
) -> ModelRules:
    """A model's rules on its latents of labelled photos: the thesis's one cut (on ``threshold_components``,
    default the candidates: a guided model's is its guided component) beside :func:`fit_served_rule`."""
    candidates = candidate_components(kl, settings.kl_threshold)
    one_cut = fit_threshold_rule(
        latents, bad, components=candidates if threshold_components is None else threshold_components
    )
    return ModelRules(candidates, one_cut, fit_served_rule(latents, bad, kl, settings))


def job_score(
    latents: Any,
    bad: Any,
    kl: Any,
    *,
    kl_threshold: float = INFORMATIVE_KL,
    max_rules: int = DEFAULT_MAX_RULES,
    n_folds: int = DEFAULT_N_FOLDS,
    random_state: int = 0,
) -> float:
    """How well a representation serves the grading job, from the labelled photos alone.

    The served rule (:func:`fit_served_rule`: the multi-defect rule over the informative components,
    all when none is) and its best cross-validated balanced accuracy over the rule counts; its training
    figure when a class is too small to cross-validate. What `register.select: job` and
    `search.objective: job` rank by.
    """
    settings = RuleSettings(kl_threshold, max_rules, n_folds, random_state)
    rule = fit_served_rule(latents, bad, kl, settings)
    return float(max(rule.cv_balanced_accuracy)) if rule.cv_balanced_accuracy else float(rule.train_balanced_accuracy)
