"""The mutual information gap (MIG; Chen et al. 2018), as disentanglement_lib's mig.py computes it.

A pure function of encoder means ``representations`` (n, d) and ground-truth
``factors`` (n, k); the shared checks and discretiser are in :mod:`.metric_utils`.
"""

from __future__ import annotations

import numpy as np

from tubervae.checks import check_int
from tubervae.evaluation.metric_utils import (
    N_BINS,
    check_metric_inputs,
    discretize,
    factor_labels,
    mean_or_nan,
    resolve_discrete,
    top_two_gap,
)

__all__ = ["mig"]


def mig(representations, factors, *, random_state=None, n_bins: int = N_BINS, discrete=None) -> dict:
    """Mutual information gap (Chen et al. 2018), disentanglement_lib's estimator.

    As published (mig.py): each component is cut into ``n_bins`` = 20
    equal-width bins; I(component; factor) is the plug-in mutual information
    (nats, ``sklearn.metrics.mutual_info_score``); per factor, (largest −
    second-largest I over components) / H(factor); MIG is the mean over
    factors. Published factors are discrete and used as they are; here
    discrete factors keep their levels and continuous ones are cut into the
    same ``n_bins`` bins. All rows are used (published: 10 000 samples).
    ``random_state`` is accepted for a uniform signature; the estimate is
    deterministic.
    """
    # Imported here: a search that scores by UDR never needs scikit-learn, which (with scipy.stats) costs
    # every `tubervae search` and training worker about a second to import.
    from sklearn.metrics import mutual_info_score

    reps, facs = check_metric_inputs(representations, factors)
    n_bins = check_int("n_bins", n_bins, 2)
    mask = resolve_discrete(facs, discrete)
    codes = discretize(reps, n_bins)
    d, k = reps.shape[1], facs.shape[1]
    mutual_info = np.zeros((d, k))
    entropy = np.zeros(k)
    for j in range(k):
        labels = factor_labels(facs[:, j], bool(mask[j]), n_bins)
        entropy[j] = mutual_info_score(labels, labels)
        for i in range(d):
            mutual_info[i, j] = mutual_info_score(labels, codes[:, i])
    per_factor = np.full(k, np.nan)
    informative = entropy > 0
    per_factor[informative] = top_two_gap(mutual_info)[informative] / entropy[informative]
    return {
        "mig": mean_or_nan(per_factor),
        "mig_per_factor": per_factor,
        "mutual_info": mutual_info,
        "factor_entropy": entropy,
    }
