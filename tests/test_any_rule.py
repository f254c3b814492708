"""The multi-defect rule: bad if any of a few components passes its threshold.

Hand-computed cases for the fit and the verdicts, a brute-force check of the greedy cut
search, the cross-validated number of rules, serialisation, input checks, the label
efficiency table, and the served answer that names each rule and which fired.
"""

from __future__ import annotations

import io
import json
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.pyfunc.scoring_server import predictions_to_json

from tubervae.classify import (
    DIRECTIONS,
    METHODS,
    AnyOfRule,
    ThresholdRule,
    fit_any_of_rule,
    fit_threshold_rule,
    greedy_any_of_rule,
    label_efficiency,
    rank_threshold_rules,
)
from tubervae.models.encoding import encode
from tubervae.models.nets import VAE
from tubervae.runs import quality_model
from tubervae.runs.quality_model import TuberQualityModel, quality_answer

SIZE = 16


def two_defects():
    """8 good; 4 bad with spots (z0 10..13) and 4 green (z1 10..13), each looking good on the other component.

    Any single cut catches at most one defect: 4/8 bad, all good, balanced accuracy 0.75.
    The gaps between the good values (0..3) and each defect are (3 + 10) / 2 = 6.5.
    """
    low = np.array([0.0, 1.0, 2.0, 3.0])
    z0 = np.r_[low, low, low + 10, low]
    z1 = np.r_[low, low[::-1], low, low + 10]
    bad = np.r_[np.zeros(8, bool), np.ones(8, bool)]
    return np.c_[z0, z1], bad


def two_defects_and_noise():
    """12 good (0-11), 5 spotty (12-16: z0 in [3, 4]), 4 green (17-20: z1 in [3, 4]), one bad tuber (21)
    that looks good on z0 and z1, and z2 noise except for that tuber (5) and one good tuber (0: 6).

    Elsewhere the values lie in [-1, 1], the bad ones between good ones and low, so that no cut in
    there pays: z0 alone reaches 0.75, z1 alone 0.7. Trained on everything, a cut z2 > 3 fires the
    odd bad and the odd good tuber: bad recall 10/10, good 11/12, balanced accuracy 23/24 > 19/20
    with two cuts, so three greedy rules use z2. In cross-validation a third cut exists only when
    the odd bad tuber is in the training folds; its threshold is then above 2, so on held-out
    photos it can only fire the odd good tuber: it never helps, and two rules win.
    """
    goods = np.linspace(-1, 1, 12)
    between = (goods[:-1] + goods[1:]) / 2  # midpoints, lowest first
    latents = np.zeros((22, 3))
    bad = np.r_[np.zeros(12, bool), np.ones(10, bool)]
    latents[:12, 0] = goods
    latents[12:17, 0] = np.linspace(3, 4, 5)
    latents[17:22, 0] = between[:5]
    latents[:12, 1] = goods[::-1]
    latents[17:21, 1] = np.linspace(3, 4, 4)
    latents[np.r_[12:17, 21], 1] = between[:6]
    ordinary = [1, 12, 2, 13, 3, 14, 4, 15, 5, 16, 6, 17, 7, 18, 8, 19, 9, 20, 10, 11]
    latents[ordinary, 2] = np.linspace(-1, 1, 20)
    latents[21, 2], latents[0, 2] = 5.0, 6.0
    return latents, bad


# ---------------------------------------------------------------- fitting


def test_the_or_rule_finds_both_defects_where_one_cut_cannot():
    latents, bad = two_defects()
    assert rank_threshold_rules(latents, bad)["balanced_accuracy"].max() == 0.75
    assert fit_threshold_rule(latents, bad).train_balanced_accuracy == 0.75

    rule = fit_any_of_rule(latents, bad)
    assert rule.components == (0, 1)  # the single cuts tie; the ranking's AUC tie is broken by index
    assert [r.direction for r in rule.rules] == ["bad_if_above", "bad_if_above"]
    assert [r.threshold for r in rule.rules] == [6.5, 6.5]
    assert [r.train_balanced_accuracy for r in rule.rules] == [0.75, 0.75]  # each alone
    assert rule.train_balanced_accuracy == 1.0
    assert np.array_equal(rule.predict(latents), bad)
    # k = 2 generalises perfectly; k = 1 misses a defect in every fold; k = 3 finds no further cut: a tie.
    assert len(rule.cv_balanced_accuracy) == 3
    assert rule.cv_balanced_accuracy[0] < 1.0 == rule.cv_balanced_accuracy[1] == rule.cv_balanced_accuracy[2]
    assert rule.scales == pytest.approx((latents[:, 0].std(), latents[:, 1].std()))
    # New photos: spots alone, greening alone, both, neither.
    assert rule.predict([[20.0, 0.0], [0.0, 20.0], [20.0, 20.0], [1.0, 1.0]]).tolist() == [True, True, True, False]
    assert rule.describe() == "bad if z0 > 6.5 or z1 > 6.5"


def test_a_noise_component_is_not_added_when_cross_validation_says_it_does_not_help():
    latents, bad = two_defects_and_noise()
    greedy = greedy_any_of_rule(latents, bad, max_rules=3)
    assert greedy.components == (0, 1, 2) and greedy.rules[2].direction == "bad_if_above"
    assert greedy.train_balanced_accuracy == pytest.approx(23 / 24)
    assert greedy_any_of_rule(latents, bad, max_rules=2).train_balanced_accuracy == pytest.approx(19 / 20)
    assert greedy.cv_balanced_accuracy == ()
    for seed in range(5):  # whichever folds: the third cut never helps on held-out photos
        rule = fit_any_of_rule(latents, bad, max_rules=3, random_state=seed)
        assert rule.components == (0, 1), seed
        one, two, three = rule.cv_balanced_accuracy
        assert one < two and three <= two, seed
        assert rule.train_balanced_accuracy == pytest.approx(19 / 20)
        assert rule.rules == greedy.rules[:2]


def test_one_rule_is_the_thesis_rule():
    latents, bad = two_defects_and_noise()
    thesis = fit_threshold_rule(latents, bad, components=[0, 2])
    rule = fit_any_of_rule(latents, bad, components=[0, 2], max_rules=1)
    assert rule.rules == (thesis,) and len(rule.cv_balanced_accuracy) == 1
    assert rule.train_balanced_accuracy == thesis.train_balanced_accuracy
    single = AnyOfRule.from_threshold_rule(thesis)
    assert np.array_equal(single.decision_function(latents), thesis.decision_function(latents))
    assert np.array_equal(single.predict(latents), thesis.predict(latents))


def brute_force_greedy(latents, bad, candidates, max_rules):
    """Greedy OR by trying every midpoint of every unused candidate in both directions, counting exactly.

    Balanced accuracy as a Fraction; ties go to the widest gap in units of the component's standard
    deviation, then the lower component, then bad_if_above, then the lower threshold.
    """
    n_bad, n_good = int(bad.sum()), int((~bad).sum())

    def ba(pred):
        return Fraction(int((pred & bad).sum()), 2 * n_bad) + Fraction(int((~pred & ~bad).sum()), 2 * n_good)

    std = latents.std(axis=0)
    scales = np.where(std > 0, std, 1.0)
    rules = [fit_threshold_rule(latents, bad, components=candidates)]
    while len(rules) < max_rules:
        fired = np.column_stack([r.predict(latents) for r in rules]).any(axis=1)
        best = None
        for c in sorted(set(candidates) - {r.component for r in rules}):
            values = np.unique(latents[~fired, c])
            for lo, hi in zip(values[:-1], values[1:]):
                threshold = lo + (hi - lo) / 2
                for d, direction in enumerate(DIRECTIONS):
                    new = latents[:, c] > threshold if direction == "bad_if_above" else latents[:, c] < threshold
                    key = (ba(fired | new), (hi - lo) / scales[c], -c, -d, -threshold)
                    if best is None or key > best[0]:
                        best = (key, c, direction, threshold)
        if best is None or best[0][0] <= ba(fired):
            break
        rules.append(ThresholdRule(best[1], best[3], best[2], 0.0))
    return rules


def random_problem(seed):
    """A small problem of two defects on random components, and many ties.

    Two thirds of the problems hold small integers on an irregular grid (exact ties in counts,
    unequal gaps), one third rounded normals; every third has, as its last component, a copy of
    another one times 2 (exactly: same counts, same gaps in units of the scale), whose cuts tie
    with the original's. Odd seeds have as many bad as good images (ties of gains are common),
    even seeds 30 % bad per defect with 15 % of the labels flipped.
    """
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(10, 31)), int(rng.integers(3, 6))
    grid = np.array([0.0, 1.0, 3.0, 4.0, 8.0, 9.0, 15.0])
    latents = rng.choice(grid, size=(n, d)) if seed % 3 else np.round(rng.normal(size=(n, d)), 1)
    if seed % 3 == 2:
        latents[:, -1] = 2.0 * latents[:, int(rng.integers(d - 1))]
    a, b = rng.choice(d, size=2, replace=False)
    if seed % 2:  # as many bad as good (n even): equal counts make ties of gains
        latents = latents[: n - n % 2]
        defect = np.maximum(latents[:, a] / latents[:, a].std(), -latents[:, b] / latents[:, b].std())
        bad = np.argsort(np.argsort(defect + rng.normal(0, 0.5, len(latents)))) >= len(latents) // 2
    else:
        bad = (latents[:, a] > np.quantile(latents[:, a], 0.7)) | (latents[:, b] < np.quantile(latents[:, b], 0.3))
        bad ^= rng.random(n) < 0.15
        bad[:2] = [True, False]
    size = d if seed % 3 == 2 else int(rng.integers(2, d + 1))
    candidates = sorted(rng.choice(d, size=size, replace=False).tolist())
    return latents, bad, candidates


@pytest.mark.parametrize("seed", range(60))
def test_the_greedy_cut_search_matches_brute_force(seed):
    latents, bad, candidates = random_problem(seed)
    expected = brute_force_greedy(latents, bad, candidates, 3)
    got = greedy_any_of_rule(latents, bad, components=candidates, max_rules=3)
    assert [(r.component, r.direction) for r in got.rules] == [(r.component, r.direction) for r in expected]
    assert [r.threshold for r in got.rules] == pytest.approx([r.threshold for r in expected])
    pred = got.predict(latents)
    exact = Fraction(int((pred & bad).sum()), int(bad.sum())) + Fraction(int((~pred & ~bad).sum()), int((~bad).sum()))
    assert got.train_balanced_accuracy == pytest.approx(float(exact / 2))
    for r in got.rules:  # each member's figure is its own
        alone = r.predict(latents)
        assert r.train_balanced_accuracy == pytest.approx((alone[bad].mean() + (~alone[~bad]).mean()) / 2)


def test_ties_go_to_the_widest_gap_then_the_lower_component_then_bad_if_above():
    """4 good, 4 bad; z0 > 2.5 catches two bad tubers (0.75, the best single cut). Of what is left,
    z1 has a bad tuber at each end, the good ones at 1 and 2: either end's cut gains the same."""
    z0 = [0.0, 0.0, 0.0, 0.0, 5.0, 5.0, 0.0, 0.0]
    bad = np.r_[np.zeros(4, bool), np.ones(4, bool)]

    def second_rule(low_end, twice_z1=False):
        z1 = np.array([1.0, 1.0, 2.0, 2.0, 1.5, 1.5, low_end, 3.0])
        latents = np.c_[z0, z1, 2 * z1] if twice_z1 else np.c_[z0, z1]
        rule = greedy_any_of_rule(latents, bad, max_rules=2)
        assert rule.rules[0] == fit_threshold_rule(latents, bad) and rule.rules[0].component == 0
        assert len(rule.rules) == 2 and rule.train_balanced_accuracy == 0.875
        return rule.rules[1]

    # Equal gaps (1 -> 0 and 2 -> 3): bad_if_above.
    assert (second_rule(0.0).direction, second_rule(0.0).threshold) == ("bad_if_above", 2.5)
    # The low end further away (gap 2): its cut wins.
    assert (second_rule(-1.0).direction, second_rule(-1.0).threshold) == ("bad_if_below", 0.0)
    # z2 = 2 * z1 has the same cuts with gaps twice as wide, the same in units of its scale: z1 wins.
    assert second_rule(-1.0, twice_z1=True).component == 1


def test_the_fit_is_deterministic_and_small_classes_shrink_the_folds():
    latents, bad = two_defects_and_noise()
    assert fit_any_of_rule(latents, bad, random_state=3) == fit_any_of_rule(latents, bad, random_state=3)
    # 3 good + 3 bad: three folds, still one figure per k.
    few = np.r_[0:3, 12:15]
    assert len(fit_any_of_rule(latents[few], bad[few], n_folds=5).cv_balanced_accuracy) == 3
    # One bad image: no cross-validation, the single best cut.
    one = np.r_[0:12, 12]
    rule = fit_any_of_rule(latents[one], bad[one])
    assert rule.cv_balanced_accuracy == () and rule.rules == (fit_threshold_rule(latents[one], bad[one]),)


# ---------------------------------------------------------------- the rule object


def hand_rule():
    return AnyOfRule(
        (ThresholdRule(2, 0.5, "bad_if_above", 0.7), ThresholdRule(0, -1.0, "bad_if_below", 0.6)),
        scales=(2.0, 0.5),
        train_balanced_accuracy=0.9,
        cv_balanced_accuracy=(0.8, 0.85),
    )


def test_fired_predict_and_score_by_hand():
    rule = hand_rule()
    latents = np.array(
        [
            [0.0, 9.0, 0.0],  # neither: z2 0 <= 0.5, z0 0 >= -1
            [-2.0, 0.0, 1.0],  # both
            [-1.0, 0.0, 0.5],  # on both thresholds: neither (strict)
            [5.0, 0.0, 3.0],  # z2 only
            [-1.5, 0.0, -4.0],  # z0 only
        ]
    )
    fired = rule.fired(latents)
    assert fired.dtype == bool and fired.shape == (5, 2)
    assert fired.tolist() == [[False, False], [True, True], [False, False], [True, False], [False, True]]
    assert rule.predict(latents).tolist() == [False, True, False, True, True]
    # max((z2 - 0.5) / 2, (-1 - z0) / 0.5)
    assert rule.decision_function(latents).tolist() == pytest.approx([-0.25, 2.0, 0.0, 1.25, 1.0])
    assert rule.components == (2, 0)
    assert rule.describe() == "bad if z2 > 0.5 or z0 < -1"


def test_the_rule_round_trips_through_json():
    assert AnyOfRule.from_dict(json.loads(json.dumps(hand_rule().as_dict()))) == hand_rule()
    latents, bad = two_defects_and_noise()
    fitted = fit_any_of_rule(latents, bad)
    fields = json.loads(json.dumps(fitted.as_dict()))
    assert fields["rules"][0]["scale"] == fitted.scales[0] and len(fields["cv_balanced_accuracy"]) == 3
    assert AnyOfRule.from_dict(fields) == fitted


def test_bad_inputs_raise_clear_errors():
    a, b = ThresholdRule(0, 0.0, "bad_if_above", 0.5), ThresholdRule(1, 0.0, "bad_if_below", 0.5)
    cases = [
        (lambda: AnyOfRule((), (), 0.5), "non-empty"),
        (lambda: AnyOfRule((a, "z1 > 0"), (1.0, 1.0), 0.5), "only ThresholdRule"),
        (lambda: AnyOfRule((a, a), (1.0, 1.0), 0.5), r"own component, got components \[0, 0\]"),
        (lambda: AnyOfRule((a, b), (1.0,), 0.5), "scales has 1 values but there are 2 rules"),
        (lambda: AnyOfRule((a,), (0.0,), 0.5), r"scales\[0\] must be a finite number > 0"),
        (lambda: AnyOfRule((a,), (1.0,), 1.5), "train_balanced_accuracy"),
        (lambda: AnyOfRule((a,), (1.0,), 0.5, (0.5, float("nan"))), r"cv_balanced_accuracy\[1\]"),
        (lambda: AnyOfRule.from_dict({"component": 0}), "'rules' list"),
        (lambda: AnyOfRule.from_dict({"rules": [a.as_dict()], "train_balanced_accuracy": 0.5}), r"rules\[0\]\.scale"),
        (lambda: hand_rule().predict(np.zeros((3, 2))), "uses component 2 but latents have only 2"),
        (lambda: hand_rule().fired(np.full((1, 3), np.nan)), "finite"),
    ]
    latents, bad = two_defects()
    cases += [
        (lambda: fit_any_of_rule(latents, bad, max_rules=0), "max_rules"),
        (lambda: fit_any_of_rule(latents, bad, n_folds=1), "n_folds"),
        (lambda: fit_any_of_rule(latents, bad, random_state=-1), "random_state"),
        (lambda: fit_any_of_rule(latents, np.ones(16, bool)), "at least one good and one bad"),
        (lambda: fit_any_of_rule(latents, bad[:-1]), "lengths must match"),
        (lambda: greedy_any_of_rule(latents, bad, components=[2]), "component 2 is out of range"),
        (lambda: greedy_any_of_rule(latents, bad, components=[0, 0]), "must not repeat"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


# ---------------------------------------------------------------- label efficiency


def test_label_efficiency_measures_the_or_rule():
    assert "any_rule" in METHODS
    latents, bad = two_defects_and_noise()
    rng = np.random.default_rng(0)
    train, test = (latents + rng.normal(0, 0.05, latents.shape) for _ in range(2))
    train_bad = test_bad = bad
    table = label_efficiency(
        train, train_bad, test, test_bad, sizes=(6, 20), n_draws=2, methods=("threshold", "any_rule")
    )
    assert list(table["method"].unique()) == ["threshold", "any_rule"] and len(table) == 8
    mean = table.groupby(["method", "n_labels"])["balanced_accuracy"].mean()
    assert mean["any_rule", 20] > mean["threshold", 20]


# ---------------------------------------------------------------- the served answer


def test_the_answer_names_each_rule_and_which_fired():
    mu = np.array([[0.0, 9.0, 0.0, 0.0], [-2.0, 0.0, 1.0, 0.0], [5.0, 0.0, 3.0, 0.0]], np.float32)
    answer = quality_answer(hand_rule(), mu)
    # The one-rule model's columns come first, for its clients.
    assert list(answer.columns) == ["label", "z2", "threshold", "z0", "score", "fired", "rules"]
    assert answer["label"].tolist() == ["good", "bad", "bad"]
    assert answer["threshold"].tolist() == [0.5] * 3
    assert answer["fired"].tolist() == [[], [2, 0], [2]]
    assert answer["score"].tolist() == pytest.approx([-0.25, 2.0, 1.25])
    assert answer.loc[2, "rules"] == [
        {"component": 2, "direction": "bad_if_above", "threshold": 0.5, "value": 3.0, "fired": True},
        {"component": 0, "direction": "bad_if_below", "threshold": -1.0, "value": 5.0, "fired": False},
    ]
    # What the scoring server sends.
    out = io.StringIO()
    predictions_to_json(answer, out)
    sent = json.loads(out.getvalue())["predictions"]
    assert sent[1]["fired"] == [2, 0] and sent[1]["label"] == "bad" and sent[1]["z0"] == -2.0
    assert [r["component"] for r in sent[0]["rules"]] == [2, 0] and sent[0]["fired"] == []
    empty = quality_answer(hand_rule(), np.zeros((0, 4), np.float32))
    assert len(empty) == 0 and list(empty.columns) == list(answer.columns)


def tiny_model(folder, rule):
    torch.manual_seed(0)
    vae = VAE(image_size=SIZE, latent_dim=4)
    config = {"image_size": SIZE, "latent_dim": 4, "crop_fraction": 1.0}
    context = SimpleNamespace(artifacts=quality_model.quality_model_artifacts(folder, vae, config, rule))
    model = TuberQualityModel()
    model.load_context(context)
    return model, context, vae


def test_the_model_serves_the_or_rule_and_loads_an_old_single_rule_file(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(6, SIZE, SIZE, 3), dtype=np.uint8)
    (tmp_path / "new").mkdir()
    _, _, vae = tiny_model(tmp_path / "new", hand_rule())
    mu, _ = encode(vae, images)
    # Thresholds at the medians: some photos fire one rule, some the other.
    rule = AnyOfRule(
        (
            ThresholdRule(1, float(np.median(mu[:, 1])), "bad_if_above", 0.5),
            ThresholdRule(3, float(np.median(mu[:, 3])), "bad_if_below", 0.5),
        ),
        (1.0, 2.0),
        0.5,
    )
    model, context, _ = tiny_model(tmp_path / "new", rule)
    assert model.rule == rule
    answer = model.predict(context, images)
    pd.testing.assert_frame_equal(answer, quality_answer(rule, mu))
    hits = np.c_[mu[:, 1] > rule.rules[0].threshold, mu[:, 3] < rule.rules[1].threshold]
    assert answer["fired"].tolist() == [[c for c, hit in zip((1, 3), row) if hit] for row in hits]
    assert hits.sum() == 6 and answer["label"].tolist() == np.where(hits.any(axis=1), "bad", "good").tolist()

    # A model directory written before: rule.json holds one ThresholdRule's fields.
    single = ThresholdRule(1, float(np.median(mu[:, 1])), "bad_if_above", 0.6)
    (tmp_path / "old").mkdir()
    model, context, _ = tiny_model(tmp_path / "old", rule)
    (tmp_path / "old" / "rule.json").write_text(json.dumps(single.as_dict()))
    model.load_context(context)
    assert model.rule == AnyOfRule.from_threshold_rule(single)
    answer = model.predict(context, images)
    assert list(answer.columns)[:3] == ["label", "z1", "threshold"]
    assert answer["label"].tolist() == np.where(single.predict(mu), "bad", "good").tolist()
    assert answer["score"].to_numpy() == pytest.approx(single.decision_function(mu))
    # A single ThresholdRule handed to the writer is stored as the one-rule AnyOfRule.
    (tmp_path / "single").mkdir()
    model, _, _ = tiny_model(tmp_path / "single", single)
    assert model.rule == AnyOfRule.from_threshold_rule(single)


def test_job_score_is_the_best_cross_validated_figure_over_the_informative_components():
    from tubervae.classify.any_rule import job_score

    rng = np.random.default_rng(0)
    bad = np.arange(40) % 2 == 1
    z = np.column_stack([bad * 3.0 + rng.normal(0, 0.1, 40), rng.normal(0, 1, 40)])  # z0 tells bad apart
    assert job_score(z, bad, [1.0, 1.0]) == pytest.approx(1.0)
    # only z1 (noise) is informative: the rule may not use z0, so it scores near chance
    assert job_score(z, bad, [0.0, 1.0]) < 0.8
    # no informative component at all: every component is a candidate again
    assert job_score(z, bad, [0.0, 0.0]) == pytest.approx(1.0)


def test_label_efficiency_fits_the_any_rule_with_the_settings_it_is_given(monkeypatch):
    from tubervae.classify import efficiency

    latents, bad = two_defects_and_noise()
    rng = np.random.default_rng(0)
    train, test = (latents + rng.normal(0, 0.05, latents.shape) for _ in range(2))
    kwargs = dict(sizes=(20,), n_draws=2, methods=("threshold", "any_rule"))
    one_cut = label_efficiency(train, bad, test, bad, max_rules=1, **kwargs)
    # One cut allowed: the any_rule is the threshold rule, draw by draw; three: it catches both defects.
    by_method = one_cut.set_index(["method", "draw"])["balanced_accuracy"]
    assert by_method["any_rule"].tolist() == by_method["threshold"].tolist()
    three = label_efficiency(train, bad, test, bad, max_rules=3, **kwargs).set_index(["method", "draw"])
    assert three["balanced_accuracy"]["any_rule"].mean() > by_method["any_rule"].mean()
    seen = []
    real = efficiency.fit_any_of_rule
    monkeypatch.setattr(efficiency, "fit_any_of_rule", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    label_efficiency(train, bad, test, bad, max_rules=2, n_folds=3, **kwargs)
    assert [(kw["max_rules"], kw["n_folds"]) for kw in seen] == [(2, 3)] * 2
    with pytest.raises(ValueError, match="n_folds"):
        label_efficiency(train, bad, test, bad, n_folds=1, **kwargs)


# ---------------------------------------------------------------- a model's rules, fitted one way


def test_the_candidates_are_the_informative_components_or_all_of_them():
    from tubervae.classify import candidate_components

    assert candidate_components([0.5, 0.0, 0.02], 0.01) == [0, 2]
    assert candidate_components([0.0, 0.01, 0.0], 0.01) == [0, 1, 2]  # none above the cut-off: all
    assert candidate_components([np.nan, 1.0]) == [1]
    with pytest.raises(ValueError, match="kl must be a non-empty 1-D array"):
        candidate_components([[1.0]])


def test_fit_rules_is_the_one_cut_and_the_served_rule_over_the_candidates():
    from tubervae.classify import RuleSettings, fit_rules, fit_served_rule
    from tubervae.config import ClassifyConfig, Params, UdrConfig

    latents, bad = two_defects_and_noise()
    kl = np.array([1.0, 1.0, 0.0])  # the noise component is not informative
    settings = RuleSettings(kl_threshold=0.01, max_rules=2, n_folds=3, random_state=4)
    rules = fit_rules(latents, bad, kl, settings)
    assert rules.candidates == [0, 1]
    assert rules.threshold == fit_threshold_rule(latents, bad, components=[0, 1])
    expected = fit_any_of_rule(latents, bad, components=[0, 1], max_rules=2, n_folds=3, random_state=4)
    assert rules.any_rule == expected == fit_served_rule(latents, bad, kl, settings)
    # A guided model's one cut is on its guided component; its served rule still on the candidates.
    guided = fit_rules(latents, bad, kl, settings, threshold_components=[1])
    assert guided.threshold.component == 1 and guided.any_rule == expected
    params = Params(udr=UdrConfig(kl_threshold=0.5), classify=ClassifyConfig(max_rules=2, cv_folds=3, seed=4))
    assert RuleSettings.from_params(params) == RuleSettings(0.5, 2, 3, 4)
