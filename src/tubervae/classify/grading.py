"""What the classify stage fits and reports, from arrays: every rule and learner on a champion's latents of the
labelled photos, their test figures, the label-efficiency table, and metrics.json's content.

As in the thesis (§4.2.3), a threshold on one component fitted on the labelled set
(100 good + 100 bad), but the component, threshold and direction are chosen
automatically by balanced accuracy on those labels only. Held-out test metrics sit
next to the majority-class baseline ("always bad" is ~81.7 % accurate at the thesis's
class ratio, above its 81.3 %): balanced accuracy is the honest figure. The thesis's
suggested improvements (logistic regression, gradient boosting on the informative
components) and a pixel CNN that sees the same labels are measured beside it, with a
label-efficiency table.

Pure: no files, no tracking (the stage reads the photos and writes the reports).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tubervae.classify import gate
from tubervae.classify.any_rule import AnyOfRule, RuleSettings, fit_rules
from tubervae.classify.efficiency import label_efficiency, summarise_label_efficiency
from tubervae.classify.learners import fit_gradient_boosting, fit_logistic, fit_pixel_cnn
from tubervae.classify.rules import ThresholdRule, rank_threshold_rules
from tubervae.classify.scores import binary_metrics
from tubervae.config import FEW_LABELS, ClassifyConfig, Params
from tubervae.evaluation.udr import informative_mask
from tubervae.models.encoding import encode, probe_latents

log = logging.getLogger(__name__)
THESIS_ACCURACY = 0.813
RANKING_COLUMNS = ["component", "threshold", "direction", "balanced_accuracy", "auc", "kl", "informative"]


def label_shortfall(bad_labelled: np.ndarray, bad_test: np.ndarray) -> str | None:
    """Why the labels cannot fit and score a good/bad rule (one line), or None when they can."""
    n_bad, n_good = int(bad_labelled.sum()), int((~bad_labelled).sum())
    if n_bad == 0 or n_good == 0:
        return (
            f"the labelled split holds {n_good} good and {n_bad} bad photos, and a rule needs both: "
            f"put labelled photos in the folder's good/ and bad/"
        )
    if len(bad_test) == 0:
        return "the test split holds no labelled photo to score a rule on: add photos to the folder's good/ and bad/"
    return None


@dataclass(frozen=True)
class Photos:
    """The labelled photos the rules are fitted on and the labelled test photos they are scored on."""

    x_lab: np.ndarray
    y_lab: np.ndarray  # True = bad
    x_test: np.ndarray
    y_test: np.ndarray
    majority_bad: bool  # the majority class of the training split's labels: the baseline's answer
    guide: np.ndarray | None = None  # True = a guidance head trained on this labelled photo (None: none did)
    guided_component: int | None = None  # a guided champion's component (its x_lab/y_lab: the holdout labels)

    @property
    def n_labelled(self) -> dict:
        return {"good": int((~self.y_lab).sum()), "bad": int(self.y_lab.sum())}

    @property
    def holdout(self) -> np.ndarray:
        """The labelled rows a rule is fitted and judged on: those no guidance head saw (all when none did)."""
        return gate.holdout_rows(self.guide, len(self.y_lab))

    @property
    def labels_used(self) -> str:
        h = self.holdout
        which = "all labelled photos" if h.all() else f"the labelled photos no guidance head trained on, of {h.size}"
        return f"{int((~self.y_lab[h]).sum())} good + {int(self.y_lab[h].sum())} bad ({which})"


@dataclass
class Fitted:
    """The champion's components on the photos, every rule and learner fitted, and their test figures."""

    z_lab: np.ndarray
    z_test: np.ndarray
    kl: np.ndarray
    is_informative: np.ndarray
    candidates: list[int]  # the components the rules and learners may use: the informative ones, all when none is
    ranking: pd.DataFrame
    threshold_rule: ThresholdRule  # the thesis's one cut, reported beside the served any_rule
    any_rule: AnyOfRule
    threshold_metrics: dict
    any_rule_metrics: dict
    alternatives: dict
    efficiency: pd.DataFrame

    @property
    def candidate_note(self) -> str:
        """Which components are the candidates, in words (metrics.json's `candidates`)."""
        return "informative" if self.is_informative.any() else "all (no component is informative)"


def fit(
    vae,
    photos: Photos,
    probe_images: np.ndarray,
    params: Params,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> Fitted:
    """Every rule and learner fitted on the labelled photos alone, scored on the test photos; `on_step` hears the
    pixel CNN's steps."""
    cfg = params.classify
    if min(photos.n_labelled.values()) < FEW_LABELS:
        log.warning(
            "only %d good and %d bad labelled photos (%d test photos): the rules and their test figures are rough",
            photos.n_labelled["good"],
            photos.n_labelled["bad"],
            len(photos.y_test),
        )
    z_lab, _ = encode(vae, photos.x_lab)
    z_test, _ = encode(vae, photos.x_test)
    y_lab, y_test, majority = photos.y_lab, photos.y_test, photos.majority_bad
    kl = probe_latents(vae, probe_images)["kl"]
    is_informative = informative_mask(kl, params.udr.kl_threshold)
    if not is_informative.any():
        log.warning(
            "no component of the champion is informative (KL > %g): the rules choose among all components",
            params.udr.kl_threshold,
        )

    ranking = rank_threshold_rules(z_lab, y_lab)
    ranking["kl"] = kl[ranking.component.to_numpy()]
    ranking["informative"] = is_informative[ranking.component.to_numpy()]
    # The rules are fitted on the labels no guidance head saw: those memorised by a head would place the cut
    # badly. The thesis's rule is one cut on one component; a guided champion's is on its guided component.
    h, guided = photos.holdout, photos.guided_component
    one_cut = None if guided is None else [guided]
    rules = fit_rules(z_lab[h], y_lab[h], kl, RuleSettings.from_params(params), threshold_components=one_cut)

    def test_metrics(model, x_test: np.ndarray = z_test) -> dict:
        return binary_metrics(y_test, model.predict(x_test), model.decision_function(x_test), majority_label=majority)

    # Learners on a guided champion's components see the holdout labels only (z0 separates the guide rows).
    zl, yl = (z_lab[h], y_lab[h]) if guided is not None else (z_lab, y_lab)
    learners = {
        "logistic": fit_logistic(zl, yl, components=rules.candidates, random_state=cfg.seed),
        "gradient_boosting": fit_gradient_boosting(zl, yl, components=rules.candidates, random_state=cfg.seed),
    }
    any_rule_metrics = test_metrics(rules.any_rule)
    alternatives = {"any_rule": any_rule_metrics} | {name: test_metrics(m) for name, m in learners.items()}
    cnn = fit_pixel_cnn(
        photos.x_lab,
        y_lab,
        random_state=cfg.seed,
        steps=cfg.cnn_steps,
        on_step=on_step,
    )
    alternatives["pixel_cnn"] = test_metrics(cnn, photos.x_test)
    train_images = photos.x_lab if guided is None else photos.x_lab[h]
    return Fitted(
        z_lab=z_lab,
        z_test=z_test,
        kl=kl,
        is_informative=is_informative,
        candidates=rules.candidates,
        ranking=ranking,
        threshold_rule=rules.threshold,
        any_rule=rules.any_rule,
        threshold_metrics=test_metrics(rules.threshold),
        any_rule_metrics=any_rule_metrics,
        alternatives=alternatives,
        efficiency=efficiency_table((zl, yl, train_images), (z_test, y_test, photos.x_test), rules.candidates, cfg),
    )


def efficiency_table(train: tuple, test: tuple, candidates: list[int], cfg: ClassifyConfig) -> pd.DataFrame:
    """Test balanced accuracy against the number of labels (`label_efficiency`, summarised), each method
    fitted as the stage fits it: `classify.max_rules` and `cv_folds` for the any_rule. `train` and `test`:
    (latents, bad, images)."""
    (zl, yl, train_images), (z_test, y_test, test_images) = train, test
    sizes = tuple(s for s in cfg.label_sizes if s <= len(yl))
    if not sizes:
        log.warning(
            "every classify.label_sizes %s exceeds the %d labelled photos: measuring at %d only",
            list(cfg.label_sizes),
            len(yl),
            len(yl),
        )
        sizes = (len(yl),)
    # Every rule and learner sees the informative components (all of them when none is), the CNN the pixels.
    efficiency = label_efficiency(
        zl,
        yl,
        z_test,
        y_test,
        train_images=train_images,
        test_images=test_images,
        methods=("threshold", "any_rule", "logistic", "gradient_boosting", "pixel_cnn"),
        components=candidates,
        sizes=sizes,
        n_draws=cfg.n_draws,
        random_state=cfg.seed,
        cnn_steps=cfg.cnn_steps,
        max_rules=cfg.max_rules,
        n_folds=cfg.cv_folds,
    )
    return summarise_label_efficiency(efficiency)


def metrics_report(fitted: Fitted, photos: Photos, version, vae_config: dict, params: Params) -> dict:
    """reports/classify/metrics.json: the champion, both rules with their components' KL, every method's figures."""
    cfg, kl, is_informative = params.classify, fitted.kl, fitted.is_informative
    return {
        "champion": {
            "model": params.register.model_name,
            "version": int(version.version),
            "run_id": version.tags.get("source_run_id"),
            "family": vae_config["family"],
            "beta": vae_config["beta"],
            "c_max": vae_config["c_max"],
            "seed": vae_config["seed"],
            "guide_weight": vae_config.get("guide_weight", 0.0),
            "guided_component": photos.guided_component,
            "labels": "all labelled" if photos.guided_component is None else "holdout (guide = False) only",
        },
        "threshold_rule": {
            **fitted.threshold_rule.as_dict(),
            "kl": float(kl[fitted.threshold_rule.component]),
            "informative": bool(is_informative[fitted.threshold_rule.component]),
        },
        "any_rule": {
            "rule": fitted.any_rule.describe(),
            "rules": [
                {**entry, "kl": float(kl[entry["component"]]), "informative": bool(is_informative[entry["component"]])}
                for entry in fitted.any_rule.as_dict()["rules"]
            ],
            "candidates": fitted.candidate_note,
            "candidate_components": fitted.candidates,
            "max_rules": cfg.max_rules,
            "n_folds": cfg.cv_folds,
            "cv_balanced_accuracy": {str(k + 1): v for k, v in enumerate(fitted.any_rule.cv_balanced_accuracy)},
            "train_balanced_accuracy": fitted.any_rule.train_balanced_accuracy,
            "test": fitted.any_rule_metrics,
        },
        "candidate_components": fitted.candidates,
        "candidates": fitted.candidate_note,
        "n_labelled": photos.n_labelled,
        "threshold_rule_test": fitted.threshold_metrics,
        "alternatives": {
            k: {m: v[m] for m in ("accuracy", "balanced_accuracy", "roc_auc", "f1_bad")}
            for k, v in fitted.alternatives.items()
        },
        "thesis": {
            "accuracy": THESIS_ACCURACY,
            "note": "one threshold on one β-TCVAE component; majority baseline at the thesis's class ratio: 0.817",
        },
    }


def headline_metrics(fitted: Fitted, *, gate: dict | None = None) -> dict:
    """The test figures as numbers only, by method, and the gate's `figures` when given: what `dvc metrics
    show` and `dvc exp show` compare across commits (ids and notes stay in reports/classify/metrics.json).
    Undefined figures (a ROC AUC on one class) are left out."""
    threshold, any_rule = fitted.threshold_metrics, fitted.any_rule_metrics
    keys = ("balanced_accuracy", "accuracy", "roc_auc")
    metrics: dict = {
        "threshold": _finite({k: threshold[k] for k in keys}),
        "any_rule": _finite({**{k: any_rule[k] for k in keys}, "n_rules": len(fitted.any_rule.rules)}),
        "majority": _finite({"accuracy": threshold["majority_accuracy"]}),
    }
    for name, scores in fitted.alternatives.items():
        if name != "any_rule":
            metrics[name] = _finite({"balanced_accuracy": scores["balanced_accuracy"]})
    if gate is not None:
        metrics["gate"] = _finite(gate)
    return metrics


def _finite(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(float(v))}
