import numpy as np
import pytest
from scipy.stats import spearmanr

from tubervae.evaluation.matching import best_components, factor_correlations


def test_factor_correlations_match_scipy_and_treat_constants_as_zero():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(200, 3))
    codes[:, 2] = 1.5  # a dead component
    factors = np.column_stack([codes[:, 0] ** 3, -codes[:, 1] + 0.5 * rng.normal(size=200), np.zeros(200)])
    rho = factor_correlations(codes, factors)
    for a in range(2):
        for b in range(2):
            assert rho[a, b] == pytest.approx(abs(spearmanr(codes[:, a], factors[:, b])[0]), abs=1e-12)
    assert rho[0, 0] == pytest.approx(1.0)  # monotone: |ρ| = 1
    assert (rho[2] == 0).all() and (rho[:, 2] == 0).all()


def test_best_components_only_among_informative_ones():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(300, 2))
    codes = np.column_stack([f[:, 1], f[:, 0], f[:, 0] + 0.01 * rng.normal(size=300)])
    best, rho = best_components(codes, f)
    assert best.tolist() == [1, 0] and rho == pytest.approx([1.0, 1.0])
    best, rho = best_components(codes, f, informative=[True, False, True])
    assert best.tolist() == [2, 0] and rho[0] == pytest.approx(0.9999, abs=1e-3)
    best, rho = best_components(codes, f, informative=[False, False, False])
    assert best.tolist() == [-1, -1] and rho.tolist() == [0.0, 0.0]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same n"):
        factor_correlations(np.zeros((5, 2)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="mask"):
        best_components(np.random.default_rng(0).normal(size=(5, 2)), np.ones((5, 1)), informative=[True])
