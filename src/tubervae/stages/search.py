"""`search` stage: one resumable Optuna study per family, objective = median within-setting UDR.

A trial is one setting (β, and C_max for Cβ-VAE) trained on `search.seeds` seeds; its
value is the median over seeds of the UDR within that setting (the thesis's "udr"
column), or, by `search.objective`, of their held-out ELBO, job score or MIG on the photos
with measured factors (`tubervae.runs.objective`). A trial whose median number of informative
components is below `min_active` is infeasible: UDR rewards collapsed models, so they may not win.

Resumption: the study lives in an Optuna RDB storage (default `sqlite:///<project>/optuna.db`,
never the MLflow database) and is loaded by name. `n_trials` is the total wanted: a rerun
after completion trains nothing; a rerun after a kill first fails and re-queues the
trials of dead workers on this host, then runs only what is missing. Each seed's
training reuses a finished MLflow run or resumes from its checkpoint, so no seed is
trained twice. The study name (`beta_vae-2000steps-3seeds-lasso-32f9c81004`) carries a
fingerprint of everything that changes the models (data version, training settings, seeds,
UDR settings), so changed settings start a new study and never mix with old trials; the
study's user attributes list those settings, and its objective is named "udr"
(optuna-dashboard sqlite:///optuna.db shows both). A study named before the readable part
(`beta_vae-32f9c81004`) is resumed under its old name.

Pruning (`search.pruner`, off by default): the seeds of a trial train segment by segment,
are scored part-way at `search.prune_at` × `train.steps` exactly as at the end (0 while
fewer than `min_active` components are informative), and a trial that Optuna's pruner
gives up on, judged against feasible trials only, ends PRUNED (its MLflow runs KILLED,
tagged `optuna_state=PRUNED`). A pruned trial counts towards `n_trials` as a complete
one does and never wins; a trial that is not pruned scores exactly what it would without
pruning, so the pruner is not part of the fingerprint.

Several workers may share one study (a PostgreSQL URL for several machines): a worker
starts a trial only while finished (complete or pruned) + running trials fall short of
`n_trials` and otherwise waits for the others, so the study ends with exactly `n_trials`
finished trials. The sampler's state is not stored, so each trial seeds it from its own number:
a resumed study does not repeat its first suggestions, and two workers never share a seed.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from tubervae import plots
from tubervae.config import Params, is_guided
from tubervae.io import write_csv, write_json, write_metrics
from tubervae.runs.objective import Objective
from tubervae.runs.pool import TrainingPool
from tubervae.runs.progress import SearchProgress
from tubervae.runs.pruning import make_pruner
from tubervae.runs.seed_trainers import seed_trainer, training_workers
from tubervae.runs.study import (
    TrialSeededSampler,
    check_objective,
    describe_study,
    enqueue_grid,
    legacy_study_name,
    make_storage,
    storage_url,
    study_name,
)
from tubervae.runs.study_notes import note_policy
from tubervae.runs.training_run import load_training_data
from tubervae.runs.trials import history_table, run_trials, search_metrics, summarise
from tubervae.stages.common import open_tracker, project_paths

log = logging.getLogger(__name__)

__all__ = ["history_table", "run", "search_metrics", "summarise", "write_reports"]


def run(
    params: Params,
    family: str,
    *,
    n_trials: int | None = None,
    storage: str | None = None,
    root: str | Path = ".",
    processed_dir: str | Path = "data/processed",
    run_id: str | None = None,
    reports_dir: str | Path = "reports/search",
    progress: bool = True,
) -> dict:
    """The `tubervae search` command: run the study up to `n_trials` finished (complete or pruned) trials.

    `family` is the stage's instance (`search@<family>` in dvc.yaml), the one argument beside `params`."""
    wanted = trials_wanted(params, family, n_trials)
    root = Path(root)
    processed_dir, reports_dir = project_paths(root, processed_dir, reports_dir)
    data = load_training_data(processed_dir)
    if is_guided(family) and not len(data.guide_labels):
        raise ValueError(
            f"family {family!r} is guided, but the labelled split holds no guide photo (preprocess.guide_fraction "
            f"{params.preprocess.guide_fraction}, {processed_dir / 'labelled.npz'}): label photos (good/, bad/) and "
            f"raise preprocess.guide_fraction above 0, or remove search.spaces.{family}"
        )
    tracker = open_tracker(root, run_id)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        # The heartbeat and its retry callback are marked experimental; they are what resumes a killed worker.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study_storage = make_storage(storage or storage_url(root), params)
        study = open_study(study_storage, storage or storage_url(root), family, params, data.data_version)
        lines = SearchProgress(family, wanted) if progress else None
        run_study(study, study_storage, wanted, (tracker, data, lines), family, params, root, processed_dir, run_id)
    summary = summarise(study, family, params)
    best_run = summary["best_mlflow_run_id"]
    for t in summary["trials"]:
        if t["mlflow_run_id"] and t["state"] == "COMPLETE":
            tracker.set_tags(t["mlflow_run_id"], {"best_trial": t["mlflow_run_id"] == best_run})
    write_reports(summary, Path(reports_dir))
    finished = summary["n_complete"] + summary["n_pruned"]
    if finished < wanted:
        raise RuntimeError(
            f"the {family} study holds {finished} of {wanted} finished trials ({summary['n_complete']} complete, "
            f"{summary['n_pruned']} pruned) after this worker's trial starts ran out; each trial's failure reason "
            f"is in {Path(reports_dir) / f'{family}.json'}"
        )
    return summary


def trials_wanted(params: Params, family: str, n_trials: int | None) -> int:
    """How many finished trials the study must hold: `n_trials`, else the family's `search.spaces` entry's."""
    if family not in params.search.spaces:
        raise ValueError(
            f"family {family!r} has no search space in params.yaml (search.spaces); "
            f"configured: {sorted(params.search.spaces)}"
        )
    wanted = n_trials or params.search.spaces[family].n_trials
    if wanted < 1:
        raise ValueError(f"--n-trials must be at least 1, got {wanted}")
    return wanted


def open_study(study_storage, url: str, family: str, params: Params, data_version: str) -> optuna.Study:
    """The family's study in `study_storage` (created, or loaded by its name; a study begun before the readable
    names is resumed under its old name), checked against `search.objective` and described for the dashboard."""
    name = study_name(family, params, data_version)
    legacy = legacy_study_name(family, params, data_version)
    existing = optuna.study.get_all_study_names(study_storage)
    if legacy in existing and name not in existing:
        name = legacy  # a study begun before the readable names: resumed under its name
    study = optuna.create_study(
        study_name=name,
        storage=study_storage,
        sampler=TrialSeededSampler(params.search.sampler_seed),
        pruner=make_pruner(params),
        direction="maximize",
        load_if_exists=True,
    )
    check_objective(study, params.search.objective, url)
    describe_study(study, family, params, data_version)
    note_policy(study, params)  # the dashboard's "how to read" and champion policy
    if params.search.enqueue_grid:
        enqueue_grid(study, params.search.spaces[family])
    return study


def run_study(
    study: optuna.Study,
    study_storage,
    wanted: int,
    context: tuple,
    family: str,
    params: Params,
    root: Path,
    processed_dir: Path,
    run_id: str | None,
) -> None:
    """Run trials up to `wanted` finished ones, the seeds trained by `seed_trainer` (in the training pool when
    there is more than one worker). `context`: the tracker, the training data and the progress lines (or None)."""
    tracker, data, lines = context
    workers = training_workers(params)
    on_step = lines.step if lines else None
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1:
            pool = stack.enter_context(
                TrainingPool(
                    workers,
                    tracker,
                    processed_dir,
                    root / "checkpoints",
                    max_restarts=params.search.max_retry,
                    on_step=on_step,
                )
            )
        trainer = seed_trainer(
            params,
            tracker,
            data,
            root / "checkpoints",
            pool=pool,
            progress=lines is not None,
            on_step=on_step,
            family=family,
        )
        objective = Objective(
            family,
            params,
            tracker,
            data,
            trainer,
            study_run_id=run_id,
            checkpoint_dir=root / "checkpoints",
            progress=lines,
        )
        if lines:
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            lines.study(study.study_name, len(done))
        run_trials(
            study,
            study_storage,
            objective,
            wanted,
            max_starts=wanted * (1 + params.search.max_retry),
            max_retry=params.search.max_retry,
            poll_seconds=1.0,
            parallel=params.search.parallel_trials or workers,
        )


def write_reports(
    summary: dict, out_dir: Path, *, metrics_dir: Path | None = None, plots_dir: Path | None = None
) -> None:
    """`<family>.json` (the whole study, ids included) and the figures in `out_dir`; the numbers-only
    metrics in `metrics_dir/search_<family>.json` (the best trial's in `search_<family>_best.json`) and
    the plot data in `plots_dir/search_<family>.csv` (both default to siblings of `out_dir`:
    reports/metrics/, reports/plots/)."""
    family = summary["family"]
    out_dir = Path(out_dir)
    write_json(out_dir / f"{family}.json", summary)
    write_metrics(metrics_dir or out_dir.parent / "metrics", search_metrics(summary), f"search_{family}")
    write_csv((plots_dir or out_dir.parent / "plots") / f"search_{family}.csv", history_table(summary))
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    if not done:
        return
    infeasible = np.array([not t["feasible"] for t in done])
    values = np.array([t["value"] for t in done], dtype=float)
    betas = np.array([t["params"]["beta"] for t in done])
    norms = np.array([t.get("beta_norm") or np.nan for t in done], dtype=float)
    per_beta = float(np.nanmedian(norms / betas)) if np.isfinite(norms).any() else None
    plots.save_figure(
        plots.metric_vs_param_figure(
            betas,
            values,
            xlabel="β",
            ylabel="median UDR",
            logx=True,
            infeasible=infeasible,
            secondary=None if per_beta is None else ("normalised β = β·d/N", per_beta),
        ),
        out_dir / f"{family}_udr_vs_beta.png",
    )
    if family == "cbeta_vae":
        plots.save_figure(
            plots.metric_vs_param_figure(
                np.array([t["params"]["c_max"] for t in done]),
                values,
                xlabel="C_max (nats)",
                ylabel="median UDR",
                infeasible=infeasible,
            ),
            out_dir / f"{family}_udr_vs_cmax.png",
        )
    history = [t["value"] if t["state"] == "COMPLETE" and t["feasible"] else np.nan for t in summary["trials"]]
    plots.save_figure(plots.history_figure(np.array(history, dtype=float)), out_dir / f"{family}_history.png")
