"""One setting, one source: `udr.kl_threshold` decides "informative" for UDR, n_active, classify and the plots.

A tiny study is trained under the default cut-off; then the cut-off moves between two of
the trained models' component KLs, so that the count of informative components changes,
and every consumer must count the same components as informative.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import labelled_disc_splits, write_processed
from tubervae import plots
from tubervae.config import INFORMATIVE_KL, parse_params
from tubervae.runs import vae_artifacts
from tubervae.runs.study import storage_url
from tubervae.runs.tracker import Tracker
from tubervae.stages import classify, register, search, udr

FAMILY = "beta_vae"


def raw_params(kl_threshold: float, seeds: int) -> dict:
    return {
        "train": {
            "latent_dim": 4,
            "steps": 40,
            "batch_size": 16,
            "log_every": 20,
            "checkpoint_every": 40,
            "snapshot_every": 0,
            "device": "cpu",
            "threads": 1,
            "workers": 1,  # in-process, so that the plots spy sees the training
        },
        "search": {
            "seeds": seeds,
            "min_active": 0,
            "enqueue_grid": True,
            "spaces": {FAMILY: {"n_trials": 1, "beta": [1.0, 2.0], "grid": [{"beta": 1.0}]}},
        },
        "udr": {"kl_threshold": kl_threshold, "heatmap_pairs": 0},
        "classify": {"label_sizes": [6, 20], "n_draws": 1, "cnn_steps": 5, "gallery_size": 0},
    }


def run_search(root, params) -> dict:
    return search.run(
        params,
        FAMILY,
        root=root,
        processed_dir=root / "data" / "processed",
        reports_dir=root / "reports" / "search",
        progress=False,
    )


def between_two_kls(kls: list[np.ndarray]) -> float:
    """A cut-off above the default that makes at least one informative component uninformative."""
    values = np.unique(np.concatenate(kls))
    values = values[values > INFORMATIVE_KL]
    assert len(values) >= 2, f"the tiny models need two informative components to test with, got KLs {kls}"
    return float(np.sqrt(values[0] * values[1]))


@pytest.fixture
def project(tmp_path, empty_mlflow_db, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    splits, names = labelled_disc_splits(seed=0)
    write_processed(tmp_path / "data" / "processed", splits, names)
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    return tmp_path


@pytest.mark.slow
def test_kl_threshold_reaches_udr_n_active_classify_and_plots(project, monkeypatch):
    first = run_search(project, parse_params(raw_params(INFORMATIVE_KL, seeds=2)))
    tracker = Tracker(project)
    kls = {rid: vae_artifacts.latents(tracker, rid)["kl"] for rid in first["trials"][0]["seed_run_ids"]}
    threshold = between_two_kls(list(kls.values()))

    seen_thresholds = []
    real_distribution_figure = plots.distribution_figure

    def spy(*args, **kwargs):
        seen_thresholds.append(kwargs["kl_threshold"])
        return real_distribution_figure(*args, **kwargs)

    monkeypatch.setattr(plots, "distribution_figure", spy)
    params = parse_params(raw_params(threshold, seeds=3))  # a new study; seeds 0 and 1 reuse their runs
    summary = run_search(project, params)
    (trial,) = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    run_ids = trial["seed_run_ids"]
    kls = {rid: vae_artifacts.latents(tracker, rid)["kl"] for rid in run_ids}
    counts = {rid: int((kl > threshold).sum()) for rid, kl in kls.items()}
    assert counts != {rid: int((kl > INFORMATIVE_KL).sum()) for rid, kl in kls.items()}

    # plots: the newly trained seed drew its distributions with the configured cut-off
    assert seen_thresholds and set(seen_thresholds) == {threshold}
    # the search's feasibility count
    study = optuna.load_study(study_name=summary["study"], storage=storage_url(project))
    assert study.trials[-1].user_attrs["n_active_per_seed"] == [counts[rid] for rid in run_ids]

    # the UDR tables and the n_active metric written back onto every ranked run
    udr.run(
        params,
        root=project,
        search_dir=project / "reports" / "search",
        out_dir=project / "reports" / "udr",
        processed_dir=project / "data" / "processed",
    )
    models = pd.read_csv(project / "reports" / "udr" / "models.csv")
    assert dict(zip(models.run_id, models.n_active)) == counts
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert {rid: int(client.get_run(rid).data.metrics["n_active"]) for rid in run_ids} == counts

    # classify marks the champion's informative components with the same cut-off
    register.run(
        params,
        root=project,
        udr_dir=project / "reports" / "udr",
        processed_dir=project / "data" / "processed",
        out_path=project / "reports" / "register" / "c.json",
    )
    champion = json.loads((project / "reports" / "register" / "c.json").read_text())["run_id"]
    classify.run(
        params, root=project, processed_dir=project / "data" / "processed", out_dir=project / "reports" / "classify"
    )
    components = pd.read_csv(project / "reports" / "classify" / "components.csv")
    expected = kls[champion][components.component.to_numpy()] > threshold
    assert components.informative.tolist() == expected.tolist()
    metrics = json.loads((project / "reports" / "classify" / "metrics.json").read_text())
    assert metrics["informative_components"] == [int(j) for j in np.flatnonzero(kls[champion] > threshold)] or (
        counts[champion] == 0 and len(metrics["informative_components"]) == 4
    )
