"""MIG (`tubervae.evaluation.mig`): hand-computed values on tiny codes."""

import math

import numpy as np
import pytest

from conftest import factorial
from tubervae.evaluation.mig import mig


def test_mig_of_binary_factors_copied_into_codes_is_one():
    # I(z_j; y_j) = H(y_j) = ln 2 and, the design being full factorial, I(z_i; y_j) = 0 for i != j:
    # each gap is ln 2 / ln 2 = 1.
    factors = factorial(2)
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


def test_bad_mig_options_raise_value_error():
    reps, facs = np.random.default_rng(0).normal(size=(20, 3)), np.zeros((20, 2))
    with pytest.raises(ValueError, match="discrete must be None or a bool"):
        mig(reps, facs, discrete=[True])
