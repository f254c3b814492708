"""`udr` stage: the thesis's UDR tables within each family and all-against-all (A2A).

The models are the seeds of the completed trials in reports/search/*.json (or, with
`--all-runs` or when no search has run, every finished VAE run of the experiment).
Their probe latents come from MLflow; only models trained on the current data version
take part, so every model of a comparison encoded the same images.

Outputs (reports/udr/): `<family>.csv` and `a2a.csv` in the thesis's layout (figures
4.11–4.14: model type, param, #top, seed_0 … seed_k, udr), a PNG of each table,
`herd.csv` (within-family against A2A ranks, the herd effect), similarity heat maps
of chosen pairs (figures 4.15, 4.17) and `summary.json`. DVC reads `reports/metrics/udr.json`
(its numbers only) and the plot data `reports/plots/udr_vs_beta.csv` (one row per setting) and
`reports/plots/herd.csv`. Each model's run gets its within-setting score as `udr` (the name its
trial's median has) and `udr_a2a`, so `mlflow ui` sorts trials and seeds by the same column.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tubervae import plots
from tubervae.config import FAMILIES, Params, UdrConfig, normalised_beta
from tubervae.data.processed import load_meta
from tubervae.evaluation.selection import pool_centrality
from tubervae.evaluation.udr import informative_mask, masked_similarity, rank_shift, udr_options, udr_scores
from tubervae.io import fresh_dir, write_csv, write_json, write_metrics
from tubervae.runs import vae_artifacts
from tubervae.runs.progress import count, say
from tubervae.runs.tracker import Tracker
from tubervae.stages.common import (
    SETTING_COLUMNS,
    beside,
    excluded_components,
    model_labels,
    open_tracker,
    project_paths,
    setting_groups,
)

log = logging.getLogger(__name__)
# herd.csv: within-family against A2A ranks, one row per model (reports/plots/herd.csv: without run_id)
HERD_COLUMNS = [
    "family",
    "setting",
    "seed",
    "run_id",
    "n_active",
    "udr_within",
    "udr_a2a",
    "rank_within",
    "rank_a2a",
    "rank_shift",
]


def models_from_search(search_dir: Path) -> list[dict]:
    models = []
    for family in FAMILIES:
        path = search_dir / f"{family}.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        for trial in summary["trials"]:
            if trial["state"] != "COMPLETE":
                continue
            for run_id in trial["seed_run_ids"]:
                models.append({"run_id": run_id, "trial": trial["number"], "feasible": bool(trial["feasible"])})
    return models


def model_table(tracker: Tracker, models: list[dict]) -> pd.DataFrame:
    """One row per model: its run's settings (family, β, C_max, λ, seed, setting), data version and steps,
    from its training configuration (`vae_artifacts.read_training_config`: also runs that logged it as params)."""
    rows = []
    for model in models:
        run = tracker.get_run(model["run_id"], origin=f"search trial {model['trial']}")
        p = vae_artifacts.read_training_config(tracker, run)
        rows.append(
            {
                **model,
                "family": p["family"],
                "beta": float(p["beta"]),
                "c_max": float(p["c_max"]),
                "guide_weight": float(p.get("guide_weight", 0.0)),
                "guided_component": int(p.get("guided_component", -1)),  # -1: an unguided model
                "seed": int(p["seed"]),
                "setting": run.data.tags.get("setting", p["beta"]),
                "data_version": p.get("data_version", ""),
                "steps": int(p.get("steps", 0)),
                "beta_norm": beta_norm_of(p),
            }
        )
    frame = pd.DataFrame(rows)
    return frame.drop_duplicates("run_id").reset_index(drop=True) if len(frame) else frame


def beta_norm_of(params: dict) -> float:
    """A run's normalised β (in its configuration since it exists; computed from the run's settings otherwise)."""
    if "beta_norm" in params:
        return float(params["beta_norm"])
    if "latent_dim" in params and "image_size" in params:
        return normalised_beta(float(params["beta"]), int(params["latent_dim"]), int(params["image_size"]))
    return float("nan")


def all_vae_runs(tracker: Tracker) -> list[dict]:
    """Every finished VAE run the tracker can see (`Tracker.finished_vae_runs`)."""
    return [{"run_id": r.info.run_id, "trial": -1, "feasible": True} for r in tracker.finished_vae_runs()]


def thesis_table(frame: pd.DataFrame, score_column: str) -> pd.DataFrame:
    """One row per setting: model type, param, β_norm, #top, seed_0 … seed_k, udr (median over seeds).

    β_norm = β·d/N sits beside the thesis's param so tables of different image sizes compare.
    """
    rows = []
    n_seeds = int(frame.groupby(SETTING_COLUMNS).size().max())
    for (family, *_), group in frame.groupby(SETTING_COLUMNS, sort=False):
        setting = group["setting"].iloc[0]
        group = group.sort_values("seed")
        row = {
            "model type": family,
            "param": setting,
            "beta_norm": float(group["beta_norm"].iloc[0]),
            "#top": float(np.median(group["n_active"])),
        }
        for i in range(n_seeds):
            row[f"seed_{i}"] = group[score_column].iloc[i] if i < len(group) else np.nan
        row["udr"] = float(np.nanmedian(group[score_column]))
        row["feasible"] = bool(group["feasible"].all())
        row["beta"], row["c_max"] = group["beta"].iloc[0], group["c_max"].iloc[0]
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["model type", "beta", "c_max"]).reset_index(drop=True)
    return table.drop(columns=["beta", "c_max"])


def choose_heatmap_pairs(frame: pd.DataFrame, n_pairs: int) -> list[tuple[int, int, str]]:
    """Best model of each family against its same-setting partner, then best against best across families."""
    pairs = []
    best = {}
    for family, group in frame.groupby("family"):
        top = group.sort_values("udr_within", ascending=False).index[0]
        best[family] = top
        same = (group[SETTING_COLUMNS] == group.loc[top, SETTING_COLUMNS]).all(axis=1)
        partners = group[same & (group.index != top)]
        if len(partners):
            pairs.append(
                (
                    top,
                    partners.index[0],
                    f"{family} {group.loc[top, 'setting']}: seed "
                    f"{group.loc[top, 'seed']} vs seed {group.loc[partners.index[0], 'seed']}",
                )
            )
    families = sorted(best)
    for a, b in zip(families, families[1:]):
        pairs.append((best[a], best[b], f"{a} vs {b} (best of each)"))
    return pairs[:n_pairs] if n_pairs else []


def udr_metrics(summary: dict) -> dict:
    """summary.json's numbers for `dvc metrics show`: the model count, and by topic one number per family
    (the best setting's UDR, its count of top components, the mean within-setting and all-against-all UDR).
    `io.metrics_files` writes each topic to its own file (udr_best.json, ...): a family is a column."""
    families = summary["families"]
    topics = {"best": "best_udr", "n_top": "best_n_top", "mean_within": "mean_udr_within", "mean_a2a": "mean_udr_a2a"}
    return {
        "n_models": summary["n_models"],
        **{topic: {family: best[key] for family, best in families.items()} for topic, key in topics.items()},
    }


def settings_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (DVC plot data, UDR against β): medians over its seeds."""
    table = (
        frame.groupby(SETTING_COLUMNS, sort=True)
        .agg(
            setting=("setting", "first"),
            beta_norm=("beta_norm", "first"),
            udr_within=("udr_within", "median"),
            udr_a2a=("udr_a2a", "median"),
            n_active=("n_active", "median"),
            feasible=("feasible", "all"),
            n_seeds=("seed", "size"),
        )
        .reset_index()
    )
    return table[
        [
            "family",
            "setting",
            "beta",
            "beta_norm",
            "c_max",
            "guide_weight",
            "udr_within",
            "udr_a2a",
            "n_active",
            "feasible",
            "n_seeds",
        ]
    ]


def run(
    params: Params,
    *,
    root: str | Path = ".",
    search_dir: str | Path = "reports/search",
    out_dir: str | Path = "reports/udr",
    processed_dir: str | Path = "data/processed",
    all_runs: bool = False,
    run_id: str | None = None,
    metrics_dir: str | Path | None = None,
    plots_dir: str | Path | None = None,
) -> dict:
    """Rank the models; `metrics_dir` (numbers only) and `plots_dir` (plot data) default to
    reports/metrics/ and reports/plots/ beside `out_dir`."""
    started_at = time.time()  # the stage's run, opened when it logs, spans its work
    cfg = params.udr
    search_dir, out_dir, processed_dir = project_paths(root, search_dir, out_dir, processed_dir)
    tracker = open_tracker(root, run_id)
    frame = current_models(tracker, [] if all_runs else models_from_search(search_dir), processed_dir)
    n = len(frame)
    read = count(frame.run_id, n, "udr: probe latents read, model", every=max(1, n // 10))
    latents = [vae_artifacts.latents(tracker, rid) for rid in read]
    reps, kls = [z["mu"] for z in latents], [z["kl"] for z in latents]
    say(f"udr: scoring {n} models, within their settings and all against all")
    frame = scored(frame, reps, kls, cfg)
    figures_dir = fresh_dir(out_dir / "figures")  # one plots folder in dvc.yaml
    tables = write_tables(frame, cfg, out_dir, figures_dir)
    herd = write_herd(frame, out_dir, figures_dir)
    write_heatmaps(frame, reps, kls, cfg, figures_dir)
    log_model_scores(tracker, frame)
    summary = summarise(frame, tables, cfg)
    write_json(out_dir / "summary.json", summary)
    write_csv(out_dir / "models.csv", frame)
    headline = udr_metrics(summary)
    write_metrics(beside(root, metrics_dir, out_dir, "metrics"), headline, "udr")
    plots_dir = beside(root, plots_dir, out_dir, "plots")
    write_csv(plots_dir / "udr_vs_beta.csv", settings_table(frame))
    write_csv(plots_dir / "herd.csv", herd.drop(columns=["run_id"]))
    with tracker.run("udr", run_id=run_id, started_at=started_at, tags={"kind": "udr"}) as rid:
        tracker.log_params(rid, {**{k: getattr(cfg, k) for k in LOGGED_SETTINGS}, "n_models": len(frame)})
        tracker.log_metrics(rid, headline)  # the numbers DVC compares, grouped by '/' in MLflow
        tracker.log_artifacts(rid, out_dir, "udr")
    return summary


LOGGED_SETTINGS = ("similarity", "aggregate", "kl_threshold", "lasso_alpha", "n_partners")


def current_models(tracker: Tracker, models: list[dict], processed_dir: Path) -> pd.DataFrame:
    """The models to rank (those of the search, else every finished VAE run) trained on the current data."""
    frame = model_table(tracker, models or all_vae_runs(tracker))
    if len(frame) == 0:
        raise RuntimeError("no finished VAE runs to rank: run the search stages (dvc repro) or `tubervae train` first")
    version = load_meta(processed_dir)["data_version"]
    stale = frame.data_version != version
    if stale.any():
        log.warning("skipping %d run(s) trained on another data version", int(stale.sum()))
        frame = frame[~stale].reset_index(drop=True)
    if len(frame) < 2:
        raise RuntimeError("UDR needs at least two models trained on the current data")
    return frame


def scored(frame: pd.DataFrame, reps: list, kls: list, cfg: UdrConfig) -> pd.DataFrame:
    """`frame` with each model's informative components, UDR within its setting and A2A, its ModelCentrality
    within its family (from A2A's pair scores), and the rank shift."""
    excluded = excluded_components(frame)
    within = udr_scores(reps, kls, groups=setting_groups(frame), excluded=excluded, **udr_options(cfg))
    a2a = udr_scores(reps, kls, groups=None, excluded=excluded, **udr_options(cfg, within=False))
    centrality = pool_centrality(a2a.pair_scores, frame.family.tolist())  # register.select: centrality
    frame = frame.assign(
        n_active=within.n_informative, udr_within=within.scores, udr_a2a=a2a.scores, centrality=centrality
    )
    shift = rank_shift(frame.udr_within.to_numpy(), frame.udr_a2a.to_numpy())
    return frame.assign(rank_within=shift.rank_within, rank_a2a=shift.rank_a2a, rank_shift=shift.shift)


def write_tables(frame: pd.DataFrame, cfg: UdrConfig, out_dir: Path, figures_dir: Path) -> dict[str, pd.DataFrame]:
    """The thesis's tables, one per family (within setting) and `a2a`, as CSV and PNG."""
    method = f"UDR ({cfg.similarity}, {cfg.aggregate} aggregation)"
    tables = {}
    for family, group in frame.groupby("family"):
        tables[family] = thesis_table(group, "udr_within")
    tables["a2a"] = thesis_table(frame, "udr_a2a")
    for name, table in tables.items():
        write_csv(out_dir / f"{name}.csv", table)
        title = f"{method}: {'all against all' if name == 'a2a' else name + ', within setting'}"
        plots.save_figure(
            plots.table_figure(table.drop(columns=["feasible"]), title=title), figures_dir / f"{name}.png"
        )
    return tables


def write_herd(frame: pd.DataFrame, out_dir: Path, figures_dir: Path) -> pd.DataFrame:
    """herd.csv (largest rank shifts first) and its scatter of ranks within setting against A2A."""
    herd = frame[HERD_COLUMNS].sort_values("rank_shift", key=np.abs, ascending=False)
    write_csv(out_dir / "herd.csv", herd)
    plots.save_figure(
        plots.rank_scatter_figure(
            frame.rank_within.to_numpy(),
            frame.rank_a2a.to_numpy(),
            labels=model_labels(frame),
            xlabel="rank by within-setting UDR",
            ylabel="rank by A2A UDR",
            higher_is_better=False,
        ),
        figures_dir / "herd.png",
    )
    return herd


def write_heatmaps(frame: pd.DataFrame, reps: list, kls: list, cfg: UdrConfig, figures_dir: Path) -> None:
    """Similarity heat maps of the chosen pairs (thesis figures 4.15, 4.17)."""
    for k, (i, j, title) in enumerate(choose_heatmap_pairs(frame, cfg.heatmap_pairs)):
        matrix = masked_similarity(
            reps[i],
            reps[j],
            kls[i],
            kls[j],
            similarity=cfg.similarity,
            kl_threshold=cfg.kl_threshold,
            lasso_alpha=cfg.lasso_alpha,
        )
        plots.save_figure(
            plots.similarity_heatmap(
                np.nan_to_num(matrix),
                informative_mask(kls[i], cfg.kl_threshold),
                informative_mask(kls[j], cfg.kl_threshold),
                title=f"{cfg.similarity} similarity, {title}",
            ),
            figures_dir / f"heatmap_{k}.png",
        )


def log_model_scores(tracker: Tracker, frame: pd.DataFrame) -> None:
    """Each model's run gets its scores and today's count of informative components."""
    for rid, w, a, n, steps in zip(frame.run_id, frame.udr_within, frame.udr_a2a, frame.n_active, frame.steps):
        tracker.log_metrics(rid, {"udr": w, "udr_a2a": a})  # `udr`: as on the trial, whose `udr` is its seeds' median
        # A reused run was counted under the udr.kl_threshold of its day; today's count, at the training's
        # last step, becomes the value MLflow shows.
        tracker.log_metrics(rid, {"n_active": n}, step=int(steps))


def summarise(frame: pd.DataFrame, tables: dict[str, pd.DataFrame], cfg: UdrConfig) -> dict:
    """summary.json: the settings and, per family, its best setting and mean scores."""
    summary = {"similarity": cfg.similarity, "aggregate": cfg.aggregate, "n_models": int(len(frame)), "families": {}}
    for family, table in tables.items():
        if family == "a2a":
            continue
        top = table.sort_values("udr", ascending=False).iloc[0]
        summary["families"][family] = {
            "best_param": str(top["param"]),
            "best_udr": float(top["udr"]),
            "best_n_top": float(top["#top"]),
            "mean_udr_within": float(frame[frame.family == family].udr_within.mean()),
            "mean_udr_a2a": float(frame[frame.family == family].udr_a2a.mean()),
        }
    return summary
