"""Tests of the UDR metric against hand-computed values, scipy and scikit-learn."""

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

from tubervae.evaluation.udr import (
    UDRResult,
    aggregate_udr,
    informative_mask,
    masked_similarity,
    pair_similarities,
    rank_shift,
    similarity_matrix,
    standardise,
    udr_pair,
    udr_scores,
)


def mixed_latents(rng, n=300, d=5, k=3):
    """Correlated latents: k shared factors mixed into d components plus noise."""
    factors = rng.normal(size=(n, k))
    return factors @ rng.normal(size=(k, d)) + 0.3 * rng.normal(size=(n, d))


def tight_sklearn_lasso(x, y, alpha):
    model = Lasso(alpha=alpha, fit_intercept=False, tol=1e-13, max_iter=200_000)
    return model.fit(x, y).coef_


# ---------------------------------------------------------------- invariances


@pytest.mark.parametrize("similarity", ["spearman", "lasso"])
@pytest.mark.parametrize("aggregate", ["paper", "reference"])
def test_permutation_and_sign_invariance(similarity, aggregate):
    rng = np.random.default_rng(0)
    x = mixed_latents(rng)
    kl = np.array([0.5, 0.001, 2.0, 0.3, 0.0])  # components 1 and 4 uninformative
    p = np.array([3, 0, 4, 2, 1])
    s = np.array([-1.0, 1.0, -1.0, -1.0, 1.0])
    kw = dict(similarity=similarity, aggregate=aggregate)
    base = udr_pair(x, x, kl, kl, **kw)
    moved = udr_pair(x, x[:, p] * s, kl, kl[p], **kw)
    assert moved == pytest.approx(base, abs=1e-9)
    assert 0.0 < base <= 1.0


def test_lasso_of_a_model_with_itself_is_one_minus_alpha():
    # Predicting column j from all columns with ||X_j||^2/n = 1: w = (1-alpha) e_j
    # satisfies the KKT conditions (|G_kj (w_j - 1)| = alpha |G_kj| <= alpha), so
    # R = (1-alpha) * permutation and every max^2/sum term is 1-alpha, even for
    # correlated components.
    rng = np.random.default_rng(1)
    x = mixed_latents(rng)
    kl = np.ones(5)
    p = np.array([2, 4, 1, 0, 3])
    for alpha in (0.1, 0.25):
        got = udr_pair(x, -x[:, p], kl, kl, similarity="lasso", lasso_alpha=alpha)
        assert got == pytest.approx(1 - alpha, abs=1e-9)


def test_single_shared_informative_component():
    rng = np.random.default_rng(2)
    n = 400
    signal = rng.normal(size=n)
    a = rng.normal(size=(n, 4)) * 0.05
    b = rng.normal(size=(n, 3)) * 0.05
    a[:, 2] = signal
    b[:, 0] = -3.0 * signal + 7.0  # same factor, other scale, sign and place
    kl_a = np.array([0.001, 0.0, 1.5, 0.002])
    kl_b = np.array([0.8, 0.0, 0.005])
    assert udr_pair(a, b, kl_a, kl_b, similarity="spearman") == pytest.approx(1.0)
    # Lasso shrinks the perfect weight 1 of standardised data to 1 - alpha.
    assert udr_pair(a, b, kl_a, kl_b, similarity="lasso") == pytest.approx(0.9, abs=1e-9)
    assert udr_pair(a, b, kl_a, kl_b, similarity="lasso", aggregate="reference") == pytest.approx(0.9, abs=1e-9)


def test_independent_columns_against_permuted_copy_spearman():
    # Off-diagonal |rho| ~ 0.025 for n = 1000 keep each max^2/sum term near
    # 1 / (1 + 9 * 0.025) ~ 0.8-0.85, never 1.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 10))
    p = rng.permutation(10)
    s = rng.choice([-1.0, 1.0], size=10)
    kl = np.ones(10)
    got = udr_pair(x, x[:, p] * s, kl, kl, similarity="spearman")
    assert 0.8 < got < 1.0


# ---------------------------------------------------------------- aggregation


def test_all_ones_matrix_scores_one_third():
    # every column: max^2/sum = 1/3, same for every row
    r = np.ones((3, 3))
    mask = np.ones(3, dtype=bool)
    assert aggregate_udr(r, mask, mask, "reference") == pytest.approx(1 / 3)
    assert aggregate_udr(r, mask, mask, "paper") == pytest.approx(1 / 3)


def test_hand_computed_two_by_three_case():
    # Informative block (rows 0, 2; columns 0, 1, 3):
    #     [[0.8, 0.1, 0.1],
    #      [0.2, 0.6, 0.2]]
    # columns: max^2/sum = 0.64/1.0, 0.36/0.7 = 18/35, 0.04/0.3 = 2/15
    #          -> sum = 336/525 + 270/525 + 70/525 = 676/525
    # rows:    0.64/1.0, 0.36/1.0 -> sum = 1
    # paper:     (676/525 + 1) / (2 + 3) = 1201/2625 = 0.457523...
    # reference: (676/525 / 3 + 1 / 2) / 2 = 676/3150 + 1/4 = 0.464603...
    r = np.array(
        [
            [0.8, 0.1, 9.0, 0.1],
            [5.0, 5.0, 5.0, 5.0],  # uninformative row: must be ignored
            [0.2, 0.6, 9.0, 0.2],
        ]
    )
    rows = np.array([True, False, True])
    cols = np.array([True, True, False, True])
    assert aggregate_udr(r, rows, cols, "paper") == pytest.approx(1201 / 2625)
    assert aggregate_udr(r, rows, cols, "reference") == pytest.approx(676 / 3150 + 0.25)


def test_aggregations_agree_when_dimensions_are_equal():
    rng = np.random.default_rng(4)
    r = rng.uniform(size=(4, 4))
    mask = np.array([True, True, False, True])
    assert aggregate_udr(r, mask, mask, "paper") == pytest.approx(aggregate_udr(r, mask, mask, "reference"))


def test_zero_column_counts_as_zero_not_nan():
    # column 1 sums to 0 -> its term is 0 (0/0); column 0: 1/1; rows: 1/1, 0/0 -> 0
    r = np.array([[1.0, 0.0], [0.0, 0.0]])
    mask = np.ones(2, dtype=bool)
    assert aggregate_udr(r, mask, mask, "reference") == pytest.approx(0.5)


# ---------------------------------------------------------------- degenerate inputs


def test_no_informative_component_scores_zero_with_warning():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 3))
    dead = np.zeros(3)
    with pytest.warns(RuntimeWarning, match="no informative"):
        assert udr_pair(x, x, dead, np.ones(3)) == 0.0
    reps = [x, x[:, ::-1], x]
    kls = [np.ones(3), np.ones(3), dead]
    with pytest.warns(RuntimeWarning, match=r"models \[2\]"):
        res = udr_scores(reps, kls, similarity="spearman")
    assert res.scores[2] == 0.0
    assert res.pair_scores[0, 2] == 0.0 and res.pair_scores[1, 2] == 0.0
    assert res.n_informative.tolist() == [3, 3, 0]
    assert res.scores[0] > 0.0


def test_constant_columns_give_zeros_not_nan():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 3))
    x[:, 1] = 3.7
    z = standardise(x)
    assert np.all(z[:, 1] == 0.0)
    assert np.allclose(z[:, [0, 2]].mean(axis=0), 0.0)
    assert np.allclose(z[:, [0, 2]].std(axis=0), 1.0)
    kl = np.ones(3)  # the constant column is (wrongly) flagged informative
    for method in ("spearman", "lasso"):
        r = similarity_matrix(x, x, method)
        assert np.all(np.isfinite(r)) and np.all(r[1] == 0) and np.all(r[:, 1] == 0)
        assert np.isfinite(udr_pair(x, x, kl, kl, similarity=method))


def test_single_model_group_gets_nan_with_warning():
    rng = np.random.default_rng(7)
    reps = [rng.normal(size=(40, 3)) for _ in range(3)]
    kls = [np.ones(3)] * 3
    with pytest.warns(RuntimeWarning, match="no partner"):
        res = udr_scores(reps, kls, groups=["a", "a", "b"], similarity="spearman")
    assert np.isnan(res.scores[2])
    assert np.all(np.isfinite(res.scores[:2]))
    assert res.partners == ((1,), (0,), ())


# ---------------------------------------------------------------- udr_scores


def _four_models(rng):
    base = mixed_latents(rng, n=200, d=4, k=3)
    reps = [base + 0.4 * rng.normal(size=base.shape) for _ in range(4)]
    kls = [np.array([1.0, 0.5, 0.0, 2.0]), np.ones(4), np.array([1.0, 1.0, 1.0, 0.0]), np.ones(4)]
    return reps, kls


def test_scores_are_medians_of_pair_scores():
    reps, kls = _four_models(np.random.default_rng(8))
    res = udr_scores(reps, kls, similarity="lasso")
    assert isinstance(res, UDRResult)
    for i in range(4):
        assert np.isnan(res.pair_scores[i, i])
        pair = [udr_pair(reps[i], reps[j], kls[i], kls[j]) for j in range(4) if j != i]
        got = [res.pair_scores[i, j] for j in range(4) if j != i]
        assert got == pytest.approx(pair, abs=1e-9)
        # model i is scored by its partners predicting it: column i, as disentanglement_lib does
        scored_by = [udr_pair(reps[j], reps[i], kls[j], kls[i]) for j in range(4) if j != i]
        assert res.scores[i] == pytest.approx(sorted(scored_by)[1], abs=1e-9)  # median of 3
    # the Lasso direction matters, so the matrix is not symmetric
    assert not np.allclose(res.pair_scores[0, 1], res.pair_scores[1, 0])
    assert res.n_informative.tolist() == [3, 4, 3, 4]
    assert res.settings["similarity"] == "lasso" and res.settings["grouping"] == "all"


def test_partner_subset_stays_in_group():
    rng = np.random.default_rng(9)
    reps = [rng.normal(size=(30, 3)) for _ in range(6)]
    kls = [np.ones(3)] * 6
    groups = ["a", "a", "a", "b", "b", "b"]
    res = udr_scores(reps, kls, groups=groups, n_partners=2, partner_seed=3, similarity="spearman")
    for i in range(6):
        partners = list(res.partners[i])
        assert len(partners) == 2
        assert all(groups[j] == groups[i] and j != i for j in partners)
        assert not np.isnan(res.pair_scores[partners, i]).any()  # each partner predicted model i
        assert res.scores[i] == pytest.approx(res.pair_scores[partners, i].mean())
    # only partner pairs were computed, in the direction partner -> model
    computed = {(int(a), int(b)) for a, b in zip(*np.nonzero(~np.isnan(res.pair_scores)))}
    assert computed == {(j, i) for i in range(6) for j in res.partners[i]}


def test_grouped_scores_match_each_group_alone():
    reps, kls = _four_models(np.random.default_rng(10))
    groups = [("beta_vae", 4), ("tcvae", 2), ("beta_vae", 4), ("tcvae", 2)]
    res = udr_scores(reps, kls, groups=groups, similarity="spearman")
    alone = udr_scores([reps[0], reps[2]], [kls[0], kls[2]], similarity="spearman")
    assert res.scores[[0, 2]] == pytest.approx(alone.scores, abs=1e-12)
    assert np.isnan(res.pair_scores[0, 1]) and np.isnan(res.pair_scores[1, 2])


@pytest.mark.parametrize("similarity", ["spearman", "lasso"])
def test_order_of_models_does_not_matter(similarity):
    reps, kls = _four_models(np.random.default_rng(11))
    order = np.array([2, 0, 3, 1])
    res = udr_scores(reps, kls, similarity=similarity)
    shuffled = udr_scores([reps[k] for k in order], [kls[k] for k in order], similarity=similarity)
    assert shuffled.scores == pytest.approx(res.scores[order], abs=1e-9)
    assert np.allclose(shuffled.pair_scores, res.pair_scores[np.ix_(order, order)], equal_nan=True)


def test_models_of_different_width():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(80, 3))
    wide = np.column_stack([x[:, [2, 0, 1]], rng.normal(size=(80, 2))])
    kl_wide = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
    res = udr_scores([x, wide], [np.ones(3), kl_wide], similarity="lasso")
    # informative parts are the same up to permutation: 1 - alpha both ways
    assert res.scores == pytest.approx([0.9, 0.9], abs=1e-9)


# ---------------------------------------------------------------- similarity matrices


def test_spearman_matrix_matches_scipy_with_ties():
    rng = np.random.default_rng(13)
    a = np.round(rng.normal(size=(40, 3)), 1)  # rounding creates ties
    a[:, 1] = rng.integers(0, 4, size=40)  # heavy ties
    b = np.column_stack([a[:, 0] ** 3 + rng.normal(size=40), rng.integers(0, 3, size=40)])
    expected = np.abs(spearmanr(a, b).statistic[:3, 3:])
    assert similarity_matrix(a, b, "spearman") == pytest.approx(expected, abs=1e-12)


def test_lasso_matrix_matches_sklearn():
    rng = np.random.default_rng(14)
    a = mixed_latents(rng, n=150, d=5) * 4.0 + 2.0
    b = mixed_latents(rng, n=150, d=4) + a[:, :4]
    za = StandardScaler().fit_transform(a)
    zb = StandardScaler().fit_transform(b)
    for alpha in (0.1, 0.03):
        expected = np.abs(tight_sklearn_lasso(za, zb, alpha)).T  # R[a, b]
        got = similarity_matrix(a, b, "lasso", lasso_alpha=alpha)
        assert np.max(np.abs(got - expected)) < 1e-6
        assert np.count_nonzero(expected) > 3  # a non-trivial case


def test_masked_similarity_blanks_uninformative():
    rng = np.random.default_rng(16)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 4))
    kl_a, kl_b = np.array([1.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0, 1.0])
    r = masked_similarity(a, b, kl_a, kl_b, similarity="spearman")
    assert r.shape == (3, 4)
    assert np.all(np.isnan(r[1])) and np.all(np.isnan(r[:, 0]))
    plain = similarity_matrix(a, b, "spearman")
    assert r[np.ix_([0, 2], [1, 2, 3])] == pytest.approx(plain[np.ix_([0, 2], [1, 2, 3])])


# ---------------------------------------------------------------- herd effect


def test_rank_shift_by_hand():
    within = [0.5, 0.7, np.nan, 0.6, 0.7]
    a2a = [0.9, 0.4, 0.3, 0.5, 0.45]
    got = rank_shift(within, a2a)
    # within: 0.7, 0.7 share rank 1, then 0.6 -> 3, 0.5 -> 4; NaN unranked
    # a2a: 0.9 -> 1, 0.5 -> 2, 0.45 -> 3, 0.4 -> 4, 0.3 -> 5
    assert np.allclose(got.rank_within, [4, 1, np.nan, 3, 1], equal_nan=True)
    assert np.allclose(got.rank_a2a, [1, 4, 5, 2, 3])
    assert np.allclose(got.shift, [-3, 3, np.nan, -1, 2], equal_nan=True)


# ---------------------------------------------------------------- validation


def test_mismatched_number_of_images_raises():
    rng = np.random.default_rng(17)
    a, b = rng.normal(size=(30, 3)), rng.normal(size=(31, 3))
    kl = np.ones(3)
    with pytest.raises(ValueError, match="same images"):
        udr_pair(a, b, kl, kl)
    with pytest.raises(ValueError, match=r"\[30, 31\]"):
        udr_scores([a, a, b], [kl, kl, kl])
    with pytest.raises(ValueError, match="same images"):
        similarity_matrix(a, b, "spearman")


def test_bad_arguments_are_named():
    rng = np.random.default_rng(18)
    x = rng.normal(size=(20, 3))
    kl = np.ones(3)
    with pytest.raises(ValueError, match="similarity.*'pearson'"):
        udr_pair(x, x, kl, kl, similarity="pearson")
    with pytest.raises(ValueError, match="aggregate.*'mean'"):
        udr_pair(x, x, kl, kl, aggregate="mean")
    with pytest.raises(ValueError, match="lasso_alpha.*-0.1"):
        udr_pair(x, x, kl, kl, lasso_alpha=-0.1)
    with pytest.raises(ValueError, match="kl_b must be a length-3"):
        udr_pair(x, x, kl, np.ones(4))
    with pytest.raises(ValueError, match=r"rep_a must be finite; found nan at row 0, column 0"):
        udr_pair(np.full((20, 3), np.nan), x, kl, kl)
    with pytest.raises(ValueError, match="n_partners.*0"):
        udr_scores([x, x], [kl, kl], n_partners=0)
    with pytest.raises(ValueError, match="groups must have one label per model"):
        udr_scores([x, x], [kl, kl], groups=["a"])
    with pytest.raises(ValueError, match="one vector per model"):
        udr_scores([x, x], [kl])


def test_informative_mask_uses_strict_threshold():
    assert informative_mask([0.0, 0.01, 0.0100001, 3.0]).tolist() == [False, False, True, True]


def test_vocabulary_and_threshold_come_from_config():
    import inspect

    from tubervae import config
    from tubervae.evaluation import lasso, udr

    assert udr.SIMILARITIES is config.SIMILARITIES and udr.AGGREGATES is config.AGGREGATES
    assert udr.lasso_gram is lasso.lasso_gram  # still importable from udr
    for fn in (informative_mask, udr_pair, pair_similarities, masked_similarity, udr_scores):
        assert inspect.signature(fn).parameters["kl_threshold"].default == config.INFORMATIVE_KL, fn.__name__


# ---------------------------------------------------------------- model scores as the reference computes them


def reference_model_scores(reps, kls, similarity, aggregate, kl_threshold=0.01, alpha=0.1):
    """disentanglement_lib's compute_udr_sklearn, written plainly with scipy and scikit-learn.

    Standardise each representation, zero its uninformative components, compare every
    ordered pair (i predicts j), keep the informative rows and columns, aggregate; model i
    scores the median over j of the pair (j, i): column i of the pair matrix.
    """
    m = len(reps)
    masks = [kl > kl_threshold for kl in kls]
    zs = [StandardScaler().fit_transform(r) * mask for r, mask in zip(reps, masks)]
    pairs = np.full((m, m), np.nan)
    for i in range(m):
        for j in range(m):
            if i == j:
                continue
            a, b = zs[i][:, masks[i]], zs[j][:, masks[j]]
            if similarity == "spearman":
                r = np.array(
                    [[abs(spearmanr(a[:, p], b[:, q])[0]) for q in range(b.shape[1])] for p in range(a.shape[1])]
                )
            else:  # all of model i's components predict each of model j's
                r = np.abs(tight_sklearn_lasso(zs[i], zs[j], alpha).T)[np.ix_(masks[i], masks[j])]
            with np.errstate(invalid="ignore", divide="ignore"):
                by_col = np.nan_to_num(r.max(axis=0) ** 2 / r.sum(axis=0))
                by_row = np.nan_to_num(r.max(axis=1) ** 2 / r.sum(axis=1))
            if aggregate == "reference":
                pairs[i, j] = (by_col.mean() + by_row.mean()) / 2
            else:  # the thesis's formula: one sum over both directions, divided by d_a + d_b
                pairs[i, j] = (by_col.sum() + by_row.sum()) / (r.shape[0] + r.shape[1])
    return np.array([np.median(np.delete(pairs[:, i], i)) for i in range(m)]), pairs


@pytest.mark.parametrize("aggregate", ["paper", "reference"])
@pytest.mark.parametrize("similarity", ["spearman", "lasso"])
def test_model_scores_match_an_independent_reference(similarity, aggregate):
    """Five fixed models of different informative widths: each model's score is its column's median."""
    rng = np.random.default_rng(2024)
    base = mixed_latents(rng, n=400, d=5, k=3)
    reps = [
        base[:, rng.permutation(5)] * rng.choice([-1, 1], 5) + s * rng.normal(size=base.shape)
        for s in (0.2, 0.5, 0.8, 1.2, 0.3)
    ]
    kls = [
        np.array([1.0, 1.0, 1.0, 1.0, 1.0]),
        np.array([1.0, 0.0, 1.0, 1.0, 0.5]),
        np.array([0.2, 1.0, 0.005, 1.0, 1.0]),
        np.array([1.0, 1.0, 1.0, 0.0, 0.0]),
        np.array([0.5, 0.5, 0.5, 0.5, 0.001]),
    ]
    expected, pairs = reference_model_scores(reps, kls, similarity, aggregate)
    res = udr_scores(reps, kls, similarity=similarity, aggregate=aggregate)
    assert np.allclose(res.pair_scores, pairs, atol=1e-7, equal_nan=True)
    assert res.scores == pytest.approx(expected, abs=1e-7)
    if similarity == "lasso":  # the side matters: scoring model i by its own row would rank differently
        by_row = np.array([np.median(np.delete(pairs[i], i)) for i in range(5)])
        assert not np.allclose(by_row, expected, atol=1e-3)


@pytest.mark.parametrize("similarity", ["lasso", "spearman"])
def test_excluded_components_score_as_if_uninformative(similarity):
    """A guided model's component 0 is left out of UDR: its scores are those of KL 0 there, whatever z0 holds."""
    reps, kls = _four_models(np.random.default_rng(12))
    excluded = [(0,), (0,), (), (0,)]
    res = udr_scores(reps, kls, similarity=similarity, excluded=excluded)
    silenced = [k.copy() for k in kls]
    for k, components in zip(silenced, excluded):
        k[list(components)] = 0.0
    same = udr_scores(reps, silenced, similarity=similarity)
    assert np.array_equal(res.scores, same.scores) and res.n_informative.tolist() == [2, 3, 3, 3]
    scrambled = [r.copy() for r in reps]
    for r, components in zip(scrambled, excluded):
        if components:
            r[:, 0] = np.random.default_rng(0).normal(size=len(r))  # what the labels did to z0 does not count
    assert np.array_equal(udr_scores(scrambled, kls, similarity=similarity, excluded=excluded).scores, res.scores)
    assert not np.array_equal(udr_scores(reps, kls, similarity=similarity).scores, res.scores)


def test_excluded_components_are_checked():
    reps, kls = _four_models(np.random.default_rng(13))
    with pytest.raises(ValueError, match="excluded must list components for each of the 4 models, got 2"):
        udr_scores(reps, kls, excluded=[(0,), (0,)])
    with pytest.raises(ValueError, match=r"excluded\[1\] holds 4, not a component of model 1 \(0..3\)"):
        udr_scores(reps, kls, excluded=[(), (4,), (), ()])


def test_udr_options_are_the_settings_as_udr_scores_takes_them():
    from tubervae.config import UdrConfig
    from tubervae.evaluation.udr import udr_options

    cfg = UdrConfig(similarity="spearman", aggregate="reference", kl_threshold=0.2, lasso_alpha=0.3, n_partners=2)
    within = udr_options(cfg)
    assert within == {
        "n_partners": 2,
        "partner_seed": 0,
        "similarity": "spearman",
        "aggregate": "reference",
        "kl_threshold": 0.2,
        "lasso_alpha": 0.3,
    }
    assert udr_options(cfg, within=False)["n_partners"] is None  # all against all: every other model
    assert udr_options(UdrConfig())["n_partners"] is None  # 0: every other seed of the setting
    assert udr_options(cfg, similarity="lasso")["similarity"] == "lasso"
