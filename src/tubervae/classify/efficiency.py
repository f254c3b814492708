"""Test balanced accuracy against the number of labelled images, per method.

The case for a disentangled component is label efficiency: a threshold needs
only a cut, while learners need enough labels to fit. So every method is
refitted on class-balanced draws of growing size from the labelled pool and
scored on the whole test set, with draws seeded per (size, draw) so that all
methods see the same images and a size's draws do not depend on the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral
from typing import Any

import numpy as np
import pandas as pd

from tubervae.checks import check_array, check_int, check_seed
from tubervae.classify._inputs import (
    as_components,
    as_images,
    as_labels,
    require_both_classes,
)
from tubervae.classify.any_rule import DEFAULT_MAX_RULES, DEFAULT_N_FOLDS, fit_any_of_rule
from tubervae.classify.learners import fit_gradient_boosting, fit_logistic, fit_pixel_cnn
from tubervae.classify.rules import fit_threshold_rule
from tubervae.classify.scores import balanced_accuracy

__all__ = ["METHODS", "label_efficiency", "summarise_label_efficiency"]

METHODS = ("threshold", "any_rule", "logistic", "gradient_boosting", "pixel_cnn")


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
    max_rules: int = DEFAULT_MAX_RULES,
    n_folds: int = DEFAULT_N_FOLDS,
) -> pd.DataFrame:
    """Test balanced accuracy of each method against the number of labels.

    For every size and draw a class-balanced subset of the labelled pool is
    drawn (when a class has too few images, all of them are taken; the
    columns ``n_good`` and ``n_bad`` record what was drawn), each method is
    fitted on it and scored on the whole test set. Draw ``k`` of size ``s``
    uses the seed ``(random_state, s, k)``, so it is the same subset for every
    method and does not depend on the other sizes. ``pixel_cnn`` runs only
    when both image arrays are given. ``any_rule`` chooses its number of rules
    (at most ``max_rules``) by ``n_folds``-fold cross-validation inside the draw
    alone (its folds shrink with a small draw), so the test set never picks it:
    pass the settings the served rule is fitted with.

    Columns: method, n_labels, draw, balanced_accuracy, n_good, n_bad.
    """
    pool = check_array("train_latents", train_latents)
    pool_bad = as_labels(train_bad, "train_bad", n=pool.shape[0])
    require_both_classes(pool_bad, "train_bad")
    test = check_array("test_latents", test_latents)
    truth = as_labels(test_bad, "test_bad", n=test.shape[0])
    if test.shape[1] != pool.shape[1]:
        raise ValueError(
            f"test_latents has {test.shape[1]} components but train_latents has {pool.shape[1]}; they must match"
        )
    seed = check_seed(random_state)
    chosen = as_components(components, pool.shape[1])
    n_draws = check_int("n_draws", n_draws, minimum=1)
    max_rules = check_int("max_rules", max_rules, minimum=1)
    n_folds = check_int("n_folds", n_folds, minimum=2)
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
        pool_images = as_images(train_images, "train_images")
        test_pixels = as_images(test_images, "test_images")
        if pool_images.shape[0] != pool.shape[0]:
            raise ValueError(
                f"train_images has {pool_images.shape[0]} images but train_latents has {pool.shape[0]} rows"
            )
        if test_pixels.shape[0] != test.shape[0]:
            raise ValueError(f"test_images has {test_pixels.shape[0]} images but test_latents has {test.shape[0]} rows")

    rows = []
    for size in size_list:
        for draw in range(n_draws):
            rng = np.random.default_rng((seed, int(size), draw))
            index = _balanced_draw(pool_bad, int(size), rng)
            fit_seed = int(rng.integers(2**31 - 1))
            x, y = pool[index], pool_bad[index]
            for method in method_list:
                if method == "threshold":
                    predicted = fit_threshold_rule(x, y, components=chosen).predict(test)
                elif method == "any_rule":
                    predicted = fit_any_of_rule(
                        x, y, components=chosen, max_rules=max_rules, n_folds=n_folds, random_state=fit_seed
                    ).predict(test)
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
                        "balanced_accuracy": balanced_accuracy(truth, predicted),
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
