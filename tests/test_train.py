"""The training loop (tubervae.training.loop): reproducibility, resuming from its checkpoints, non-finite
losses, damaged or forged checkpoints, and the guided families' head; the setting it trains (training.setting).

Every run here is tiny (conftest.py's tiny training runs): 16×16 images of bright discs (position, radius and
brightness are the factors), a 4-component latent space, batches of 16 and at most 20 steps on one thread.
The train stage and its MLflow run are tested in test_training_run.py, the device choice in test_device.py.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import tubervae.training.setting as setting_module
from conftest import (
    TINY_LATENT,
    TINY_SIZE,
    assert_same_weights,
    guided_discs,
    tiny_cfg,
    train,
)
from tubervae.config import TrainConfig
from tubervae.runs import training_run as stage
from tubervae.training.checkpoints import checkpoint_identity
from tubervae.training.running import NonFiniteLossError
from tubervae.training.setting import Setting

SIZE, LATENT = TINY_SIZE, TINY_LATENT
BETA_4 = Setting("beta_vae", 4.0)

pytestmark = pytest.mark.usefixtures("isolated_training")  # each test tracks into its own folder


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_gives_same_weights_and_another_seed_does_not(data):
    cfg = tiny_cfg(steps=5)
    first = train(data, cfg, seed=0)
    torch.manual_seed(12345)  # the global generator's state before a run must not matter
    torch.rand(7)
    again = train(data, cfg, seed=0)
    other = train(data, cfg, seed=1)

    assert first.step == again.step == 5
    assert_same_weights(first.model.state_dict(), again.model.state_dict())
    np.testing.assert_array_equal(first.latents["mu"], again.latents["mu"])
    assert first.metrics == again.metrics
    differs = [k for k, v in first.model.state_dict().items() if not torch.equal(v, other.model.state_dict()[k])]
    assert differs, "seed 1 trained exactly the weights of seed 0"


def test_bfloat16_training_is_reproducible_and_differs_from_float32(data):
    cfg = tiny_cfg(steps=5, precision="bfloat16")
    first, again = train(data, cfg, seed=0), train(data, cfg, seed=0)
    full = train(data, tiny_cfg(steps=5), seed=0)
    assert_same_weights(first.model.state_dict(), again.model.state_dict())
    weights = first.model.state_dict()
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())  # master weights
    assert any(not torch.equal(v, full.model.state_dict()[k]) for k, v in weights.items())


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])  # bfloat16: native or emulated, on every CPU
def test_interrupted_training_resumes_from_its_checkpoint_to_the_same_weights_and_logs(data, tmp_path, precision):
    cfg = tiny_cfg(steps=6, log_every=2, checkpoint_every=2, precision=precision)  # few steps: bfloat16 may be emulated
    full_logs: list = []
    full = train(data, cfg, checkpoint_path=tmp_path / "full.pt", on_log=lambda m, s: full_logs.append((s, m)))

    class Interrupted(Exception):
        pass

    def stop_at_4(metrics, step):
        if step == 4:  # on_log runs before the step-4 checkpoint: only step 2's exists
            raise Interrupted

    with pytest.raises(Interrupted):
        train(data, cfg, checkpoint_path=tmp_path / "cut.pt", on_log=stop_at_4)
    assert torch.load(tmp_path / "cut.pt", weights_only=True)["step"] == 2

    resumed_logs: list = []
    resumed = train(data, cfg, checkpoint_path=tmp_path / "cut.pt", on_log=lambda m, s: resumed_logs.append((s, m)))

    assert [s for s, _ in full_logs] == [2, 4, 6]
    assert resumed_logs == full_logs[1:]  # steps 3–6 redone with the same batches and noise
    assert_same_weights(full.model.state_dict(), resumed.model.state_dict())
    assert torch.load(tmp_path / "cut.pt", weights_only=True)["step"] == 6


def test_training_in_segments_gives_the_weights_and_logs_of_one_go(data, tmp_path):
    """Stopped at ¼ and ½ and resumed (what a pruning search does): bitwise the weights of one go.

    checkpoint_every 7 puts no regular checkpoint on a segment's end, so the stops write their own.
    """
    cfg = tiny_cfg(steps=20, checkpoint_every=7, log_every=5)
    setting = Setting("cbeta_vae", 300.0, 5.0)  # its capacity anneals over all 20 steps, segments or not
    one_logs: list = []
    one = train(data, cfg, setting, on_log=lambda m, s: one_logs.append((s, m)))

    path, logs, steps = tmp_path / "segments.pt", [], []
    for stop in (5, 10, None):
        outcome = train(data, cfg, setting, checkpoint_path=path, stop_at=stop, on_log=lambda m, s: logs.append((s, m)))
        steps.append((outcome.step, torch.load(path, weights_only=True)["step"]))
        assert outcome.latents["mu"].shape == (len(data.probe), LATENT) and np.isfinite(outcome.metrics["test_rec"])

    assert steps == [(5, 5), (10, 10), (20, 20)]
    assert_same_weights(one.model.state_dict(), outcome.model.state_dict())
    assert logs == one_logs  # one continuous history: the stops are multiples of log_every
    np.testing.assert_array_equal(one.latents["mu"], outcome.latents["mu"])

    # a run that already stands past `stop_at` (resumed after a kill) is handed back as it stands
    assert train(data, cfg, setting, checkpoint_path=path, stop_at=5).step == 20
    with pytest.raises(ValueError, match="pass a checkpoint_path"):
        train(data, cfg, setting, stop_at=5)
    with pytest.raises(ValueError, match=r"stop_at must be a step in 1\.\.20"):
        train(data, cfg, setting, checkpoint_path=path, stop_at=21)


@pytest.mark.slow
def test_compiled_training_follows_the_eager_one_and_resumes_to_its_own_weights(data, tmp_path):
    """train.compile: the same noise and batches as eager (weights equal up to float reordering), the
    same weights again on a second compiled run, and a compiled run killed part-way resumes to them."""
    cfg = tiny_cfg(steps=12, checkpoint_every=4, log_every=4, compile=True)
    eager = train(data, tiny_cfg(steps=12, checkpoint_every=4, log_every=4), BETA_4)
    first = train(data, cfg, BETA_4)
    for name, value in eager.model.state_dict().items():
        torch.testing.assert_close(first.model.state_dict()[name], value, rtol=1e-3, atol=1e-4, msg=name)

    path = tmp_path / "compiled.pt"
    train(data, cfg, BETA_4, checkpoint_path=path, stop_at=4)
    resumed = train(data, cfg, BETA_4, checkpoint_path=path)
    assert_same_weights(first.model.state_dict(), resumed.model.state_dict())
    # compiled and eager weights differ in the last bits: a compiled run never resumes an eager checkpoint
    assert checkpoint_identity(BETA_4, 0, cfg, "v", 16) != checkpoint_identity(
        BETA_4, 0, replace(cfg, compile=False), "v", 16
    )


@pytest.mark.parametrize("change", ["beta", "lr", "data_version"])
def test_checkpoint_of_other_settings_is_ignored(data, tmp_path, caplog, change):
    path = tmp_path / "model.pt"
    train(data, tiny_cfg(), checkpoint_path=path)  # a finished checkpoint at step 10
    assert torch.load(path, weights_only=True)["step"] == 10

    setting, cfg, version = Setting("beta_vae", 4.0), tiny_cfg(), data.data_version
    if change == "beta":
        setting = Setting("beta_vae", 8.0)
    elif change == "lr":
        cfg = tiny_cfg(lr=5e-4)
    else:
        version = "another-version"
    logged: list = []
    with caplog.at_level(logging.WARNING, logger="tubervae.training"):
        other = train(
            data, cfg, setting, checkpoint_path=path, data_version=version, on_log=lambda m, s: logged.append(s)
        )
    fresh = train(data, cfg, setting, data_version=version)

    assert "ignoring checkpoint" in caplog.text
    assert logged == [5, 10]  # trained from step 0, not resumed at step 10
    assert_same_weights(other.model.state_dict(), fresh.model.state_dict())
    saved = torch.load(path, weights_only=True)  # the new checkpoint replaced the foreign one
    assert saved["step"] == 10
    assert_same_weights(saved["model"], fresh.model.state_dict())


# --------------------------------------------------------------------------- non-finite losses


def test_finite_loss_with_non_finite_gradient_never_reaches_the_checkpoint(data, tmp_path, monkeypatch):
    real_make_loss = setting_module.make_loss

    def nan_gradient_at_update_10(family, **hp):
        loss = real_make_loss(family, **hp)

        def poisoned(x, out, step):
            terms = loss(x, out, step)
            if step == 9:  # adds 0 to the loss, but d sqrt(u)/du at u = 0 is infinite: NaN gradients
                terms = {**terms, "loss": terms["loss"] + torch.sqrt(out.mu.sum() * 0.0) * 0.0}
            return terms

        return poisoned

    monkeypatch.setattr(setting_module, "make_loss", nan_gradient_at_update_10)
    logged: list = []
    path = tmp_path / "model.pt"
    with pytest.raises(NonFiniteLossError, match="non-finite weights after step 10"):
        train(data, tiny_cfg(steps=20), checkpoint_path=path, on_log=lambda m, s: logged.append(m))

    assert len(logged) == 2 and all(np.isfinite(v) for m in logged for v in m.values())  # the loss looked fine
    state = torch.load(path, weights_only=True)
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# --------------------------------------------------------------------------- the setting


def test_a_settings_normalised_beta_is_its_betas():
    """β·d/N of the setting's β (models.losses.normalised_beta, tested there)."""
    assert Setting("beta_vae", 18.0).normalised_beta(10, 64) == pytest.approx(0.0146484375)


# --------------------------------------------------------------------------- hostile checkpoints


class _Payload:
    """Unpickling this object would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _forged(path: Path, cfg: TrainConfig, data, kind: str, marker: Path) -> None:
    """Write a checkpoint of the given kind of damage where the run expects its own."""
    train(data, cfg, checkpoint_path=path)  # a genuine checkpoint at the end, to forge from
    state = torch.load(path, weights_only=True)
    if kind == "malicious pickle":
        import pickle

        path.write_bytes(pickle.dumps({**state, "step": _Payload(marker)}))
    elif kind == "a list":
        torch.save([1, 2, 3], path)
    elif kind == "wrong shapes":
        state["model"] = {k: v[..., :1].clone() if v.ndim else v for k, v in state["model"].items()}
        torch.save(state, path)
    elif kind == "forged step":
        torch.save({**state, "step": 10**9}, path)
    elif kind == "forged optimiser":
        torch.save({**state, "optimiser": {"state": {}, "param_groups": [{"params": [0]}]}}, path)


@pytest.mark.parametrize("kind", ["malicious pickle", "a list", "wrong shapes", "forged step", "forged optimiser"])
def test_a_damaged_or_forged_checkpoint_is_ignored_and_runs_no_code(data, tmp_path, kind, caplog):
    cfg = tiny_cfg(steps=10)
    path, marker = tmp_path / "model.pt", tmp_path / "payload-ran"
    _forged(path, cfg, data, kind, marker)
    with caplog.at_level(logging.WARNING, logger="tubervae.training"):
        outcome = train(data, cfg, checkpoint_path=path)
    assert not marker.exists(), "loading the checkpoint ran code"
    assert "ignoring" in caplog.text and outcome.step == 10
    assert "weights_only" not in caplog.text  # no advice to turn the guard off
    if kind == "malicious pickle":
        assert "holds more than plain tensors" in caplog.text and "not loaded" in caplog.text
    # trained from scratch to the same weights as a run that never saw the forged file
    assert_same_weights(outcome.model.state_dict(), train(data, cfg).model.state_dict())
    assert torch.load(path, weights_only=True)["step"] == 10  # the rerun replaced the forged file
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tubervae.training"):
        train(data, cfg, checkpoint_path=path)  # ignored once, never again
    assert "ignoring" not in caplog.text


# --------------------------------------------------------------------------- guided families


def guided_train(data: stage.TrainingData, cfg: TrainConfig, setting: Setting, **kwargs):
    return train(data, cfg, setting, guide_images=data.guide_images, guide_labels=data.guide_labels, **kwargs)


def test_a_guided_family_with_weight_zero_trains_exactly_like_its_family(tmp_path):
    data = guided_discs(tmp_path / "p")
    cfg = tiny_cfg(steps=6)
    for family, beta in (("beta_vae", 4.0), ("beta_tcvae", 2.0)):
        plain = train(data, cfg, Setting(family, beta), seed=1)
        zero = guided_train(data, cfg, Setting(f"guided_{family}", beta, guide_weight=0.0), seed=1)
        assert_same_weights(plain.model.state_dict(), zero.model.state_dict())
        assert zero.metrics["guide_head_weight"] == 1.0  # its head learnt nothing either
        weighted = guided_train(data, cfg, Setting(f"guided_{family}", beta, guide_weight=50.0), seed=1)
        assert not torch.equal(
            plain.model.state_dict()["encoder.mean.weight"], weighted.model.state_dict()["encoder.mean.weight"]
        )


def test_the_guided_head_sees_only_the_labelled_splits_guide_rows(tmp_path):
    """Flipping the holdout labels or the test labels changes nothing; flipping one guide label does."""
    cfg = tiny_cfg(steps=6)
    setting = Setting("guided_beta_vae", 4.0, guide_weight=50.0)
    base = guided_discs(tmp_path / "base")
    assert len(base.guide_images) == 8 and base.guide_labels.tolist() == [0, 1] * 4
    reference = guided_train(base, cfg, setting).model.state_dict()
    for flip in ("holdout", "test"):
        flipped = guided_discs(tmp_path / flip, flip=flip)
        assert_same_weights(reference, guided_train(flipped, cfg, setting).model.state_dict())
    poisoned = guided_train(guided_discs(tmp_path / "guide", flip="guide"), cfg, setting).model.state_dict()
    assert not torch.equal(reference["encoder.mean.weight"], poisoned["encoder.mean.weight"])


def test_a_guided_run_in_segments_resumes_its_head_and_guide_draws_to_the_weights_of_one_go(tmp_path):
    data = guided_discs(tmp_path / "p")
    cfg = tiny_cfg(steps=10, checkpoint_every=3)
    setting = Setting("guided_beta_vae", 4.0, guide_weight=20.0)
    one = guided_train(data, cfg, setting)
    path = tmp_path / "guided.pt"
    for stop in (5, None):
        outcome = guided_train(data, cfg, setting, checkpoint_path=path, stop_at=stop)
    assert_same_weights(one.model.state_dict(), outcome.model.state_dict())
    assert outcome.metrics["guide_head_weight"] == one.metrics["guide_head_weight"] != 1.0


def test_a_guided_family_without_guide_photos_is_refused_and_a_weight_needs_a_guided_family(data):
    with pytest.raises(ValueError, match="guided_beta_vae needs guide_images and guide_labels"):
        train(data, tiny_cfg(steps=2), Setting("guided_beta_vae", 4.0, guide_weight=1.0))
    assert len(data.guide_images) == 0  # data/processed without a guide array: no photo guides
    with pytest.raises(ValueError, match="guide_weight 2.0 needs a guided family"):
        Setting("beta_vae", 4.0, guide_weight=2.0)
    assert Setting("guided_beta_vae", 2.61, guide_weight=300.0).label == "2.61_300"
