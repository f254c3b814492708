"""The training loop (tubervae.training.loop), its checkpoints and device choice, the train stage and what
its MLflow run holds.

Every run here is tiny: 16×16 images of bright discs (position, radius and brightness are
the factors), a 4-component latent space, batches of 16 and at most 40 steps on one thread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

import tubervae.training.device as device_module
import tubervae.training.setting as setting_module
from conftest import write_processed
from tubervae.config import INFORMATIVE_KL, TrainConfig, load_params
from tubervae.models.nets import VAE
from tubervae.runs import tracker as tracker_module
from tubervae.runs import training_run as stage
from tubervae.runs import vae_artifacts
from tubervae.runs.tracker import Tracker
from tubervae.training.checkpoints import checkpoint_identity, weight_identity
from tubervae.training.loop import train_model
from tubervae.training.running import NonFiniteLossError
from tubervae.training.setting import Setting

SIZE = 16
LATENT = 4
SPLIT_SIZES = {"train": 128, "test": 24, "labelled": 16, "udr_probe": 32}
FACTOR_NAMES = ["x", "y", "radius", "brightness"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("traversal.png", "distributions.png", "reconstructions.png")


# --------------------------------------------------------------------------- fixtures and helpers


def disc_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Grey discs on black: uint8 (n, 16, 16, 3) and their factors (n, 4)."""
    factors = np.stack(
        [rng.uniform(4, 12, n), rng.uniform(4, 12, n), rng.uniform(2, 4, n), rng.uniform(0.4, 1.0, n)], axis=1
    ).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    inside = (xx - factors[:, 0, None, None]) ** 2 + (yy - factors[:, 1, None, None]) ** 2 <= factors[
        :, 2, None, None
    ] ** 2
    grey = np.round(inside * factors[:, 3, None, None] * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1), factors


def write_processed_discs(folder: Path) -> dict:
    """The files the preprocess stage writes, for a tiny disc data set; returns meta.json's content."""
    rng = np.random.default_rng(0)
    splits = {}
    for name, n in SPLIT_SIZES.items():
        images, factors = disc_images(n, rng)
        labels = (np.arange(n) % 2) if name == "labelled" else np.full(n, -1)
        splits[name] = (images, labels, factors)
    return write_processed(folder, splits, FACTOR_NAMES)


def tiny_cfg(**changes) -> TrainConfig:
    values = dict(
        latent_dim=LATENT,
        steps=10,
        batch_size=16,
        lr=1e-3,
        checkpoint_every=5,
        log_every=5,
        snapshot_every=0,
        device="cpu",
        threads=1,
        precision="float32",  # tests that compare numbers say which; `auto` differs between CPUs
    )
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Each test tracks into its own folder and leaves torch's thread count as it found it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def new_project(root: Path, empty_db: Path) -> dict:
    """A project root with tiny processed data and an empty MLflow store; returns meta.json's content."""
    meta = write_processed_discs(root / "data" / "processed")
    shutil.copyfile(empty_db, root / "mlflow.db")
    return meta


@pytest.fixture
def data(tmp_path) -> stage.TrainingData:
    write_processed_discs(tmp_path / "data" / "processed")
    return stage.load_training_data(tmp_path / "data" / "processed")


BETA_4 = Setting("beta_vae", 4.0)


def train(data: stage.TrainingData, cfg: TrainConfig, setting=BETA_4, seed: int = 0, **kwargs):
    kwargs.setdefault("data_version", data.data_version)
    return train_model(
        setting,
        seed,
        cfg,
        train_images=data.train,
        probe_images=data.probe,
        test_images=data.test,
        progress=False,
        **kwargs,
    )


def assert_same_weights(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    unequal = [k for k in a if not torch.equal(a[k].cpu(), b[k].cpu())]
    assert not unequal, f"tensors differ: {unequal}"


def client_for(root: Path) -> MlflowClient:
    """An independent client on the documented default store, sqlite:///<root>/mlflow.db."""
    return MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")


def all_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("tubervae")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for entry in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, entry.path) if entry.is_dir else {entry.path}
    return found


def download(client: MlflowClient, run_id: str, artifact: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, artifact, str(folder)))


@pytest.fixture
def no_figures(monkeypatch):
    """For tests about metrics and weights: skip drawing the pictures (seconds each on 2 busy cores);
    the 5-step test checks them."""
    monkeypatch.setattr(stage, "figures", lambda model, images, **kwargs: {})


def run_stage(
    root: Path, cfg: TrainConfig, family: str = "beta_vae", beta: float = 4.0, c_max: float = 0.0, **kwargs
) -> dict:
    return stage.train_command(
        cfg,
        family=family,
        beta=beta,
        c_max=c_max,
        seed=0,
        root=root,
        kl_threshold=INFORMATIVE_KL,
        processed_dir=root / "data" / "processed",
        **kwargs,
    )


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


def test_nan_loss_stops_the_run_marks_it_failed_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, empty_mlflow_db
):
    new_project(tmp_path, empty_mlflow_db)
    real_make_loss = setting_module.make_loss

    def nan_from_step_8(family, **hp):
        loss = real_make_loss(family, **hp)

        def poisoned(x, out, step):
            terms = loss(x, out, step)
            if step >= 7:  # `step` counts finished updates, so the 8th update is the first poisoned one
                terms = {**terms, "loss": terms["loss"] * float("nan")}
            return terms

        return poisoned

    monkeypatch.setattr(setting_module, "make_loss", nan_from_step_8)
    with pytest.raises(NonFiniteLossError, match=r"non-finite \[.*'loss'.*\] between steps 6 and 10"):
        run_stage(tmp_path, tiny_cfg(steps=20))

    client = client_for(tmp_path)
    (run,) = all_runs(client)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == "non-finite loss"
    assert run.data.tags["error"].startswith("NonFiniteLossError")
    assert [s for s, _ in history(client, run.info.run_id, "curves/loss")] == [5]  # nothing logged from the NaN window

    (checkpoint,) = (tmp_path / "checkpoints").glob("*.pt")
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    monkeypatch.setattr(setting_module, "make_loss", real_make_loss)
    clean = train(stage.load_training_data(tmp_path / "data" / "processed"), tiny_cfg(steps=5))
    assert_same_weights(state["model"], clean.model.state_dict())


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


# --------------------------------------------------------------------------- the MLflow run


@pytest.mark.slow
def test_a_run_with_system_metrics_logs_them_and_the_experiment_opens_on_its_runs(
    tmp_path, monkeypatch, empty_mlflow_db
):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    tracker = Tracker(tmp_path)
    with tracker.run("quiet") as quiet:
        time.sleep(0.3)
    with tracker.run("watched", system_metrics=True) as watched:
        time.sleep(0.3)
    assert not [k for k in tracker.client.get_run(quiet).data.metrics if k.startswith("system/")]
    run = tracker.client.get_run(watched)
    assert run.info.status == "FINISHED"
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    history = tracker.client.get_metric_history(watched, "system/cpu_utilization_percentage")
    assert len(history) >= 2 and [m.step for m in history] == list(range(len(history)))
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    # The runs list's description says how to show udr and MIG as columns; a former default is brought up to
    # date, a description someone wrote is kept.
    note = "mlflow.note.content"
    assert "**Columns**" in tags[note] and "`udr` and `mig`" in tags[note]
    (former,) = tracker_module.FORMER_NOTES
    tracker.client.set_experiment_tag(tracker.experiment_id, note, former)
    assert Tracker(tmp_path).client.get_experiment(tracker.experiment_id).tags[note] == tags[note]
    tracker.client.set_experiment_tag(tracker.experiment_id, note, "mine")
    assert Tracker(tmp_path).client.get_experiment(tracker.experiment_id).tags[note] == "mine"


def test_mlflow_run_of_a_5_step_training_holds_params_metrics_and_artifacts(tmp_path, empty_mlflow_db, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    meta = new_project(tmp_path, empty_mlflow_db)
    result = run_stage(tmp_path, tiny_cfg(steps=5, log_every=2, snapshot_every=3))

    client = client_for(tmp_path)
    (run,) = all_runs(client)
    rid = run.info.run_id
    assert result["run_id"] == rid and run.info.status == "FINISHED"

    # Only what a user compares runs by: the UI prints every param above each image chart of the run.
    assert run.data.params == {"family": "beta_vae", "beta": "4.0", "seed": "0", "steps": "5"}
    # The whole configuration is the run's training_config.json, with its types: the training config rebuilt.
    config = json.loads(download(client, rid, vae_artifacts.TRAINING_CONFIG, tmp_path / "config").read_text())
    cfg = tiny_cfg(steps=5, log_every=2, snapshot_every=3)
    assert TrainConfig(**{k: config[k] for k in TrainConfig.__dataclass_fields__}) == cfg
    assert config == {
        **asdict(cfg),
        "family": "beta_vae",
        "beta": 4.0,
        "beta_norm": 4.0 * LATENT / (3 * 16 * 16),  # β·d/N, N = 3 channels × 16 × 16
        "c_max": 0.0,
        "seed": 0,
        "image_size": 16,
        "n_train": SPLIT_SIZES["train"],
        "data_version": meta["data_version"],
        "precision_used": "float32",
    }
    assert vae_artifacts.read_training_config(Tracker(tmp_path), run) == {**run.data.params, **config}

    # The curves under curves/, which the run page shows first (its sections: prefixes in alphabetical order).
    terms = ["loss", "rec", "kl"] + [f"kl/z{j}" for j in range(LATENT)]
    series = {k: history(client, rid, f"curves/{k}") for k in terms}
    for key, points in series.items():
        assert [s for s, _ in points] == [2, 4, 5], key  # every log_every steps and at the last step
    for i in range(3):
        rec, kl = series["rec"][i][1], series["kl"][i][1]
        assert series["loss"][i][1] == pytest.approx(rec + 4.0 * kl, rel=1e-5)
        assert kl == pytest.approx(sum(series[f"kl/z{j}"][i][1] for j in range(LATENT)), rel=1e-5, abs=1e-7)
    assert not {"capacity", "mi", "tc", "dwkl"} & {k.removeprefix("curves/") for k in run.data.metrics}
    sections = sorted({k.rpartition("/")[0] for k in run.data.metrics if "/" in k} - {"system"})
    assert sections[:2] == ["curves", "curves/kl"] and not any(k.startswith("final_kl/") for k in run.data.metrics)
    assert {"n_active", "test_rec"} <= set(run.data.metrics)  # the scores: plain names, the runs list's columns
    assert "system/cpu_utilization_percentage" in run.data.metrics  # a training run watches the machine

    paths = artifact_paths(client, rid)
    wanted = set(FIGURES) | {"latents.npz", "model/model.pt", "model/config.json", vae_artifacts.TRAINING_CONFIG}
    assert wanted <= paths, wanted - paths
    # the figures as images at their step: the untrained model (0), every 3 steps (snapshot_every), the end (5)
    stepped = {
        (p.split("+")[0].removeprefix("images/"), int(p.split("+")[2])) for p in paths if p.startswith("images/")
    }
    assert stepped == {(f.removesuffix(".png"), step) for f in FIGURES for step in (0, 3, 5)}

    local = download(client, rid, "", tmp_path / "download")
    for name in set(FIGURES) | {p for p in paths if p.startswith("images/") and p.endswith(".png")}:
        assert (local / name).read_bytes()[:8] == PNG_SIGNATURE, name
    config = json.loads((local / "model" / "config.json").read_text())
    assert config == {
        "image_size": 16,
        "latent_dim": 4,
        "family": "beta_vae",
        "beta": 4.0,
        "c_max": 0.0,
        "seed": 0,
        "data_version": meta["data_version"],
    }
    model = VAE(image_size=config["image_size"], latent_dim=config["latent_dim"])
    model.load_state_dict(torch.load(local / "model" / "model.pt", weights_only=True))
    model.eval()

    def as_float(split: str) -> torch.Tensor:
        with np.load(tmp_path / "data" / "processed" / f"{split}.npz") as npz:
            return torch.from_numpy(npz["images"]).permute(0, 3, 1, 2).double() / 255.0

    latents = np.load(local / "latents.npz")
    with torch.no_grad():
        mu, logvar = model.double().encode(as_float("udr_probe"))
        test_x = as_float("test")
        logits = model.decode(model.encode(test_x)[0])
    np.testing.assert_allclose(latents["mu"], mu.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(latents["logvar"], logvar.numpy(), rtol=1e-4, atol=1e-5)
    kl = 0.5 * (latents["mu"] ** 2 + np.exp(latents["logvar"]) - latents["logvar"] - 1.0).mean(0)
    np.testing.assert_allclose(latents["kl"], kl, rtol=1e-5, atol=1e-7)
    bce = (torch.nn.functional.softplus(logits) - test_x * logits).sum() / len(test_x)  # −log p(x|z), Bernoulli

    final = run.data.metrics
    assert final["n_active"] == int((kl > 0.01).sum()) == result["n_active"]
    assert final["test_rec"] == pytest.approx(float(bce), rel=1e-4)
    assert [s for s, _ in history(client, rid, "test_rec")] == [5]


def test_the_processed_data_is_the_runs_dataset_input_from_its_first_segment_once_wherever_it_lies(
    tmp_path, empty_mlflow_db
):
    """A run in training (or later pruned) already names its data; a resumed run keeps one entry; data kept
    outside the project's data/processed still gives the dataset input and the logged MLflow model."""
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    meta = write_processed_discs(tmp_path / "elsewhere")
    data = stage.load_training_data(tmp_path / "elsewhere")
    tracker = Tracker(tmp_path)
    cfg, client = tiny_cfg(steps=6), client_for(tmp_path)
    first = stage.run_tracked(
        tracker, BETA_4, 0, cfg, data, kl_threshold=INFORMATIVE_KL, checkpoint_dir=tmp_path / "ck", stop_at=3
    )

    def inputs(run_id):
        return client.get_run(run_id).inputs.dataset_inputs

    (entry,) = inputs(first["run_id"])
    assert client.get_run(first["run_id"]).info.status == "RUNNING"
    assert entry.dataset.digest == meta["data_version"] and entry.dataset.name == "elsewhere"
    assert {(t.key, t.value) for t in entry.tags} >= {("mlflow.data.context", "training")}
    assert "[-1, 16, 16, 3]" in entry.dataset.schema  # the image arrays, as the models see them
    done = stage.run_tracked(
        tracker,
        BETA_4,
        0,
        cfg,
        data,
        kl_threshold=INFORMATIVE_KL,
        checkpoint_dir=tmp_path / "ck",
        run_id=first["run_id"],
    )
    assert done["run_id"] == first["run_id"] and len(inputs(done["run_id"])) == 1
    assert client.get_run(done["run_id"]).info.status == "FINISHED"
    assert client.search_logged_models([client.get_run(done["run_id"]).info.experiment_id])  # the pyfunc VAE


def test_cbeta_and_tcvae_runs_log_their_family_terms_also_in_a_run_handed_over_by_mlflow_run(
    tmp_path, empty_mlflow_db, no_figures
):
    new_project(tmp_path, empty_mlflow_db)
    handed = Tracker(tmp_path).create_run("from mlflow run")
    # `mlflow run . -e train -P family=cbeta_vae -P beta=700 -P c_max=6` logs the values as typed first.
    client = client_for(tmp_path)
    client.log_batch(
        handed, params=[Param("family", "cbeta_vae"), Param("beta", "700"), Param("c_max", "6"), Param("seed", "0")]
    )
    cfg = tiny_cfg(steps=6, log_every=2, checkpoint_every=6, anneal_fraction=0.5)
    cbeta = run_stage(tmp_path, cfg, family="cbeta_vae", beta=700.0, c_max=6.0, run_id=handed)
    tcvae = run_stage(tmp_path, cfg, family="beta_tcvae", beta=3.0)

    run = client.get_run(handed)
    assert cbeta["run_id"] == handed and run.info.status == "FINISHED"
    # The values as typed are kept, `steps` added; the rest of the configuration is in its file.
    assert run.data.params == {"family": "cbeta_vae", "beta": "700", "c_max": "6", "seed": "0", "steps": "6"}
    config = vae_artifacts.read_training_config(Tracker(tmp_path), run)
    assert (config["beta"], config["c_max"], config["lr"], config["anneal_fraction"]) == (700.0, 6.0, 0.001, 0.5)
    # C rises 0 → 6 over round(0.5·6) = 3 updates; each point is the mean over its 2-update window:
    # updates 0,1 → (0 + 2)/2, updates 2,3 → (4 + 6)/2, updates 4,5 → 6.
    assert history(client, handed, "curves/capacity") == [(2, 1.0), (4, 5.0), (6, 6.0)]
    assert not {"mi", "tc", "dwkl"} & set(run.data.metrics)

    series = {k: history(client, tcvae["run_id"], f"curves/{k}") for k in ("loss", "rec", "mi", "tc", "dwkl")}
    for key, points in series.items():
        assert [s for s, _ in points] == [2, 4, 6], key
    for i in range(3):
        rec, mi, tc, dwkl = (series[k][i][1] for k in ("rec", "mi", "tc", "dwkl"))
        assert series["loss"][i][1] == pytest.approx(rec + mi + 3.0 * tc + dwkl, rel=1e-5)  # only TC is weighted
    assert "capacity" not in client.get_run(tcvae["run_id"]).data.metrics
    assert {r.info.run_id for r in all_runs(client)} == {handed, tcvae["run_id"]}


def test_a_finished_run_is_reused_only_for_its_own_settings_and_keeps_its_config(tmp_path, empty_mlflow_db, no_figures):
    new_project(tmp_path, empty_mlflow_db)
    cfg = tiny_cfg(steps=3)
    done = run_stage(tmp_path, cfg)
    tracker = Tracker(tmp_path)
    data = stage.load_training_data(tmp_path / "data" / "processed")
    assert stage.find_finished_run(tracker, stage.run_key(BETA_4, 0, cfg, data)) == done["run_id"]
    # Other weights-deciding settings, another setting or seed: another training, never this run.
    for setting, seed, other in (
        (BETA_4, 0, replace(cfg, lr=2e-3)),
        (BETA_4, 0, replace(cfg, steps=4)),
        (Setting("beta_vae", 5.0), 0, cfg),
        (BETA_4, 1, cfg),
    ):
        assert stage.find_finished_run(tracker, stage.run_key(setting, seed, other, data)) is None
    # Its configuration file is kept when logged again the same, and refused with the values that differ.
    config = stage.training_config(BETA_4, 0, cfg, data)
    vae_artifacts.log_training_config(tracker, done["run_id"], config)
    with pytest.raises(ValueError, match=r"other settings.*lr 0\.001 \(now 0\.002\)"):
        vae_artifacts.log_training_config(tracker, done["run_id"], {**config, "lr": 2e-3})
    run = tracker.get_run(done["run_id"])
    assert vae_artifacts.read_training_config(tracker, run)["lr"] == 0.001


def test_a_run_logged_with_every_setting_as_a_param_is_read_the_same(tmp_path, empty_mlflow_db):
    """Runs logged before the configuration file: every setting a param, read back as strings."""
    new_project(tmp_path, empty_mlflow_db)
    tracker = Tracker(tmp_path)
    rid = tracker.create_run("s0 beta_vae 4", tags={"kind": "vae"})
    old = {"family": "beta_vae", "beta": 4.0, "c_max": 0.0, "seed": 0, "data_version": "v1", "lr": 0.001}
    tracker.log_params(rid, old)
    assert tracker.read_json(rid, vae_artifacts.TRAINING_CONFIG) is None
    config = vae_artifacts.read_training_config(tracker, tracker.get_run(rid))
    assert config == {k: str(v) for k, v in old.items()}


def test_log_params_skips_equal_values_and_refuses_conflicting_ones(tmp_path, empty_mlflow_db):
    new_project(tmp_path, empty_mlflow_db)
    tracker = Tracker(tmp_path)
    rid = tracker.create_run("params")
    client = client_for(tmp_path)
    client.log_batch(rid, params=[Param("beta", "4"), Param("family", "beta_vae")])

    tracker.log_params(rid, {"beta": 4.0, "family": "beta_vae", "lr": 0.001})
    assert client.get_run(rid).data.params == {"beta": "4", "family": "beta_vae", "lr": "0.001"}
    with pytest.raises(ValueError, match=r"param 'beta'.*'4'.*'5.0'"):
        tracker.log_params(rid, {"beta": 5.0})
    with pytest.raises(ValueError, match=r"param 'family'.*'beta_vae'.*'beta_tcvae'"):
        tracker.log_params(rid, {"family": "beta_tcvae"})
    assert client.get_run(rid).data.params["beta"] == "4"


def test_trackers_of_two_roots_in_one_process_each_use_their_own_store(tmp_path, empty_mlflow_db):
    first, second = tmp_path / "first", tmp_path / "second"
    for root in (first, second):
        new_project(root, empty_mlflow_db)
    ids = {root: Tracker(root).create_run(root.name) for root in (first, second)}

    assert "MLFLOW_TRACKING_URI" not in os.environ  # not left behind for later Trackers or child processes
    for root, rid in ids.items():
        assert [r.info.run_id for r in all_runs(client_for(root))] == [rid]


def test_a_copied_project_is_told_that_its_artifacts_go_to_the_originals_store(tmp_path, empty_mlflow_db, caplog):
    original, copy = tmp_path / "original", tmp_path / "copy"
    new_project(original, empty_mlflow_db)
    Tracker(original).create_run("first")
    shutil.copytree(original, copy)  # cp -r: the store's absolute artifact location comes along
    with caplog.at_level(logging.WARNING, logger="tubervae.runs.tracker"):
        Tracker(original)
        assert not caplog.records  # at home, nothing to say
        Tracker(copy)
    (record,) = caplog.records
    assert str(original / "mlruns") in record.getMessage() and "move mlflow.db away" in record.getMessage()


# --------------------------------------------------------------------------- a real kill


KILL_STEPS = 40
KILL_PARAMS = f"""\
train:
  latent_dim: 4
  steps: {KILL_STEPS}
  batch_size: 16
  lr: 0.001
  checkpoint_every: 5
  log_every: 5
  snapshot_every: 0
  device: cpu
  threads: 1
"""


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_weights_of_an_uninterrupted_run(
    tmp_path, caplog, empty_mlflow_db, no_figures
):
    killed, baseline = tmp_path / "killed", tmp_path / "baseline"
    for root in (killed, baseline):
        new_project(root, empty_mlflow_db)
        (root / "params.yaml").write_text(KILL_PARAMS)
    cfg = load_params(killed / "params.yaml").train
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    command = [sys.executable, "-m", "tubervae.cli", "train", "--family", "beta_vae", "--beta", "4", "--seed", "0"]
    problems: list[str] = []

    def kill_at_first_checkpoint(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 180
        while not list((killed / "checkpoints").glob("*.pt")):
            if proc.poll() is not None:
                problems.append(f"the CLI run ended (code {proc.returncode}) before its first checkpoint")
                return
            if time.monotonic() > deadline:
                problems.append("no checkpoint within 180 s")
                return
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)

    with open(killed / "cli.log", "wb") as out:
        proc = subprocess.Popen(command, cwd=killed, env=env, stdout=out, stderr=subprocess.STDOUT)
        watcher = threading.Thread(target=kill_at_first_checkpoint, args=(proc,), daemon=True)
        watcher.start()
        try:
            uninterrupted = run_stage(baseline, cfg)  # in this process, while the CLI run starts up
            watcher.join(timeout=200)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)  # reaped, so its pid is no longer alive
    assert not problems, problems + [(killed / "cli.log").read_text()[-3000:]]
    assert proc.returncode == -signal.SIGKILL, f"the CLI run ended by itself (code {proc.returncode}) before the kill"

    (checkpoint,) = (killed / "checkpoints").glob("*.pt")
    cut = torch.load(checkpoint, weights_only=True)["step"]
    assert 5 <= cut < KILL_STEPS and cut % 5 == 0, cut  # killed part-way, with a checkpoint behind it
    client = client_for(killed)
    (left,) = all_runs(client)
    assert left.info.status == "RUNNING" and left.data.tags["pid"] == str(proc.pid)

    with caplog.at_level(logging.INFO, logger="tubervae.training"):
        resumed = run_stage(killed, cfg)
    assert f"from step {cut}" in caplog.text
    statuses = {r.info.run_id: r.info.status for r in all_runs(client)}
    assert statuses == {left.info.run_id: "KILLED", resumed["run_id"]: "FINISHED"}

    weights = [
        torch.load(download(client_for(root), r["run_id"], "model/model.pt", root / "dl"), weights_only=True)
        for root, r in ((killed, resumed), (baseline, uninterrupted))
    ]
    assert_same_weights(*weights)
    assert resumed["test_rec"] == uninterrupted["test_rec"] and resumed["kl"] == uninterrupted["kl"]


def test_a_settings_normalised_beta_is_its_betas():
    """β·d/N of the setting's β (models.losses.normalised_beta, tested there)."""
    assert Setting("beta_vae", 18.0).normalised_beta(10, 64) == pytest.approx(0.0146484375)


def test_precision_auto_is_bfloat16_only_where_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "native_bfloat16_cpu", lambda: False)
    assert device_module.resolve_precision("auto", cpu) == "float32"
    assert device_module.resolve_precision("bfloat16", cpu) == "bfloat16"  # asked for: emulated, but obeyed
    # a model trained under 'auto' here is the float32 model: the same checkpoint and run identity
    auto, explicit = tiny_cfg(precision="auto"), tiny_cfg(precision="float32")
    assert weight_identity(auto) == weight_identity(explicit)
    monkeypatch.setattr(device_module, "native_bfloat16_cpu", lambda: True)
    assert device_module.resolve_precision("auto", cpu) == "bfloat16"
    assert device_module.resolve_precision("float32", cpu) == "float32"
    assert weight_identity(auto)["precision"] == "bfloat16"


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


def test_checkpoint_goes_once_the_model_is_in_mlflow_unless_kept(tmp_path, empty_mlflow_db):
    new_project(tmp_path, empty_mlflow_db)
    run_stage(tmp_path, tiny_cfg(steps=5))
    assert not list((tmp_path / "checkpoints").glob("*.pt"))
    run_stage(tmp_path, tiny_cfg(steps=5, keep_checkpoints=True), beta=2.0)
    (kept,) = (tmp_path / "checkpoints").glob("*.pt")
    assert torch.load(kept, weights_only=True)["step"] == 5


def test_a_run_without_figures_draws_none_and_trains_the_same_weights(tmp_path, empty_mlflow_db):
    new_project(tmp_path, empty_mlflow_db)
    drawn = run_stage(tmp_path, tiny_cfg(steps=5, snapshot_every=2))
    plain = run_stage(tmp_path, tiny_cfg(steps=5, snapshot_every=2, figures=False))
    client = client_for(tmp_path)
    paths = artifact_paths(client, plain["run_id"])
    assert "model/model.pt" in paths and not [p for p in paths if p.endswith(".png")]
    assert any(p.startswith("images/") for p in artifact_paths(client, drawn["run_id"]))
    # `figures` only watches: the same training key (a search reuses either run) and the same weights.
    tags = [client.get_run(r["run_id"]).data.tags["run_key"] for r in (drawn, plain)]
    assert tags[0] == tags[1]
    weights = [vae_artifacts.load_vae(Tracker(tmp_path), r["run_id"])[0].state_dict() for r in (drawn, plain)]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=0, rtol=0)


@pytest.mark.parametrize("beta", [float("nan"), -1.0, 0.0])
def test_bad_beta_is_refused_before_any_run_exists(tmp_path, empty_mlflow_db, beta):
    new_project(tmp_path, empty_mlflow_db)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        run_stage(tmp_path, tiny_cfg(steps=5), beta=beta)
    with pytest.raises(ValueError, match="c_max must be a finite number >= 0"):
        run_stage(tmp_path, tiny_cfg(steps=5), family="cbeta_vae", beta=700.0, c_max=-1.0)
    client = client_for(tmp_path)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []  # no run, not even FAILED


def test_the_fused_adam_updates_as_pytorchs_per_tensor_adam_does():
    """The training loop's one-kernel Adam is the thesis's Adam: 10 steps of a VAE in float64 land
    within rounding of PyTorch's per-tensor loop, and it is the fused kernel that runs on a CPU."""
    cfg = TrainConfig(lr=1e-3, adam_beta1=0.8, adam_beta2=0.99, adam_eps=1e-6)
    cpu = torch.device("cpu")
    nets = []
    for fused in (True, False):
        torch.manual_seed(0)
        net = VAE(image_size=16, latent_dim=4).double()
        start = [p.detach().clone() for p in net.parameters()]
        if fused:
            adam = device_module.new_optimiser(net.parameters(), cfg, cpu)
            assert adam.param_groups[0]["fused"]
        else:
            adam = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.8, 0.99), eps=1e-6)
        gen = torch.Generator().manual_seed(1)
        for _ in range(10):
            x = torch.rand(8, 3, 16, 16, generator=gen, dtype=torch.float64)
            out = net(x)
            loss = ((torch.sigmoid(out.logits) - x) ** 2).sum() + out.mu.square().sum()
            adam.zero_grad()
            loss.backward()
            adam.step()
        nets.append(net)
    moved = max((p - q).abs().max().item() for p, q in zip(nets[0].parameters(), start))
    gap = max((p - q).abs().max().item() for p, q in zip(nets[0].parameters(), nets[1].parameters()))
    assert moved > 1e-3 and gap < 1e-12


# --------------------------------------------------------------------------- guided families


def guided_discs(folder: Path, *, flip: str = "") -> stage.TrainingData:
    """Tiny disc photos with labels everywhere: labelled rows 0..7 guide, 8..15 are the holdout labels.

    `flip` turns good into bad and back in one place: "holdout" (the labelled rows that do not guide),
    "test" (the test split's labels) or "guide" (one guide row).
    """
    rng = np.random.default_rng(0)
    splits = {}
    for name, n in SPLIT_SIZES.items():
        images, factors = disc_images(n, rng)
        labels = np.arange(n) % 2 if name in ("labelled", "test") else np.full(n, -1)
        splits[name] = [images, labels, factors]
    guide = np.arange(SPLIT_SIZES["labelled"]) < 8
    labelled, test = splits["labelled"][1], splits["test"][1]
    if flip == "holdout":
        labelled[~guide] = 1 - labelled[~guide]
    elif flip == "test":
        splits["test"][1] = 1 - test
    elif flip == "guide":
        labelled[3] = 1 - labelled[3]
    write_processed(folder, {k: tuple(v) for k, v in splits.items()}, FACTOR_NAMES, guide=guide)
    return stage.load_training_data(folder)


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


def test_a_guided_run_logs_its_weight_and_component_and_keeps_unguided_run_keys(tmp_path, empty_mlflow_db, no_figures):
    guided_discs(tmp_path / "data" / "processed")
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    result = run_stage(tmp_path, tiny_cfg(steps=3), family="guided_beta_vae", guide_weight=30.0)
    run = client_for(tmp_path).get_run(result["run_id"])
    assert run.data.params == {
        "family": "guided_beta_vae",
        "beta": "4.0",
        "guide_weight": "30.0",
        "seed": "0",
        "steps": "3",
    }
    training = vae_artifacts.read_training_config(Tracker.open(tmp_path), run)
    assert {k: training[k] for k in ("family", "guide_weight", "guided_component", "n_guide")} == {
        "family": "guided_beta_vae",
        "guide_weight": 30.0,
        "guided_component": 0,
        "n_guide": 8,
    }
    assert "guide_head_weight" in run.data.metrics and "final_guide_bce" in run.data.metrics
    _, config = vae_artifacts.load_vae(Tracker.open(tmp_path), result["run_id"])
    assert config["guided_component"] == 0 and config["guide_weight"] == 30.0
    # an unguided setting's identity holds no guide_weight, so its runs keep the keys they had
    assert "guide_weight" not in checkpoint_identity(BETA_4, 0, tiny_cfg(), "v", SIZE)["setting"]


def test_the_traversal_names_the_guided_component(data, monkeypatch):
    seen = {}

    def traversal(images, **kwargs):
        seen.update(kwargs)
        return "figure"

    monkeypatch.setattr(stage.plots, "traversal_figure", traversal)
    monkeypatch.setattr(stage.plots, "distribution_figure", lambda *a, **k: None)
    monkeypatch.setattr(stage.plots, "reconstruction_figure", lambda *a, **k: None)
    model = VAE(image_size=SIZE, latent_dim=LATENT)
    assert stage.figures(model, data.probe, kl_threshold=INFORMATIVE_KL, guided=0)["traversal.png"] == "figure"
    assert seen["guided"] == 0
