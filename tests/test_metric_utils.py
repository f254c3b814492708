"""What the metrics share (`tubervae.evaluation.metric_utils`): bins, discrete factors, rows, input checks."""

import numpy as np
import pytest

from tubervae.evaluation.dci import dci
from tubervae.evaluation.factor_vae import factor_vae_score
from tubervae.evaluation.metric_utils import N_TEST, N_TRAIN, discrete_factor_mask, discretize, train_test_indices
from tubervae.evaluation.mig import mig
from tubervae.evaluation.sap import sap


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
