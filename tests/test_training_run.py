"""The train stage (tubervae.runs.training_run) and what its MLflow run holds: params, metrics, artifacts,
the dataset input, runs reused or resumed after a SIGKILL of the CLI, settings refused before any run exists.

Every run here is tiny (conftest.py's tiny training runs): 16×16 images of bright discs, a 4-component latent
space, batches of 16 and at most 40 steps on one thread.
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

import tubervae.training.setting as setting_module
from conftest import (
    SPLIT_SIZES,
    TINY_LATENT,
    TINY_SIZE,
    assert_same_weights,
    guided_discs,
    new_project,
    tiny_cfg,
    train,
)
from conftest import store_client as client_for
from conftest import store_runs as all_runs
from conftest import write_training_discs as write_processed_discs
from tubervae.config import INFORMATIVE_KL, TrainConfig, load_params
from tubervae.models.nets import VAE
from tubervae.runs import training_run as stage
from tubervae.runs import vae_artifacts
from tubervae.runs.tracker import Tracker
from tubervae.training.checkpoints import checkpoint_identity
from tubervae.training.running import NonFiniteLossError
from tubervae.training.setting import Setting

SIZE, LATENT = TINY_SIZE, TINY_LATENT
BETA_4 = Setting("beta_vae", 4.0)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("traversal.png", "distributions.png", "reconstructions.png")

pytestmark = pytest.mark.usefixtures("isolated_training")  # each test tracks into its own folder


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


# --------------------------------------------------------------------------- the MLflow run


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


# --------------------------------------------------------------------------- guided families


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
