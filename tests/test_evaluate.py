"""The evaluate stage (stages/evaluate.py): its bootstrap Spearman, and the stage on tiny models trained by the
real training entry point and on runs made here (conftest.py's `log_model`, as test_udr_stage.py makes them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import spearmanr

from conftest import (
    N_PROBE,
    clean_copy,
    fresh_root,
    is_png,
    log_model,
    stage_paths,
    train_tiny_runs,
)
from conftest import write_probe_discs as write_processed_discs
from tubervae.config import DataConfig, EvaluateConfig, Params, UdrConfig
from tubervae.data.processed import load_split, save_evalset, save_split
from tubervae.evaluation.udr import udr_scores
from tubervae.io import write_json
from tubervae.runs import training_run as train_stage
from tubervae.runs.tracker import Tracker
from tubervae.stages import evalset as evalset_stage
from tubervae.stages import evaluate as evaluate_stage
from tubervae.stages import udr as udr_stage

PROJECT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("own_tracking_store")  # each root's own sqlite:///<root>/mlflow.db


@pytest.mark.parametrize("n", [12, 40])
def test_bootstrap_spearman_matches_scipy(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = x + rng.normal(size=n)
    out = evaluate_stage.bootstrap_spearman(x, y, 300, np.random.default_rng(0))
    assert out["rho"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert out["n"] == n
    assert out["low"] < out["rho"] < out["high"] <= 1.0
    again = evaluate_stage.bootstrap_spearman(x, y, 300, np.random.default_rng(0))
    assert again == out  # the interval depends only on the generator


def test_bootstrap_spearman_edge_cases():
    rng = np.random.default_rng(0)
    x = np.arange(10.0)
    perfect = evaluate_stage.bootstrap_spearman(x, x**3, 50, rng)
    assert perfect == pytest.approx({"rho": 1.0, "low": 1.0, "high": 1.0, "n": 10}, abs=1e-12)
    reverse = evaluate_stage.bootstrap_spearman(x, -x, 50, rng)
    assert (reverse["rho"], reverse["low"], reverse["high"]) == pytest.approx((-1.0, -1.0, -1.0), abs=1e-12)
    # Models with a missing score are left out before ranking.
    y = np.array([3.0, 1.0, np.nan, 4.0, 1.5, 9.0, 2.0, 6.0, np.inf, 5.0])
    ok = np.isfinite(y)
    gappy = evaluate_stage.bootstrap_spearman(x, y, 50, rng)
    assert gappy["n"] == 8 and gappy["rho"] == pytest.approx(spearmanr(x[ok], y[ok]).statistic)
    assert evaluate_stage.bootstrap_spearman(x, np.ones(10), 50, rng) == {
        "rho": None,
        "low": None,
        "high": None,
        "n": 10,
    }
    assert evaluate_stage.bootstrap_spearman(x[:2], x[:2], 50, rng)["rho"] is None


@pytest.mark.slow
def test_evaluate_stage_on_tiny_trained_models(tmp_path, empty_mlflow_db, monkeypatch):
    root = fresh_root(tmp_path / "project", empty_mlflow_db)
    write_processed_discs(root, n_train=120, n_test=60)
    processed = root / "data" / "processed"
    # The training pictures are not under test here and cost most of a tiny run's time.
    monkeypatch.setattr(train_stage, "figures", lambda *args, **kwargs: {})
    tracker = Tracker(root)
    data = train_stage.load_training_data(processed)
    run_ids = train_tiny_runs(tracker, data, [(beta, seed) for beta in (1.0, 4.0) for seed in (0, 1)])
    # workers=1: the 4 tiny models are scored in this process, without a pool of processes to start.
    params = Params(udr=UdrConfig(heatmap_pairs=0), evaluate=EvaluateConfig(n_points=40, n_bootstrap=20, workers=1))
    udr_stage.run(params, all_runs=True, **stage_paths(root))
    # The settings come from each run's training_config.json: its params hold neither beta_norm nor the data.
    ranked = pd.read_csv(root / "reports" / "udr" / "models.csv").set_index("run_id").loc[run_ids]
    assert ranked.beta.tolist() == [1.0, 1.0, 4.0, 4.0] and (ranked.steps == 8).all()
    assert ranked.beta_norm.to_numpy() == pytest.approx(ranked.beta.to_numpy() * 3 / (3 * 16 * 16))
    assert (ranked.data_version == data.data_version).all()
    champion = run_ids[2]
    write_json(root / "reports" / "register" / "champion.json", {"run_id": champion})
    # A held-out set with known factors; its 4th factor plays a defect ('rot'), and only 3 are scored.
    held = load_split("test", processed)
    names, scored = ["x", "y", "radius", "rot"], ["x", "radius", "rot"]
    save_evalset(
        root / "data" / "evalset",
        held["images"],
        held["factors"],
        names,
        scored,
        held["labels"],
        {"n": len(held["images"])},
    )

    summary = evaluate_stage.run(
        params,
        root=root,
        processed_dir=processed,
        evalset_dir=root / "data" / "evalset",
        udr_dir=root / "reports" / "udr",
        champion_path=root / "reports" / "register" / "champion.json",
        out_dir=root / "reports" / "evaluate",
    )
    out = root / "reports" / "evaluate"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(summary))
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == [
        "champion_importance.png",
        "mig_informative_per_factor.png",
        "mig_per_factor.png",
        "udr_vs_dci_d.png",
        "udr_vs_mig.png",
    ]
    assert summary["n_models"] == 4 and summary["n_points"] == 40 and summary["factors"] == scored
    # The supervised fits used the 40 photos scored, not the (larger) evaluate.n_train and n_test.
    used = summary["definitions"]
    assert used["n_train"] + used["n_test"] == 40 and min(used["n_train"], used["n_test"]) >= 1
    assert (used["max_n_train"], used["max_n_test"]) == (params.evaluate.n_train, params.evaluate.n_test)
    assert summary["scored_on"] == "evaluation set"
    table = pd.read_csv(out / "models.csv")
    assert sorted(table.run_id) == sorted(run_ids)
    for metric in evaluate_stage.SUPERVISED:
        assert np.isfinite(table[metric]).all(), metric
    assert table.mig.between(0, 1).all() and table.dci_d.between(0, 1).all()
    # The stage recomputes the configured UDR: it must agree with the udr stage.
    assert table.udr_within_lasso.to_numpy() == pytest.approx(table.udr_within.to_numpy(), nan_ok=True)
    assert table.udr_a2a_lasso.to_numpy() == pytest.approx(table.udr_a2a.to_numpy(), nan_ok=True)
    # Correlations are Spearman's rho over the models, as scipy computes it.
    assert set(summary["correlations"]) == {
        "udr_within_lasso",
        "udr_a2a_lasso",
        "udr_within_spearman",
        "udr_a2a_spearman",
    }
    rhos = [r["rho"] for per_metric in summary["correlations"].values() for r in per_metric.values()]
    assert sum(r is not None for r in rhos) >= 6
    for udr_col, per_metric in summary["correlations"].items():
        assert set(per_metric) == set(evaluate_stage.SUPERVISED)
        for metric, result in per_metric.items():
            x, y = table[udr_col].to_numpy(float), table[metric].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)
            if result["rho"] is None:
                assert ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0
            else:
                assert result["rho"] == pytest.approx(spearmanr(x[ok], y[ok]).statistic, abs=1e-12)
    # Every model's run carries its supervised scores, and per factor its MIG (published and over the
    # informative components), the component holding it and DCI completeness; MIG is their mean.
    per_factor = table[[f"mig_{n}" for n in scored]].to_numpy(float)
    assert per_factor.mean(axis=1) == pytest.approx(table.mig.to_numpy())
    assert (table.captured == (per_factor >= 0.2).sum(axis=1)).all()
    informative = table[[f"mig_informative_{n}" for n in scored]].to_numpy(float)
    assert (table.captured_informative == (informative >= 0.2).sum(axis=1)).all()
    assert summary["most_captured"]["captured"] == table.captured.max()
    for row in table.itertuples():
        metrics = tracker.client.get_run(row.run_id).data.metrics
        assert metrics["mig"] == pytest.approx(row.mig) and metrics["dci_d"] == pytest.approx(row.dci_d)
        for name in scored:
            assert metrics[f"mig/{name}"] == pytest.approx(getattr(row, f"mig_{name}"))
            assert metrics[f"dci_c/{name}"] == pytest.approx(getattr(row, f"dci_c_{name}"), nan_ok=True)
            assert 0 <= getattr(row, f"mig_component_{name}") < 3
        assert metrics["captured"] == row.captured
    # The champion's place among the models, by MIG and DCI.
    chosen = table.set_index("run_id").loc[champion]
    assert summary["champion"]["rank_by_mig"] == int((table.mig > chosen.mig).sum() + 1)
    assert summary["champion"]["rank_by_dci_d"] == int((table.dci_d > chosen.dci_d).sum() + 1)
    importance = pd.read_csv(out / "champion_importance.csv")
    assert importance.columns.tolist() == ["component", *scored] and len(importance) == 3
    # The defect's best informative component in every model, from the same 40 photos' codes.
    assert summary["best_defect_rho"] == {"rot": pytest.approx(table.rho_rot.max())}
    assert summary["champion"]["defects"]["rot"]["rho"] == pytest.approx(chosen.rho_rot)
    assert summary["champion"]["defects"]["rot"]["component"] == chosen.component_rot
    for row in table.itertuples():
        assert tracker.client.get_run(row.run_id).data.metrics["defect_rho/rot"] == pytest.approx(row.rho_rot)
        assert 0 <= row.rho_rot <= 1 and -1 <= row.component_rot < 3
    for name in ("udr_vs_mig", "udr_vs_dci_d", "champion_importance"):
        assert is_png(out / "figures" / f"{name}.png"), name
    (stage_run,) = tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'evaluate'")
    assert stage_run.info.status == "FINISHED"
    # The stage's own new run: no model's run is reopened for it.
    assert stage_run.info.run_id not in run_ids
    assert all(tracker.client.get_run(r).data.tags["kind"] == "vae" for r in run_ids)
    logged = {f.path for f in tracker.client.list_artifacts(stage_run.info.run_id, "evaluate")}
    assert {"evaluate/metrics.json", "evaluate/models.csv"} <= logged


def test_evaluate_skips_data_without_factors(tmp_path):
    write_processed_discs(tmp_path, with_factors=False)
    out = tmp_path / "reports" / "evaluate"
    evalset_stage.run(Params(data=DataConfig(source=str(tmp_path))), out_dir=tmp_path / "data" / "evalset")
    summary = evaluate_stage.run(
        Params(),
        root=tmp_path,
        processed_dir=tmp_path / "data" / "processed",
        evalset_dir=tmp_path / "data" / "evalset",
        udr_dir=tmp_path / "reports" / "udr",
        out_dir=out,
    )
    assert summary == {"skipped": "no ground-truth factors in the data"}
    assert json.loads((out / "metrics.json").read_text()) == summary
    # Both outputs dvc.yaml declares for the stage exist, so `dvc repro` on real photos goes on.
    stage = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]["evaluate"]
    declared = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"] + stage["metrics"]]
    for path in declared:
        assert (tmp_path / path).is_file(), path
    assert pd.read_csv(out / "models.csv").columns.tolist() == ["run_id", *evaluate_stage.SUPERVISED]
    assert not (tmp_path / "mlflow.db").exists()  # nothing was tracked


def unmeasure(processed: Path, split: str, keep: np.ndarray) -> np.ndarray:
    """The split's factors NaN but in rows `keep`, as for photos a folder's factors.csv does not measure."""
    arrays = load_split(split, processed)
    measured = np.zeros(len(arrays["factors"]), bool)
    measured[keep] = True
    arrays["factors"][~measured] = np.nan
    save_split(processed, split, arrays)
    return measured


@pytest.mark.parametrize("n_measured", [0, 3])
def test_evaluate_skips_a_test_split_with_too_few_measured_photos_and_says_why(tmp_path, n_measured):
    write_processed_discs(tmp_path, n_train=20, n_test=10)
    unmeasure(tmp_path / "data" / "processed", "test", np.arange(n_measured))
    evalset_stage.run(Params(data=DataConfig(source=str(tmp_path))), out_dir=tmp_path / "data" / "evalset")
    out = tmp_path / "reports" / "evaluate"
    summary = evaluate_stage.run(Params(), root=tmp_path, out_dir=out)
    reason = f"{n_measured} of the test split's 10 photos have measured factors (factors.csv); "
    assert summary == {"skipped": reason + "the supervised metrics need at least 4"}
    assert json.loads((out / "metrics.json").read_text()) == summary
    assert pd.read_csv(out / "models.csv").empty
    assert not (tmp_path / "mlflow.db").exists()  # nothing was tracked


def test_evaluate_scores_only_the_measured_photos_of_a_folders_test_split(tmp_path, empty_mlflow_db, monkeypatch):
    root = fresh_root(tmp_path / "project", empty_mlflow_db)
    version = write_processed_discs(root)
    rng = np.random.default_rng(7)
    truth = rng.normal(size=(N_PROBE, 3))
    for seed in (0, 1):  # two models of one setting: the scoring, not the correlations, is under test
        mu, kl = clean_copy(truth, [0, 1, 2], 2, rng)
        log_model(Tracker(root), family="beta_vae", beta=4.0, seed=seed, data_version=version, mu=mu, kl=kl)
    processed = root / "data" / "processed"
    measured = unmeasure(processed, "test", np.arange(0, 60, 3))  # 20 of the 60 test photos measured
    test = load_split("test", processed)
    evalset_stage.run(Params(data=DataConfig(source=str(root))), out_dir=root / "data" / "evalset")
    params = Params(
        udr=UdrConfig(heatmap_pairs=0),
        evaluate=EvaluateConfig(n_bootstrap=20, workers=1, dci_method="lasso", sap_method="correlation"),
    )
    udr_stage.run(params, **stage_paths(root))
    # Every model "encodes" a photo as a fixed projection of its pixels: what matters is which photos it sees.
    projection = np.random.default_rng(0).normal(size=(16 * 16 * 3, 5))
    encoded = []

    def encode(vae, images):
        encoded.append(images)
        return (images.reshape(len(images), -1).astype(np.float64) @ projection,)

    monkeypatch.setattr(evaluate_stage.vae_artifacts, "load_vae", lambda tracker, run_id: (run_id, None))
    monkeypatch.setattr(evaluate_stage, "encode", encode)
    summary = evaluate_stage.run(params, root=root)
    assert summary["scored_on"] == "test split" and summary["measured"] == {"photos": 20, "of": 60}
    assert summary["n_points"] == 20 and summary["n_models"] == 2 == len(encoded)
    for images in encoded:
        np.testing.assert_array_equal(images, test["images"][measured])
    table = pd.read_csv(root / "reports" / "evaluate" / "models.csv")
    assert np.isfinite(table[list(evaluate_stage.SUPERVISED)].to_numpy(float)).all()
    assert json.loads((root / "reports" / "evaluate" / "metrics.json").read_text())["measured"]["photos"] == 20


def test_per_factor_mig_over_the_informative_components_ignores_a_collapsed_copy():
    """A collapsed component whose means still follow x closes x's published gap; over the informative
    components alone (the KL cut-off) x is captured. y, held by z1 alone, is captured both ways."""
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, 4000), rng.uniform(0, 1, 4000)
    mu = np.column_stack([x, y, 0.03 * x + 0.0001 * rng.normal(size=4000)])  # z2: collapsed, still follows x
    factors = np.column_stack([x, y])
    per_factor = pd.DataFrame(
        {"mig": [0.0, 0.0], "mig_component": [0, 1], "dci_completeness": [0.5, 0.5]}, index=["x", "y"]
    )
    from tubervae.evaluation.mig import mig

    published = mig(mu, factors)["mig_per_factor"]
    per_factor["mig"] = published
    result = evaluate_stage.per_factor_scores(mu, factors, ["x", "y"], np.array([True, True, False]), per_factor)
    assert published[0] < 0.2 <= result["factors"]["x"]["mig_informative"]
    assert result["factors"]["y"]["mig_informative"] == pytest.approx(published[1], abs=0.01) and published[1] >= 0.2
    assert result["captured"] == 1 and result["captured_informative"] == 2
    assert result["factors"]["x"]["mig_informative"] == pytest.approx(mig(mu[:, :2], factors)["mig_per_factor"][0])


def test_the_evaluate_stages_udr_leaves_a_guided_component_out_as_the_udr_stage_does():
    rng = np.random.default_rng(5)
    truth = rng.normal(size=(N_PROBE, 3))
    latents = [dict(zip(("mu", "kl"), clean_copy(truth, [0, 1, 2], 2, rng))) for _ in range(4)]
    for z in latents[:2]:  # the guided models' z0: informative, and unlike anything in the other models
        z["mu"][:, 0], z["kl"][0] = rng.normal(size=N_PROBE), 1.0
    models = pd.DataFrame(
        {
            "family": ["guided_beta_vae"] * 2 + ["beta_vae"] * 2,
            "beta": 2.0,
            "c_max": 0.0,
            "guide_weight": [9.0, 9.0, 0, 0],
        }
    )
    unguided = evaluate_stage.udr_variants(models, latents, Params())
    models["guided_component"] = [0, 0, -1, -1]
    variants = evaluate_stage.udr_variants(models, latents, Params())
    kls = [z["kl"].copy() for z in latents]
    kls[0][0] = kls[1][0] = 0.0
    expected = udr_scores([z["mu"] for z in latents], kls, similarity="spearman")
    assert variants["udr_a2a_spearman"].to_numpy() == pytest.approx(expected.scores)
    assert not np.allclose(unguided["udr_a2a_spearman"], variants["udr_a2a_spearman"])
