"""Supervised disentanglement metrics: MIG, DCI, SAP and the FactorVAE score.

Each metric is a pure function of encoder means ``representations`` (n, d) and
ground-truth ``factors`` (n, k) from the simulator, so the same numbers come out
wherever it is called (the evaluate stage, a notebook, a test). The definitions
follow disentanglement_lib's evaluation/metrics, with the changes that a fixed
set of images forces (no fresh samples per metric, no way to render images
with a factor held fixed) and with sample sizes small enough for 2 CPU cores.
Each changed choice is documented at the function that makes it.

Factors may be continuous or discrete. ``discrete=None`` means "decide from
the data": a factor is discrete when all its values are integers and it takes
at most ``DISCRETE_MAX_VALUES`` distinct values (a spot count, a flag).
A constant factor (zero entropy, e.g. a defect absent from every image) has no
meaningful score: its per-factor entries are NaN and it is left out of means.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import numpy as np
import pandas as pd
import scipy.stats
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Lasso
from sklearn.metrics import balanced_accuracy_score, mutual_info_score, r2_score
from sklearn.tree import DecisionTreeClassifier

from tubervae.checks import check_choice, check_int, check_real

__all__ = [
    "DCI_METHODS",
    "DISCRETE_MAX_VALUES",
    "dci",
    "dci_from_importance",
    "discrete_factor_mask",
    "discretize",
    "evaluate_all",
    "factor_vae_score",
    "mig",
    "sap",
    "train_test_indices",
]

DISCRETE_MAX_VALUES = 10
DCI_METHODS = ("gbt", "random_forest", "lasso")

# Small, fixed learner settings for DCI; chosen so that evaluate_all on
# n=2000, d=10, k=11 stays within seconds on one core (see dci()).
_GBT_SETTINGS = dict(n_estimators=30, max_depth=3, learning_rate=0.2, subsample=0.5)
_FOREST_SETTINGS = dict(n_estimators=30, max_depth=8, min_samples_leaf=5, n_jobs=1)


# --------------------------------------------------------------------------- checks


def _as_data(representations, factors) -> tuple[np.ndarray, np.ndarray]:
    """Validate the two arrays once, so every metric fails the same clear way."""
    reps = _as_2d_finite(representations, "representations")
    facs = _as_2d_finite(factors, "factors")
    if reps.shape[0] != facs.shape[0]:
        raise ValueError(
            "representations and factors must have the same number of rows (images); "
            f"got {reps.shape[0]} and {facs.shape[0]}"
        )
    if reps.shape[0] < 4:
        raise ValueError(f"need at least 4 images to split into train and test; got n={reps.shape[0]}")
    return reps, facs


def _as_2d_finite(values, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a numeric array; got {type(values).__name__}") from error
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, columns); got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column; got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(f"{name} must be finite; found {array[tuple(bad)]} at row {bad[0]}, column {bad[1]}")
    return array


def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1; got {value!r}")
    return float(value)


def _rng(random_state) -> np.random.Generator:
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, bool) or not isinstance(random_state, Integral) or random_state < 0:
        raise ValueError(f"random_state must be a non-negative int or a numpy Generator; got {random_state!r}")
    return np.random.default_rng(int(random_state))


def _seed(rng: np.random.Generator) -> int:
    """An int seed for scikit-learn estimators, drawn from the caller's stream."""
    return int(rng.integers(0, 2**31 - 1))


def _discrete_mask(facs: np.ndarray, discrete) -> np.ndarray:
    if discrete is None:
        return discrete_factor_mask(facs)
    mask = np.asarray(discrete)
    if mask.dtype != bool or mask.shape != (facs.shape[1],):
        raise ValueError(
            f"discrete must be None or a bool sequence with one entry per factor ({facs.shape[1]}); got {discrete!r}"
        )
    return mask


def _constant_mask(facs: np.ndarray) -> np.ndarray:
    return np.ptp(facs, axis=0) == 0


# --------------------------------------------------------------------------- helpers


def discretize(values, n_bins: int = 20) -> np.ndarray:
    """Equal-width bin labels 0..n_bins-1 per column, as numpy.histogram bins them.

    Mirrors disentanglement_lib's histogram discretiser (which MIG needs to
    estimate mutual information from samples); a 1-D input is one column.
    """
    n_bins = check_int("n_bins", n_bins, 1)
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (1, 2) or array.size == 0:
        raise ValueError(f"values must be a non-empty 1-D or 2-D array; got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("values must be finite; found NaN or infinity")
    columns = array.reshape(array.shape[0], -1)
    labels = np.empty(columns.shape, dtype=np.int64)
    for j in range(columns.shape[1]):
        edges = np.histogram_bin_edges(columns[:, j], bins=n_bins)
        # Interior edges only: values on an edge go up, the maximum stays in the last bin.
        labels[:, j] = np.searchsorted(edges[1:-1], columns[:, j], side="right")
    return labels.reshape(array.shape)


def discrete_factor_mask(factors, max_values: int = DISCRETE_MAX_VALUES) -> np.ndarray:
    """True for factors that are integer-valued with at most ``max_values`` levels."""
    facs = np.asarray(factors, dtype=np.float64)
    if facs.ndim != 2:
        raise ValueError(f"factors must be a 2-D array (n, k); got shape {facs.shape}")
    max_values = check_int("max_values", max_values, 1)
    integral = np.all(facs == np.round(facs), axis=0)
    levels = np.array([np.unique(facs[:, j]).size for j in range(facs.shape[1])])
    return integral & (levels <= max_values)


def train_test_indices(
    n_samples: int,
    *,
    test_fraction: float = 0.25,
    random_state,
    max_train: int | None = None,
    max_test: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random train and test row indices, optionally capped in size.

    Metrics that fit a predictor (DCI, discrete SAP) score it on rows it did
    not see; the caps keep their cost fixed however many images are encoded.
    """
    n_samples = check_int("n_samples", n_samples, 2)
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    order = _rng(random_state).permutation(n_samples)
    n_test = min(max(1, int(round(test_fraction * n_samples))), n_samples - 1)
    test, train = order[:n_test], order[n_test:]
    if max_train is not None:
        train = train[: check_int("max_train", max_train, 1)]
    if max_test is not None:
        test = test[: check_int("max_test", max_test, 1)]
    return np.sort(train), np.sort(test)


def _factor_labels(column: np.ndarray, discrete: bool, n_bins: int) -> np.ndarray:
    if discrete:
        return np.unique(column, return_inverse=True)[1]
    return discretize(column, n_bins)


def _top_two_gap(scores: np.ndarray) -> np.ndarray:
    """Per column: best minus second-best row (second is 0 with a single row)."""
    ordered = np.sort(scores, axis=0)[::-1]
    second = ordered[1] if ordered.shape[0] > 1 else np.zeros(ordered.shape[1])
    return ordered[0] - second


def _mean_or_nan(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.mean(finite)) if finite.size else float("nan")


# --------------------------------------------------------------------------- MIG


def mig(representations, factors, *, random_state=None, n_bins: int = 20, discrete=None) -> dict:
    """Mutual information gap (Chen et al. 2018), disentanglement_lib's estimator.

    Representations are cut into ``n_bins`` equal-width bins; continuous factors
    too (disentanglement_lib's factors are already discrete), discrete factors
    keep their levels. Per factor: (largest − second-largest mutual information
    with one component) / factor entropy. ``random_state`` is accepted for a
    uniform signature; the estimate is deterministic.
    """
    reps, facs = _as_data(representations, factors)
    n_bins = check_int("n_bins", n_bins, 2)
    mask = _discrete_mask(facs, discrete)
    codes = discretize(reps, n_bins)
    d, k = reps.shape[1], facs.shape[1]
    mutual_info = np.zeros((d, k))
    entropy = np.zeros(k)
    for j in range(k):
        labels = _factor_labels(facs[:, j], bool(mask[j]), n_bins)
        entropy[j] = mutual_info_score(labels, labels)
        for i in range(d):
            mutual_info[i, j] = mutual_info_score(labels, codes[:, i])
    per_factor = np.full(k, np.nan)
    informative = entropy > 0
    per_factor[informative] = _top_two_gap(mutual_info)[informative] / entropy[informative]
    return {
        "mig": _mean_or_nan(per_factor),
        "mig_per_factor": per_factor,
        "mutual_info": mutual_info,
        "factor_entropy": entropy,
    }


# --------------------------------------------------------------------------- DCI


def dci_from_importance(importance) -> dict:
    """Disentanglement and completeness of an importance matrix R (d × k).

    Disentanglement: per component, 1 − entropy (base k) of its row normalised
    to sum 1, averaged with weights ∝ row sums. Completeness: per factor,
    1 − entropy (base d) of its column, weighted ∝ column sums. A tiny constant
    is added as in disentanglement_lib so all-zero rows/columns count as
    uniform (score 0); with weight 0 they do not move the totals. An all-zero
    column (a constant factor) gets completeness NaN.
    """
    matrix = np.abs(_as_2d_finite(importance, "importance"))
    d, k = matrix.shape
    weights_rows = matrix.sum(axis=1)
    weights_cols = matrix.sum(axis=0)
    total = matrix.sum()
    # Log base 1 is undefined: with one factor (component) each row (column) is pure.
    per_component = np.ones(d) if k == 1 else 1.0 - scipy.stats.entropy(matrix.T + 1e-11, base=k)
    per_factor = np.ones(k) if d == 1 else 1.0 - scipy.stats.entropy(matrix + 1e-11, base=d)
    if total == 0:
        disentanglement = completeness = 0.0
    else:
        disentanglement = float(np.sum(per_component * weights_rows / total))
        completeness = float(np.sum(per_factor * weights_cols / total))
    per_factor = np.where(weights_cols > 0, per_factor, np.nan)
    return {
        "dci_disentanglement": disentanglement,
        "dci_completeness": completeness,
        "dci_disentanglement_per_component": per_component,
        "dci_completeness_per_factor": per_factor,
    }


def _fit_importance(method: str, x_train, y_train, x_test, y_test, seed: int, lasso_alpha: float):
    """Importance of each component for one factor, and the test R²."""
    if method == "lasso":
        # Standardise with train statistics so |coefficients| are comparable.
        x_mean, x_std = x_train.mean(axis=0), x_train.std(axis=0)
        x_std = np.where(x_std > 0, x_std, 1.0)
        y_mean, y_std = y_train.mean(), y_train.std()
        y_std = y_std if y_std > 0 else 1.0
        model = Lasso(alpha=lasso_alpha, random_state=seed)
        model.fit((x_train - x_mean) / x_std, (y_train - y_mean) / y_std)
        importance = np.abs(model.coef_)
        prediction = model.predict((x_test - x_mean) / x_std) * y_std + y_mean
    else:
        if method == "gbt":
            model = GradientBoostingRegressor(random_state=seed, **_GBT_SETTINGS)
        else:
            model = RandomForestRegressor(random_state=seed, **_FOREST_SETTINGS)
        model.fit(x_train, y_train)
        importance = np.abs(model.feature_importances_)
        prediction = model.predict(x_test)
    if np.ptp(y_test) == 0:
        return importance, float("nan")
    return importance, float(r2_score(y_test, prediction))


def dci(
    representations,
    factors,
    *,
    random_state,
    method: str = "gbt",
    test_fraction: float = 0.25,
    max_train: int = 2000,
    max_test: int = 1000,
    lasso_alpha: float = 0.01,
) -> dict:
    """DCI (Eastwood & Williams 2018): disentanglement, completeness, informativeness.

    One regressor per factor predicts it from all components; its importances
    form column j of R (d × k). disentanglement_lib trains a default
    GradientBoostingClassifier on 10 000 fresh samples and tests on 5 000; here
    the images are split once (``test_fraction``, at most ``max_train`` /
    ``max_test`` rows: 1500 / 500 for n = 2000) and the learners are small:

    - ``"gbt"`` (default): GradientBoostingRegressor, 30 trees of depth 3, rate
      0.2, row subsample 0.5 (about 3x faster than 50 full trees at rate 0.1,
      with the same test R² and importances on non-linear codes); impurity
      importances. Catches non-linear codes (a rotation angle).
    - ``"random_forest"``: RandomForestRegressor, 30 trees, depth ≤ 8, leaves ≥ 5.
    - ``"lasso"``: Lasso (``lasso_alpha``) on standardised data, |coefficients|;
      fastest, but only sees linear codes.

    Regressors rather than classifiers because most simulator factors are
    continuous and discrete ones are ordinal counts; informativeness is the
    test R² per factor (not clipped, so a useless predictor can be below 0).
    Constant factors get a zero importance column and NaN scores.
    """
    reps, facs = _as_data(representations, factors)
    method = check_choice("method", method, DCI_METHODS)
    lasso_alpha = check_real("lasso_alpha", lasso_alpha, 0.0, strict=True)
    rng = _rng(random_state)
    train, test = train_test_indices(
        reps.shape[0],
        test_fraction=test_fraction,
        random_state=rng,
        max_train=max_train,
        max_test=max_test,
    )
    d, k = reps.shape[1], facs.shape[1]
    importance = np.zeros((d, k))
    informativeness = np.full(k, np.nan)
    for j in range(k):
        seed = _seed(rng)
        if np.ptp(facs[train, j]) == 0:
            continue
        importance[:, j], informativeness[j] = _fit_importance(
            method, reps[train], facs[train, j], reps[test], facs[test, j], seed, lasso_alpha
        )
    scores = dci_from_importance(importance)
    scores.update(
        dci_informativeness=_mean_or_nan(informativeness),
        dci_informativeness_per_factor=informativeness,
        importance=importance,
        dci_num_train=int(train.size),
        dci_num_test=int(test.size),
        dci_method=method,
    )
    return scores


# --------------------------------------------------------------------------- SAP


def sap(
    representations,
    factors,
    *,
    random_state,
    discrete=None,
    test_fraction: float = 0.25,
    max_train: int = 2000,
    max_test: int = 1000,
) -> dict:
    """SAP score (Kumar et al. 2018): mean gap in single-component predictiveness.

    Continuous factor j, component i: R² of a linear fit of factor on
    component, i.e. squared Pearson correlation (on all rows; two parameters
    cannot overfit thousands). Discrete factor: a one-feature decision tree
    with one leaf per level (thresholds on the component), scored on held-out
    rows by chance-adjusted balanced accuracy, so chance is 0 and perfect 1 as
    for R², and rare levels (a defect in 5 % of images) still count.
    disentanglement_lib uses a LinearSVC and plain accuracy instead.
    """
    reps, facs = _as_data(representations, factors)
    mask = _discrete_mask(facs, discrete)
    rng = _rng(random_state)
    train, test = train_test_indices(
        reps.shape[0],
        test_fraction=test_fraction,
        random_state=rng,
        max_train=max_train,
        max_test=max_test,
    )
    d, k = reps.shape[1], facs.shape[1]
    constant = _constant_mask(facs)
    centred = reps - reps.mean(axis=0)
    rep_var = np.mean(centred**2, axis=0)
    scores = np.zeros((d, k))
    for j in range(k):
        if constant[j]:
            continue
        if not mask[j]:
            target = facs[:, j] - facs[:, j].mean()
            covariance = centred.T @ target / reps.shape[0]
            with np.errstate(divide="ignore", invalid="ignore"):
                r2 = covariance**2 / (rep_var * np.mean(target**2))
            scores[:, j] = np.where(rep_var > 1e-12, r2, 0.0)
            continue
        levels = np.unique(facs[:, j]).size
        seed = _seed(rng)
        for i in range(d):
            tree = DecisionTreeClassifier(max_leaf_nodes=max(levels, 2), class_weight="balanced", random_state=seed)
            tree.fit(reps[train, i : i + 1], facs[train, j])
            predicted = tree.predict(reps[test, i : i + 1])
            scores[i, j] = max(0.0, balanced_accuracy_score(facs[test, j], predicted, adjusted=True))
    per_factor = np.where(constant, np.nan, _top_two_gap(scores))
    return {"sap": _mean_or_nan(per_factor), "sap_per_factor": per_factor, "sap_matrix": scores}


# --------------------------------------------------------------------------- FactorVAE


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
    num_train: int = 2000,
    num_eval: int = 1000,
    n_bins: int = 10,
    prune_threshold: float = 0.05,
    discrete=None,
) -> dict:
    """FactorVAE score (Kim & Mnih 2018) with factors held fixed by binning.

    The original renders a batch with factor j fixed and the others random;
    a pure metric cannot render, so a vote draws an anchor image, takes the
    rows whose factor j falls in the anchor's bin (``n_bins`` quantile bins;
    a discrete factor's own levels) and samples ``batch_size`` of them with
    replacement. That holds j only up to the bin width and assumes the other
    factors are independent of j, as in the simulator. Each component is
    divided by its std over all rows; components with std below
    ``prune_threshold`` are dropped (collapsed); the vote is the component of
    least in-batch variance. A majority vote maps component → factor on
    ``num_train`` votes and is scored on ``num_eval`` new ones
    (disentanglement_lib: 10 000 / 5 000). Constant factors are never held, so
    chance is 1 / (number of non-constant factors).
    """
    reps, facs = _as_data(representations, factors)
    batch_size = check_int("batch_size", batch_size, 2)
    num_train = check_int("num_train", num_train, 1)
    num_eval = check_int("num_eval", num_eval, 1)
    n_bins = check_int("n_bins", n_bins, 2)
    prune_threshold = check_real("prune_threshold", prune_threshold, 0.0)
    mask = _discrete_mask(facs, discrete)
    rng = _rng(random_state)
    std = reps.std(axis=0, ddof=1)
    active = np.flatnonzero(std >= prune_threshold)
    held = np.flatnonzero(~_constant_mask(facs))
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


# --------------------------------------------------------------------------- all together


def evaluate_all(
    representations,
    factors,
    factor_names: Sequence[str],
    *,
    random_state,
    dci_method: str = "gbt",
    discrete=None,
) -> dict:
    """All four metrics with flat keys for tracking, plus per-factor tables.

    Returns floats ``mig``, ``dci_d``, ``dci_c``, ``dci_i``, ``sap``,
    ``factorvae`` (held-out vote accuracy), ``factorvae_train``,
    ``factorvae_chance``, ``dci_num_train``, ``dci_num_test``; a DataFrame
    ``per_factor`` (index factor names; columns mig, dci_completeness,
    dci_informativeness, sap, discrete); and ``importance``, the DCI matrix
    as a DataFrame (rows "z0".."z{d-1}", columns factor names) for the
    "which component tracks which factor" heat map.
    """
    reps, facs = _as_data(representations, factors)
    names = list(factor_names) if not isinstance(factor_names, str) else None
    if names is None or len(names) != facs.shape[1] or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"factor_names must be a sequence of {facs.shape[1]} strings (one per factor column); got {factor_names!r}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"factor_names must be unique; got {names}")
    mask = _discrete_mask(facs, discrete)
    rng = _rng(random_state)
    seeds = rng.integers(0, 2**31 - 1, size=3)
    mig_scores = mig(reps, facs, discrete=mask)
    dci_scores = dci(reps, facs, random_state=int(seeds[0]), method=dci_method)
    sap_scores = sap(reps, facs, random_state=int(seeds[1]), discrete=mask)
    fvae = factor_vae_score(reps, facs, random_state=int(seeds[2]), discrete=mask)
    components = [f"z{i}" for i in range(reps.shape[1])]
    per_factor = pd.DataFrame(
        {
            "mig": mig_scores["mig_per_factor"],
            "dci_completeness": dci_scores["dci_completeness_per_factor"],
            "dci_informativeness": dci_scores["dci_informativeness_per_factor"],
            "sap": sap_scores["sap_per_factor"],
            "discrete": mask,
        },
        index=pd.Index(names, name="factor"),
    )
    importance = pd.DataFrame(
        dci_scores["importance"],
        index=pd.Index(components, name="component"),
        columns=pd.Index(names, name="factor"),
    )
    return {
        "mig": mig_scores["mig"],
        "dci_d": dci_scores["dci_disentanglement"],
        "dci_c": dci_scores["dci_completeness"],
        "dci_i": dci_scores["dci_informativeness"],
        "sap": sap_scores["sap"],
        "factorvae": fvae["factorvae_eval_accuracy"],
        "factorvae_train": fvae["factorvae_train_accuracy"],
        "factorvae_chance": fvae["factorvae_chance"],
        "dci_num_train": dci_scores["dci_num_train"],
        "dci_num_test": dci_scores["dci_num_test"],
        "per_factor": per_factor,
        "importance": importance,
    }
