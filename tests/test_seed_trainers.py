"""A trial's seeds trained serially, in the pool or fused (`tubervae.runs.seed_trainers`): one MLflow run per seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FAMILY, LOG_EVERY, RAW_PARAMS, STEPS, all_runs, client, merged, run_search
from tubervae.config import parse_params
from tubervae.runs import vae_artifacts
from tubervae.runs.tracker import Tracker
from tubervae.runs.training_run import load_training_data
from tubervae.training.loop import train_model
from tubervae.training.setting import Setting


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # twins then differ by rounding only (float32 Adam amplifies it)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.slow
def test_fused_seeds_keep_one_mlflow_run_each_and_are_reused_unfused(project, no_pictures, float64):
    """`train.fuse: always`: a trial's seeds train as one fused model, yet each seed has its own FINISHED run
    with its metric history, probe latents and the weights of its separately trained twin, and a study run
    without fusing reuses them: fusing never changes what a run is."""
    raw = merged(RAW_PARAMS, train={"fuse": "always"})
    summary = run_search(project, raw)
    assert summary["n_complete"] == 1
    runs = all_runs(project)
    assert {r.info.status for r in runs} == {"FINISHED"}
    vae_runs = [r for r in runs if r.data.tags.get("kind") == "vae"]
    assert sorted(int(r.data.tags["seed"]) for r in vae_runs) == [0, 1]
    trial = summary["trials"][0]
    cfg = parse_params(raw).train
    data = load_training_data(project / "data" / "processed")
    for seed, run_id in enumerate(trial["seed_run_ids"]):
        history = client(project).get_metric_history(run_id, "curves/loss")
        assert [m.step for m in history] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
        alone = train_model(
            Setting(FAMILY, trial["params"]["beta"]),
            seed,
            cfg,
            train_images=data.train,
            probe_images=data.probe,
            test_images=data.test,
            data_version=data.data_version,
            progress=False,
        )
        fused, _ = vae_artifacts.load_vae(Tracker(project), run_id)
        for name, value in alone.model.state_dict().items():
            torch.testing.assert_close(fused.state_dict()[name], value, atol=1e-9, rtol=0)
        np.testing.assert_allclose(
            vae_artifacts.latents(Tracker(project), run_id)["kl"], alone.latents["kl"], rtol=1e-6
        )
    assert not list((project / "checkpoints").glob("*.pt"))  # removed once each model is in MLflow

    again = run_search(project, merged(raw, train={"fuse": "never"}), n_trials=1)
    assert again["trials"][0]["seed_run_ids"] == trial["seed_run_ids"]
    assert len([r for r in all_runs(project) if r.data.tags.get("kind") == "vae"]) == 2
