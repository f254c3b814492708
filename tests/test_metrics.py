import math

import numpy as np
import pandas as pd
import pytest

from tubervae.evaluation.metrics import (
    dci,
    dci_from_importance,
    discrete_factor_mask,
    discretize,
    evaluate_all,
    factor_vae_score,
    mig,
    sap,
    train_test_indices,
)

N = 1000
NAMES = ["x", "size", "tone", "spots"]


def _factors(rng):
    """Three continuous factors and one discrete count (0..3), independent."""
    continuous = rng.uniform(0.0, 1.0, size=(N, 3))
    spots = rng.integers(0, 4, size=(N, 1)).astype(float)
    return np.hstack([continuous, spots])


def _aligned(factors, rng):
    """Each factor copied into its own component, small noise, two pure-noise components."""
    standardised = (factors - factors.mean(axis=0)) / factors.std(axis=0)
    copied = standardised + 0.05 * rng.standard_normal(factors.shape)
    return np.hstack([copied, rng.standard_normal((factors.shape[0], 2))])


def _rotation(d, rng):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(0)
    factors = _factors(rng)
    aligned = _aligned(factors, rng)
    rotated = aligned @ _rotation(aligned.shape[1], rng)
    noise = rng.standard_normal(aligned.shape)
    results = {
        name: evaluate_all(reps, factors, NAMES, random_state=1)
        for name, reps in [("aligned", aligned), ("rotated", rotated), ("noise", noise)]
    }
    return factors, aligned, results


def test_aligned_representation_scores_near_top(cases):
    _, _, results = cases
    top = results["aligned"]
    assert top["mig"] > 0.5
    assert top["dci_d"] > 0.8 and top["dci_c"] > 0.8
    assert top["dci_i"] > 0.9
    assert top["sap"] > 0.6
    assert top["factorvae"] > 0.9
    # The heat map shows factor j tracked by component j.
    importance = top["importance"]
    assert list(importance.columns) == NAMES
    assert list(importance.index) == [f"z{i}" for i in range(6)]
    assert [importance[name].idxmax() for name in NAMES] == ["z0", "z1", "z2", "z3"]


def test_rotation_scores_clearly_lower_on_every_metric(cases):
    _, _, results = cases
    top, mixed = results["aligned"], results["rotated"]
    for key in ["mig", "dci_d", "dci_c", "sap", "factorvae"]:
        assert mixed[key] < top[key] - 0.15, key
    # Rotation loses no information: the factors stay predictable.
    assert mixed["dci_i"] > 0.8


def test_pure_noise_scores_near_zero_and_chance(cases):
    _, _, results = cases
    noise = results["noise"]
    assert noise["mig"] < 0.05
    assert noise["sap"] < 0.05
    assert noise["dci_d"] < 0.2
    assert noise["dci_i"] < 0.05
    assert noise["factorvae_chance"] == pytest.approx(1 / len(NAMES))
    assert abs(noise["factorvae"] - 1 / len(NAMES)) < 0.12


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


def test_sap_continuous_scores_are_squared_correlations(cases):
    factors, aligned, _ = cases
    result = sap(aligned, factors, random_state=0)
    corr = np.corrcoef(aligned.T, factors[:, :3].T)[:6, 6:]
    np.testing.assert_allclose(result["sap_matrix"][:, :3], corr**2, atol=1e-10)
    # The discrete count is scored by chance-adjusted accuracy: near 1 for its copy only.
    assert result["sap_matrix"][3, 3] > 0.9
    assert np.delete(result["sap_matrix"][:, 3], 3).max() < 0.2


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


def test_constant_factor_is_skipped_not_crashing(cases):
    factors, aligned, _ = cases
    with_constant = np.hstack([factors, np.zeros((N, 1))])
    result = evaluate_all(aligned, with_constant, NAMES + ["rot"], random_state=2)
    per_factor = result["per_factor"]
    assert per_factor.loc["rot", ["mig", "dci_completeness", "dci_informativeness", "sap"]].isna().all()
    assert per_factor.drop(index="rot")[["mig", "sap"]].notna().all().all()
    assert (result["importance"]["rot"] == 0).all()
    for key in ["mig", "dci_d", "dci_c", "dci_i", "sap", "factorvae"]:
        assert np.isfinite(result[key]), key
    assert result["mig"] > 0.5 and result["factorvae"] > 0.9
    assert result["factorvae_chance"] == pytest.approx(1 / 4)


def test_same_random_state_gives_same_results(cases):
    factors, aligned, _ = cases
    small = aligned[:300], factors[:300]
    first = evaluate_all(*small, NAMES, random_state=7)
    second = evaluate_all(*small, NAMES, random_state=7)
    for key, value in first.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, second[key])
        else:
            assert value == second[key], key
    other = factor_vae_score(*small, random_state=8, num_train=50, num_eval=50)
    again = factor_vae_score(*small, random_state=8, num_train=50, num_eval=50)
    assert other == again


@pytest.mark.parametrize("method", ["lasso", "random_forest"])
def test_other_dci_methods_separate_aligned_from_rotated(cases, method):
    factors, aligned, _ = cases
    rotated = aligned @ _rotation(aligned.shape[1], np.random.default_rng(5))
    top = dci(aligned[:400], factors[:400], random_state=0, method=method)
    mixed = dci(rotated[:400], factors[:400], random_state=0, method=method)
    assert top["dci_disentanglement"] > 0.8 and top["dci_completeness"] > 0.8
    assert mixed["dci_disentanglement"] < top["dci_disentanglement"] - 0.15
    assert top["importance"].shape == (6, 4)
    assert top["dci_num_train"] == 300 and top["dci_num_test"] == 100


def test_factor_vae_with_only_collapsed_components_scores_zero(cases):
    factors, _, _ = cases
    collapsed = np.full((N, 3), 0.3) + 1e-4 * np.random.default_rng(0).standard_normal((N, 3))
    result = factor_vae_score(collapsed, factors, random_state=0)
    assert result["factorvae_num_active"] == 0
    assert result["factorvae_eval_accuracy"] == 0.0


def test_train_test_indices_are_disjoint_and_capped():
    train, test = train_test_indices(100, test_fraction=0.2, random_state=0)
    assert train.size == 80 and test.size == 20
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(100))
    train, test = train_test_indices(100, test_fraction=0.2, random_state=0, max_train=30, max_test=5)
    assert train.size == 30 and test.size == 5
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_indices(100, test_fraction=1.5, random_state=0)


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
        dci(reps, facs, random_state=0, method="svm")
    with pytest.raises(ValueError, match="random_state"):
        sap(reps, facs, random_state=-1)
    with pytest.raises(ValueError, match="discrete must be None or a bool"):
        mig(reps, facs, discrete=[True])
