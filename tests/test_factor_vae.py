"""The FactorVAE score (`tubervae.evaluation.factor_vae`): perfect codes and collapsed ones."""

import numpy as np
import pytest

from conftest import METRIC_ROWS as N
from tubervae.evaluation.factor_vae import factor_vae_score


def test_factor_vae_of_discrete_factors_copied_into_codes_is_one():
    # Holding a level fixed leaves its copy with zero variance and the other copy varying:
    # every vote goes to the right component.
    factors = np.column_stack([np.repeat(np.arange(3), 40), np.tile(np.arange(4), 30)]).astype(float)
    result = factor_vae_score(factors, factors, random_state=0)
    assert result["factorvae_train_accuracy"] == 1.0
    assert result["factorvae_eval_accuracy"] == 1.0
    assert result["factorvae_num_active"] == 2 and result["factorvae_chance"] == 0.5


@pytest.mark.slow
def test_factor_vae_with_only_collapsed_components_scores_zero(metric_codes):
    factors, _, _, _ = metric_codes
    collapsed = np.full((N, 3), 0.3) + 1e-4 * np.random.default_rng(0).standard_normal((N, 3))
    result = factor_vae_score(collapsed, factors, random_state=0)
    assert result["factorvae_num_active"] == 0
    assert result["factorvae_eval_accuracy"] == 0.0
