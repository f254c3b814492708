"""`evaluate` stage (known factors only): does UDR track supervised disentanglement?

Every ranked model encodes the dedicated evaluation set (stage evalset: simulated
photos never used for training or selection), and MIG, DCI, SAP and the FactorVAE score
of its scored factors (`tubervae.evaluation.supervised`) go onto its MLflow run. With a real
folder whose photos carry a factors.csv, the factors of the test split's measured photos are
scored instead (`tubervae.data.factors.measured_rows`: a factors.csv may measure only a few
photos; metrics.json's `measured` says how many of the split's photos were); with fewer than
`MIN_MEASURED` of them, the stage skips as for a folder without factors, and says why.
Across models, the Spearman correlation of UDR (within-family and A2A, Lasso and
Spearman similarity) with each supervised metric, with a bootstrap interval, is set
beside the thesis's 0.51 (P = 5) – 0.61 (P ≥ 30). Per factor, every model gets its MIG (published,
and over its informative components alone), the component holding it and DCI completeness, on its
run (`mig/<factor>`), in models.csv and in a heat map of models × factors; a factor counts as
captured at MIG ≥ 0.2. Also: for each defect factor, the
informative component that follows it best (|Spearman ρ|) in every model, and where
the UDR-chosen champion ranks by MIG and DCI.

Outputs: reports/evaluate/ (`metrics.json`, the whole summary with bootstrap intervals;
`models.csv`; figures), the numbers DVC compares in reports/metrics/evaluate.json and the
plot data reports/plots/udr_vs_supervised.csv (one row per model).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy.stats import spearmanr

from tubervae import plots
from tubervae.config import Params, worker_count
from tubervae.data.factors import measured_rows
from tubervae.data.processed import load_evalset, load_split
from tubervae.data.synth_factors import DEFECT_COLUMNS
from tubervae.evaluation.matching import best_components
from tubervae.evaluation.metric_utils import train_test_indices
from tubervae.evaluation.mig import mig
from tubervae.evaluation.supervised import evaluate_all
from tubervae.evaluation.udr import informative_mask, udr_options, udr_scores
from tubervae.io import fresh_dir, write_csv, write_json, write_metrics
from tubervae.models.encoding import encode
from tubervae.runs import vae_artifacts
from tubervae.runs.progress import count
from tubervae.runs.tracker import Tracker
from tubervae.stages.common import (
    beside,
    excluded_components,
    model_labels,
    open_tracker,
    project_paths,
    setting_groups,
)

log = logging.getLogger(__name__)
SUPERVISED = ("mig", "dci_d", "dci_c", "dci_i", "sap", "factorvae")
# reports/plots/udr_vs_supervised.csv: one row per model (udr_within: the configured similarity).
PLOT_COLUMNS = ["family", "setting", "seed", "udr_within", *SUPERVISED]
THESIS_CORRELATION = {"P=5": 0.51, "P=10": 0.57, "P=20": 0.60, "P>=30": 0.61}
CAPTURED_MIG = 0.2  # a factor counts as captured by a model at this per-factor MIG
# The fewest measured photos scored: the supervised metrics split them into train and test rows
# (`evaluation.metric_utils.check_metric_inputs`).
MIN_MEASURED = 4
NO_FACTORS = "no ground-truth factors in the data"


def per_factor_scores(mu: np.ndarray, factors: np.ndarray, names: list[str], informative, per_factor) -> dict:
    """Per factor: the published MIG and the component holding it, the MIG over the informative components
    alone (the KL cut-off UDR uses: collapsed components, whose means still wobble with the factor, do not
    close the gap), and DCI completeness; with the number of factors captured either way."""
    kept = np.flatnonzero(informative)
    over_informative = mig(mu[:, kept], factors)["mig_per_factor"] if len(kept) else np.full(len(names), np.nan)
    table = {
        name: {
            "mig": float(per_factor.loc[name, "mig"]),
            "mig_component": int(per_factor.loc[name, "mig_component"]),
            "mig_informative": float(over_informative[j]),
            "dci_c": float(per_factor.loc[name, "dci_completeness"]),
        }
        for j, name in enumerate(names)
    }
    return {
        "factors": table,
        "captured": int(sum(v["mig"] >= CAPTURED_MIG for v in table.values())),
        "captured_informative": int(sum(v["mig_informative"] >= CAPTURED_MIG for v in table.values())),
    }


def bootstrap_spearman(x: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict:
    """Spearman ρ with a percentile bootstrap 95 % interval over models."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": None, "low": None, "high": None, "n": int(len(x))}
    rho = float(spearmanr(x, y)[0])
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0:
            draws.append(spearmanr(x[idx], y[idx])[0])
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan)
    return {"rho": rho, "low": float(low), "high": float(high), "n": int(len(x))}


def udr_variants(models: pd.DataFrame, latents: list[dict], params: Params) -> pd.DataFrame:
    """Within-family and A2A UDR with both similarity methods (the configured aggregation); a guided model's
    guided component left out, as the udr stage does."""
    reps, kls = [z["mu"] for z in latents], [z["kl"] for z in latents]
    groups, excluded = setting_groups(models), excluded_components(models)
    out = {}
    for similarity in ("lasso", "spearman"):
        within = udr_options(params.udr, similarity=similarity)
        everyone = udr_options(params.udr, similarity=similarity, within=False)
        out[f"udr_within_{similarity}"] = udr_scores(reps, kls, groups=groups, excluded=excluded, **within).scores
        out[f"udr_a2a_{similarity}"] = udr_scores(reps, kls, groups=None, excluded=excluded, **everyone).scores
    return pd.DataFrame(out, index=models.index)


class ScoredData(NamedTuple):
    """The photos to score with their factors, where they come from and, for a folder's test split,
    how many photos the split has (`measured`: the scored ones are its measured photos)."""

    images: np.ndarray
    factors: np.ndarray
    names: list[str]
    source: str
    measured: dict | None = None


def scored_data(evalset_dir: Path, processed_dir: Path) -> ScoredData | str:
    """Images, factors and factor names to score, and where they come from; or why there is nothing to score
    (no known factors, or fewer than `MIN_MEASURED` measured photos in the test split)."""
    held = load_evalset(evalset_dir)
    if held is not None:
        names = [str(n) for n in held["factor_names"]]
        scored = [str(n) for n in held["scored_names"]]
        columns = [names.index(n) for n in scored]
        return ScoredData(held["images"], held["factors"][:, columns], scored, "evaluation set")
    test = load_split("test", processed_dir)
    if "factors" not in test:
        return NO_FACTORS
    measured = measured_rows(test["factors"])
    n, total = int(measured.sum()), len(measured)
    if n < MIN_MEASURED:
        return (
            f"{n} of the test split's {total} photos have measured factors (factors.csv); "
            f"the supervised metrics need at least {MIN_MEASURED}"
        )
    log.info("scoring on the %d measured photos of the test split's %d", n, total)
    names = [str(name) for name in test["factor_names"]]
    counts = {"photos": n, "of": total}
    return ScoredData(test["images"][measured], test["factors"][measured], names, "test split", counts)


def score_model(mu, factors, names, defects, informative, cfg) -> dict:
    """One model's supervised scores and, per defect, the informative component that follows it best.

    A pure function of its arrays, so the stage scores several models at once in separate processes:
    1-job processes, one per core, score models faster than one process whose DCI fits run a job per
    core (measured in benchmarks/bench_evaluate.py).
    """
    result = evaluate_all(
        mu,
        factors,
        names,
        random_state=cfg.seed,
        dci_method=cfg.dci_method,
        sap_method=cfg.sap_method,
        n_train=cfg.n_train,
        n_test=cfg.n_test,
        n_jobs=1,
    )
    component, rho = ([], [])
    if defects:
        component, rho = best_components(mu, factors[:, [names.index(d) for d in defects]], informative)
    return {
        "scores": {k: float(result[k]) for k in SUPERVISED},
        "per_factor": per_factor_scores(mu, factors, names, informative, result["per_factor"]),
        "rho": {d: float(r) for d, r in zip(defects, rho)},
        "component": {d: int(c) for d, c in zip(defects, component)},
        "importance": result["importance"],
    }


def evaluate_metrics(summary: dict, udr_column: str) -> dict:
    """metrics.json's headline numbers for `dvc metrics show`: how the configured within-family UDR
    correlates with each supervised metric, the best defect matches and the champion's scores."""
    metrics: dict = {"n_models": summary["n_models"]}
    metrics["rho_udr"] = {m: c["rho"] for m, c in summary["correlations"][udr_column].items()}
    metrics["best_defect_rho"] = summary["best_defect_rho"]
    metrics["most_captured"] = summary["most_captured"]
    champion = summary.get("champion") or {}
    metrics["champion"] = {k: champion[k] for k in SUPERVISED if k in champion}
    metrics["champion_rank"] = {k: champion[k] for k in CHAMPION_RANK if k in champion}
    return metrics


# The groups of evaluate_metrics, each its own file reports/metrics/evaluate_<group>.json (`io.metrics_files`),
# written empty when there is nothing to score: every declared metrics file exists after the stage.
METRICS_GROUPS = ("rho_udr", "best_defect_rho", "most_captured", "champion", "champion_rank")
CHAMPION_RANK = ("rank_by_mig", "rank_by_dci_d", "captured", "captured_informative")


def run(
    params: Params,
    *,
    root: str | Path = ".",
    processed_dir: str | Path = "data/processed",
    evalset_dir: str | Path = "data/evalset",
    udr_dir: str | Path = "reports/udr",
    champion_path: str | Path = "reports/register/champion.json",
    out_dir: str | Path = "reports/evaluate",
    run_id: str | None = None,
    metrics_path: str | Path | None = None,
    plots_dir: str | Path | None = None,
) -> dict:
    """Score the models; the numbers-only `metrics_path` (its groups beside it as `<stem>_<group>.json`:
    `METRICS_GROUPS`) and the plot data in `plots_dir` default to reports/metrics/evaluate.json and
    reports/plots/ beside `out_dir`."""
    started_at = time.time()  # the stage's run, opened when it logs, spans its work
    cfg = params.evaluate
    processed_dir, evalset_dir, udr_dir, champion_path, out_dir = project_paths(
        root, processed_dir, evalset_dir, udr_dir, champion_path, out_dir
    )
    metrics_path = beside(root, metrics_path, out_dir, "metrics/evaluate.json")
    plots_dir = beside(root, plots_dir, out_dir, "plots")
    figures_dir = fresh_dir(out_dir / "figures")  # one plots folder in dvc.yaml
    data = scored_data(evalset_dir, processed_dir)
    if isinstance(data, str):
        return write_skipped(out_dir, metrics_path, plots_dir, data)
    all_images, all_factors, names, source, measured = data
    models = read_models(udr_dir)
    tracker = open_tracker(root, run_id)
    rng = np.random.default_rng(cfg.seed)
    take = np.sort(rng.choice(len(all_images), size=min(cfg.n_points, len(all_images)), replace=False))
    images, factors = all_images[take], all_factors[take]  # the same photos for every model
    defects = [name for name in DEFECT_COLUMNS.values() if name in names]
    latents = [vae_artifacts.latents(tracker, rid) for rid in models.run_id]
    results = score_models(tracker, models, latents, images, (factors, names, defects), params)
    table = scores_table(models, results, latents, params)
    write_csv(out_dir / "models.csv", table)
    correlations = correlate(table, cfg.n_bootstrap, rng)
    write_figures(table, names, params.udr.similarity, figures_dir)
    summary = summarise(table, len(images), names, defects, source, correlations, cfg)
    if measured is not None:
        summary["measured"] = measured
    champion = champion_summary(table, champion_path, names, defects)
    if champion is not None:
        summary["champion"] = champion | champion_components(
            results[champion["run_id"]]["importance"], models, latents, champion["run_id"], params, out_dir, figures_dir
        )
    write_json(out_dir / "metrics.json", summary)
    headline = write_dvc_files(summary, table, params.udr.similarity, metrics_path, plots_dir)
    with tracker.run("evaluate", run_id=run_id, started_at=started_at, tags={"kind": "evaluate"}) as rid:
        tracker.log_metrics(rid, headline)  # the numbers DVC compares, grouped by '/' in MLflow
        tracker.log_artifacts(rid, out_dir, "evaluate")
    return summary


def correlate(table: pd.DataFrame, n_bootstrap: int, rng: np.random.Generator) -> dict:
    """Spearman ρ (bootstrap interval) of every UDR variant (udr_<within|a2a>_<similarity>) with each supervised
    metric, across models."""
    return {
        udr_col: {
            m: bootstrap_spearman(table[udr_col].to_numpy(float), table[m].to_numpy(float), n_bootstrap, rng)
            for m in SUPERVISED
        }
        for udr_col in [c for c in table.columns if c.startswith("udr_") and c.count("_") == 2]
    }


def write_dvc_files(summary: dict, table: pd.DataFrame, similarity: str, metrics_path: Path, plots_dir: Path) -> dict:
    """The numbers DVC compares (`metrics_path`) and its plot data (udr_vs_supervised.csv); returns the numbers."""
    headline = evaluate_metrics(summary, f"udr_within_{similarity}")
    write_metrics(metrics_path.parent, headline, metrics_path.stem)
    plot_data = table.rename(columns={f"udr_within_{similarity}": "udr_within"})[PLOT_COLUMNS]
    write_csv(plots_dir / "udr_vs_supervised.csv", plot_data)
    return headline


def write_skipped(out_dir: Path, metrics_path: Path, plots_dir: Path, reason: str = NO_FACTORS) -> dict:
    """The stage's declared outputs when there is nothing to score (`reason`: real photos without factors,
    or too few of the test split's photos measured); returns {"skipped": reason}."""
    log.warning("nothing to evaluate: %s", reason)
    write_json(out_dir / "metrics.json", {"skipped": reason})
    write_metrics(metrics_path.parent, {"n_models": 0, **dict.fromkeys(METRICS_GROUPS, {})}, metrics_path.stem)
    write_csv(plots_dir / "udr_vs_supervised.csv", pd.DataFrame(columns=PLOT_COLUMNS))
    # dvc.yaml declares models.csv as an output of this stage: it must exist, if empty.
    write_csv(out_dir / "models.csv", pd.DataFrame(columns=["run_id", *SUPERVISED]))
    return {"skipped": reason}


def read_models(udr_dir: Path) -> pd.DataFrame:
    """The udr stage's models table (reports/udr/models.csv)."""
    models_path = Path(udr_dir) / "models.csv"
    if not models_path.exists():
        raise FileNotFoundError(f"{models_path} is missing: run the udr stage first (dvc repro udr)")
    return pd.read_csv(models_path, dtype={"setting": str})


def score_models(
    tracker: Tracker, models: pd.DataFrame, latents: list[dict], images: np.ndarray, truth: tuple, params: Params
) -> dict[str, dict]:
    """Every model's `score_model` result by run id, its figures logged on its run. `truth`: (factors, names,
    defects). The photos are encoded here with all threads, then scored in 1-job processes."""
    cfg = params.evaluate
    informative = [informative_mask(latent["kl"], params.udr.kl_threshold) for latent in latents]
    codes = []  # each model's means on the scored photos
    n, every = len(models), max(1, len(models) // 10)
    for model_run in count(models.run_id, n, f"evaluate: {len(images)} photos encoded by model", every=every):
        vae, _ = vae_artifacts.load_vae(tracker, model_run)
        codes.append(encode(vae, images)[0])
    scoring = Parallel(n_jobs=min(worker_count(cfg.workers), len(codes)) or 1, return_as="generator")(
        delayed(score_model)(mu, *truth, mask, cfg) for mu, mask in zip(codes, informative)
    )
    results = dict(zip(models.run_id, count(scoring, n, "evaluate: supervised metrics scored, model", every=every)))
    for model_run, result in results.items():  # not `run_id`: the stage's own run, handed over
        per_factor = result["per_factor"]
        by_factor = {
            f"{key}/{name}": value
            for name, values in per_factor["factors"].items()
            for key, value in values.items()
            if key != "mig_component" and np.isfinite(value)
        }
        captured = {k: per_factor[k] for k in ("captured", "captured_informative")}
        defect_rho = {f"defect_rho/{d}": r for d, r in result["rho"].items()}
        tracker.log_metrics(model_run, {**result["scores"], **defect_rho, **by_factor, **captured})
    return results


def scores_table(models: pd.DataFrame, results: dict[str, dict], latents: list[dict], params: Params) -> pd.DataFrame:
    """models.csv: the udr stage's table with every model's scores (`model_row`) and UDR variants."""
    table = models.merge(pd.DataFrame([model_row(rid, result) for rid, result in results.items()]), on="run_id")
    return pd.concat([table, udr_variants(table, latents, params)], axis=1)


def model_row(model_run: str, result: dict) -> dict:
    """One model's row of models.csv: its scores, per-factor figures and best defect components."""
    per_factor = result["per_factor"]
    return {
        "run_id": model_run,
        **result["scores"],
        **{k: per_factor[k] for k in ("captured", "captured_informative")},
        **{f"{key}_{name}": value for name, values in per_factor["factors"].items() for key, value in values.items()},
        **{f"rho_{d}": r for d, r in result["rho"].items()},
        **{f"component_{d}": c for d, c in result["component"].items()},
    }


def write_figures(table: pd.DataFrame, names: list[str], similarity: str, figures_dir: Path) -> None:
    """MIG per factor (all components, informative ones) and UDR against MIG and DCI disentanglement."""
    labels = model_labels(table)
    for key, title in (("mig", "MIG per factor"), ("mig_informative", "MIG per factor, informative components")):
        plots.save_figure(
            plots.factor_heatmap(
                table[[f"{key}_{n}" for n in names]].to_numpy(float),
                labels,
                names,
                title=f"{title} (outlined: captured, >= {CAPTURED_MIG})",
                threshold=CAPTURED_MIG,
            ),
            figures_dir / f"{key}_per_factor.png",
        )
    for metric in ("mig", "dci_d"):
        plots.save_figure(
            plots.rank_scatter_figure(
                table[f"udr_within_{similarity}"].to_numpy(float),
                table[metric].to_numpy(float),
                labels=labels,
                xlabel=f"within-setting UDR ({similarity})",
                ylabel=metric,
            ),
            figures_dir / f"udr_vs_{metric}.png",
        )


def summarise(
    table: pd.DataFrame, n_points: int, names: list[str], defects: list[str], source: str, correlations: dict, cfg
) -> dict:
    """metrics.json without the champion: what was scored, how, and the figures across models."""
    # DCI and SAP fit on at most n_train photos and score at most n_test others: report what they used.
    used_train, used_test = train_test_indices(n_points, n_train=cfg.n_train, n_test=cfg.n_test, random_state=0)
    return {
        "n_models": int(len(table)),
        "n_points": int(n_points),
        "scored_on": source,
        "definitions": {
            "dci": cfg.dci_method,
            "sap": cfg.sap_method,
            "n_train": int(len(used_train)),  # photos the fits used (evaluate.n_train is the most they may)
            "n_test": int(len(used_test)),
            "max_n_train": cfg.n_train,
            "max_n_test": cfg.n_test,
        },
        "factors": names,
        "best_defect_rho": {d: float(table[f"rho_{d}"].max()) for d in defects},
        "captured_threshold": CAPTURED_MIG,
        "most_captured": {k: int(table[k].max()) for k in ("captured", "captured_informative")},
        "best_mig_per_factor": {
            n: {"mig": float(table[f"mig_{n}"].max()), "mig_informative": float(table[f"mig_informative_{n}"].max())}
            for n in names
        },
        "correlations": correlations,
        "thesis_udr_vs_supervised": THESIS_CORRELATION,
    }


def champion_summary(table: pd.DataFrame, champion_path: Path, names: list[str], defects: list[str]) -> dict | None:
    """The register stage's champion among the models: its scores and ranks; None when there is none here."""
    if not Path(champion_path).exists():
        return None
    champion = json.loads(Path(champion_path).read_text())
    row = table[table.run_id == champion["run_id"]]
    if not len(row):
        return None
    return {
        "run_id": champion["run_id"],
        **{m: float(row[m].iloc[0]) for m in SUPERVISED},
        **{f"rank_by_{m}": int((table[m] > row[m].iloc[0]).sum() + 1) for m in ("mig", "dci_d")},
        "captured": int(row["captured"].iloc[0]),
        "captured_informative": int(row["captured_informative"].iloc[0]),
        "mig_per_factor": {n: float(row[f"mig_{n}"].iloc[0]) for n in names},
        "defects": {
            d: {"component": int(row[f"component_{d}"].iloc[0]), "rho": float(row[f"rho_{d}"].iloc[0])} for d in defects
        },
    }


def champion_components(
    importance: pd.DataFrame,
    models: pd.DataFrame,
    latents: list[dict],
    champion_run: str,
    params: Params,
    out_dir: Path,
    figures_dir: Path,
) -> dict:
    """The champion's DCI importances (figure and CSV) and, per component that holds any, its main factor."""
    plots.save_figure(plots.importance_heatmap(importance), figures_dir / "champion_importance.png")
    write_csv(out_dir / "champion_importance.csv", importance.reset_index(names="component"))
    kl = latents[int(np.flatnonzero(models.run_id.to_numpy() == champion_run)[0])]["kl"]
    informative = informative_mask(kl, params.udr.kl_threshold)
    return {
        "component_factor": {
            comp: {
                "factor": importance.columns[int(np.argmax(vals))],
                "kl": float(kl[j]),
                "informative": bool(informative[j]),
            }
            for j, (comp, vals) in enumerate(importance.iterrows())
            if np.max(vals) > 0
        }
    }
