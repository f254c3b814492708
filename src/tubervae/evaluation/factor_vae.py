"""The FactorVAE score (Kim & Mnih 2018), the data-set variant of disentanglement_lib's factor_vae.py.

The published metric renders a batch with one factor held fixed; a fixed set of
images cannot, so :func:`factor_vae_score` holds it by grouping the images on a
binned factor instead. The shared checks are in :mod:`.metric_utils`.
"""

from __future__ import annotations

import numpy as np

from tubervae.checks import check_int, check_random_state, check_real
from tubervae.evaluation.metric_utils import check_metric_inputs, constant_factors, resolve_discrete

__all__ = ["factor_vae_score"]


def _holding_groups(column: np.ndarray, discrete: bool, n_bins: int) -> list[np.ndarray]:
    """Row indices of each group sharing (approximately) one value of the factor."""
    if discrete:
        labels = np.unique(column, return_inverse=True)[1]
    else:
        edges = np.unique(np.quantile(column, np.linspace(0, 1, n_bins + 1))[1:-1])
        labels = np.searchsorted(edges, column, side="right")
    return [np.flatnonzero(labels == b) for b in np.unique(labels)]


def factor_vae_score(
    representations,
    factors,
    *,
    random_state,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    n_bins: int = 10,
    prune_threshold: float = 0.05,
    discrete=None,
) -> dict:
    """FactorVAE score (Kim & Mnih 2018), the data-set variant of disentanglement_lib's.

    As published (factor_vae.py, study settings): each component is divided
    by its standard deviation (ddof 1) over the data; components with std
    below ``prune_threshold`` = 0.05 are dropped as collapsed (none left:
    score 0); a vote picks a factor j uniformly, takes a batch of
    ``batch_size`` = 64 codes with j held fixed and votes for the active
    component of least variance in the batch; a majority-vote classifier
    (component → most voted factor) is fitted on ``num_train`` = 10 000
    votes and the score is its accuracy on ``num_eval`` = 5 000 new ones
    (``factorvae_eval_accuracy``; ``factorvae_train_accuracy`` on its own
    votes). This takes about a second at these sizes.

    The data-set variant: the published metric renders a batch with j fixed
    and the other factors drawn afresh; a fixed set of images cannot, so a
    vote draws an anchor image, takes the images whose factor j falls in the
    anchor's group (a discrete factor's own levels; ``n_bins`` quantile bins
    of a continuous one) and samples ``batch_size`` of them with
    replacement. That holds j only up to the bin width and assumes the other
    factors independent of j, as in the simulator. Constant factors are
    never held, so chance is 1 / (number of non-constant factors).
    """
    reps, facs = check_metric_inputs(representations, factors)
    batch_size = check_int("batch_size", batch_size, 2)
    num_train = check_int("num_train", num_train, 1)
    num_eval = check_int("num_eval", num_eval, 1)
    n_bins = check_int("n_bins", n_bins, 2)
    prune_threshold = check_real("prune_threshold", prune_threshold, 0.0)
    mask = resolve_discrete(facs, discrete)
    rng = check_random_state(random_state)
    std = reps.std(axis=0, ddof=1)
    active = np.flatnonzero(std >= prune_threshold)
    held = np.flatnonzero(~constant_factors(facs))
    result = {
        "factorvae_train_accuracy": 0.0,
        "factorvae_eval_accuracy": 0.0,
        "factorvae_num_active": int(active.size),
        "factorvae_chance": 1.0 / held.size if held.size else float("nan"),
    }
    if active.size == 0 or held.size == 0:
        return result
    scaled = reps[:, active] / std[active]
    group_of = []
    for j in held:
        groups = _holding_groups(facs[:, j], bool(mask[j]), n_bins)
        lookup = np.empty(reps.shape[0], dtype=np.int64)
        for g, rows in enumerate(groups):
            lookup[rows] = g
        group_of.append((groups, lookup))

    def votes(count: int) -> np.ndarray:
        tally = np.zeros((facs.shape[1], active.size), dtype=np.int64)
        chosen = rng.integers(0, held.size, size=count)
        anchors = rng.integers(0, reps.shape[0], size=count)
        for position, anchor in zip(chosen, anchors):
            groups, lookup = group_of[position]
            rows = groups[lookup[anchor]]
            batch = scaled[rows[rng.integers(0, rows.size, size=batch_size)]]
            tally[held[position], np.argmin(batch.var(axis=0, ddof=1))] += 1
        return tally

    training = votes(num_train)
    classifier = np.argmax(training, axis=0)
    columns = np.arange(active.size)
    evaluation = votes(num_eval)
    result["factorvae_train_accuracy"] = float(training[classifier, columns].sum() / training.sum())
    result["factorvae_eval_accuracy"] = float(evaluation[classifier, columns].sum() / evaluation.sum())
    return result
