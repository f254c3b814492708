import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import guided_processed, separable_latents
from tubervae.classify import (
    ThresholdRule,
    binary_metrics,
    fit_gradient_boosting,
    fit_logistic,
    fit_pixel_cnn,
    fit_threshold_rule,
    label_efficiency,
    rank_threshold_rules,
    summarise_label_efficiency,
    validation_rows,
)
from tubervae.models.pixel_cnn import pixel_cnn


def brute_force_best(values, bad):
    """O(n^2): try every midpoint in both directions, count directly."""
    unique = np.unique(values)
    cuts = (unique[:-1] + unique[1:]) / 2
    best = 0.5
    for t in cuts:
        for pred in (values > t, values < t):
            recall_bad = np.mean(pred[bad])
            recall_good = np.mean(~pred[~bad])
            best = max(best, (recall_bad + recall_good) / 2)
    return best


# ---------------------------------------------------------------- threshold rules


def test_known_best_component_ranks_first_with_cut_in_the_gap():
    latents, bad = separable_latents()
    table = rank_threshold_rules(latents, bad)
    assert list(table.columns) == ["component", "direction", "threshold", "balanced_accuracy", "roc_auc"]
    assert sorted(table["component"]) == [0, 1, 2, 3]
    top = table.iloc[0]
    assert top["component"] == 2
    assert top["direction"] == "bad_if_above"
    assert top["balanced_accuracy"] == 1.0
    assert top["roc_auc"] == 1.0
    gap_low, gap_high = latents[~bad, 2].max(), latents[bad, 2].min()
    assert gap_low < top["threshold"] < gap_high
    # The widest gap is the only perfect cut, so the threshold is its midpoint.
    assert top["threshold"] == pytest.approx((gap_low + gap_high) / 2)
    assert np.all(np.diff(table["balanced_accuracy"]) <= 0)


def test_flipped_sign_gives_the_other_direction():
    latents, bad = separable_latents()
    rule = fit_threshold_rule(-latents, bad)
    assert rule.component == 2
    assert rule.direction == "bad_if_below"
    assert rule.train_balanced_accuracy == 1.0
    assert -latents[bad, 2].min() < rule.threshold < -latents[~bad, 2].max()
    assert np.array_equal(rule.predict(-latents), bad)
    # score is positive exactly for predicted bad and orders bad above good.
    score = rule.decision_function(-latents)
    assert np.all(score[bad] > 0) and np.all(score[~bad] < 0)


def test_ranking_matches_brute_force_and_sklearn_auc_with_ties():
    rng = np.random.default_rng(3)
    latents = np.round(rng.normal(size=(17, 5)), 1)  # rounding creates ties
    bad = rng.random(17) < 0.4
    bad[:2] = [True, False]
    table = rank_threshold_rules(latents, bad).set_index("component")
    for c in range(5):
        assert table.loc[c, "balanced_accuracy"] == pytest.approx(brute_force_best(latents[:, c], bad))
        auc = roc_auc_score(bad, latents[:, c])
        assert table.loc[c, "roc_auc"] == pytest.approx(max(auc, 1 - auc))
        # The reported cut achieves the reported balanced accuracy.
        rule = ThresholdRule(c, table.loc[c, "threshold"], table.loc[c, "direction"], 0.0)
        pred = rule.predict(latents)
        achieved = (np.mean(pred[bad]) + np.mean(~pred[~bad])) / 2
        assert achieved == pytest.approx(table.loc[c, "balanced_accuracy"])


def test_ties_in_balanced_accuracy_are_broken_by_auc_then_index():
    bad = np.array([False, False, False, True, True, True])
    # Hand counts: x and its copy cut best at 1.5 (bad 3/3, good 2/3 -> 5/6), AUC 6/9;
    # y has the same best cut and 5/6 but AUC 7/9; `perfect` separates (1, AUC 1).
    x = np.array([0.0, 1.0, 5.0, 2.0, 3.0, 4.0])
    y = np.array([0.0, 1.0, 3.5, 2.0, 3.0, 4.0])
    perfect = np.arange(6.0)
    table = rank_threshold_rules(np.c_[x, perfect, y, x], bad)
    assert list(table["component"]) == [1, 2, 0, 3]
    assert table["balanced_accuracy"].tolist() == pytest.approx([1, 5 / 6, 5 / 6, 5 / 6])
    assert table["roc_auc"].tolist() == pytest.approx([1, 7 / 9, 6 / 9, 6 / 9])


def test_components_subset_and_constant_component():
    latents, bad = separable_latents()
    latents[:, 0] = 7.0
    table = rank_threshold_rules(latents, bad, components=[0, 3])
    assert set(table["component"]) == {0, 3}
    constant = table.set_index("component").loc[0]
    assert constant["balanced_accuracy"] == 0.5 and constant["roc_auc"] == 0.5
    rule = fit_threshold_rule(latents, bad, components=[0])
    assert not rule.predict(latents).any()


def test_rule_round_trips_through_json():
    latents, bad = separable_latents()
    rule = fit_threshold_rule(latents, bad)
    assert ThresholdRule.from_dict(json.loads(json.dumps(rule.as_dict()))) == rule


# ---------------------------------------------------------------- metrics


def test_binary_metrics_against_hand_counts():
    truth = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], bool)  # 6 bad, 4 good
    pred = np.array([1, 1, 1, 1, 0, 0, 1, 0, 0, 0], bool)  # tp 4, fn 2, fp 1, tn 3
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.4, 0.65, 0.1, 0.3, 0.4])
    m = binary_metrics(truth, pred, score)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["balanced_accuracy"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    assert m["f1_bad"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(truth, score))
    assert (m["n"], m["n_bad"], m["n_good"]) == (10, 6, 4)
    # Majority of these labels is bad: "always bad" scores 6/10, balanced 1/2.
    assert m["majority_label"] is True
    assert m["majority_accuracy"] == pytest.approx(0.6)
    assert m["majority_balanced_accuracy"] == 0.5
    json.dumps(m)  # plain types only


def test_majority_baseline_uses_training_majority_when_given():
    truth = np.array([1, 1, 1, 0, 0], bool)
    m = binary_metrics(truth, truth, majority_label=False)
    assert m["majority_label"] is False
    assert m["majority_accuracy"] == pytest.approx(2 / 5)
    assert m["balanced_accuracy"] == 1.0 and m["f1_bad"] == 1.0
    # A test set with more good than bad: the default majority is good.
    assert binary_metrics(~truth, ~truth)["majority_accuracy"] == pytest.approx(3 / 5)


def test_roc_auc_is_none_without_score_or_with_one_class():
    truth = np.array([True, True, True])
    pred = np.array([True, False, True])
    m = binary_metrics(truth, pred, score=[0.9, 0.1, 0.8])
    assert m["roc_auc"] is None
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)  # only the bad class is present
    assert binary_metrics([True, False], [True, True])["roc_auc"] is None


def test_binary_metrics_one_class_and_empty_positive_cases_by_hand():
    """The sklearn-backed figures keep the documented edge cases, without warnings."""
    all_bad = np.array([True, True, True, True])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics(all_bad, [True, False, False, True], majority_label=False)
        # Only bad is present: balanced accuracy is the bad recall 2/4; "always good" gets 0 of it.
        assert m["confusion_matrix"] == [[0, 0], [2, 2]]
        assert m["balanced_accuracy"] == 0.5 and m["accuracy"] == 0.5
        assert m["f1_bad"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 2))
        assert (m["majority_accuracy"], m["majority_balanced_accuracy"]) == (0.0, 0.0)
        # Same labels, default majority (bad): the constant baseline is perfect on this set.
        m = binary_metrics(all_bad, all_bad)
        assert m["confusion_matrix"] == [[0, 0], [0, 4]]
        assert m["balanced_accuracy"] == 1.0 and m["f1_bad"] == 1.0
        assert m["majority_label"] is True and m["majority_balanced_accuracy"] == 1.0
        # No bad image and no bad prediction: F1 with bad positive is 0.0 by definition here.
        m = binary_metrics(~all_bad, ~all_bad, score=[0.1, 0.2, 0.3, 0.4])
        assert m["confusion_matrix"] == [[4, 0], [0, 0]]
        assert m["f1_bad"] == 0.0 and m["balanced_accuracy"] == 1.0 and m["roc_auc"] is None
        assert m["majority_label"] is False and m["majority_balanced_accuracy"] == 1.0
    json.dumps(m)


def test_binary_metrics_validates_lengths():
    with pytest.raises(ValueError, match="bad_pred has 2 labels"):
        binary_metrics([True, False, True], [True, False])
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([0, 2], [0, 1])


# ---------------------------------------------------------------- learned classifiers


@pytest.mark.parametrize("fit", [fit_logistic, fit_gradient_boosting])
def test_learned_classifiers_beat_chance_on_separable_data(fit):
    train, train_bad = separable_latents(seed=1, d=3, component=1)
    test, test_bad = separable_latents(seed=2, d=3, component=1)
    model = fit(train, train_bad, components=[0, 1], random_state=0)
    pred = model.predict(test)
    assert pred.dtype == bool and pred.shape == (40,)
    assert binary_metrics(test_bad, pred)["balanced_accuracy"] > 0.9
    score = model.decision_function(test)
    assert np.all((score >= 0) & (score <= 1))
    assert roc_auc_score(test_bad, score) > 0.9
    with pytest.raises(ValueError, match="fitted on 3"):
        model.predict(test[:, :2])


# ---------------------------------------------------------------- pixel CNN


def bright_dark_images(seed, n=24, side=16):
    rng = np.random.default_rng(seed)
    bad = np.arange(n) % 2 == 1
    level = np.where(bad, 190, 60)[:, None, None, None]
    images = np.clip(level + rng.normal(0, 20, size=(n, side, side, 3)), 0, 255).astype(np.uint8)
    return images, bad


@pytest.mark.slow
def test_pixel_cnn_learns_bright_vs_dark_and_is_deterministic():
    images, bad = bright_dark_images(0)
    test_images, test_bad = bright_dark_images(1)
    state_before = torch.get_rng_state()
    first = fit_pixel_cnn(images, bad, random_state=5, steps=40, batch_size=16, lr=1e-2)
    assert torch.equal(torch.get_rng_state(), state_before)  # global RNG untouched
    assert binary_metrics(test_bad, first.predict(test_images))["balanced_accuracy"] > 0.9
    again = fit_pixel_cnn(images, bad, random_state=5, steps=40, batch_size=16, lr=1e-2)
    assert np.array_equal(first.decision_function(test_images), again.decision_function(test_images))
    for a, b in zip(first.network.parameters(), again.network.parameters()):
        assert torch.equal(a, b)
    other = fit_pixel_cnn(images, bad, random_state=6, steps=1)
    assert not torch.equal(next(first.network.parameters()), next(other.network.parameters()))


def test_pixel_cnn_network_maps_a_batch_to_one_logit_each():
    torch.manual_seed(0)
    network = pixel_cnn()
    out = network(torch.rand(5, 3, 32, 32) - 0.5)
    assert out.shape == (5, 1)
    assert torch.isfinite(out).all()


def test_pixel_cnn_validates_images():
    images, bad = bright_dark_images(0, side=16)
    with pytest.raises(ValueError, match="power of two"):
        fit_pixel_cnn(images[:, :12, :12], bad, steps=1)
    with pytest.raises(TypeError, match="uint8"):
        fit_pixel_cnn(images.astype(np.float32), bad, steps=1)


# ---------------------------------------------------------------- label efficiency


def test_label_efficiency_rows_columns_and_short_class():
    train, train_bad = separable_latents(seed=4, n_good=3, n_bad=27, d=3)
    test, test_bad = separable_latents(seed=5, n_good=10, n_bad=10, d=3)
    table = label_efficiency(
        train,
        train_bad,
        test,
        test_bad,
        sizes=(4, 10),
        n_draws=2,
        methods=("threshold", "logistic", "pixel_cnn"),
        components=[0, 2],
    )
    assert list(table.columns) == ["method", "n_labels", "draw", "balanced_accuracy", "n_good", "n_bad"]
    assert len(table) == 2 * 2 * 2  # pixel_cnn skipped without images
    assert set(table["method"]) == {"threshold", "logistic"}
    small = table[table["n_labels"] == 4]
    assert (small["n_good"] == 2).all() and (small["n_bad"] == 2).all()
    short = table[table["n_labels"] == 10]
    assert (short["n_good"] == 3).all() and (short["n_bad"] == 5).all()
    assert table["balanced_accuracy"].between(0, 1).all()
    # On these 8-label draws noise component 0 separates less well than component 2.
    assert (table.loc[(table["method"] == "threshold") & (table["n_labels"] == 10), "balanced_accuracy"] == 1.0).all()
    again = label_efficiency(
        train,
        train_bad,
        test,
        test_bad,
        sizes=(4, 10),
        n_draws=2,
        methods=("threshold", "logistic"),
        components=[0, 2],
    )
    pd.testing.assert_frame_equal(table, again)

    summary = summarise_label_efficiency(table)
    assert list(summary.columns) == ["method", "n_labels", "mean_balanced_accuracy", "std_balanced_accuracy", "n_draws"]
    assert len(summary) == 4
    row = summary[(summary["method"] == "logistic") & (summary["n_labels"] == 4)].iloc[0]
    values = table[(table["method"] == "logistic") & (table["n_labels"] == 4)]["balanced_accuracy"].to_numpy()
    assert row["mean_balanced_accuracy"] == pytest.approx(values.mean())
    assert row["std_balanced_accuracy"] == pytest.approx(values.std(ddof=1))
    assert row["n_draws"] == 2


def test_label_efficiency_runs_pixel_cnn_when_images_given():
    images, bad = bright_dark_images(0, n=12)
    latents = np.c_[bad.astype(float), np.zeros(12)]
    table = label_efficiency(
        latents,
        bad,
        latents,
        bad,
        train_images=images,
        test_images=images,
        sizes=(6,),
        n_draws=1,
        methods=("pixel_cnn", "gradient_boosting"),
        cnn_steps=2,
    )
    assert list(table["method"]) == ["pixel_cnn", "gradient_boosting"]
    assert (table["n_good"] == 3).all() and (table["n_bad"] == 3).all()


# ---------------------------------------------------------------- validation


def test_single_class_labels_raise():
    latents = np.random.default_rng(0).normal(size=(6, 2))
    one_class = np.ones(6, bool)
    for call in (
        lambda: rank_threshold_rules(latents, one_class),
        lambda: fit_threshold_rule(latents, ~one_class),
        lambda: fit_logistic(latents, one_class),
        lambda: fit_gradient_boosting(latents, one_class),
        lambda: label_efficiency(latents, one_class, latents, one_class, sizes=(4,)),
    ):
        with pytest.raises(ValueError, match="at least one good and one bad"):
            call()
    images, _ = bright_dark_images(0, n=6)
    with pytest.raises(ValueError, match="at least one good and one bad"):
        fit_pixel_cnn(images, one_class, steps=1)


def test_bad_inputs_raise_clear_errors():
    latents, bad = separable_latents()
    with pytest.raises(ValueError, match="lengths must match"):
        rank_threshold_rules(latents, bad[:-1])
    nan = latents.copy()
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite.*row 3"):
        rank_threshold_rules(nan, bad)
    with pytest.raises(ValueError, match="component 4 is out of range"):
        rank_threshold_rules(latents, bad, components=[4])
    with pytest.raises(ValueError, match="2-D"):
        rank_threshold_rules(latents[:, 0], bad)
    with pytest.raises(ValueError, match="direction"):
        ThresholdRule(0, 0.0, "up", 1.0)
    with pytest.raises(ValueError, match="sizes"):
        label_efficiency(latents, bad, latents, bad, sizes=(1,))
    with pytest.raises(ValueError, match="methods"):
        label_efficiency(latents, bad, latents, bad, methods=("forest",))
    images, _ = bright_dark_images(0, n=40)
    with pytest.raises(ValueError, match="given together"):
        label_efficiency(latents, bad, latents, bad, train_images=images)


# --- the rows a model's rule may be validated on ---------------------------------


def test_validation_rows_are_the_holdout_labels_for_a_guided_model_and_all_labels_otherwise():
    guide = np.array([True, False, True, False, False])
    assert validation_rows(guide, True).tolist() == [False, True, False, True, True]
    assert validation_rows(guide, False).tolist() == [True] * 5
    assert validation_rows(np.zeros(0, dtype=bool), True).shape == (0,)
    with pytest.raises(ValueError, match="labelled_guide_mask must be a 1-D boolean array"):
        validation_rows(np.array([1, 0]), True)
    with pytest.raises(TypeError, match="guided must be a bool, got 'yes'"):
        validation_rows(guide, "yes")


def test_the_classify_stage_gives_a_guided_champions_rules_only_its_holdout_labels(tmp_path):
    from tubervae.stages import classify as stage

    splits, guide, meta, config = guided_processed(tmp_path)
    plain = stage.labelled_photos(tmp_path, config, meta)
    guided = stage.labelled_photos(tmp_path, {**config, "guided_component": 0}, meta)
    assert plain.guided_component is None and guided.guided_component == 0
    # The rules of every champion are fitted on the holdout labels (the rows no guidance head saw).
    for photos in (plain, guided):
        assert len(photos.y_lab) == 12
        np.testing.assert_array_equal(photos.holdout, ~guide)
        np.testing.assert_array_equal(photos.x_lab[photos.holdout], splits["labelled"][0][~guide])
        np.testing.assert_array_equal(photos.y_lab[photos.holdout], splits["labelled"][1][~guide] == 1)
