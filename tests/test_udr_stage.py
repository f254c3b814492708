"""The udr and evaluate stages on MLflow runs made here, and `mlflow run . -e udr`.

The udr stage is fed latents built so that the settings differ in how well their seeds
agree: seeds of the "clean" setting hold the same factors up to permutation, sign and
scale (UDR near 1), seeds of the "mixed" setting hold different rotations of them.
The evaluate stage gets tiny models trained by the real training entry point.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy.stats import rankdata, spearmanr

from conftest import run_command, train_tiny_runs, write_processed
from tubervae.config import DataConfig, EvaluateConfig, Params, TrainConfig, UdrConfig
from tubervae.data.processed import load_split, save_evalset, save_split
from tubervae.evaluation.udr import udr_scores
from tubervae.io import write_json
from tubervae.runs import training_run as train_stage
from tubervae.runs import vae_artifacts
from tubervae.runs.tracker import Tracker
from tubervae.stages import evalset as evalset_stage
from tubervae.stages import evaluate as evaluate_stage
from tubervae.stages import udr as udr_stage
from tubervae.training.setting import Setting

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
N_PROBE = 200
FACTOR_NAMES = ["x", "y", "radius", "brightness"]


def thesis_columns(n_seeds: int) -> list[str]:
    """The columns of the thesis's UDR tables (figures 4.11-4.14), in order."""
    return ["model type", "param", "beta_norm", "#top", *(f"seed_{i}" for i in range(n_seeds)), "udr"]


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(autouse=True)
def _own_tracking_store(monkeypatch):
    """Every Tracker of a test uses sqlite:///<its root>/mlflow.db, whatever the caller's shell says."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


def fresh_root(root: Path, empty_mlflow_db: Path) -> Path:
    """A project root with an empty tracking store whose Default experiment stores under root/mlruns."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_mlflow_db, root / "mlflow.db")
    with sqlite3.connect(root / "mlflow.db") as con:
        con.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(root / "mlruns" / "0"),)
        )
    con.close()
    return root


def disc_images(rng: np.random.Generator, n: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs on a dark background; factors x, y (offset from the centre), radius, brightness."""
    factors = np.column_stack(
        [rng.uniform(-3, 3, n), rng.uniform(-3, 3, n), rng.uniform(2, 5, n), rng.uniform(0.4, 1.0, n)]
    ).astype(np.float32)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    images = np.full((n, size, size, 3), 20, np.uint8)
    for i, (x, y, r, b) in enumerate(factors):
        inside = (xx - x) ** 2 + (yy - y) ** 2 <= r**2
        images[i][inside] = np.array([255 * b, 230 * b, 160 * b]).astype(np.uint8)
    return images, factors


def write_processed_discs(
    root: Path, *, seed: int = 0, n_train: int = 120, n_test: int = 60, with_factors: bool = True
) -> str:
    """The files the preprocess stage writes, for disc images; returns the data version."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    images, factors = disc_images(rng, n)
    labels = (factors[:, 3] < 0.7).astype(np.int8)  # dim discs are 'bad'
    rows = {"train": np.arange(n_train), "test": np.arange(n_train, n)}
    rows["labelled"] = np.concatenate([np.flatnonzero(labels[:n_train] == c)[:5] for c in (0, 1)])
    rows["udr_probe"] = np.arange(min(N_PROBE, n_train))
    splits = {
        name: (images[idx], labels[idx], factors[idx] if with_factors else None, idx) for name, idx in rows.items()
    }
    meta = write_processed(root / "data" / "processed", splits, FACTOR_NAMES if with_factors else ())
    return meta["data_version"]


MODEL_STEPS = 40  # the steps logged for the runs of `log_model`


def log_model(
    tracker: Tracker,
    *,
    family: str,
    beta: float,
    c_max: float = 0.0,
    seed: int,
    data_version: str,
    mu: np.ndarray,
    kl: np.ndarray,
    guide_weight: float = 0.0,
    legacy: bool = False,
) -> str:
    """A finished VAE run as the training stage leaves it, as far as the udr stage reads it: a few params and
    the whole configuration in its file; `legacy`: as runs were logged before that file, every setting a param."""
    setting = Setting(family=family, beta=beta, c_max=c_max, guide_weight=guide_weight)
    tags = {"kind": "vae", "family": family, "setting": setting.label, "seed": seed}
    guide = {"guide_weight": guide_weight, "guided_component": 0} if setting.guided else {}
    config = {"family": family, "beta": beta, "c_max": c_max, "seed": seed, "data_version": data_version, **guide}
    with tracker.run(f"{family} {setting.label} seed {seed}", tags=tags) as rid:
        if legacy:
            tracker.log_params(rid, {**config, "steps": MODEL_STEPS})
        else:
            tracker.log_params(rid, train_stage.run_params(setting, seed, TrainConfig(steps=MODEL_STEPS)))
            vae_artifacts.log_training_config(tracker, rid, {**config, "steps": MODEL_STEPS})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "latents.npz"
            np.savez(path, mu=mu, logvar=np.zeros_like(mu), kl=kl)
            tracker.log_artifact(rid, path)
    return rid


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


def clean_copy(truth: np.ndarray, keep: list[int], n_dead: int, rng: np.random.Generator):
    """The factors `keep`, permuted, sign-flipped and rescaled, plus `n_dead` collapsed components."""
    n = len(truth)
    signs = rng.choice([-1.0, 1.0], len(keep))
    scales = rng.uniform(0.5, 2.0, len(keep))
    live = truth[:, keep] * signs * scales + 0.02 * rng.normal(size=(n, len(keep)))
    dead = 0.01 * rng.normal(size=(n, n_dead))
    mu = np.hstack([live, dead])
    kl = np.concatenate([rng.uniform(0.5, 2.0, len(keep)), np.full(n_dead, 0.001)])
    order = rng.permutation(mu.shape[1])
    return mu[:, order], kl[order]


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


def stage_paths(root: Path) -> dict:
    return dict(
        root=root,
        search_dir=root / "reports" / "search",
        out_dir=root / "reports" / "udr",
        processed_dir=root / "data" / "processed",
    )


def expected_scores(models: list[dict], cfg: UdrConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    reps, kls = [m["mu"] for m in models], [m["kl"] for m in models]
    common = dict(
        similarity=cfg.similarity, aggregate=cfg.aggregate, kl_threshold=cfg.kl_threshold, lasso_alpha=cfg.lasso_alpha
    )
    within = udr_scores(reps, kls, groups=[f"{m['family']}/{m['beta']}" for m in models], **common)
    a2a = udr_scores(reps, kls, **common)
    return within.scores, a2a.scores, within.n_informative


def is_png(path: Path) -> bool:
    with Image.open(path) as img:
        return img.format == "PNG" and img.size[0] > 50 and img.size[1] > 50


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


# ------------------------------------------------------------------ the evaluate stage


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
