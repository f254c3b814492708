"""Fused training (`tubervae.training.fused`): each fused model is its separately trained twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tubervae.config import TrainConfig
from tubervae.training.fused import FusedJob, train_fused
from tubervae.training.loop import train_model
from tubervae.training.setting import Setting

TOLERANCE = 1e-9  # float64: the twins differ by rounding only


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).integers(0, 256, (48, 16, 16, 3), dtype=np.uint8)


def config(**overrides) -> TrainConfig:
    base = dict(steps=20, batch_size=8, latent_dim=3, log_every=5, checkpoint_every=10, snapshot_every=0, device="cpu")
    base["precision"] = "float32"  # tests that compare numbers say which; `auto` differs between CPUs
    return TrainConfig(**{**base, **overrides})


JOBS = [
    FusedJob(Setting("beta_vae", 4.0), 0),
    FusedJob(Setting("beta_vae", 4.0), 1),  # shares its setting (one vmapped loss) with the first
    FusedJob(Setting("cbeta_vae", 300.0, 5.0), 2),
    FusedJob(Setting("beta_tcvae", 6.0), 3),
]


def twin(job: FusedJob, cfg: TrainConfig, images, **kw):
    return train_model(
        job.setting,
        job.seed,
        cfg,
        train_images=images,
        probe_images=images[:8],
        test_images=images[:8],
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def twin_of(images):
    """`twin(job, config(), images)` in float64, trained once per (setting, seed) for the module's tests."""
    trained = {}

    def get(job: FusedJob):
        assert torch.get_default_dtype() == torch.float64, "the shared twins are float64 (the float64 fixture)"
        key = (job.setting, job.seed)
        if key not in trained:
            trained[key] = twin(job, config(), images)
        return trained[key]

    return get


def fused(jobs, cfg, images, **kw):
    return train_fused(jobs, cfg, train_images=images, probe_images=images[:8], test_images=images[:8], **kw)


def largest_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


@pytest.mark.slow
def test_fused_models_equal_their_separately_trained_twins(float64, images, twin_of):
    cfg = config()
    outcomes = fused(JOBS, cfg, images)
    for job, out in zip(JOBS, outcomes):
        alone = twin_of(job)
        assert out.step == alone.step == 20
        assert largest_difference(out.model, alone.model) < TOLERANCE
        # the twins moved away from their start, so the match is not two untouched initialisations
        torch.manual_seed(job.seed)
        assert largest_difference(out.model, type(out.model)(16, 3)) > 1e-3
        assert out.metrics["final_loss"] == pytest.approx(alone.metrics["final_loss"], rel=1e-9)
        assert out.metrics["test_rec"] == pytest.approx(alone.metrics["test_rec"], rel=1e-9)
        np.testing.assert_allclose(out.latents["mu"], alone.latents["mu"], atol=1e-9)
    assert largest_difference(outcomes[0].model, outcomes[1].model) > 1e-3  # seeds differ


@pytest.mark.slow
def test_fused_run_logs_each_model_as_its_twin_does(float64, images):
    cfg = config()
    fused_logs, twin_logs = {}, {}
    fused(JOBS[2:], cfg, images, on_log=lambda i, m, step: fused_logs.setdefault(i, []).append((step, m)))
    for i, job in enumerate(JOBS[2:]):
        twin(job, cfg, images, on_log=lambda m, step, i=i: twin_logs.setdefault(i, []).append((step, m)))
    for i in twin_logs:
        assert [s for s, _ in fused_logs[i]] == [s for s, _ in twin_logs[i]] == [5, 10, 15, 20]
        for (_, a), (_, b) in zip(fused_logs[i], twin_logs[i]):
            assert a.keys() == b.keys()
            assert all(a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12) for k in a)


class Killed(Exception):
    pass


def kill_at(step_to_die: int):
    def on_log(index, metrics, step):
        if step == step_to_die:
            raise Killed

    return on_log


@pytest.mark.slow
def test_killed_fused_run_resumes_from_per_model_checkpoints(float64, images, tmp_path, twin_of):
    cfg = config()
    jobs = [FusedJob(j.setting, j.seed, tmp_path / f"m{i}.pt") for i, j in enumerate(JOBS[1:])]
    with pytest.raises(Killed):
        fused(jobs, cfg, images, on_log=kill_at(15))  # after the step-10 checkpoints
    saved = [torch.load(j.checkpoint_path, weights_only=True) for j in jobs]
    assert [s["step"] for s in saved] == [10, 10, 10]
    resumed = fused(jobs, cfg, images)
    for job, out in zip(jobs, resumed):
        assert largest_difference(out.model, twin_of(job).model) < TOLERANCE


def test_a_float64_model_runs_in_float64_whatever_precision_says(float64, images):
    """bfloat16 autocast is for float32 weights: a float64 model (a reference computation) ignores it,
    on a CPU with native bfloat16 as on one without."""
    cfg = config(steps=10)
    as_float32 = fused(JOBS[:2], cfg, images)
    as_bfloat16 = fused(JOBS[:2], config(steps=10, precision="bfloat16"), images)
    for a, b in zip(as_float32, as_bfloat16):
        assert largest_difference(a.model, b.model) == 0.0
        assert all(v.dtype == torch.float64 for v in b.model.state_dict().values())
    alone = twin(JOBS[0], config(steps=10, precision="bfloat16"), images)
    assert largest_difference(alone.model, as_float32[0].model) < TOLERANCE


@pytest.mark.slow
def test_killed_fused_run_resumes_to_the_same_weights_in_bfloat16(images, tmp_path):
    """The bfloat16 path (emulated where the CPU lacks it): a fused run killed part-way resumes
    from its checkpoints to the uninterrupted run's weights, and bfloat16 moved them off float32's."""
    cfg = config(steps=20, precision="bfloat16")
    jobs = [FusedJob(j.setting, j.seed, tmp_path / f"m{i}.pt") for i, j in enumerate(JOBS[2:])]
    whole = fused(JOBS[2:], cfg, images)
    with pytest.raises(Killed):
        fused(jobs, cfg, images, on_log=kill_at(15))
    resumed = fused(jobs, cfg, images)
    in_float32 = fused(JOBS[2:], config(steps=20, precision="float32"), images)
    for a, b, c in zip(whole, resumed, in_float32):
        assert largest_difference(a.model, b.model) == 0.0
        assert largest_difference(a.model, c.model) > 0.0
        assert all(v.dtype == torch.float32 for v in b.model.state_dict().values())


@pytest.mark.slow
def test_checkpoints_move_between_fused_and_separate_training(float64, images, tmp_path, twin_of):
    cfg = config()
    job = FusedJob(JOBS[3].setting, JOBS[3].seed, tmp_path / "tc.pt")
    reference = twin_of(job).model
    # a fused run killed at step 15 leaves its step-10 checkpoint; the separate trainer finishes it
    with pytest.raises(Killed):
        fused([job], cfg, images, on_log=kill_at(15))
    finished = twin(job, cfg, images, checkpoint_path=job.checkpoint_path)
    assert largest_difference(finished.model, reference) < TOLERANCE
    # a separate run killed after step 10; the fused trainer finishes it beside a fresh model
    other = FusedJob(JOBS[0].setting, JOBS[0].seed, tmp_path / "b.pt")
    job.checkpoint_path.unlink()

    def die(metrics, step):
        if step == 15:
            raise Killed

    with pytest.raises(Killed):
        twin(job, cfg, images, checkpoint_path=job.checkpoint_path, on_log=die)
    outcomes = fused([other, job], cfg, images)  # the two start at different steps: two fused groups
    assert largest_difference(outcomes[1].model, reference) < TOLERANCE
    assert largest_difference(outcomes[0].model, twin_of(other).model) < TOLERANCE


@pytest.mark.slow
def test_fused_training_in_segments_gives_the_weights_of_one_go(images, tmp_path):
    """Stopped at ¼ and ½ and resumed, in float32: bitwise the fused models of one go, checkpointed at each stop."""
    cfg = config(checkpoint_every=7)  # no regular checkpoint on a stop
    one = fused(JOBS[1:], cfg, images)
    jobs = [FusedJob(j.setting, j.seed, tmp_path / f"m{i}.pt") for i, j in enumerate(JOBS[1:])]
    for stop in (5, 10, None):
        outcomes = fused(jobs, cfg, images, stop_at=stop)
        expected = stop or cfg.steps
        assert [out.step for out in outcomes] == [expected] * len(jobs)
        assert [torch.load(j.checkpoint_path, weights_only=True)["step"] for j in jobs] == [expected] * len(jobs)
    for a, b in zip(one, outcomes):
        assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
        np.testing.assert_array_equal(a.latents["mu"], b.latents["mu"])
    with pytest.raises(ValueError, match="one for every job"):
        fused(JOBS[:1], cfg, images, stop_at=5)


@pytest.mark.slow
def test_checkpoint_of_other_settings_is_ignored(float64, images, tmp_path, caplog):
    cfg = config()
    path = tmp_path / "m.pt"
    with pytest.raises(Killed):
        fused([FusedJob(JOBS[0].setting, 0, path)], cfg, images, on_log=kill_at(15))
    job = FusedJob(Setting("beta_vae", 9.0), 0, path)  # same file, another β
    out = fused([job], cfg, images)[0]
    assert "belongs to other settings" in caplog.text
    assert largest_difference(out.model, twin(FusedJob(job.setting, 0), cfg, images).model) < TOLERANCE


@pytest.mark.parametrize(
    ("jobs", "message"),
    [
        ([], "at least one job"),
        ([JOBS[0], JOBS[0]], "same \\(setting, seed\\) twice"),
        ([FusedJob(JOBS[0].setting, 0, "a.pt"), FusedJob(JOBS[0].setting, 1, "a.pt")], "one checkpoint path"),
        (
            [JOBS[0], FusedJob(Setting("guided_beta_vae", 4.0, guide_weight=10.0), 1)],
            "train_fused does not train guided families \\(guided_beta_vae\\)",
        ),
    ],
)
def test_bad_job_lists_are_refused(images, jobs, message):
    with pytest.raises(ValueError, match=message):
        fused(jobs, config(steps=2), images)


def test_a_guided_familys_seeds_never_fuse_and_always_is_refused_for_it():
    from tubervae.config import ConfigError
    from tubervae.runs.seed_trainers import fuse_seeds

    assert fuse_seeds(config(fuse="always"), "beta_vae")
    assert not fuse_seeds(config(fuse="auto"), "guided_beta_vae")
    with pytest.raises(ConfigError, match="train.fuse: 'always' cannot train guided_beta_vae"):
        fuse_seeds(config(fuse="always"), "guided_beta_vae")
