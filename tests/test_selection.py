"""Regret, ModelCentrality and the bootstrap over seeds, on cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tubervae.evaluation.selection import (
    bootstrap_regret,
    bootstrap_spearman,
    model_centrality,
    pick_regret,
    pool_centrality,
    random_regret,
    seed_resamples,
    setting_medians,
    setting_regret,
    symmetric_similarity,
)

NAN = float("nan")


def test_regret_is_the_best_quality_minus_the_picked_models():
    # the rule picks model 1 (score 0.9) of quality 0.1; the best is 0.3
    assert pick_regret([0.1, 0.9, 0.5], [0.3, 0.1, 0.2]) == pytest.approx(0.2)
    # a rule that agrees with the yardstick has no regret
    assert pick_regret([3.0, 1.0, 2.0], [0.3, 0.1, 0.2]) == 0.0


def test_a_shared_top_score_picks_each_tied_model_with_equal_chance():
    # models 0 and 1 tie: mean quality 0.3, best 0.6
    assert pick_regret([1.0, 1.0, 0.0], [0.4, 0.2, 0.6]) == pytest.approx(0.3)


def test_nan_scores_rank_last_and_all_nan_is_a_random_pick():
    assert pick_regret([NAN, 0.2], [0.9, 0.5]) == pytest.approx(0.4)
    assert pick_regret([NAN, NAN, NAN], [0.3, 0.1, 0.2]) == pytest.approx(0.3 - 0.2)


def test_regret_among_members_that_repeat_a_model():
    # members 0, 0, 2: best 0.3 (model 0); the rule prefers model 2 (0.5 > 0.1), quality 0.2
    assert pick_regret([0.1, 0.9, 0.5], [0.3, 0.1, 0.2], [0, 0, 2]) == pytest.approx(0.1)


def test_random_regret_is_best_minus_mean():
    assert random_regret([0.3, 0.1, 0.2]) == pytest.approx(0.1)
    assert random_regret([0.3, 0.1, 0.2], [1, 1, 2]) == pytest.approx(0.2 - (0.1 + 0.1 + 0.2) / 3)


def test_setting_regret_ranks_settings_by_their_median_score():
    groups = ["a", "a", "b", "b"]
    quality = [0.1, 0.3, 0.5, 0.7]  # medians a 0.2, b 0.6
    assert setting_medians(quality, groups) == pytest.approx([0.2, 0.6])
    assert setting_regret([1.0, 3.0, 0.0, 0.0], quality, groups) == pytest.approx(0.4)  # picks a
    assert setting_regret([0.0, 0.0, 1.0, 3.0], quality, groups) == pytest.approx(0.0)  # picks b
    # medians tie at 2: each setting with chance 1/2, so 0.6 - (0.2 + 0.6) / 2
    assert setting_regret([1.0, 3.0, 2.0, 2.0], quality, groups) == pytest.approx(0.2)


def test_seed_resamples_redraw_each_settings_seeds_from_that_setting_only():
    groups = ["a", "b", "a", "c"]
    draws = seed_resamples(groups, 500, random_state=1)
    assert draws.shape == (500, 4)
    assert set(np.unique(draws[:, :2])) == {0, 2}  # a's two models, with replacement
    assert np.all(draws[:, 2] == 1) and np.all(draws[:, 3] == 3)  # a setting of one seed keeps it
    assert np.any(draws[:, 0] == draws[:, 1])  # with replacement


def test_bootstrap_regret_averages_over_resamples_of_the_seeds():
    # One setting, two seeds; the rule picks the worse one. On both models the regret is 1; a
    # resample holds both models with chance 1/2 (regret 1) or one model twice (regret 0).
    figure = bootstrap_regret([1.0, 0.0], [0.0, 1.0], ["a", "a"], n_boot=4000, random_state=0)
    assert figure.value == pytest.approx(1.0)
    assert figure.mean == pytest.approx(0.5, abs=0.03)
    assert (figure.low, figure.high) == (0.0, 1.0)
    random = bootstrap_regret(None, [0.0, 1.0], ["a", "a"], n_boot=4000, random_state=0)
    assert random.value == pytest.approx(0.5)
    assert random.mean == pytest.approx(0.25, abs=0.02)  # half the resamples: 1 - 0.5; else 0


def test_a_rule_that_follows_the_yardstick_has_no_regret_in_any_resample():
    quality = [0.1, 0.5, 0.2, 0.4, 0.3, 0.6]
    groups = ["a", "a", "b", "b", "c", "c"]
    for level in ("model", "setting"):
        figure = bootstrap_regret(quality, quality, groups, level=level, n_boot=200)
        assert (figure.value, figure.low, figure.high) == (0.0, 0.0, 0.0)


def test_model_centrality_is_the_mean_symmetric_similarity_and_its_top_the_medoid():
    pairs = np.array([[NAN, 0.8, 0.2], [0.6, NAN, 0.4], [0.2, 0.4, NAN]])
    sym = symmetric_similarity(pairs)
    assert sym[0, 1] == pytest.approx(0.7) and sym[1, 0] == pytest.approx(0.7)
    assert np.all(np.isnan(np.diag(sym)))
    centrality = model_centrality(pairs)
    assert centrality == pytest.approx([0.45, 0.55, 0.3])
    assert int(np.argmax(centrality)) == 1  # the medoid: least total distance 1 - similarity


def test_centrality_uses_the_one_direction_known_and_skips_pairs_never_compared():
    pairs = np.array([[NAN, NAN, NAN], [0.6, NAN, NAN], [0.2, NAN, NAN]])
    assert model_centrality(pairs) == pytest.approx([0.4, 0.6, 0.2])


def test_pool_centrality_compares_each_family_only_with_itself():
    # models 0-2 one family (the matrix of the test above), 3-4 another, 5 alone; cross-family pairs high, to
    # show they are ignored
    pairs = np.full((6, 6), 0.9)
    pairs[:3, :3] = [[NAN, 0.8, 0.2], [0.6, NAN, 0.4], [0.2, 0.4, NAN]]
    pairs[3:5, 3:5] = [[NAN, 0.3], [0.5, NAN]]
    np.fill_diagonal(pairs, NAN)
    centrality = pool_centrality(pairs, ["a", "a", "a", "b", "b", "c"])
    assert centrality[:5] == pytest.approx([0.45, 0.55, 0.3, 0.4, 0.4])
    assert np.isnan(centrality[5])  # alone in its pool: no one to be central to
    # the pools need not be contiguous
    order = [3, 0, 4, 1, 5, 2]
    shuffled = pool_centrality(pairs[np.ix_(order, order)], ["b", "a", "b", "a", "c", "a"])
    assert shuffled == pytest.approx(centrality[order], nan_ok=True)
    with pytest.raises(ValueError, match="pools must give each of the 6 models a pool, got 5"):
        pool_centrality(pairs, ["a"] * 5)


def test_spearman_by_hand_with_one_seed_per_setting_has_no_spread():
    # ranks differ by 1 at two places: 1 - 6 * 2 / (4 * 15) = 0.8
    figure = bootstrap_spearman([1, 2, 3, 4], [1, 3, 2, 4], ["a", "b", "c", "d"], n_boot=50)
    assert figure.value == pytest.approx(0.8)
    assert (figure.low, figure.high) == pytest.approx((0.8, 0.8))


def test_spearman_of_setting_medians():
    groups = ["a", "a", "b", "b", "c", "c"]
    x = [1, 2, 3, 4, 5, 6]
    y = [6, 5, 4, 3, 2, 1]
    assert bootstrap_spearman(x, y, groups, level="setting", n_boot=50).value == pytest.approx(-1.0)
    # within a setting the order is reversed, between settings it agrees: the medians see +1
    y2 = [2, 1, 4, 3, 6, 5]
    assert bootstrap_spearman(x, y2, groups, level="setting", n_boot=50).value == pytest.approx(1.0)
    assert bootstrap_spearman(x, y2, groups, level="model", n_boot=50).value < 1.0


def test_arguments_are_checked_with_clear_messages():
    with pytest.raises(ValueError, match="quality must not contain NaN"):
        pick_regret([1.0, 2.0], [0.1, NAN])
    with pytest.raises(ValueError, match=r"scores must have one entry per model \(2\), got 3"):
        pick_regret([1.0, 2.0, 3.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="groups must give one setting per model"):
        bootstrap_regret([1.0, 2.0], [0.1, 0.2], ["a"])
    with pytest.raises(ValueError, match="level must be 'model' or 'setting'"):
        bootstrap_regret([1.0, 2.0], [0.1, 0.2], ["a", "a"], level="trial")
    with pytest.raises(ValueError, match="members must index models 0..1"):
        random_regret([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="square"):
        model_centrality(np.zeros((2, 3)))
