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
Everything is pure: no files, no tracking. One module per concern:

* :mod:`~tubervae.classify.rules`: the thesis's one-component threshold rule, and the labelled rows
  a model's rule may be fitted and validated on (a guided model: the labels its guidance never saw);
* :mod:`~tubervae.classify.any_rule`: bad if any of a few components passes its threshold
  (one defect per component), the number of rules chosen by cross-validation; and how a model's
  rules are fitted on its latents, for every caller alike (``fit_rules``, ``fit_served_rule``);
* :mod:`~tubervae.classify.scores`: the metrics every classifier is reported with;
* :mod:`~tubervae.classify.learners`: the learned yardsticks (logistic, boosting, pixel CNN);
* :mod:`~tubervae.classify.efficiency`: test balanced accuracy against the number of labels;
* :mod:`~tubervae.classify.gate`: the promotion gate (a rule's cross-validated balanced accuracy with
  its interval, against chance and the current champion);
* :mod:`~tubervae.classify._inputs`: the argument checks they share.
"""

from tubervae.classify.any_rule import (
    DEFAULT_MAX_RULES,
    DEFAULT_N_FOLDS,
    AnyOfRule,
    ModelRules,
    RuleSettings,
    candidate_components,
    fit_any_of_rule,
    fit_rules,
    fit_served_rule,
    greedy_any_of_rule,
)
from tubervae.classify.efficiency import METHODS, label_efficiency, summarise_label_efficiency
from tubervae.classify.learners import (
    GRADIENT_BOOSTING_SETTINGS,
    LatentClassifier,
    PixelCNNClassifier,
    fit_gradient_boosting,
    fit_logistic,
    fit_pixel_cnn,
)
from tubervae.classify.rules import (
    DIRECTIONS,
    ThresholdRule,
    fit_threshold_rule,
    rank_threshold_rules,
    validation_rows,
)
from tubervae.classify.scores import binary_metrics

__all__ = [
    "DEFAULT_MAX_RULES",
    "DEFAULT_N_FOLDS",
    "DIRECTIONS",
    "GRADIENT_BOOSTING_SETTINGS",
    "AnyOfRule",
    "LatentClassifier",
    "METHODS",
    "ModelRules",
    "PixelCNNClassifier",
    "RuleSettings",
    "ThresholdRule",
    "binary_metrics",
    "candidate_components",
    "fit_any_of_rule",
    "fit_gradient_boosting",
    "fit_logistic",
    "fit_pixel_cnn",
    "fit_rules",
    "fit_served_rule",
    "fit_threshold_rule",
    "greedy_any_of_rule",
    "label_efficiency",
    "rank_threshold_rules",
    "summarise_label_efficiency",
    "validation_rows",
]
