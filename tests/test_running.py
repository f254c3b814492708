"""What both training loops share as their steps run (tubervae.training.running)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tubervae.config import TrainConfig
from tubervae.training.running import NonFiniteLossError, RunningMeans, boundary, check_finite_terms
from tubervae.training.setting import Setting


def test_step_boundaries_by_hand():
    """log every 4, checkpoint every 6, snapshot every 5, 12 steps in segments ending at 7 and 12."""
    cfg = TrainConfig(steps=12, log_every=4, checkpoint_every=6, snapshot_every=5)
    seen = {step: boundary(step, 7 if step <= 7 else 12, cfg) for step in range(1, 13)}
    assert [s for s, b in seen.items() if b.log] == [4, 7, 8, 12]  # 7: the first segment's end
    assert [s for s, b in seen.items() if b.checkpoint] == [6, 7, 12]
    assert [s for s, b in seen.items() if b.window] == [4, 6, 7, 8, 12]
    assert [s for s, b in seen.items() if b.snapshot] == [5, 10]
    assert not any(boundary(s, 12, TrainConfig(steps=12, snapshot_every=0)).snapshot for s in range(1, 13))


def one_models_terms(step: int) -> dict:
    """A loss object's dict for one model at `step`: scalar terms and a KL per component (d = 2)."""
    return {
        "loss": torch.tensor(float(step), dtype=torch.float64),  # a float64 model's terms are averaged in float32
        "rec": torch.tensor(10.0 * step),
        "kl_per_component": torch.tensor([1.0, 2.0 * step]),
    }


def test_running_means_of_one_model_by_hand():
    running = RunningMeans()
    for step in (1, 2, 3):
        running.add(one_models_terms(step))
    means, first = running.close(3)
    assert running.names == ["loss", "rec", "kl/z0", "kl/z1"]
    assert means.dtype == np.float32 and means.tolist() == [2.0, 20.0, 1.0, 4.0]
    assert first == 1
    running.add(one_models_terms(4))  # a new window: steps 4..4
    means, first = running.close(4)
    assert means.tolist() == [4.0, 40.0, 1.0, 8.0] and first == 4


def test_running_means_of_a_fused_batch_are_each_models_own():
    """Terms with a leading axis of G models (a vmapped loss) give one row per model: each the row that
    model's terms alone give, as the plain loop would average them."""
    alone = [RunningMeans(), RunningMeans()]
    fused = RunningMeans()
    for step in (1, 2):
        per_model = [one_models_terms(step), {k: v * 3 for k, v in one_models_terms(step).items()}]
        for running, terms in zip(alone, per_model):
            running.add(terms)
        fused.add({k: torch.stack([t[k] for t in per_model]) for k in per_model[0]})
    means, first = fused.close(7)
    assert means.shape == (2, 4) and first == 6
    assert fused.names == alone[0].names
    assert np.array_equal(means, np.stack([running.close(7)[0] for running in alone]))


def test_non_finite_terms_name_the_terms_the_model_and_the_steps():
    setting = Setting("beta_vae", 4.0)
    check_finite_terms(["loss", "kl/z0"], np.array([1.0, 2.0]), setting, 0, 1, 5)  # finite: passes
    with pytest.raises(NonFiniteLossError, match=r"beta_vae 4 seed 3: non-finite \['kl/z0'\] between steps 6 and 10"):
        check_finite_terms(["loss", "kl/z0"], np.array([1.0, np.nan]), setting, 3, 6, 10)
