"""The shared argument checks: one wording for every bad array and random state."""

from __future__ import annotations

import numpy as np
import pytest

from tubervae.checks import check_array, check_random_state, check_seed
from tubervae.classify import fit_threshold_rule
from tubervae.evaluation.mig import mig
from tubervae.evaluation.udr import similarity_matrix


def test_check_array_returns_float64_and_reads_booleans_as_0_and_1():
    out = check_array("x", [[True, False], [1, 2]])
    assert out.dtype == np.float64
    assert out.tolist() == [[1.0, 0.0], [1.0, 2.0]]
    assert check_array("v", np.arange(3, dtype=np.int8), ndim=1).tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "value, kwargs, error, message",
    [
        (np.zeros(3), {}, ValueError, "x must be a 2-D array (n, columns), got shape (3,)"),
        (np.zeros((2, 2)), {"ndim": 1}, ValueError, "x must be a 1-D array (n,), got shape (2, 2)"),
        (np.zeros((0, 2)), {}, ValueError, "x must have at least 1 row(s) and 1 column(s), got shape (0, 2)"),
        (np.zeros((1, 2)), {"min_rows": 2}, ValueError, "at least 2 row(s)"),
        (np.array([["a", "b"]]), {}, TypeError, "x must be a numeric array, got dtype <U1"),
        (np.ones((2, 2), dtype=complex), {}, TypeError, "numeric array"),
        (np.array([[0.0, 1.0], [2.0, np.nan]]), {}, ValueError, "x must be finite; found nan at row 1, column 1"),
        (np.array([0.0, -np.inf]), {"ndim": 1}, ValueError, "x must be finite; found -inf at row 1"),
    ],
)
def test_check_array_names_the_argument_the_rule_and_what_was_given(value, kwargs, error, message):
    with pytest.raises(error) as caught:
        check_array("x", value, **kwargs)
    assert message in str(caught.value)


def test_the_metrics_udr_and_rules_refuse_bad_arrays_in_the_same_words():
    nan = np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0], [2.0, 0.0]])
    with pytest.raises(ValueError, match=r"representations must be finite; found nan at row 1, column 0"):
        mig(nan, np.ones((4, 1)))
    with pytest.raises(ValueError, match=r"rep_a must be finite; found nan at row 1, column 0"):
        similarity_matrix(nan, np.ones((4, 2)), "spearman")
    with pytest.raises(ValueError, match=r"latents must be finite; found nan at row 1, column 0"):
        fit_threshold_rule(nan, np.array([0, 1, 0, 1]))


def test_check_random_state_seeds_a_generator_or_goes_on_with_the_callers():
    assert check_random_state(3).integers(1000) == np.random.default_rng(3).integers(1000)
    mine = np.random.default_rng(0)
    assert check_random_state(mine) is mine


def test_check_seed_keeps_an_int_and_draws_one_from_a_generator():
    assert check_seed(7) == 7
    first, again = check_seed(np.random.default_rng(1)), check_seed(np.random.default_rng(1))
    assert first == again and 0 <= first < 2**31 - 1


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", None])
def test_bad_random_states_are_refused_with_what_is_allowed(bad):
    for check in (check_seed, check_random_state):
        with pytest.raises(ValueError, match=r"random_state must be a non-negative int or a numpy Generator, got"):
            check(bad)
