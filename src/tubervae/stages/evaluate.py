"""`evaluate` stage (known factors only): does UDR track supervised disentanglement?

Every ranked model encodes the dedicated evaluation set (stage evalset: simulated
photos never used for training or selection), and MIG, DCI, SAP and the FactorVAE score
of its scored factors (`tubervae.evaluation.metrics`) go onto its MLflow run. With a real
folder whose photos carry a factors.csv, the test split's factors are scored instead.
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

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy.stats import spearmanr

from tubervae import plots
from tubervae.config import Params, worker_count
from tubervae.data.processed import load_evalset, load_split
from tubervae.data.synth import DEFECT_COLUMNS
from tubervae.evaluation.matching import best_components
from tubervae.evaluation.metrics import evaluate_all, mig, train_test_indices
from tubervae.evaluation.udr import informative_mask, udr_scores
from tubervae.io import fresh_dir, under, write_csv, write_json, write_metrics
from tubervae.runs import vae_artifacts
from tubervae.runs.progress import count
from tubervae.runs.tracker import Tracker
from tubervae.training import encode

log = logging.getLogger(__name__)
SUPERVISED = ("mig", "dci_d", "dci_c", "dci_i", "sap", "factorvae")
# reports/plots/udr_vs_supervised.csv: one row per model (udr_within: the configured similarity).
PLOT_COLUMNS = ["family", "setting", "seed", "udr_within", *SUPERVISED]
THESIS_CORRELATION = {"P=5": 0.51, "P=10": 0.57, "P=20": 0.60, "P>=30": 0.61}
CAPTURED_MIG = 0.2  # a factor counts as captured by a model at this per-factor MIG


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
    cfg = params.udr
    reps, kls = [z["mu"] for z in latents], [z["kl"] for z in latents]
    guide_weight = models["guide_weight"] if "guide_weight" in models else pd.Series(0.0, index=models.index)
    guided = models["guided_component"] if "guided_component" in models else pd.Series(-1, index=models.index)
    groups = list(zip(models.family, models.beta, models.c_max, guide_weight))
    out = {}
    for similarity in ("lasso", "spearman"):
        common = dict(
            similarity=similarity,
            aggregate=cfg.aggregate,
            kl_threshold=cfg.kl_threshold,
            lasso_alpha=cfg.lasso_alpha,
            partner_seed=cfg.partner_seed,
            excluded=[(int(c),) if c >= 0 else () for c in guided],
        )
        out[f"udr_within_{similarity}"] = udr_scores(
            reps, kls, groups=groups, n_partners=cfg.n_partners or None, **common
        ).scores
        out[f"udr_a2a_{similarity}"] = udr_scores(reps, kls, groups=None, **common).scores
    return pd.DataFrame(out, index=models.index)


def scored_data(evalset_dir: Path, processed_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str], str] | None:
    """Images, factors and factor names to score, and where they come from; None without known factors."""
    held = load_evalset(evalset_dir)
    if held is not None:
        names = [str(n) for n in held["factor_names"]]
        scored = [str(n) for n in held["scored_names"]]
        columns = [names.index(n) for n in scored]
        return held["images"], held["factors"][:, columns], scored, "evaluation set"
    test = load_split("test", processed_dir)
    if "factors" in test:
        return test["images"], test["factors"], [str(n) for n in test["factor_names"]], "test split"
    return None


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
    processed_dir, evalset_dir, udr_dir, champion_path, out_dir = (
        under(root, p) for p in (processed_dir, evalset_dir, udr_dir, champion_path, out_dir)
    )
    metrics_path = under(root, metrics_path) if metrics_path else out_dir.parent / "metrics" / "evaluate.json"
    plots_dir = under(root, plots_dir) if plots_dir else out_dir.parent / "plots"
    figures_dir = fresh_dir(out_dir / "figures")  # one plots folder in dvc.yaml
    data = scored_data(Path(evalset_dir), Path(processed_dir))
    if data is None:
        log.warning("the photos carry no ground-truth factors (real data): nothing to evaluate")
        write_json(out_dir / "metrics.json", {"skipped": "no ground-truth factors in the data"})
        write_metrics(metrics_path.parent, {"n_models": 0, **dict.fromkeys(METRICS_GROUPS, {})}, metrics_path.stem)
        write_csv(plots_dir / "udr_vs_supervised.csv", pd.DataFrame(columns=PLOT_COLUMNS))
        # dvc.yaml declares models.csv as an output of this stage: it must exist, if empty.
        write_csv(out_dir / "models.csv", pd.DataFrame(columns=["run_id", *SUPERVISED]))
        return {"skipped": True}
    all_images, all_factors, names, source = data
    models_path = Path(udr_dir) / "models.csv"
    if not models_path.exists():
        raise FileNotFoundError(f"{models_path} is missing: run the udr stage first (dvc repro udr)")
    models = pd.read_csv(models_path, dtype={"setting": str})
    tracker = Tracker.open(root, run_id)
    tracker.mark_stale_runs_killed()  # runs of a killed earlier attempt end KILLED, not RUNNING
    rng = np.random.default_rng(cfg.seed)
    take = np.sort(rng.choice(len(all_images), size=min(cfg.n_points, len(all_images)), replace=False))
    images, factors = all_images[take], all_factors[take]
    defects = [name for name in DEFECT_COLUMNS.values() if name in names]
    latents = [vae_artifacts.latents(tracker, rid) for rid in models.run_id]
    informative = [informative_mask(latent["kl"], params.udr.kl_threshold) for latent in latents]
    codes = []  # each model's means on the scored photos, encoded here with all threads
    n, every = len(models), max(1, len(models) // 10)
    for model_run in count(models.run_id, n, f"evaluate: {len(images)} photos encoded by model", every=every):
        vae, _ = vae_artifacts.load_vae(tracker, model_run)
        codes.append(encode(vae, images)[0])
    scoring = Parallel(n_jobs=min(worker_count(cfg.workers), len(codes)) or 1, return_as="generator")(
        delayed(score_model)(mu, factors, names, defects, mask, cfg) for mu, mask in zip(codes, informative)
    )
    scored = list(count(scoring, n, "evaluate: supervised metrics scored, model", every=every))
    rows, importances = [], {}
    for model_run, result in zip(models.run_id, scored):  # not `run_id`: the stage's own run, handed over
        defect_rho = {f"defect_rho/{d}": r for d, r in result["rho"].items()}
        per_factor = result["per_factor"]
        by_factor = {
            f"{key}/{name}": value
            for name, values in per_factor["factors"].items()
            for key, value in values.items()
            if key != "mig_component" and np.isfinite(value)
        }
        captured = {k: per_factor[k] for k in ("captured", "captured_informative")}
        tracker.log_metrics(model_run, {**result["scores"], **defect_rho, **by_factor, **captured})
        importances[model_run] = result["importance"]
        rows.append(
            {
                "run_id": model_run,
                **result["scores"],
                **captured,
                **{
                    f"{key}_{name}": value
                    for name, values in per_factor["factors"].items()
                    for key, value in values.items()
                },
                **{f"rho_{d}": r for d, r in result["rho"].items()},
                **{f"component_{d}": c for d, c in result["component"].items()},
            }
        )
    table = models.merge(pd.DataFrame(rows), on="run_id")
    table = pd.concat([table, udr_variants(table, latents, params)], axis=1)
    write_csv(out_dir / "models.csv", table)

    correlations = {}
    for udr_col in [c for c in table.columns if c.startswith("udr_") and c.count("_") == 2]:
        correlations[udr_col] = {
            m: bootstrap_spearman(table[udr_col].to_numpy(float), table[m].to_numpy(float), cfg.n_bootstrap, rng)
            for m in SUPERVISED
        }
    labels = [f"{f} {s} s{d}" for f, s, d in zip(table.family, table.setting, table.seed)]
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
                table[f"udr_within_{params.udr.similarity}"].to_numpy(float),
                table[metric].to_numpy(float),
                labels=[f"{f} {s} s{d}" for f, s, d in zip(table.family, table.setting, table.seed)],
                xlabel=f"within-setting UDR ({params.udr.similarity})",
                ylabel=metric,
            ),
            figures_dir / f"udr_vs_{metric}.png",
        )

    # DCI and SAP fit on at most n_train photos and score at most n_test others: report what they used.
    used_train, used_test = train_test_indices(len(images), n_train=cfg.n_train, n_test=cfg.n_test, random_state=0)
    summary = {
        "n_models": int(len(table)),
        "n_points": int(len(images)),
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
    champion_path = Path(champion_path)
    if champion_path.exists():
        champion = json.loads(champion_path.read_text())
        row = table[table.run_id == champion["run_id"]]
        if len(row):
            summary["champion"] = {
                "run_id": champion["run_id"],
                **{m: float(row[m].iloc[0]) for m in SUPERVISED},
                **{f"rank_by_{m}": int((table[m] > row[m].iloc[0]).sum() + 1) for m in ("mig", "dci_d")},
                "captured": int(row["captured"].iloc[0]),
                "captured_informative": int(row["captured_informative"].iloc[0]),
                "mig_per_factor": {n: float(row[f"mig_{n}"].iloc[0]) for n in names},
                "defects": {
                    d: {"component": int(row[f"component_{d}"].iloc[0]), "rho": float(row[f"rho_{d}"].iloc[0])}
                    for d in defects
                },
            }
            importance = importances[champion["run_id"]]
            plots.save_figure(plots.importance_heatmap(importance), figures_dir / "champion_importance.png")
            write_csv(out_dir / "champion_importance.csv", importance.reset_index(names="component"))
            kl = latents[int(np.flatnonzero(models.run_id.to_numpy() == champion["run_id"])[0])]["kl"]
            informative = informative_mask(kl, params.udr.kl_threshold)
            summary["champion"]["component_factor"] = {
                comp: {
                    "factor": importance.columns[int(np.argmax(vals))],
                    "kl": float(kl[j]),
                    "informative": bool(informative[j]),
                }
                for j, (comp, vals) in enumerate(importance.iterrows())
                if np.max(vals) > 0
            }
    write_json(out_dir / "metrics.json", summary)
    headline = evaluate_metrics(summary, f"udr_within_{params.udr.similarity}")
    write_metrics(metrics_path.parent, headline, metrics_path.stem)
    write_csv(
        plots_dir / "udr_vs_supervised.csv",
        table.rename(columns={f"udr_within_{params.udr.similarity}": "udr_within"})[PLOT_COLUMNS],
    )
    with tracker.run("evaluate", run_id=run_id, started_at=started_at, tags={"kind": "evaluate"}) as rid:
        tracker.log_metrics(rid, headline)  # the numbers DVC compares, grouped by '/' in MLflow
        tracker.log_artifacts(rid, out_dir, "evaluate")
    return summary
