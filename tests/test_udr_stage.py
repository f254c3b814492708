"""The udr stage (stages/udr.py) on MLflow runs made here, and `mlflow run . -e udr`.

The udr stage is fed latents built so that the settings differ in how well their seeds
agree: seeds of the "clean" setting hold the same factors up to permutation, sign and
scale (UDR near 1), seeds of the "mixed" setting hold different rotations of them.
The evaluate stage is tested in test_evaluate.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import rankdata

from conftest import (
    MODEL_STEPS,
    N_PROBE,
    clean_copy,
    fresh_root,
    is_png,
    log_model,
    run_command,
    stage_paths,
)
from conftest import write_probe_discs as write_processed_discs
from tubervae.config import Params, UdrConfig
from tubervae.evaluation.udr import udr_scores
from tubervae.io import write_json
from tubervae.runs.tracker import Tracker
from tubervae.stages import udr as udr_stage
from tubervae.training.setting import Setting

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.usefixtures("own_tracking_store")  # each root's own sqlite:///<root>/mlflow.db


def thesis_columns(n_seeds: int) -> list[str]:
    """The columns of the thesis's UDR tables (figures 4.11-4.14), in order."""
    return ["model type", "param", "beta_norm", "#top", *(f"seed_{i}" for i in range(n_seeds)), "udr"]


# ------------------------------------------------------------------ fixtures and helpers


def search_report(root: Path, family: str, trials: list[dict]) -> None:
    """reports/search/<family>.json in the layout of tubervae.stages.search.summarise."""
    full = []
    for number, trial in enumerate(trials):
        full.append(
            {
                "number": number,
                "state": trial.get("state", "COMPLETE"),
                "value": trial.get("value"),
                "params": trial["params"],
                "feasible": trial.get("feasible", True),
                "n_active": None,
                "infeasible_reason": "",
                "udr_per_seed": None,
                "mlflow_run_id": None,
                "seed_run_ids": trial["seed_run_ids"],
                "fail_reason": "",
            }
        )
    write_json(
        root / "reports" / "search" / f"{family}.json",
        {
            "family": family,
            "study": f"{family}-test",
            "objective": "median within-setting UDR",
            "n_complete": sum(t["state"] == "COMPLETE" for t in full),
            "n_feasible": len(full),
            "best_value": None,
            "best_params": None,
            "best_trial": None,
            "best_n_active": None,
            "best_mlflow_run_id": None,
            "trials": full,
        },
    )


def mixed_copy(truth: np.ndarray, n_dead: int, rng: np.random.Generator):
    """A random rotation of the factors plus one extra mixture, then collapsed components."""
    n, k = truth.shape
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    extra = truth @ rng.normal(size=(k, 1))
    live = np.hstack([truth @ q, extra]) + 0.05 * rng.normal(size=(n, k + 1))
    mu = np.hstack([live, 0.01 * rng.normal(size=(n, n_dead))])
    kl = np.concatenate([rng.uniform(0.5, 2.0, k + 1), np.full(n_dead, 0.001)])
    return mu, kl


@pytest.fixture
def udr_root(tmp_path, empty_mlflow_db):
    """A project root ready for the udr stage: processed data, runs with latents, search reports."""
    root = fresh_root(tmp_path / "project", empty_mlflow_db)
    version = write_processed_discs(root)
    tracker = Tracker(root)
    rng = np.random.default_rng(7)
    truth = rng.normal(size=(N_PROBE, 3))
    models = []  # (family, beta, seed, mu, kl) of the runs on the current data

    def add(family, beta, seed, mu, kl, data_version=version, legacy=False):
        mu = mu.astype(np.float32)  # as stored in latents.npz
        rid = log_model(
            tracker, family=family, beta=beta, seed=seed, data_version=data_version, mu=mu, kl=kl, legacy=legacy
        )
        if data_version == version:
            models.append({"run_id": rid, "family": family, "beta": beta, "seed": seed, "mu": mu, "kl": kl})
        return rid

    # The clean setting has a third seed, so a median differs from a mean; seeds logged out of order.
    clean = [add("beta_vae", 4.0, s, *clean_copy(truth, [0, 1, 2], 2, rng)) for s in (2, 0, 1)]
    # One setting logged as runs were before their configuration file, every setting a param; the stale
    # run too, so that its data version is read from a param.
    mixed = [add("beta_vae", 1.0, s, *mixed_copy(truth, 1, rng), legacy=True) for s in (0, 1)]
    stale = add("beta_vae", 4.0, 3, *clean_copy(truth, [0, 1, 2], 2, rng), data_version="0123456789abcdef", legacy=True)
    tc = [add("beta_tcvae", 6.0, s, *clean_copy(truth, [0, 1], 3, rng)) for s in (0, 1)]
    search_report(
        root,
        "beta_vae",
        [
            {"params": {"beta": 4.0}, "seed_run_ids": clean + [stale]},
            {"params": {"beta": 1.0}, "seed_run_ids": mixed, "feasible": False},
            {"params": {"beta": 2.0}, "seed_run_ids": ["f" * 32], "state": "FAIL"},  # never opened
        ],
    )
    search_report(root, "beta_tcvae", [{"params": {"beta": 6.0}, "seed_run_ids": tc}])
    return {"root": root, "tracker": tracker, "models": models, "stale": stale, "version": version}


def expected_scores(models: list[dict], cfg: UdrConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    reps, kls = [m["mu"] for m in models], [m["kl"] for m in models]
    common = dict(
        similarity=cfg.similarity, aggregate=cfg.aggregate, kl_threshold=cfg.kl_threshold, lasso_alpha=cfg.lasso_alpha
    )
    within = udr_scores(reps, kls, groups=[f"{m['family']}/{m['beta']}" for m in models], **common)
    a2a = udr_scores(reps, kls, **common)
    return within.scores, a2a.scores, within.n_informative


# ------------------------------------------------------------------ the udr stage


def test_udr_tables_scores_and_metrics_on_runs(udr_root):
    root, tracker, models = udr_root["root"], udr_root["tracker"], udr_root["models"]
    cfg = UdrConfig(heatmap_pairs=3)
    summary = udr_stage.run(Params(udr=cfg), **stage_paths(root))
    out = root / "reports" / "udr"
    within, a2a, n_top = expected_scores(models, cfg)
    by_run = {m["run_id"]: i for i, m in enumerate(models)}

    # The constructed latents behave as designed: agreeing seeds score high, rotated ones lower.
    clean = [i for i, m in enumerate(models) if m["family"] == "beta_vae" and m["beta"] == 4.0]
    mixed = [i for i, m in enumerate(models) if m["family"] == "beta_vae" and m["beta"] == 1.0]
    assert within[clean].min() > 0.8 and within[mixed].max() < within[clean].min() - 0.2

    def check_rows(table: pd.DataFrame, scores: np.ndarray, n_seeds: int) -> None:
        """Each row: the setting's models' scores in seed order (NaN-padded), then their median."""
        for row in table.to_dict("records"):
            idx = sorted(
                (
                    i
                    for i, m in enumerate(models)
                    if m["family"] == row["model type"] and Setting(m["family"], m["beta"]).label == row["param"]
                ),
                key=lambda i: models[i]["seed"],
            )
            padded = np.concatenate([scores[idx], np.full(n_seeds - len(idx), np.nan)])
            assert [row[f"seed_{i}"] for i in range(n_seeds)] == pytest.approx(padded, abs=1e-9, nan_ok=True)
            assert row["udr"] == pytest.approx(np.median(scores[idx]), abs=1e-9)
            assert row["#top"] == np.median(n_top[idx])

    # Thesis layout, one table per family: one row per setting, seeds in seed order, median.
    table = pd.read_csv(out / "beta_vae.csv", dtype={"param": str})
    assert list(table.columns[:8]) == thesis_columns(3)
    assert table["param"].tolist() == ["1", "4"]  # sorted by beta
    assert table["#top"].tolist() == [4.0, 3.0]
    check_rows(table, within, 3)
    assert np.isnan(table.loc[0, "seed_2"])  # the mixed setting has two seeds
    assert table["feasible"].tolist() == [False, True]
    tc_table = pd.read_csv(out / "beta_tcvae.csv", dtype={"param": str})
    assert list(tc_table.columns[:7]) == thesis_columns(2)
    assert tc_table["param"].tolist() == ["6"] and tc_table["#top"].tolist() == [2.0]
    check_rows(tc_table, within, 2)

    # A2A: every model against every other, all families in one table.
    table = pd.read_csv(out / "a2a.csv", dtype={"param": str})
    assert list(table.columns[:8]) == thesis_columns(3)
    assert list(zip(table["model type"], table["param"])) == [("beta_tcvae", "6"), ("beta_vae", "1"), ("beta_vae", "4")]
    check_rows(table, a2a, 3)

    # Herd effect table: ranks 1 = best, shift = A2A rank - within rank, biggest shifts first.
    herd = pd.read_csv(out / "herd.csv")
    assert sorted(herd.run_id) == sorted(by_run)
    order = [by_run[r] for r in herd.run_id]
    assert herd.rank_within.to_numpy() == pytest.approx(rankdata(-within, method="min")[order])
    assert herd.rank_a2a.to_numpy() == pytest.approx(rankdata(-a2a, method="min")[order])
    assert herd.rank_shift.to_numpy() == pytest.approx(herd.rank_a2a - herd.rank_within)
    assert np.all(np.diff(np.abs(herd.rank_shift.to_numpy())) <= 0)
    assert herd.n_active.tolist() == n_top[order].tolist()

    # Pictures: a table per family and A2A, the rank scatter, and 3 heat maps (2 within, 1 across).
    # They sit in figures/, the plots folder dvc.yaml declares, and nothing else does.
    names = ("beta_vae", "beta_tcvae", "a2a", "herd", "heatmap_0", "heatmap_1", "heatmap_2")
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(f"{name}.png" for name in names)
    assert all(is_png(out / "figures" / f"{name}.png") for name in names)
    assert not list(out.glob("*.png"))

    # summary.json (the DVC metrics) and the return value agree with the tables.
    written = json.loads((out / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["n_models"] == len(models) == 7
    assert written["similarity"] == "lasso" and written["aggregate"] == "paper"
    best = written["families"]["beta_vae"]
    assert best["best_param"] == "4" and best["best_n_top"] == 3.0
    assert best["best_udr"] == pytest.approx(np.median(within[clean]), abs=1e-9)
    assert best["mean_udr_within"] == pytest.approx(within[clean + mixed].mean(), abs=1e-9)
    assert best["mean_udr_a2a"] == pytest.approx(a2a[clean + mixed].mean(), abs=1e-9)
    assert written["families"]["beta_tcvae"]["best_param"] == "6"

    # Scores go back onto every model's run; the run of the stale data version is left alone.
    for rid, i in by_run.items():
        metrics = tracker.client.get_run(rid).data.metrics
        assert metrics["udr"] == pytest.approx(within[i], abs=1e-9)
        assert metrics["udr_a2a"] == pytest.approx(a2a[i], abs=1e-9)
    assert "udr" not in tracker.client.get_run(udr_root["stale"]).data.metrics
    ranked = pd.read_csv(out / "models.csv")
    assert sorted(ranked.run_id) == sorted(by_run)
    # The settings read from the configuration file and, for the older runs, from their params alike.
    settings = ranked.set_index("run_id").loc[list(by_run), ["family", "beta", "seed", "steps"]]
    assert settings.to_dict("records") == [
        {"family": m["family"], "beta": m["beta"], "seed": m["seed"], "steps": MODEL_STEPS} for m in models
    ]
    assert (ranked.data_version == udr_root["version"]).all()

    # The stage's own run: kind=udr, its settings, the reports as artifacts.
    (stage_run,) = tracker.client.search_runs([tracker.experiment_id], "tags.kind = 'udr'")
    assert stage_run.info.status == "FINISHED"
    assert stage_run.data.params["n_models"] == "7" and stage_run.data.params["similarity"] == "lasso"
    logged = {f.path for f in tracker.client.list_artifacts(stage_run.info.run_id, "udr")}
    assert {"udr/a2a.csv", "udr/beta_vae.csv", "udr/herd.csv", "udr/summary.json"} <= logged


def test_each_models_centrality_is_its_mean_two_way_pair_score_within_its_family(udr_root):
    """register.select: centrality reads the models table's `centrality`: recomputed here family by family from
    UDR's pair scores of that family's models alone, averaged both ways by hand."""
    root, models = udr_root["root"], udr_root["models"]
    cfg = UdrConfig()
    udr_stage.run(Params(udr=cfg), **stage_paths(root))
    ranked = pd.read_csv(root / "reports" / "udr" / "models.csv").set_index("run_id")
    common = dict(similarity=cfg.similarity, kl_threshold=cfg.kl_threshold, lasso_alpha=cfg.lasso_alpha)
    for family in sorted({m["family"] for m in models}):
        members = [m for m in models if m["family"] == family]
        pairs = udr_scores([m["mu"] for m in members], [m["kl"] for m in members], **common).pair_scores
        k = len(members)
        expected = [np.mean([(pairs[i, j] + pairs[j, i]) / 2 for j in range(k) if j != i]) for i in range(k)]
        got = ranked.loc[[m["run_id"] for m in members], "centrality"].to_numpy()
        assert got == pytest.approx(expected, abs=1e-9), family
    assert ranked.centrality.between(0, 1).all()


def test_udr_settings_reach_the_scores(udr_root):
    """Spearman similarity with disentanglement_lib's aggregation gives that method's numbers."""
    root, models = udr_root["root"], udr_root["models"]
    cfg = UdrConfig(similarity="spearman", aggregate="reference", kl_threshold=0.05, heatmap_pairs=0)
    began = time.time()
    udr_stage.run(Params(udr=cfg), **stage_paths(root))
    ended = time.time()
    # The stage's run spans its work (reading the latents, scoring, figures), though opened when it logs.
    (run,) = udr_root["tracker"].client.search_runs([udr_root["tracker"].experiment_id], "tags.kind = 'udr'")
    assert began * 1000 - 1 <= run.info.start_time <= began * 1000 + 1000
    assert run.info.end_time - run.info.start_time >= 0.5 * (ended - began) * 1000
    within, a2a, _ = expected_scores(models, cfg)
    lasso_within, _, _ = expected_scores(models, UdrConfig())
    assert not np.allclose(within, lasso_within)  # the setting matters for these latents
    ranked = pd.read_csv(root / "reports" / "udr" / "models.csv").set_index("run_id")
    for i, m in enumerate(models):
        assert ranked.loc[m["run_id"], "udr_within"] == pytest.approx(within[i], abs=1e-9)
        assert ranked.loc[m["run_id"], "udr_a2a"] == pytest.approx(a2a[i], abs=1e-9)
    assert not list((root / "reports" / "udr" / "figures").glob("heatmap_*.png"))  # the last run's are gone


def test_without_search_reports_every_finished_vae_run_is_ranked(udr_root):
    root, tracker, models = udr_root["root"], udr_root["tracker"], udr_root["models"]
    shutil.rmtree(root / "reports" / "search")
    failed = tracker.create_run("crashed", tags={"kind": "vae"})  # only FINISHED runs count
    tracker.client.set_terminated(failed, status="FAILED")
    # A run handed over in the project's experiment (`mlflow run --experiment-name tubervae`) is used.
    handed_over = tracker.create_run("bold-fox-123")
    summary = udr_stage.run(Params(), run_id=handed_over, **stage_paths(root))
    assert summary["n_models"] == len(models)
    ranked = pd.read_csv(root / "reports" / "udr" / "models.csv")
    assert sorted(ranked.run_id) == sorted(m["run_id"] for m in models)
    run = tracker.client.get_run(handed_over)
    assert run.info.status == "FINISHED" and run.info.experiment_id == tracker.experiment_id
    assert run.data.params["n_models"] == str(len(models))


def test_a_run_handed_over_in_another_experiment_is_refused_in_one_line(udr_root):
    """`mlflow run` without --experiment-name opens its run in Default, which `make ui`'s link never shows."""
    root, tracker = udr_root["root"], udr_root["tracker"]
    elsewhere = tracker.client.create_run("0").info.run_id
    with pytest.raises(RuntimeError) as refused:
        udr_stage.run(Params(), run_id=elsewhere, **stage_paths(root))
    message = str(refused.value)
    assert "\n" not in message
    assert "'Default'" in message and "--experiment-name tubervae" in message
    assert not (root / "reports" / "udr").exists()  # nothing was ranked
    assert not tracker.client.get_run(elsewhere).data.params


def test_guided_runs_are_ranked_over_their_unsupervised_components_within_their_own_weight(udr_root):
    """The udr stage reads `guided_component` from a run's configuration and leaves it out of UDR; a guided
    family's settings differ by λ too, so two λ at one β are two settings."""
    root, tracker = udr_root["root"], udr_root["tracker"]
    rng = np.random.default_rng(11)
    truth = rng.normal(size=(N_PROBE, 3))
    guided = {}
    for weight in (100.0, 300.0):
        for seed in (0, 1):
            mu, kl = clean_copy(truth, [0, 1, 2], 2, rng)
            mu[:, 0] = rng.normal(size=N_PROBE)  # what the labels made of z0: unlike across seeds
            rid = log_model(
                tracker,
                family="guided_beta_vae",
                beta=2.0,
                seed=seed,
                data_version=udr_root["version"],
                mu=mu.astype(np.float32),
                kl=kl,
                guide_weight=weight,
            )
            guided[rid] = (weight, mu.astype(np.float32), kl)
    shutil.rmtree(root / "reports" / "search")  # every finished run is ranked
    udr_stage.run(Params(), **stage_paths(root))
    ranked = pd.read_csv(root / "reports" / "udr" / "models.csv").set_index("run_id")
    for weight in (100.0, 300.0):
        runs = [rid for rid, (w, _, _) in guided.items() if w == weight]
        kls = [guided[rid][2].copy() for rid in runs]
        for k in kls:
            k[0] = 0.0
        expected = udr_scores([guided[rid][1] for rid in runs], kls)
        assert ranked.loc[runs, "udr_within"].to_numpy() == pytest.approx(expected.scores, abs=1e-9)
        assert ranked.loc[runs, "n_active"].tolist() == expected.n_informative.tolist()
    table = pd.read_csv(root / "reports" / "udr" / "guided_beta_vae.csv")
    assert sorted(table["param"]) == ["2_100", "2_300"]


def test_clear_errors_without_models(tmp_path, empty_mlflow_db):
    root = fresh_root(tmp_path / "empty", empty_mlflow_db)
    write_processed_discs(root)
    with pytest.raises(RuntimeError, match="no finished VAE runs to rank"):
        udr_stage.run(Params(), **stage_paths(root))
    assert not (root / "reports" / "udr").exists()

    # Only one model on the current data: nothing to compare it with.
    tracker = Tracker(root)
    rng = np.random.default_rng(0)
    version = json.loads((root / "data" / "processed" / "meta.json").read_text())["data_version"]
    log_model(
        tracker,
        family="beta_vae",
        beta=4.0,
        seed=0,
        data_version=version,
        mu=rng.normal(size=(N_PROBE, 3)),
        kl=np.ones(3),
    )
    log_model(
        tracker,
        family="beta_vae",
        beta=4.0,
        seed=1,
        data_version="another",
        mu=rng.normal(size=(N_PROBE, 3)),
        kl=np.ones(3),
    )
    with pytest.raises(RuntimeError, match="at least two models trained on the current data"):
        udr_stage.run(Params(), **stage_paths(root))

    # A search report naming runs of another tracking store.
    search_report(root, "cbeta_vae", [{"params": {"beta": 700.0, "c_max": 6.0}, "seed_run_ids": ["e" * 32, "d" * 32]}])
    with pytest.raises(RuntimeError, match=f"run {'e' * 32} .*not in the tracking store"):
        udr_stage.run(Params(), **stage_paths(root))
    assert not (root / "reports" / "udr").exists()


@pytest.mark.slow
def test_mlflow_run_udr_entry_point_reuses_the_run(udr_root):
    """`mlflow run . -e udr --env-manager local --experiment-name tubervae` logs into the run it opens;
    without the flag (the Default experiment) the stage refuses in one line."""
    root = udr_root["root"]
    for name in ("MLproject", "conda.yaml"):
        shutil.copyfile(PROJECT / name, root / name)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["udr"]["heatmap_pairs"] = 0  # pictures are checked above; here they only cost time
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", MPLBACKEND="Agg")
    # In the Default experiment (no --experiment-name): refused with one line, nothing logged there.
    refused = run_command(
        [str(BIN / "mlflow"), "run", ".", "-e", "udr", "--env-manager", "local"], root, env=env, timeout=240
    )
    assert refused.returncode != 0
    assert "tubervae udr: error: `mlflow run` opened its run in the experiment 'Default'" in refused.stdout
    done = run_command(
        [str(BIN / "mlflow"), "run", ".", "-e", "udr", "--env-manager", "local", "--experiment-name", "tubervae"],
        root,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    client = udr_root["tracker"].client
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`mlflow.project.entryPoint` = 'udr' and attributes.status = 'FINISHED'",
    )
    assert len(runs) == 1 and runs[0].info.experiment_id == udr_root["tracker"].experiment_id
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "udr"  # not the name MLflow made up when `mlflow run` opened it
    assert run.data.tags["kind"] == "udr"
    assert run.data.params["n_models"] == "7" and run.data.params["similarity"] == "lasso"
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "udr")}
    assert {"udr/a2a.csv", "udr/beta_vae.csv", "udr/beta_tcvae.csv", "udr/summary.json"} <= logged
    # No second run was opened for the stage.
    assert not client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.kind = 'udr' and attributes.run_id != '{run.info.run_id}'",
    )
    assert "beta_vae: best 4 UDR" in done.stdout
    assert (root / "reports" / "udr" / "a2a.csv").exists()


@pytest.mark.slow
def test_the_udr_stage_starts_without_torch():
    """The udr stage reads latents and settings, never weights: its process imports no torch (about 3 s of
    every `tubervae udr`); the check sees torch once a module that needs it is imported."""
    check = (
        "import sys, tubervae.stages.udr; before = 'torch' in sys.modules; "
        "import tubervae.training.setting; print(before, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
