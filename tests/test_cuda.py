"""Training on a CUDA device: the fused loop, bfloat16 autocast, resuming from checkpoints, and the
served model on the CPU from weights trained on the device.

Each test takes the device as a parameter: its `cpu` variant runs everywhere (it shows that the
test's logic holds; marked slow where it trains several models), its `cuda` variant is marked
`cuda` and is skipped where torch sees no CUDA device (tests/conftest.py). `pytest -m cuda` runs
the CUDA variants alone (benchmarks/device_check.sh does, on a GPU machine).

Only the served model's check needs MLflow (the classifier is an MLflow model). Where MLflow is not
installed (a bare GPU image), that test checks `load_vae_files` instead, the loader the served model
reads its weights with.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tubervae.classify.any_rule import AnyOfRule
from tubervae.classify.rules import ThresholdRule
from tubervae.config import TrainConfig
from tubervae.models.encoding import encode
from tubervae.models.nets import VAE, load_vae_files
from tubervae.training.fused import FusedJob, train_fused
from tubervae.training.loop import train_model
from tubervae.training.setting import Setting

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.cuda),
]
# Tests that train several models: their CPU variant takes 10-30 s on a shared 2-core CPU, so it is slow.
DEVICES_CPU_SLOW = [pytest.param("cpu", id="cpu", marks=pytest.mark.slow), DEVICES[1]]
SIZE, LATENT = 16, 3
JOBS = [
    FusedJob(Setting("beta_vae", 4.0), 0),
    FusedJob(Setting("beta_vae", 4.0), 1),  # shares its setting (one vmapped loss) with the first
    FusedJob(Setting("beta_tcvae", 6.0), 2),
]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).integers(0, 256, (48, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def deterministic():
    """cuDNN's deterministic algorithms (no effect on a CPU), so that two runs of the same steps can be compared."""
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


def config(device: str, **overrides) -> TrainConfig:
    base = dict(
        steps=12,
        batch_size=8,
        latent_dim=LATENT,
        log_every=4,
        checkpoint_every=4,
        snapshot_every=0,
        device=device,
        precision="float32",
    )
    return TrainConfig(**{**base, **overrides})


def alone(job: FusedJob, cfg: TrainConfig, images, **kw):
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


def fused(jobs, cfg: TrainConfig, images, **kw):
    return train_fused(jobs, cfg, train_images=images, probe_images=images[:8], test_images=images[:8], **kw)


def largest_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].cpu() - sb[k].cpu()).abs().max()) for k in sa)


def on(model: torch.nn.Module) -> str:
    (kinds,) = [{p.device.type for p in model.parameters()}]
    assert len(kinds) == 1, kinds
    return kinds.pop()


def test_the_cuda_variants_carry_the_registered_marker(request):
    """`pytest -m cuda` selects exactly the CUDA variants: the marker is registered (pyproject.toml) and on them."""
    assert any(line.startswith("cuda:") for line in request.config.getini("markers"))
    assert [p.values for p in DEVICES if any(m.name == "cuda" for m in p.marks)] == [("cuda",)]


@pytest.mark.parametrize("device", DEVICES_CPU_SLOW)
def test_fused_models_train_on_the_device_as_their_twins_do(float64, images, device):
    """The fused loop on the device: every model's weights stay there and equal those of its separately
    trained twin on the same device to rounding (float64; bench_gpu.py saw 1.5e-13 on an H100)."""
    cfg = config(device)
    outcomes = fused(JOBS, cfg, images)
    for job, out in zip(JOBS, outcomes):
        assert on(out.model) == device and out.step == cfg.steps
        twin = alone(job, cfg, images)
        assert largest_difference(out.model, twin.model) < 1e-9
        assert np.isfinite(out.metrics["test_rec"]) and np.all(np.isfinite(out.latents["mu"]))
    torch.manual_seed(JOBS[0].seed)
    assert largest_difference(outcomes[0].model, VAE(SIZE, LATENT)) > 1e-3  # trained, not two fresh starts
    assert largest_difference(outcomes[0].model, outcomes[1].model) > 1e-3  # the seeds differ


@pytest.mark.parametrize("device", DEVICES_CPU_SLOW)
def test_bfloat16_autocast_runs_the_networks_in_bfloat16_and_keeps_float32_weights(images, device, monkeypatch):
    """`precision: bfloat16` on the device: the convolutions compute in bfloat16, the weights and the
    optimiser stay float32, the losses stay finite and near float32's, and the weights differ from a
    float32 run (autocast was on). The same for the fused loop."""
    seen: set[torch.dtype] = set()
    original = VAE.forward

    def recording(self, x):
        first = next(m for m in self.modules() if isinstance(m, torch.nn.Conv2d))
        handle = first.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
        try:
            return original(self, x)
        finally:
            handle.remove()

    job = JOBS[2]
    in_float32 = alone(job, config(device), images)
    with monkeypatch.context() as patch:
        patch.setattr(VAE, "forward", recording)
        in_bfloat16 = alone(job, config(device, precision="bfloat16"), images)
    assert seen == {torch.bfloat16}
    assert on(in_bfloat16.model) == device
    assert all(v.dtype == torch.float32 for v in in_bfloat16.model.state_dict().values())
    assert largest_difference(in_bfloat16.model, in_float32.model) > 0.0
    loss16, loss32 = in_bfloat16.metrics["final_loss"], in_float32.metrics["final_loss"]
    assert np.isfinite(loss16) and loss16 == pytest.approx(loss32, rel=0.05)

    together = fused(JOBS, config(device, precision="bfloat16"), images)
    as_float32 = fused(JOBS, config(device), images)
    for a, b in zip(together, as_float32):
        assert all(v.dtype == torch.float32 for v in a.model.state_dict().values())
        assert np.isfinite(a.metrics["final_loss"]) and a.metrics["final_loss"] == pytest.approx(
            b.metrics["final_loss"], rel=0.05
        )
        assert largest_difference(a.model, b.model) > 0.0


@pytest.mark.parametrize("how", ["alone", "fused"])
@pytest.mark.parametrize("device", DEVICES_CPU_SLOW)
def test_training_stopped_and_resumed_on_the_device_ends_where_one_go_does(
    images, device, how, tmp_path, deterministic
):
    """Trained k steps, stopped (its checkpoints written), resumed in a new call: the weights of one
    uninterrupted run, within float rounding, at the precision `auto` gives the device (bfloat16 on a
    CUDA GPU that has it); the resumed run starts from the checkpoint (its step, and its RNG state)."""
    cfg = config(device, precision="auto", steps=12, checkpoint_every=4)
    jobs = [FusedJob(j.setting, j.seed, tmp_path / f"m{i}.pt") for i, j in enumerate(JOBS)]

    def run(jobs, **kw):
        if how == "fused":
            return fused(jobs, cfg, images, **kw)
        return [alone(j, cfg, images, checkpoint_path=j.checkpoint_path, **kw) for j in jobs]

    whole = run([FusedJob(j.setting, j.seed) for j in jobs])
    stopped = run(jobs, stop_at=6)  # not a multiple of checkpoint_every: the stop writes its own
    assert [o.step for o in stopped] == [6] * len(jobs)
    saved = [torch.load(j.checkpoint_path, map_location="cpu", weights_only=True) for j in jobs]
    assert [s["step"] for s in saved] == [6] * len(jobs)
    if device == "cuda":  # the device's generator state is what a resumed run draws its noise from
        assert all(s["cuda_rng"] is not None for s in saved)
    resumed = run(jobs)
    tolerance = 0.0 if device == "cpu" else 1e-4
    for a, b, c in zip(whole, resumed, stopped):
        assert b.step == cfg.steps and on(b.model) == device
        assert largest_difference(a.model, b.model) <= tolerance
        assert largest_difference(b.model, c.model) > 1e-4  # the resumed run trained on


@pytest.mark.parametrize("device", DEVICES)
def test_the_served_model_loads_on_the_cpu_from_weights_trained_on_the_device(images, device, tmp_path):
    """A model trained on the device (and its checkpoint) serves from the CPU: the classifier's files hold
    CPU tensors only, `TuberQualityModel` loads them on the CPU, and its latents are the device model's. A
    checkpoint written on the device is read on the CPU, and training resumes from it there."""
    job = FusedJob(JOBS[0].setting, JOBS[0].seed, tmp_path / "m.pt")
    cfg = config(device, steps=8)
    trained = alone(job, cfg, images, checkpoint_path=job.checkpoint_path, stop_at=4)
    assert on(trained.model) == device

    vae_config = {"image_size": SIZE, "latent_dim": LATENT, "crop_fraction": 1.0}
    expected, _ = encode(trained.model, images[:6])  # on the device
    try:
        from tubervae.runs.quality_model import TuberQualityModel, quality_model_artifacts
    except ModuleNotFoundError as missing:  # a bare GPU image without MLflow: the loader the served model uses
        assert missing.name.split(".")[0] == "mlflow", missing
        weights = tmp_path / "model.pt"
        torch.save({k: v.detach().cpu() for k, v in trained.model.state_dict().items()}, weights)
        loaded = load_vae_files(weights, vae_config)
        assert on(loaded) == "cpu"
        np.testing.assert_allclose(encode(loaded, images[:6])[0], expected, rtol=1e-4, atol=1e-4)
    else:
        rule = AnyOfRule.from_threshold_rule(ThresholdRule(1, 0.0, "bad_if_above", 0.5))
        artifacts = quality_model_artifacts(tmp_path, trained.model, vae_config, rule)
        stored = torch.load(artifacts["weights"], weights_only=True)  # no map_location: as a CPU-only host reads it
        assert {v.device.type for v in stored.values()} == {"cpu"}
        served = TuberQualityModel()
        context = SimpleNamespace(artifacts=artifacts)
        served.load_context(context)
        assert on(served.vae) == "cpu"
        answer = served.predict(context, images[:6])
        np.testing.assert_allclose(answer["z1"].to_numpy(), expected[:, 1], rtol=1e-4, atol=1e-4)
        assert set(answer["label"]) <= {"good", "bad"}

    # The device's checkpoint, read on the CPU: at its own step it is the device model; then training goes on.
    on_cpu = config("cpu", steps=8)
    at_checkpoint = alone(job, on_cpu, images, checkpoint_path=job.checkpoint_path, stop_at=4)
    assert at_checkpoint.step == 4 and on(at_checkpoint.model) == "cpu"
    assert largest_difference(at_checkpoint.model, trained.model) == 0.0
    finished = alone(job, on_cpu, images, checkpoint_path=job.checkpoint_path)
    assert finished.step == 8 and largest_difference(finished.model, trained.model) > 1e-4
