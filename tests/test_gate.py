"""The promotion gate: cross-validated balanced accuracy with an interval, chance, the champion, force."""

import numpy as np
import pytest

from tubervae.classify import RuleSettings, fit_served_rule, fit_threshold_rule
from tubervae.classify.gate import (
    Estimate,
    bootstrap_interval,
    decide_promotion,
    estimate_rule,
    estimate_served_rule,
    holdout_rows,
    model_card,
    out_of_fold_predictions,
    repeated_folds,
)


def labelled(seed=0, n=60, separation=0.0, d=3):
    """Half good, half bad; component 0 separates them by `separation` standard deviations (0: noise only)."""
    rng = np.random.default_rng(seed)
    bad = np.arange(n) % 2 == 1
    z = rng.normal(size=(n, d))
    z[:, 0] += separation * bad
    return z, bad


def thesis_rule(z, bad):
    return fit_threshold_rule(z, bad)


class Memoriser:
    """A 'rule' that knows the labels of the photos it was fitted on and says good for every other photo."""

    def __init__(self, z, bad):
        self.known = {tuple(row): b for row, b in zip(z, bad)}

    def predict(self, z):
        return np.array([self.known.get(tuple(row), False) for row in z])


def test_holdout_rows_leave_out_the_guided_labels_or_keep_all():
    guide = np.array([True, False, True, False])
    assert holdout_rows(guide, 4).tolist() == [False, True, False, True]
    assert holdout_rows(np.zeros(4, bool), 4).all() and holdout_rows(None, 4).all()
    with pytest.raises(ValueError, match=r"guide must be a boolean array of shape \(3,\)"):
        holdout_rows(np.array([0, 1, 0]), 3)


def test_folds_are_stratified_repeatable_and_differ_between_repeats():
    _, bad = labelled(n=40)
    folds = repeated_folds(bad, n_folds=4, n_repeats=3, random_state=7)
    assert len(folds) == 3 and all(len(r) == 4 for r in folds)
    for repeat in folds:
        held = np.concatenate([h for _, h in repeat])
        assert sorted(held) == list(range(40))  # every photo predicted once per repeat
        assert all(bad[h].sum() == 5 for _, h in repeat)  # 5 bad of 10 in every fold
    again = repeated_folds(bad, n_folds=4, n_repeats=3, random_state=7)
    assert all(np.array_equal(a[1], b[1]) for ra, rb in zip(folds, again) for a, b in zip(ra, rb))
    assert not np.array_equal(folds[0][0][1], folds[1][0][1])
    with pytest.raises(ValueError, match="at least 2 photos of each class"):
        repeated_folds(np.array([True, False, False, False]), n_folds=2, n_repeats=1)


def test_out_of_fold_predictions_never_see_the_photo_they_predict():
    z, bad = labelled(n=30)
    folds = repeated_folds(bad, n_folds=3, n_repeats=2)
    # A memoriser is perfect on what it saw: out of fold it has seen nothing and says good everywhere.
    predictions = out_of_fold_predictions(Memoriser, z, bad, folds)
    assert predictions.shape == (2, 30) and not predictions.any()


def test_a_rule_at_chance_has_an_interval_around_a_half_and_a_real_one_above_it():
    z, bad = labelled(seed=1, n=120, separation=0.0)
    noise = estimate_rule(thesis_rule, z, bad, n_folds=5, n_repeats=3, n_bootstrap=500)
    assert noise.low < 0.5 < noise.high and abs(noise.value - 0.5) < 0.12
    z, bad = labelled(seed=1, n=120, separation=3.0)
    real = estimate_rule(thesis_rule, z, bad, n_folds=5, n_repeats=3, n_bootstrap=500)
    assert 0.8 < real.low <= real.value <= real.high
    assert len(real.per_repeat) == 3 and real.n_labels == 120 and real.n_folds == 5
    assert real.value == pytest.approx(np.mean(real.per_repeat))


def test_the_served_rule_is_estimated_with_its_settings_folds_and_seed():
    z, bad = labelled(seed=2, n=80, separation=1.0, d=4)
    kl = np.array([0.5, 0.0, 0.5, 0.5])  # component 1 is not a candidate
    settings = RuleSettings(kl_threshold=0.01, max_rules=2, n_folds=4, random_state=3)
    served = estimate_served_rule(z, bad, kl, settings, n_repeats=2, n_bootstrap=200)
    by_hand = estimate_rule(
        lambda x, y: fit_served_rule(x, y, kl, settings),
        z,
        bad,
        n_folds=4,
        n_repeats=2,
        n_bootstrap=200,
        random_state=3,
    )
    assert served == by_hand and served.n_folds == 4 and len(served.per_repeat) == 2
    other_seed = estimate_served_rule(z, bad, kl, RuleSettings(0.01, 2, 4, 4), n_repeats=2, n_bootstrap=200)
    assert other_seed.per_repeat != served.per_repeat  # other folds: the seed reaches them


def test_bootstrap_interval_of_perfect_and_constant_predictions_by_hand():
    bad = np.array([True] * 5 + [False] * 5)
    # Perfect in every resample (each resample holds both classes): the interval is the point 1.
    assert bootstrap_interval(bad, bad[None, :], n_bootstrap=50) == (1.0, 1.0)
    # "Always bad" has recall 1 on bad and 0 on good in every resample: 0.5 exactly.
    assert bootstrap_interval(bad, np.ones((2, 10), bool), n_bootstrap=50) == (0.5, 0.5)
    with pytest.raises(ValueError, match="predictions must have 10 columns"):
        bootstrap_interval(bad, np.ones((1, 9), bool))


def chance_figure():
    return Estimate(value=0.52, low=0.44, high=0.60, per_repeat=(0.52,), n_labels=200, n_folds=5)


def strong_figure(value=0.80):
    return Estimate(value=value, low=value - 0.06, high=value + 0.06, per_repeat=(value,), n_labels=200, n_folds=5)


def test_the_gate_refuses_a_rule_at_chance_and_names_both_figures():
    promote, reason = decide_promotion(chance_figure(), strong_figure(0.65), force=False)
    assert not promote
    assert "not promoted" in reason and "lower end 0.440 is not above chance (0.5)" in reason
    assert "below the champion's 0.650" in reason
    assert "0.520 [0.440, 0.600]" in reason and "champion 0.650 [0.590, 0.710]" in reason
    # With no champion at all a rule at chance is still refused.
    promote, reason = decide_promotion(chance_figure(), None, force=False)
    assert not promote and "no champion to compare with" in reason


def test_a_challenger_that_beats_the_champion_is_promoted_and_one_below_it_is_not():
    promote, reason = decide_promotion(strong_figure(0.80), strong_figure(0.70), force=False)
    assert promote and reason.startswith("promoted") and "0.800" in reason and "0.700" in reason
    promote, _ = decide_promotion(strong_figure(0.70), strong_figure(0.70), force=False)
    assert promote  # a tie is not below the champion
    promote, reason = decide_promotion(strong_figure(0.69), strong_figure(0.70), force=False)
    assert not promote and "below the champion's 0.700" in reason and "chance" not in reason.split(";")[0]
    assert decide_promotion(strong_figure(0.60), None, force=False)[0]


def test_forced_promotion_says_it_was_forced_and_what_the_gate_would_have_done():
    promote, reason = decide_promotion(chance_figure(), strong_figure(0.7), force=True)
    assert promote and reason.startswith("forced") and "would have refused" in reason
    promote, reason = decide_promotion(strong_figure(), None, force=True)
    assert promote and reason.startswith("forced") and "would have promoted" in reason
    with pytest.raises(TypeError, match="force must be a bool"):
        decide_promotion(strong_figure(), None, force="yes")


def test_a_score_without_chance_level_is_judged_against_the_champion_only():
    udr = Estimate(value=0.4, name="UDR")
    assert decide_promotion(udr, Estimate(value=0.3, name="UDR"), force=False, chance=None)[0]
    promote, reason = decide_promotion(udr, Estimate(value=0.5, name="UDR"), force=False, chance=None)
    assert not promote and "challenger UDR 0.400" in reason
    # Without an interval a score cannot show it beats chance.
    promote, reason = decide_promotion(udr, None, force=False)
    assert not promote and "no interval" in reason


def test_model_card_lists_each_section():
    card = model_card("tuber-quality v3", {"Decision": {"promoted": False, "reason": "at chance"}})
    assert card.splitlines() == [
        "# tuber-quality v3",
        "",
        "## Decision",
        "- **promoted**: False",
        "- **reason**: at chance",
    ]
