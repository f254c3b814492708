import math

import numpy as np
import pandas as pd
import pytest

from tubervae.evaluation.metrics import (
    N_TEST,
    N_TRAIN,
    dci,
    dci_from_importance,
    discrete_factor_mask,
    discretize,
    evaluate_all,
    factor_vae_score,
    mig,
    sap,
    sap_from_scores,
    train_test_indices,
)

N = 800
NAMES = ["shape", "scale", "flag", "tone"]
LEVELS = [5, 4, 2]  # the discrete factors' levels; "tone" is continuous


def _factors(rng):
    """Three discrete factors (5, 4 and 2 equally likely levels) and one continuous, independent."""
    discrete = np.column_stack([rng.integers(0, levels, N) for levels in LEVELS]).astype(float)
    return np.hstack([discrete, rng.uniform(0.0, 1.0, size=(N, 1))])


def _aligned(factors, rng):
    """Component j = standardised factor j + 1 % noise, then one pure-noise component."""
    standardised = (factors - factors.mean(axis=0)) / factors.std(axis=0)
    copied = standardised + 0.01 * rng.standard_normal(factors.shape)
    return np.hstack([copied, rng.standard_normal((factors.shape[0], 1))])


def _rotate_45(codes, i, j):
    """Components i and j replaced by their 45° rotation: each then carries half of both factors."""
    rotated = codes.copy()
    rotated[:, i] = (codes[:, i] - codes[:, j]) / math.sqrt(2)
    rotated[:, j] = (codes[:, i] + codes[:, j]) / math.sqrt(2)
    return rotated


def _factorial(copies):
    """Two balanced binary factors, every combination ``copies`` times: independent exactly."""
    return np.array([[a, b] for a in (0, 1) for b in (0, 1)] * copies, dtype=float)


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(0)
    factors = _factors(rng)
    aligned = _aligned(factors, rng)
    rotated = _rotate_45(aligned, 0, 1)  # "shape" and "scale" mixed
    noise = rng.standard_normal(aligned.shape)
    results = {
        name: evaluate_all(reps, factors, NAMES, random_state=1)
        for name, reps in [("aligned", aligned), ("rotated", rotated), ("noise", noise)]
    }
    return factors, aligned, results


# --------------------------------------------------------------------------- aligned / rotated / noise


@pytest.mark.slow
def test_aligned_representation_scores_near_top(cases):
    # Hand-derived expectations, published definitions (the defaults):
    # - MIG: a discrete factor's levels fall in distinct bins of its copy, so I = H exactly; the other
    #   components are independent (I = plug-in bias, ~0.01 H): ~0.99. "tone" loses ~10 % of its
    #   20 bins to the noise and the shifted code bins: ~0.9. Mean ~0.96.
    # - DCI: each factor is predicted from its own copy only: D, C ~1; accuracy 1 on the discrete
    #   factors, ~0.9 on the 20 bins of "tone": I ~0.97.
    # - SAP (LinearSVC accuracies): the binary "flag" scores 1 on its copy and chance 0.5 elsewhere,
    #   a gap of 1 - 0.5; multi-level and 20-bin factors have smaller gaps (a 1-D linear one-vs-rest
    #   classifier cannot single out middle levels), so the mean is well below 1.
    # - FactorVAE: holding a factor fixed leaves its copy with (almost) no variance: accuracy ~1.
    _, _, results = cases
    top = results["aligned"]
    assert top["mig"] > 0.9
    assert top["dci_d"] > 0.9 and top["dci_c"] > 0.9
    assert top["dci_i"] > 0.9
    assert top["per_factor"].loc["flag", "sap"] == pytest.approx(0.5, abs=0.08)
    assert top["sap"] > 0.2
    assert top["factorvae"] > 0.95
    # The heat map shows factor j tracked by component j.
    importance = top["importance"]
    assert list(importance.columns) == NAMES
    assert list(importance.index) == [f"z{i}" for i in range(5)]
    assert [importance[name].idxmax() for name in NAMES] == ["z0", "z1", "z2", "z3"]
    assert top["per_factor"]["discrete"].tolist() == [True, True, True, False]


@pytest.mark.slow
def test_rotation_lowers_mig_dci_d_and_sap_but_keeps_informativeness(cases):
    # Rotating the copies of "shape" and "scale" by 45° gives z0 and z1 the same information on both.
    # - MIG: their gaps drop to ~0, the other two stay: ~0.96 -> ~0.48.
    # - DCI-D: rows z0, z1 split ~evenly over two of four factors, 1 - log_4(2) = 0.5 each, holding
    #   about half the importance: ~0.75 (from ~1).
    # - SAP: the best two components for "shape" and "scale" are z0 and z1, equally good: gap ~0.
    # - DCI-I: the factors stay predictable from (z0, z1) together.
    # - DCI-C: columns "shape" and "scale" split evenly over two of five components: 1 - log_5(2).
    # - FactorVAE: votes for "shape" and "scale" go to z0 or z1 at random; half of them are lost: ~0.75.
    _, _, results = cases
    top, mixed = results["aligned"], results["rotated"]
    assert mixed["mig"] == pytest.approx(top["mig"] / 2, abs=0.05)
    assert mixed["per_factor"].loc[["shape", "scale"], "mig"].max() < 0.05
    assert mixed["dci_d"] == pytest.approx(0.75, abs=0.05)
    per_component = dci_from_importance(mixed["importance"])["dci_disentanglement_per_component"]
    np.testing.assert_allclose(per_component[:2], 1 - math.log(2, 4), atol=0.05)
    np.testing.assert_allclose(
        mixed["per_factor"].loc[["shape", "scale"], "dci_completeness"], 1 - math.log(2, 5), atol=0.05
    )
    assert mixed["factorvae"] == pytest.approx(0.75, abs=0.08)
    assert mixed["sap"] < top["sap"] - 0.05
    assert mixed["per_factor"].loc[["shape", "scale"], "sap"].max() < 0.12
    assert mixed["dci_i"] > top["dci_i"] - 0.05
    # The untouched factors keep their scores.
    for key in ["mig", "sap"]:
        np.testing.assert_allclose(
            mixed["per_factor"].loc[["flag", "tone"], key], top["per_factor"].loc[["flag", "tone"], key], atol=0.05
        )


@pytest.mark.slow
def test_pure_noise_scores_near_zero_and_chance(cases):
    # No component carries anything: gaps are plug-in / sampling noise, predictions are at chance
    # (majority-class accuracy for DCI-I, one factor in four for FactorVAE).
    _, _, results = cases
    noise = results["noise"]
    assert noise["mig"] < 0.05
    assert noise["sap"] < 0.05
    assert noise["dci_d"] < 0.2
    assert noise["dci_i"] < noise["dci_i_chance"] + 0.05
    assert noise["factorvae_chance"] == pytest.approx(1 / len(NAMES))
    assert abs(noise["factorvae"] - 1 / len(NAMES)) < 0.12


# --------------------------------------------------------------------------- exact values on tiny codes


def test_mig_of_binary_factors_copied_into_codes_is_one():
    # I(z_j; y_j) = H(y_j) = ln 2 and, the design being full factorial, I(z_i; y_j) = 0 for i != j:
    # each gap is ln 2 / ln 2 = 1.
    factors = _factorial(2)
    result = mig(factors, factors)
    assert result["mig"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(result["mutual_info"], np.diag([math.log(2)] * 2), atol=1e-12)


def test_mig_on_hand_computed_discrete_case():
    # y1 = [0,0,0,0,1,1,1,1]; z0 agrees with y1 on 6 of 8 rows:
    #   joint counts (y1,z0): (0,0)=3 (0,1)=1 (1,1)=3 (1,0)=1, marginals 1/2 each, so
    #   I(z0;y1) = 2*(3/8)ln((3/8)/(1/4)) + 2*(1/8)ln((1/8)/(1/4)) = 0.75 ln 1.5 - 0.25 ln 2.
    # z1 = [0,1,0,1,0,1,0,1] is independent of y1: I(z1;y1) = 0. H(y1) = ln 2.
    # y2 = z1: I(z1;y2) = ln 2, and (z0,y2) has all four pairs twice: I(z0;y2) = 0.
    z0 = [0, 0, 0, 1, 1, 1, 1, 0]
    z1 = [0, 1, 0, 1, 0, 1, 0, 1]
    y1 = [0, 0, 0, 0, 1, 1, 1, 1]
    representations = np.array([z0, z1], dtype=float).T
    factors = np.array([y1, z1], dtype=float).T
    result = mig(representations, factors, n_bins=2)
    mi = 0.75 * math.log(1.5) - 0.25 * math.log(2)
    expected = np.array([mi / math.log(2), 1.0])
    np.testing.assert_allclose(result["mig_per_factor"], expected, atol=1e-12)
    assert result["mig"] == pytest.approx(expected.mean())
    np.testing.assert_allclose(result["mutual_info"], [[mi, 0.0], [0.0, math.log(2)]], atol=1e-12)


def test_dci_from_importance_hand_computed():
    # Rows = components, columns = factors.
    # Row 0 (1,1): entropy base 2 = 1 -> D=0; row 1 (2,0) -> D=1; row weights 2/4, 2/4 -> D=0.5.
    # Column 0 (1,2)/3: entropy base 2 = h = -(1/3 log2 1/3 + 2/3 log2 2/3) -> C=1-h;
    # column 1 (1,0) -> C=1; column weights 3/4, 1/4 -> C = 0.75(1-h) + 0.25.
    h = -(1 / 3 * math.log2(1 / 3) + 2 / 3 * math.log2(2 / 3))
    result = dci_from_importance(np.array([[1.0, 1.0], [2.0, 0.0]]))
    assert result["dci_disentanglement"] == pytest.approx(0.5, abs=1e-6)
    assert result["dci_completeness"] == pytest.approx(0.75 * (1 - h) + 0.25, abs=1e-6)
    np.testing.assert_allclose(result["dci_completeness_per_factor"], [1 - h, 1.0], atol=1e-6)


def test_dci_from_importance_diagonal_is_one_and_uniform_is_zero():
    diagonal = dci_from_importance(np.diag([0.2, 0.5, 0.3]))
    assert diagonal["dci_disentanglement"] == pytest.approx(1.0, abs=1e-8)
    assert diagonal["dci_completeness"] == pytest.approx(1.0, abs=1e-8)
    uniform = dci_from_importance(np.ones((3, 3)))
    assert uniform["dci_disentanglement"] == pytest.approx(0.0, abs=1e-12)
    assert uniform["dci_completeness"] == pytest.approx(0.0, abs=1e-12)
    empty = dci_from_importance(np.zeros((3, 2)))
    assert empty["dci_disentanglement"] == 0.0 and empty["dci_completeness"] == 0.0


def test_dci_of_binary_factors_copied_into_codes():
    # Each factor is its own copy: the first tree splits on it and leaves nothing to explain, so
    # the importance matrix is the identity (D = C = 1 up to the 1e-11 smoothing) and the test
    # accuracy is exactly 1.
    factors = _factorial(50)
    result = dci(factors, factors, random_state=0)
    np.testing.assert_allclose(result["importance"], np.eye(2), atol=1e-12)
    assert result["dci_informativeness"] == 1.0
    assert result["dci_informativeness_train"] == 1.0
    assert result["dci_disentanglement"] == pytest.approx(1.0, abs=1e-8)
    assert result["dci_completeness"] == pytest.approx(1.0, abs=1e-8)
    assert result["dci_informativeness_kind"] == "accuracy"
    assert result["dci_num_train"] + result["dci_num_test"] == 200


def test_sap_from_scores_hand_computed():
    # Factor 0: best 0.9, second 0.6 -> 0.3; factor 1: 0.8 - 0.1 = 0.7; mean 0.5.
    result = sap_from_scores([[0.9, 0.1], [0.6, 0.8], [0.2, 0.0]])
    np.testing.assert_allclose(result["sap_per_factor"], [0.3, 0.7])
    assert result["sap"] == pytest.approx(0.5)


def test_sap_correlation_hand_computed():
    # Full factorial binary y1, y2 (variances 1/4, covariance 0); codes y1, y2 and y1 + y2.
    # R²(y1 + y2, y1) = cov² / (var var) = (1/4)² / ((1/2)(1/4)) = 1/2, R² of the copies 1 and 0:
    # S = [[1, 0], [0, 1], [1/2, 1/2]], each gap 1 - 1/2.
    factors = _factorial(2)
    codes = np.column_stack([factors, factors.sum(axis=1)])
    result = sap(codes, factors, random_state=0, method="correlation")
    np.testing.assert_allclose(result["sap_matrix"], [[1, 0], [0, 1], [0.5, 0.5]], atol=1e-12)
    assert result["sap"] == pytest.approx(0.5, abs=1e-12)
    assert result["sap_num_train"] == 8 and result["sap_num_test"] == 0


def test_sap_svm_on_one_to_one_and_redundant_binary_codes():
    factors = _factorial(100)
    # One-to-one: each factor's copy classifies it perfectly (accuracy 1); the other, independent
    # component is at chance, 0.5 for a balanced binary factor: SAP = 1 - 0.5 up to the test sample.
    one_to_one = sap(factors, factors, random_state=0)
    np.testing.assert_array_equal(np.diag(one_to_one["sap_matrix"]), [1.0, 1.0])
    assert one_to_one["sap"] == pytest.approx(0.5, abs=0.06)
    # Two perfect components per factor (a copy and a rescaled or negated copy): the top two tie
    # at accuracy 1, so SAP is exactly 0 although every factor is perfectly predictable.
    redundant = np.column_stack([factors[:, 0], 2 * factors[:, 0], factors[:, 1], -factors[:, 1]])
    result = sap(redundant, factors, random_state=0)
    np.testing.assert_array_equal(result["sap_matrix"][[0, 1, 2, 3], [0, 0, 1, 1]], 1.0)
    assert result["sap"] == 0.0


def test_factor_vae_of_discrete_factors_copied_into_codes_is_one():
    # Holding a level fixed leaves its copy with zero variance and the other copy varying:
    # every vote goes to the right component.
    factors = np.column_stack([np.repeat(np.arange(3), 40), np.tile(np.arange(4), 30)]).astype(float)
    result = factor_vae_score(factors, factors, random_state=0)
    assert result["factorvae_train_accuracy"] == 1.0
    assert result["factorvae_eval_accuracy"] == 1.0
    assert result["factorvae_num_active"] == 2 and result["factorvae_chance"] == 0.5


# --------------------------------------------------------------------------- options and variants


@pytest.mark.slow
def test_sap_correlation_scores_are_squared_correlations(cases):
    factors, aligned, _ = cases
    result = sap(aligned, factors, random_state=0, method="correlation")
    corr = np.corrcoef(aligned.T, factors.T)[:5, 5:]
    np.testing.assert_allclose(result["sap_matrix"], corr**2, atol=1e-10)
    assert result["sap"] > 0.95  # each copy R² ~1, every other ~0
    # "mixed": the squared correlation (on the training rows) for the continuous "tone", the LinearSVC
    # accuracy for the discrete factors (1 for the binary flag's copy).
    mixed = sap(aligned, factors, random_state=0, method="mixed")
    assert mixed["sap_matrix"][3, 3] > 0.99 and np.delete(mixed["sap_matrix"][:, 3], 3).max() < 0.05
    assert mixed["sap_matrix"][2, 2] == 1.0
    assert mixed["sap_num_train"] + mixed["sap_num_test"] == N


@pytest.mark.parametrize("method", ["gbt_fast", "gbt_regressor", "lasso"])
@pytest.mark.slow
def test_other_dci_methods_separate_aligned_from_rotated(cases, method):
    factors, aligned, _ = cases
    rotated = _rotate_45(aligned, 0, 1)
    top = dci(aligned, factors, random_state=0, method=method, n_train=300, n_test=100)
    mixed = dci(rotated, factors, random_state=0, method=method, n_train=300, n_test=100)
    assert top["dci_disentanglement"] > 0.8 and top["dci_completeness"] > 0.8
    assert top["dci_informativeness"] > 0.8
    assert mixed["dci_disentanglement"] < top["dci_disentanglement"] - 0.1
    assert top["importance"].shape == (5, 4)
    assert top["dci_num_train"] == 300 and top["dci_num_test"] == 100
    assert top["dci_informativeness_kind"] == ("accuracy" if method == "gbt_fast" else "r2")


@pytest.mark.slow
def test_dci_in_parallel_matches_serial(cases):
    factors, aligned, _ = cases
    serial = dci(aligned, factors, random_state=3, method="gbt_fast", n_train=200, n_test=100)
    parallel = dci(aligned, factors, random_state=3, method="gbt_fast", n_train=200, n_test=100, n_jobs=2)
    np.testing.assert_array_equal(serial["importance"], parallel["importance"])
    assert serial["dci_informativeness"] == parallel["dci_informativeness"]


def test_discretize_matches_numpy_histogram():
    rng = np.random.default_rng(3)
    values = np.column_stack([rng.normal(size=200), rng.exponential(size=200), rng.integers(0, 5, 200)])
    labels = discretize(values, 7)
    assert labels.shape == values.shape and labels.min() >= 0 and labels.max() <= 6
    for j in range(values.shape[1]):
        counts, edges = np.histogram(values[:, j], bins=7)
        np.testing.assert_array_equal(np.bincount(labels[:, j], minlength=7), counts)
        assert np.all(values[:, j] >= edges[labels[:, j]])
        assert np.all(values[:, j] <= edges[labels[:, j] + 1])
    np.testing.assert_array_equal(discretize(values[:, 1], 7), labels[:, 1])


def test_discrete_factor_mask():
    factors = np.array([[0, 0.5, 10, 1], [1, 1.5, 20, 1], [2, 0.25, 30, 1]], dtype=float)
    np.testing.assert_array_equal(discrete_factor_mask(factors, max_values=2), [False, False, False, True])
    np.testing.assert_array_equal(discrete_factor_mask(factors), [True, False, True, True])


@pytest.mark.slow
def test_constant_factor_is_skipped_not_crashing(cases):
    factors, aligned, _ = cases
    with_constant = np.hstack([factors, np.zeros((N, 1))])
    result = evaluate_all(aligned, with_constant, NAMES + ["rot"], random_state=2, dci_method="gbt_fast")
    per_factor = result["per_factor"]
    assert per_factor.loc["rot", ["mig", "dci_completeness", "dci_informativeness", "sap"]].isna().all()
    assert per_factor.drop(index="rot")[["mig", "sap", "dci_informativeness"]].notna().all().all()
    assert (result["importance"]["rot"] == 0).all()
    for key in ["mig", "dci_d", "dci_c", "dci_i", "sap", "factorvae"]:
        assert np.isfinite(result[key]), key
    assert result["mig"] > 0.9 and result["factorvae"] > 0.95
    assert result["factorvae_chance"] == pytest.approx(1 / 4)


@pytest.mark.slow
def test_same_random_state_gives_same_results(cases):
    factors, aligned, _ = cases
    small = aligned[:300], factors[:300]
    first = evaluate_all(*small, NAMES, random_state=7, dci_method="gbt_fast")
    second = evaluate_all(*small, NAMES, random_state=7, dci_method="gbt_fast")
    for key, value in first.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, second[key])
        else:
            assert value == second[key], key
    other = factor_vae_score(*small, random_state=8, num_train=50, num_eval=50)
    again = factor_vae_score(*small, random_state=8, num_train=50, num_eval=50)
    assert other == again


@pytest.mark.slow
def test_factor_vae_with_only_collapsed_components_scores_zero(cases):
    factors, _, _ = cases
    collapsed = np.full((N, 3), 0.3) + 1e-4 * np.random.default_rng(0).standard_normal((N, 3))
    result = factor_vae_score(collapsed, factors, random_state=0)
    assert result["factorvae_num_active"] == 0
    assert result["factorvae_eval_accuracy"] == 0.0


def test_train_test_indices_are_disjoint_and_sized():
    train, test = train_test_indices(10_000, n_train=300, n_test=200, random_state=0)
    assert train.size == 300 and test.size == 200
    assert np.intersect1d(train, test).size == 0
    # Fewer rows than asked for: all of them, split in the ratio n_train : n_test.
    train, test = train_test_indices(100, n_train=3000, n_test=1000, random_state=0)
    assert train.size == 75 and test.size == 25
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(100))
    train, test = train_test_indices(100, random_state=0)
    assert (train.size, test.size) == (100 * N_TRAIN // (N_TRAIN + N_TEST), 100 * N_TEST // (N_TRAIN + N_TEST))
    with pytest.raises(ValueError, match="n_test"):
        train_test_indices(100, n_train=10, n_test=0, random_state=0)


@pytest.mark.parametrize(
    "representations, factors, message",
    [
        (np.zeros(10), np.zeros((10, 2)), "representations must be a 2-D array"),
        (np.zeros((10, 3)), np.zeros((9, 2)), "same number of rows"),
        (np.full((10, 3), np.nan), np.zeros((10, 2)), "representations must be finite"),
        (np.zeros((10, 3)), np.zeros((10, 2, 1)), "factors must be a 2-D array"),
    ],
)
def test_bad_inputs_raise_value_error(representations, factors, message):
    for metric in (mig, dci, sap, factor_vae_score):
        with pytest.raises(ValueError, match=message):
            metric(representations, factors, random_state=0)


def test_bad_options_raise_value_error():
    reps, facs = np.random.default_rng(0).normal(size=(20, 3)), np.zeros((20, 2))
    with pytest.raises(ValueError, match="factor_names must be a sequence of 2"):
        evaluate_all(reps, facs, ["a"], random_state=0)
    with pytest.raises(ValueError, match="method must be one of"):
        dci(reps, facs, random_state=0, method="random_forest")
    with pytest.raises(ValueError, match="method must be one of"):
        sap(reps, facs, random_state=0, method="tree")
    with pytest.raises(ValueError, match="random_state"):
        sap(reps, facs, random_state=-1)
    with pytest.raises(ValueError, match="discrete must be None or a bool"):
        mig(reps, facs, discrete=[True])
    with pytest.raises(ValueError, match="n_train"):
        dci(reps, facs, random_state=0, n_train=0)
