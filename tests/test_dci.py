"""DCI (`tubervae.evaluation.dci`): the importance matrix's scores by hand, and every method."""

import math

import numpy as np
import pytest

from conftest import factorial, rotate_45
from tubervae.evaluation.dci import dci, dci_from_importance


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
    factors = factorial(50)
    result = dci(factors, factors, random_state=0)
    np.testing.assert_allclose(result["importance"], np.eye(2), atol=1e-12)
    assert result["dci_informativeness"] == 1.0
    assert result["dci_informativeness_train"] == 1.0
    assert result["dci_disentanglement"] == pytest.approx(1.0, abs=1e-8)
    assert result["dci_completeness"] == pytest.approx(1.0, abs=1e-8)
    assert result["dci_informativeness_kind"] == "accuracy"
    assert result["dci_num_train"] + result["dci_num_test"] == 200


@pytest.mark.parametrize("method", ["gbt_fast", "gbt_regressor", "lasso"])
@pytest.mark.slow
def test_other_dci_methods_separate_aligned_from_rotated(metric_codes, method):
    factors, aligned, _, _ = metric_codes
    rotated = rotate_45(aligned, 0, 1)
    top = dci(aligned, factors, random_state=0, method=method, n_train=300, n_test=100)
    mixed = dci(rotated, factors, random_state=0, method=method, n_train=300, n_test=100)
    assert top["dci_disentanglement"] > 0.8 and top["dci_completeness"] > 0.8
    assert top["dci_informativeness"] > 0.8
    assert mixed["dci_disentanglement"] < top["dci_disentanglement"] - 0.1
    assert top["importance"].shape == (5, 4)
    assert top["dci_num_train"] == 300 and top["dci_num_test"] == 100
    assert top["dci_informativeness_kind"] == ("accuracy" if method == "gbt_fast" else "r2")


@pytest.mark.slow
def test_dci_in_parallel_matches_serial(metric_codes):
    factors, aligned, _, _ = metric_codes
    serial = dci(aligned, factors, random_state=3, method="gbt_fast", n_train=200, n_test=100)
    parallel = dci(aligned, factors, random_state=3, method="gbt_fast", n_train=200, n_test=100, n_jobs=2)
    np.testing.assert_array_equal(serial["importance"], parallel["importance"])
    assert serial["dci_informativeness"] == parallel["dci_informativeness"]


def test_bad_dci_options_raise_value_error():
    reps, facs = np.random.default_rng(0).normal(size=(20, 3)), np.zeros((20, 2))
    with pytest.raises(ValueError, match="method must be one of"):
        dci(reps, facs, random_state=0, method="random_forest")
    with pytest.raises(ValueError, match="n_train"):
        dci(reps, facs, random_state=0, n_train=0)
