"""`register` stage: promote the champion VAE in the MLflow Model Registry.

Policy (thesis §2.3.4 and §4.2.3):
1. Only settings whose trial was feasible (median informative components ≥ min_active).
2. Rank settings by their within-family UDR (the median over seeds), never by A2A,
   which punishes families that learn a different representation (the herd effect).
3. Settings within `register.udr_tolerance` of the best UDR count as tied; among them
   the one with more informative components (#top) wins, because UDR ignores factors
   a collapsed model has lost (small black spots go first); then the higher UDR.
4. Within the chosen setting, the seed with the highest UDR (then more components).

The champion becomes a new version of `tubervae-vae` with alias `champion`: the MLflow
model `vae` that its training run logged (a pyfunc `VaeModel` with its signature and input
example), so the version links to the run that trained it, with its params and metrics. A
run without a logged model (trained before models were logged) gets it now, on that run.
If the alias already points at that run, nothing changes. The stage's own `register` run
logs the champion's figures as metrics and champion.json as an artifact.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from tubervae.config import Params
from tubervae.data.processed import load_meta
from tubervae.io import write_json
from tubervae.runs.tracker import CHAMPION, Tracker

log = logging.getLogger(__name__)


def choose_champion(models: pd.DataFrame, udr_tolerance: float) -> pd.Series:
    """The champion row of reports/udr/models.csv under the policy above."""
    needed = {"run_id", "family", "beta", "c_max", "setting", "seed", "n_active", "udr_within", "feasible"}
    missing = needed - set(models.columns)
    if missing:
        raise ValueError(f"the models table lacks columns {sorted(missing)}")
    feasible = models[models.feasible.astype(bool) & models.udr_within.notna()]
    if feasible.empty:
        raise RuntimeError(
            "no feasible model to register: every trial has fewer informative components than "
            "search.min_active; train longer, lower β, or lower search.min_active"
        )
    settings = (
        feasible.groupby(["family", "beta", "c_max"])
        .agg(udr=("udr_within", "median"), n_top=("n_active", "median"))
        .reset_index()
    )
    best = settings.udr.max()
    close = settings[settings.udr >= best - udr_tolerance]
    chosen = close.sort_values(["n_top", "udr"], ascending=False).iloc[0]
    members = feasible[
        (feasible.family == chosen.family) & (feasible.beta == chosen.beta) & (feasible.c_max == chosen.c_max)
    ]
    return members.sort_values(["udr_within", "n_active"], ascending=False).iloc[0]


def run(
    params: Params,
    *,
    root: str | Path = ".",
    udr_dir: str | Path = "reports/udr",
    processed_dir: str | Path = "data/processed",
    out_path: str | Path = "reports/register/champion.json",
    run_id: str | None = None,
) -> dict:
    cfg = params.register
    models_path = Path(udr_dir) / "models.csv"
    if not models_path.exists():
        raise FileNotFoundError(f"{models_path} is missing: run the udr stage first (dvc repro udr)")
    models = pd.read_csv(models_path, dtype={"setting": str})
    champion = choose_champion(models, cfg.udr_tolerance)
    tracker = Tracker.open(root, run_id)
    tracker.mark_stale_runs_killed()  # runs of a killed earlier attempt end KILLED, not RUNNING
    meta = load_meta(processed_dir)
    with tracker.run("register", run_id=run_id, tags={"kind": "register", "source_run_id": champion.run_id}) as rid:
        version = promote(tracker, cfg.model_name, champion, meta)
        summary = {
            "model": cfg.model_name,
            "alias": CHAMPION,
            "version": int(version.version),
            "run_id": champion.run_id,
            "family": champion.family,
            "setting": str(champion.setting),
            "seed": int(champion.seed),
            "udr_within": float(champion.udr_within),
            "n_active": int(champion.n_active),
            "data_version": version.tags.get("data_version", meta["data_version"]),
            "policy": f"feasible settings, best within-family UDR; ties within {cfg.udr_tolerance} -> more "
            f"informative components",
        }
        write_json(out_path, summary)
        headline = {"version": summary["version"], "udr_within": summary["udr_within"], "n_active": summary["n_active"]}
        tracker.log_metrics(rid, headline)
        tracker.log_artifacts(rid, Path(out_path).parent, "register")
    return summary


def promote(tracker: Tracker, name: str, champion: pd.Series, meta: dict):
    """`name@champion` on the champion's logged model; the version it points at.

    Nothing changes when the alias already is that run. A version of that very model made by an
    earlier attempt that died before moving the alias is reused, so a rerun adds no duplicate.
    """
    current = tracker.version_by_alias(name, CHAMPION)
    if current is not None and current.tags.get("source_run_id") == champion.run_id:
        log.info("%s@%s already is run %s (version %s)", name, CHAMPION, champion.run_id, current.version)
        return current
    model_id = tracker.ensure_vae_model(champion.run_id, crop_fraction=meta["crop_fraction"])
    version = (tracker.versions_of(name, model_id) or [None])[-1]
    if version is None:
        version = tracker.register_model(name, model_id, tags=version_tags(tracker, champion, meta))
    tracker.set_alias(name, CHAMPION, version.version)
    log.info("registered %s version %s (run %s) as %s", name, version.version, champion.run_id, CHAMPION)
    return version


def version_tags(tracker: Tracker, champion: pd.Series, meta: dict) -> dict:
    """What a version says of its model at a glance; warns when the data moved on since training."""
    trained_on = tracker.get_run(champion.run_id, origin="reports/udr/models.csv").data.params.get("data_version")
    trained_on = trained_on or meta["data_version"]
    if trained_on != meta["data_version"]:
        log.warning(
            "the champion was trained on data version %s, the processed data is %s: rerun the search and udr stages",
            trained_on,
            meta["data_version"],
        )
    return {
        "family": champion.family,
        "setting": champion.setting,
        "seed": int(champion.seed),
        "udr": float(champion.udr_within),
        "n_active": int(champion.n_active),
        "data_version": trained_on,
        "source_run_id": champion.run_id,
    }
