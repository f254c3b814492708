"""Tests of the batched Gram-matrix Lasso solver against scikit-learn's Lasso."""

import numpy as np
import pytest
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

from tubervae.evaluation.lasso import KKT_TOL, kkt_violation, lasso_gram

# lasso_gram solves each target exactly on its support; a tightly converged
# scikit-learn fit agrees to ~1e-13 on these problems, so 1e-9 leaves room for
# BLAS differences while still catching a wrong support or a loose stop.
TOL = 1e-9


def tight_sklearn_lasso(x, y, alpha):
    """Coefficients (d, t) of scikit-learn's Lasso without intercept, converged far past its defaults."""
    model = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=1_000_000)
    coef = model.fit(x, y).coef_
    return coef.reshape(-1, x.shape[1]).T


def gram_and_cross(x, y):
    n = x.shape[0]
    return x.T @ x / n, x.T @ y / n


def random_problem(rng, n, d, t, k):
    """Correlated predictors (k shared factors in d columns) and sparse-ish targets, both standardised."""
    x = rng.normal(size=(n, k)) @ rng.normal(size=(k, d)) + 0.3 * rng.normal(size=(n, d))
    coef = rng.normal(size=(d, t)) * (rng.uniform(size=(d, t)) < 0.5)
    y = x @ coef + rng.normal(size=(n, t))
    return StandardScaler().fit_transform(x), StandardScaler().fit_transform(y)


# ---------------------------------------------------------------- against scikit-learn


@pytest.mark.parametrize(
    "seed, n, d, t, k, alpha",
    [
        (0, 300, 10, 10, 6, 0.1),  # the UDR shape: d = 10 components predicting 10
        (1, 1000, 10, 4, 3, 0.1),
        (2, 150, 5, 3, 5, 0.03),
        (3, 80, 8, 2, 2, 0.01),
        (4, 400, 3, 6, 2, 0.3),
        (5, 60, 1, 3, 1, 0.05),  # a single predictor: soft thresholding
    ],
)
def test_matches_sklearn_on_standardised_data(seed, n, d, t, k, alpha):
    rng = np.random.default_rng(seed)
    x, y = random_problem(rng, n, d, t, k)
    got = lasso_gram(*gram_and_cross(x, y), alpha)
    expected = tight_sklearn_lasso(x, y, alpha)
    assert got.shape == (d, t)
    assert np.max(np.abs(got - expected)) < TOL
    # zeros are exact zeros, as in scikit-learn, not tiny numbers
    np.testing.assert_array_equal(got == 0, expected == 0)


def test_many_random_problems_match_sklearn():
    worst = 0.0
    non_trivial = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        d = int(rng.integers(2, 11))
        x, y = random_problem(rng, int(rng.integers(40, 400)), d, int(rng.integers(1, 6)), int(rng.integers(1, d + 1)))
        alpha = float(rng.choice([0.01, 0.05, 0.1, 0.3]))
        expected = tight_sklearn_lasso(x, y, alpha)
        worst = max(worst, float(np.max(np.abs(lasso_gram(*gram_and_cross(x, y), alpha) - expected))))
        non_trivial += np.count_nonzero(expected) > 1
    assert worst < TOL
    assert non_trivial >= 15


def test_signed_weights_match_sklearn_on_raw_data():
    rng = np.random.default_rng(15)
    x = rng.normal(size=(120, 4)) @ rng.normal(size=(4, 4))
    y = x @ np.array([[1.0, 0.0], [-0.5, 2.0], [0.0, 0.3], [0.05, -1.0]]) + rng.normal(size=(120, 2))
    got = lasso_gram(*gram_and_cross(x, y), 0.2)
    expected = tight_sklearn_lasso(x, y, 0.2)
    assert np.max(np.abs(got - expected)) < TOL
    assert np.any(got < 0)


def test_solution_satisfies_the_optimality_conditions():
    # KKT: |c - G w| <= alpha everywhere, and = alpha * sign(w) on the support.
    rng = np.random.default_rng(21)
    x, y = random_problem(rng, 500, 10, 10, 4)
    alpha = 0.05
    gram, cross = gram_and_cross(x, y)
    w = lasso_gram(gram, cross, alpha)
    grad = cross - gram @ w
    assert np.all(np.abs(grad) <= alpha + 1e-12)
    on = w != 0
    assert on.sum() > 10
    assert np.max(np.abs(grad[on] - alpha * np.sign(w[on]))) < 1e-12


def test_alpha_at_or_above_the_largest_correlation_gives_zeros():
    rng = np.random.default_rng(22)
    x, y = random_problem(rng, 200, 6, 3, 3)
    gram, cross = gram_and_cross(x, y)
    alpha_max = float(np.max(np.abs(cross)))
    assert np.all(lasso_gram(gram, cross, alpha_max) == 0.0)
    assert np.all(lasso_gram(gram, cross, 2 * alpha_max) == 0.0)
    assert np.any(lasso_gram(gram, cross, 0.9 * alpha_max) != 0.0)


# ---------------------------------------------------------------- batches


def test_stacked_problems_are_solved_independently():
    rng = np.random.default_rng(19)
    xs = [rng.normal(size=(60, 3)) @ rng.normal(size=(3, 3)) for _ in range(4)]
    ys = [x @ rng.normal(size=(3, 2)) + rng.normal(size=(60, 2)) for x in xs]
    gram = np.stack([x.T @ x / 60 for x in xs]).reshape(2, 2, 3, 3)
    cross = np.stack([x.T @ y / 60 for x, y in zip(xs, ys)]).reshape(2, 2, 3, 2)
    got = lasso_gram(gram, cross, 0.15)
    assert got.shape == (2, 2, 3, 2)
    got = got.reshape(4, 3, 2)
    for k in range(4):
        assert np.max(np.abs(got[k] - tight_sklearn_lasso(xs[k], ys[k], 0.15))) < TOL


@pytest.mark.parametrize("lead", [(1,), (7,), (3, 4), (2, 1, 3)])
def test_batched_call_equals_one_call_per_problem(lead):
    # Problems of different difficulty in one batch: the working set shrinks as
    # easy targets finish, which must not disturb the others.
    rng = np.random.default_rng(23)
    count = int(np.prod(lead))
    d, t = 6, 5
    grams, crosses, singles = [], [], []
    for _ in range(count):
        x, y = random_problem(rng, int(rng.integers(50, 300)), d, t, int(rng.integers(1, d + 1)))
        gram, cross = gram_and_cross(x, y)
        grams.append(gram)
        crosses.append(cross)
        singles.append(lasso_gram(gram, cross, 0.05))
    got = lasso_gram(np.stack(grams).reshape(*lead, d, d), np.stack(crosses).reshape(*lead, d, t), 0.05)
    assert got.shape == (*lead, d, t)
    assert np.max(np.abs(got.reshape(count, d, t) - np.stack(singles))) < 1e-12


def test_empty_batch_gives_an_empty_result():
    got = lasso_gram(np.zeros((0, 3, 3)), np.zeros((0, 3, 2)), 0.1)
    assert got.shape == (0, 3, 2)


def test_array_likes_are_accepted():
    gram = [[1.0, 0.5], [0.5, 1.0]]
    cross = [[0.8], [0.1]]
    np.testing.assert_allclose(lasso_gram(gram, cross, 0.1), lasso_gram(np.array(gram), np.array(cross), 0.1))


# ---------------------------------------------------------------- degenerate predictors


def test_zero_variance_predictor_gets_weight_zero():
    rng = np.random.default_rng(24)
    n = 200
    raw = rng.normal(size=(n, 5)) @ rng.normal(size=(5, 5))
    raw[:, 2] = 4.2  # a collapsed component
    x = StandardScaler().fit_transform(raw)
    x[:, 2] = 0.0  # what udr.standardise makes of it (StandardScaler leaves ~1e-14 of rounding)
    assert np.diag(x.T @ x)[2] == 0.0
    y = StandardScaler().fit_transform(raw[:, [0, 3]] @ np.array([[1.0, 0.2], [-0.7, 0.9]]) + rng.normal(size=(n, 2)))
    for alpha in (0.01, 0.1):
        gram, cross = gram_and_cross(x, y)
        got = lasso_gram(gram, cross, alpha)
        assert np.all(got[2] == 0.0)
        assert np.all(np.isfinite(got))
        assert np.max(np.abs(got - tight_sklearn_lasso(x, y, alpha))) < TOL
        # the other weights are those of the problem without the dead column
        alive = [0, 1, 3, 4]
        without = lasso_gram(gram[np.ix_(alive, alive)], cross[alive], alpha)
        assert np.max(np.abs(got[alive] - without)) < 1e-12


def test_all_predictors_dead_gives_zeros():
    got = lasso_gram(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)), 0.1)
    assert got.shape == (2, 3, 4) and np.all(got == 0.0)


def stalling_problem(seed: int = 20):
    """Two strongly correlated pairs: one sweep of coordinate descent leaves the optimum far off."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(50, 6))
    x[:, 1] = x[:, 0] + 0.05 * rng.normal(size=50)
    x[:, 3] = x[:, 2] + 0.05 * rng.normal(size=50)
    y = x[:, :4].sum(axis=1, keepdims=True) + 0.3 * rng.normal(size=(50, 1))
    return x, y


def test_warns_when_stopped_early_far_from_the_optimum():
    x, y = stalling_problem()
    with pytest.warns(RuntimeWarning, match=r"did not converge in max_iter=1 sweeps: .* off by up to [\d.]+ x alpha"):
        got = lasso_gram(*gram_and_cross(x, y), 0.01, max_iter=1)
    assert got.shape == (6, 1) and np.all(np.isfinite(got))
    assert kkt_violation(*gram_and_cross(x, y), got, 0.01)[0] > KKT_TOL * 0.01


def test_no_warning_when_stopped_within_the_tolerance(recwarn):
    x, y = stalling_problem()
    got = lasso_gram(*gram_and_cross(x, y), 0.01, max_iter=1, kkt_tol=1e6)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert np.all(np.isfinite(got))


def test_a_nearly_duplicated_predictor_converges_without_a_warning(recwarn):
    """Coordinate descent splits the weight over a near-duplicate pair where the optimum puts it on one;
    the exact solve drops the weight whose sign flips and lands on the optimum at once."""
    rng = np.random.default_rng(0)
    n = 1000
    x = rng.normal(size=(n, 6))
    x[:, 1] = x[:, 0] + 1e-3 * rng.normal(size=n)
    x[:, 3] = x[:, 2] * 0.999 + 0.03 * rng.normal(size=n)
    x = StandardScaler().fit_transform(x)
    y = np.hstack([0.7 * x[:, :1] + 0.5 * x[:, 2:3] + 0.2 * rng.normal(size=(n, 1)), x[:, 1:2] + x[:, 3:4]])
    y = StandardScaler().fit_transform(y)
    got = lasso_gram(*gram_and_cross(x, y), 0.1)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert np.max(np.abs(got - tight_sklearn_lasso(x, y, 0.1))) < 1e-6
    assert np.max(kkt_violation(*gram_and_cross(x, y), got, 0.1)) < 1e-9


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alpha=0.0), r"alpha must be a finite number > 0\.0, got 0\.0"),
        (dict(alpha=-0.1), r"alpha must be .*got -0\.1"),
        (dict(alpha=float("nan")), r"alpha must be .*got nan"),
        (dict(alpha=float("inf")), r"alpha must be .*got inf"),
        (dict(alpha=True), r"alpha must be .*got True"),
        (dict(alpha="0.1"), r"alpha must be .*got '0\.1'"),
        (dict(tol=0.0), r"tol must be a finite number > 0\.0"),
        (dict(tol=-1e-6), r"tol must be .*got -1e-06"),
        (dict(max_iter=0), r"max_iter must be an int >= 1, got 0"),
        (dict(max_iter=2.5), r"max_iter must be an int >= 1, got 2\.5"),
        (dict(max_iter=True), r"max_iter must be an int >= 1, got True"),
        (dict(kkt_tol=-1.0), r"kkt_tol must be .*got -1\.0"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    gram, cross = np.eye(3), np.ones((3, 2))
    args = dict(alpha=0.1) | kwargs
    alpha = args.pop("alpha")
    with pytest.raises(ValueError, match=match):
        lasso_gram(gram, cross, alpha, **args)


def test_integer_settings_of_numpy_types_are_accepted():
    gram, cross = np.eye(3), np.ones((3, 2))
    expected = lasso_gram(gram, cross, 0.1)
    np.testing.assert_array_equal(lasso_gram(gram, cross, np.float64(0.1), max_iter=np.int64(50)), expected)
    np.testing.assert_array_equal(lasso_gram(gram, cross, 1, tol=1), np.zeros((3, 2)))


@pytest.mark.parametrize(
    "gram, cross, match",
    [
        (np.ones(3), np.ones((3, 1)), r"gram must have shape \(\.\.\., d, d\), got \(3,\)"),
        (np.ones((3, 2)), np.ones((3, 1)), r"gram must have shape \(\.\.\., d, d\), got \(3, 2\)"),
        (np.eye(3), np.ones((2, 1)), r"cross must have shape \(\.\.\., d, t\) matching gram \(3, 3\), got \(2, 1\)"),
        (np.eye(3), np.ones(3), r"cross must have shape .* got \(3,\)"),
        (np.stack([np.eye(3)] * 2), np.ones((3, 3, 1)), r"cross must have shape .* got \(3, 3, 1\)"),
        (np.diag([1.0, np.nan, 1.0]), np.ones((3, 1)), "gram and cross must be finite"),
        (np.eye(3), np.array([[1.0], [np.inf], [0.0]]), "gram and cross must be finite"),
    ],
)
def test_bad_arrays_are_named(gram, cross, match):
    with pytest.raises(ValueError, match=match):
        lasso_gram(gram, cross, 0.1)
