"""SAP (`tubervae.evaluation.sap`): hand-computed scores, the LinearSVC and the correlation methods."""

import numpy as np
import pytest

from conftest import METRIC_ROWS as N
from conftest import factorial
from tubervae.evaluation.sap import sap, sap_from_scores


def test_sap_from_scores_hand_computed():
    # Factor 0: best 0.9, second 0.6 -> 0.3; factor 1: 0.8 - 0.1 = 0.7; mean 0.5.
    result = sap_from_scores([[0.9, 0.1], [0.6, 0.8], [0.2, 0.0]])
    np.testing.assert_allclose(result["sap_per_factor"], [0.3, 0.7])
    assert result["sap"] == pytest.approx(0.5)


def test_sap_correlation_hand_computed():
    # Full factorial binary y1, y2 (variances 1/4, covariance 0); codes y1, y2 and y1 + y2.
    # R²(y1 + y2, y1) = cov² / (var var) = (1/4)² / ((1/2)(1/4)) = 1/2, R² of the copies 1 and 0:
    # S = [[1, 0], [0, 1], [1/2, 1/2]], each gap 1 - 1/2.
    factors = factorial(2)
    codes = np.column_stack([factors, factors.sum(axis=1)])
    result = sap(codes, factors, random_state=0, method="correlation")
    np.testing.assert_allclose(result["sap_matrix"], [[1, 0], [0, 1], [0.5, 0.5]], atol=1e-12)
    assert result["sap"] == pytest.approx(0.5, abs=1e-12)
    assert result["sap_num_train"] == 8 and result["sap_num_test"] == 0


def test_sap_svm_on_one_to_one_and_redundant_binary_codes():
    factors = factorial(100)
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


@pytest.mark.slow
def test_sap_correlation_scores_are_squared_correlations(metric_codes):
    factors, aligned, _, _ = metric_codes
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


def test_bad_sap_options_raise_value_error():
    reps, facs = np.random.default_rng(0).normal(size=(20, 3)), np.zeros((20, 2))
    with pytest.raises(ValueError, match="method must be one of"):
        sap(reps, facs, random_state=0, method="tree")
    with pytest.raises(ValueError, match="random_state"):
        sap(reps, facs, random_state=-1)
