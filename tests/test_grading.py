"""What the classify stage fits from arrays (classify/grading.py): the rules on a guided champion's latents and
the label-efficiency table with the configured rule settings."""

import dataclasses

import pandas as pd
import pytest
import torch

from conftest import guided_processed, separable_latents
from tubervae.stages import classify as stage


@pytest.mark.slow
def test_the_classify_stage_reads_a_guided_champion_through_its_guided_component(tmp_path):
    from tubervae.classify import grading
    from tubervae.config import ClassifyConfig, Params
    from tubervae.models.nets import VAE

    splits, _, meta, config = guided_processed(tmp_path)
    guided = stage.labelled_photos(tmp_path, {**config, "guided_component": 0}, meta)
    torch.manual_seed(0)
    params = dataclasses.replace(Params(), classify=ClassifyConfig(label_sizes=[6], n_draws=1, cnn_steps=2))
    fitted = grading.fit(VAE(image_size=16, latent_dim=3), guided, splits["udr_probe"][0], params)
    assert fitted.threshold_rule.component == 0 and len(fitted.z_lab) == 12


def test_the_classify_stage_measures_label_efficiency_with_the_configured_rule_settings(monkeypatch):
    """classify.max_rules and cv_folds reach the any_rule of the label-efficiency table, not the defaults."""
    from tubervae.classify import grading
    from tubervae.config import ClassifyConfig

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return pd.DataFrame({"method": ["any_rule"], "n_labels": [4], "balanced_accuracy": [1.0]})

    monkeypatch.setattr(grading, "label_efficiency", spy)
    train, train_bad = separable_latents(seed=4, n_good=4, n_bad=4, d=3)
    test, test_bad = separable_latents(seed=5, n_good=4, n_bad=4, d=3)
    cfg = ClassifyConfig(max_rules=2, cv_folds=3, label_sizes=[4], n_draws=1)
    table = grading.efficiency_table((train, train_bad, None), (test, test_bad, None), [0, 2], cfg)
    assert (seen["max_rules"], seen["n_folds"]) == (2, 3)  # the defaults are 3 and 5
    assert seen["components"] == [0, 2] and seen["sizes"] == (4,) and seen["random_state"] == cfg.seed
    assert table["mean_balanced_accuracy"].tolist() == [1.0]
