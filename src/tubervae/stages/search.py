"""`search` stage: one resumable Optuna study per family, objective = median within-setting UDR.

A trial is one setting (β, and C_max for Cβ-VAE) trained on `search.seeds` seeds; its
value is the median over seeds of the UDR within that setting (the thesis's "udr"
column). A trial whose median number of informative components is below `min_active`
is infeasible: UDR rewards collapsed models, so they may not win.

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
import dataclasses
import logging
import os
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from tubervae import plots
from tubervae.config import Params, SearchSpace, UdrConfig, worker_count
from tubervae.evaluation.udr import udr_scores
from tubervae.io import under, write_csv, write_json
from tubervae.runs.pool import SeedJob, TrainingPool
from tubervae.runs.pruning import make_pruner, prune_steps
from tubervae.runs.study import (
    TrialSeededSampler,
    describe_study,
    enqueue_grid,
    fail_dead_local_trials,
    legacy_study_name,
    make_storage,
    storage_url,
    study_name,
)
from tubervae.runs.tracker import Tracker
from tubervae.runs.training_run import (
    TrainingData,
    checkpoint_file,
    find_finished_run,
    load_training_data,
    run_key,
    run_tracked,
    run_tracked_fused,
)
from tubervae.training import Setting, select_device

log = logging.getLogger(__name__)


def suggest_setting(trial: optuna.Trial, family: str, space: SearchSpace) -> Setting:
    beta = trial.suggest_float("beta", space.beta[0], space.beta[1], log=space.beta_log)
    c_max = trial.suggest_float("c_max", space.c_max[0], space.c_max[1]) if family == "cbeta_vae" else 0.0
    return Setting(family=family, beta=beta, c_max=c_max)


@dataclasses.dataclass(frozen=True)
class SeedScores:
    """A setting's seeds scored as the objective scores them: per-seed UDR (NaN as 0) and informative components."""

    udr: np.ndarray
    n_informative: np.ndarray

    @property
    def value(self) -> float:
        """The objective: the median UDR over the seeds."""
        return float(np.median(self.udr))

    @property
    def n_active(self) -> float:
        """The median number of informative components, which `search.min_active` bounds."""
        return float(np.median(self.n_informative))


def score_seeds(latents: list[dict], udr: UdrConfig) -> SeedScores:
    """Within-setting UDR of the seeds' probe latents (dicts with `mu` and `kl`): one rule, part-way and at the end."""
    result = udr_scores(
        [z["mu"] for z in latents],
        [z["kl"] for z in latents],
        n_partners=udr.n_partners or None,
        partner_seed=udr.partner_seed,
        similarity=udr.similarity,
        aggregate=udr.aggregate,
        kl_threshold=udr.kl_threshold,
        lasso_alpha=udr.lasso_alpha,
    )
    return SeedScores(np.nan_to_num(result.scores, nan=0.0), np.asarray(result.n_informative))


def judged_value(score: SeedScores, min_active: int) -> float:
    """What a trial reports part-way: its median UDR where it is feasible, 0 where it is not.

    This is how the infeasibility rule judges part-way: a setting with fewer than `min_active`
    informative components would be worth nothing if it ended there, so it goes on only while no
    feasible setting did better at that step. Not a rule of its own (prune whenever too few
    components are informative): early in training every component is closed and they open
    later the larger β is, so at ⅛ of 600 steps that rule pruned the full grid's best setting
    (β = 4, `benchmarks/README.md`).
    """
    return score.value if score.n_active >= min_active else 0.0


class Pruned(optuna.TrialPruned):
    """A trial stopped part-way (Optuna records it PRUNED): the training step and the reason."""

    def __init__(self, step: int, reason: str):
        super().__init__(reason)
        self.step, self.reason = step, reason


class Objective:
    """Train one setting on every seed, score it with within-setting UDR.

    With a pruner the seeds train segment by segment (`prune_steps`); after each intermediate
    segment the seeds' probe latents are scored exactly as at the end, the value is reported to
    Optuna as `judged_value` (0 while infeasible) and logged on the trial's run at that step, and
    the trial is pruned when the pruner says so, judging against feasible trials only. A pruned
    trial's run and its seeds' runs end KILLED, tagged `optuna_state=PRUNED` and `pruned_at_step`,
    and the seeds' checkpoints go unless `train.keep_checkpoints`.
    """

    def __init__(
        self,
        family: str,
        params: Params,
        tracker: Tracker,
        data: TrainingData,
        *,
        study_run_id: str | None,
        checkpoint_dir: Path,
        progress: bool = True,
        pool: TrainingPool | None = None,
    ):
        self.family, self.params, self.tracker, self.data = family, params, tracker, data
        self.space = params.search.spaces[family]
        self.study_run_id, self.checkpoint_dir, self.progress = study_run_id, checkpoint_dir, progress
        self.pool = pool
        self.stops = prune_steps(params)

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        try:
            return self._evaluate(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:2000])
            raise

    def _evaluate(self, trial: optuna.Trial) -> float:
        setting = suggest_setting(trial, self.family, self.space)
        cfg, search, udr = self.params.train, self.params.search, self.params.udr
        tags = {
            "kind": "trial",
            "family": self.family,
            "setting": setting.label,
            "optuna_study": trial.study.study_name,
            "optuna_trial": trial.number,
        }
        name = f"trial {trial.number} {self.family} {setting.label}"
        with self.tracker.run(name, parent_id=self.study_run_id, tags=tags, killed_by=(optuna.TrialPruned,)) as parent:
            trial.set_user_attr("mlflow_run_id", parent)
            self.tracker.log_params(
                parent,
                {
                    "family": self.family,
                    "beta": setting.beta,
                    "beta_norm": setting.normalised_beta(cfg.latent_dim, int(self.data.train.shape[1])),
                    "c_max": setting.c_max,
                    "seeds": search.seeds,
                    "similarity": udr.similarity,
                    "aggregate": udr.aggregate,
                    "optuna_trial": trial.number,
                    "pruner": search.pruner,
                },
            )
            seed_runs = self._train_seeds(trial, setting, parent)
            trial.set_user_attr("seed_run_ids", seed_runs)
            score = score_seeds([self.tracker.latents(run_id) for run_id in seed_runs], udr)
            value, n_active = score.value, score.n_active
            feasible = n_active >= search.min_active
            reason = (
                ""
                if feasible
                else (f"median informative components {n_active:g} below search.min_active {search.min_active}")
            )
            trial.set_user_attr("beta_norm", setting.normalised_beta(cfg.latent_dim, int(self.data.train.shape[1])))
            trial.set_user_attr("udr_per_seed", [float(s) for s in score.udr])
            trial.set_user_attr("n_active_per_seed", [int(n) for n in score.n_informative])
            trial.set_user_attr("n_active", n_active)
            trial.set_user_attr("feasible", feasible)
            trial.set_user_attr("infeasible_reason", reason)
            trial.set_constraint("min_active", float(search.min_active - n_active))
            self.tracker.log_metrics(
                parent,
                {
                    "udr": value,
                    "n_active": n_active,
                    "feasible": float(feasible),
                    **{f"udr_seed/{i}": s for i, s in enumerate(score.udr)},
                },
                cfg.steps,  # after any intermediate udr, so the run's latest udr is the objective
            )
            self.tracker.set_tags(
                parent, {"feasible": feasible, "infeasible_reason": reason, "seed_run_ids": ",".join(seed_runs)}
            )
        return value

    def _train_seeds(self, trial: optuna.Trial, setting: Setting, parent: str) -> list[str]:
        """Run ids of the setting's seeds: finished runs are reused, the rest trained, segment by segment
        with a pruner (in the pool if any, fused, or here), each seed in one MLflow run throughout."""
        cfg = self.params.train
        runs: dict[int, str] = {}
        todo = []
        for seed in range(self.params.search.seeds):
            reused = find_finished_run(self.tracker, run_key(setting, seed, cfg, self.data))
            if reused:
                log.info("seed %d of %s %s: reusing finished run %s", seed, self.family, setting.label, reused)
                runs[seed] = reused
            else:
                todo.append(seed)
        if not todo:
            return [runs[seed] for seed in sorted(runs)]
        open_runs: dict[int, str] = {}  # seed → its run, left RUNNING by the last intermediate segment
        try:
            # A reused seed is judged by its final latents: it stands past every judging step.
            finished = {seed: self.tracker.latents(run_id) for seed, run_id in runs.items()} if self.stops else {}
            for stop in self.stops:
                results = self._train_segment(setting, todo, parent, stop, open_runs)
                latents = {**finished, **{seed: result["latents"] for seed, result in results.items()}}
                self._judge(trial, parent, stop, [latents[seed] for seed in sorted(latents)])
            results = self._train_segment(setting, todo, parent, None, open_runs)
        except Pruned as pruned:
            self._end_pruned(trial, setting, parent, todo, {**runs, **open_runs}, open_runs, pruned)
            raise
        except BaseException:
            self._end_open_runs(open_runs, {"stopped": "its trial failed or was interrupted"})
            raise
        runs.update({seed: result["run_id"] for seed, result in results.items()})
        return [runs[seed] for seed in sorted(runs)]

    def _train_segment(
        self, setting: Setting, seeds: list[int], parent: str, stop: int | None, open_runs: dict[int, str]
    ) -> dict[int, dict]:
        """Train `seeds` up to step `stop` (None: to the end), continuing the runs in `open_runs`; their results.

        Every seed that ends this segment well is put in `open_runs` before an error of another is
        raised, so no run that the segment left RUNNING is forgotten.
        """
        cfg, kl_threshold = self.params.train, self.params.udr.kl_threshold
        final = stop is None
        results: dict[int, dict] = {}

        def done(seed: int, result: dict) -> None:
            results[seed] = result
            if final:
                open_runs.pop(seed, None)
            else:
                open_runs[seed] = result["run_id"]

        if fuse_seeds(cfg):
            fused = run_tracked_fused(
                self.tracker,
                setting,
                seeds,
                cfg,
                self.data,
                kl_threshold=kl_threshold,
                parent_id=parent,
                checkpoint_dir=self.checkpoint_dir,
                stop_at=stop,
                run_ids=[open_runs.get(seed) for seed in seeds],
            )
            for seed, result in zip(seeds, fused):
                done(seed, result)
        elif self.pool is None:
            for seed in seeds:
                result = run_tracked(
                    self.tracker,
                    setting,
                    seed,
                    cfg,
                    self.data,
                    parent_id=parent,
                    run_id=open_runs.get(seed),
                    kl_threshold=kl_threshold,
                    checkpoint_dir=self.checkpoint_dir,
                    progress=self.progress,
                    stop_at=stop,
                )
                done(seed, result)
        else:
            jobs = [SeedJob(setting, seed, cfg, kl_threshold, parent, stop, open_runs.get(seed)) for seed in seeds]
            outcomes = self.pool.train(jobs)  # waits for every seed: none may outlive its trial's run
            for job, outcome in zip(jobs, outcomes):
                if not isinstance(outcome, BaseException):
                    done(job.seed, outcome)
            errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            if errors:
                raise errors[0]
        return results

    def _judge(self, trial: optuna.Trial, parent: str, step: int, latents: list[dict]) -> None:
        """Score the seeds part-way, report to Optuna, and raise `Pruned` when the trial should stop."""
        search = self.params.search
        score = score_seeds(latents, self.params.udr)
        feasible = score.n_active >= search.min_active
        trial.report(judged_value(score, search.min_active), step)
        self.tracker.log_metrics(
            parent, {"udr": score.value, "n_active": score.n_active, "feasible": float(feasible)}, step
        )
        if not trial.should_prune():
            return
        if feasible:
            raise Pruned(step, f"{search.pruner} pruner: median UDR {score.value:.4g} at step {step}")
        raise Pruned(
            step,
            f"{search.pruner} pruner: infeasible at step {step} (median informative components {score.n_active:g} "
            f"below search.min_active {search.min_active}), judged 0",
        )

    def _end_pruned(
        self,
        trial: optuna.Trial,
        setting: Setting,
        parent: str,
        trained: list[int],
        seed_runs: dict[int, str],
        open_runs: dict[int, str],
        pruned: Pruned,
    ) -> None:
        """Record the pruning on the trial and its runs, end the trained seeds' runs KILLED, remove their
        checkpoints (a setting that cannot win is not resumed)."""
        tags = {"optuna_state": "PRUNED", "pruned_at_step": pruned.step}
        trial.set_user_attr("pruned_at_step", pruned.step)
        trial.set_user_attr("pruned_reason", pruned.reason)
        trial.set_user_attr("seed_run_ids", [seed_runs[seed] for seed in sorted(seed_runs)])
        self.tracker.set_tags(
            parent, {**tags, "pruned_reason": pruned.reason, "seed_run_ids": ",".join(seed_runs.values())}
        )
        self._end_open_runs(open_runs, tags)
        if not self.params.train.keep_checkpoints:
            for seed in trained:
                checkpoint_file(self.checkpoint_dir, setting, seed, self.params.train, self.data).unlink(
                    missing_ok=True
                )
        log.info("trial %d pruned: %s", trial.number, pruned)

    def _end_open_runs(self, open_runs: dict[int, str], tags: dict) -> None:
        """End KILLED, with `tags`, the seed runs an intermediate segment left RUNNING (not those that failed since)."""
        for run_id in open_runs.values():
            if self.tracker.status(run_id) == "RUNNING":
                self.tracker.end_run(run_id, "KILLED", tags)
        open_runs.clear()


def best_feasible(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete feasible trial: a pruned trial (stopped part-way, its value an intermediate one) never wins."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("feasible")]
    return max(done, key=lambda t: (t.value, t.user_attrs.get("n_active", 0)), default=None)


def summarise(study: optuna.Study, family: str, params: Params) -> dict:
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "beta_norm": t.user_attrs.get("beta_norm"),
                "feasible": t.user_attrs.get("feasible"),
                "n_active": t.user_attrs.get("n_active"),
                "infeasible_reason": t.user_attrs.get("infeasible_reason", ""),
                "udr_per_seed": t.user_attrs.get("udr_per_seed"),
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                "seed_run_ids": t.user_attrs.get("seed_run_ids", []),
                "fail_reason": t.user_attrs.get("fail_reason") or t.system_attrs.get("fail_reason", ""),
                "intermediate_udr": [[step, value] for step, value in sorted(t.intermediate_values.items())],
                "pruned_at_step": t.user_attrs.get("pruned_at_step"),
                "pruned_reason": t.user_attrs.get("pruned_reason", ""),
            }
        )
    best = best_feasible(study)
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    return {
        "family": family,
        "study": study.study_name,
        "objective": f"median within-setting UDR ({params.udr.similarity}, {params.udr.aggregate})",
        "pruner": params.search.pruner,
        "n_complete": len(complete),
        "n_pruned": sum(t["state"] == "PRUNED" for t in trials),
        "n_feasible": sum(bool(t["feasible"]) for t in complete),
        "best_value": best.value if best else None,
        "best_params": best.params if best else None,
        "best_trial": best.number if best else None,
        "best_n_active": best.user_attrs.get("n_active") if best else None,
        "best_mlflow_run_id": best.user_attrs.get("mlflow_run_id") if best else None,
        "trials": trials,
    }


def search_metrics(summary: dict) -> dict:
    """The study's headline numbers for `dvc metrics show` / `dvc exp show`: numbers only, no ids."""
    metrics = {
        "n_complete": summary["n_complete"],
        "n_pruned": summary["n_pruned"],
        "n_feasible": summary["n_feasible"],
    }
    if summary["best_value"] is not None:
        metrics.update(best_udr=summary["best_value"], best_trial=summary["best_trial"])
        metrics.update({f"best_{k}": v for k, v in (summary["best_params"] or {}).items()})
        metrics["best_n_active"] = summary["best_n_active"]
    return metrics


def history_table(summary: dict) -> pd.DataFrame:
    """The study's complete trials in order, with the running best feasible UDR (DVC plot data)."""
    rows, best = [], float("nan")
    for t in summary["trials"]:
        if t["state"] != "COMPLETE":
            continue
        if t["feasible"] and t["value"] is not None and (np.isnan(best) or t["value"] > best):
            best = float(t["value"])
        rows.append(
            {
                "family": summary["family"],
                "trial": t["number"],
                "udr": t["value"],
                "best_udr": best,
                "feasible": bool(t["feasible"]),
                "n_active": t["n_active"],
                "beta": t["params"].get("beta"),
                "beta_norm": t.get("beta_norm"),
                "c_max": t["params"].get("c_max", 0.0),
            }
        )
    columns = ["family", "trial", "udr", "best_udr", "feasible", "n_active", "beta", "beta_norm", "c_max"]
    return pd.DataFrame(rows, columns=columns)


def write_reports(
    summary: dict, out_dir: Path, *, metrics_dir: Path | None = None, plots_dir: Path | None = None
) -> None:
    """`<family>.json` (the whole study, ids included) and the figures in `out_dir`; the numbers-only
    metrics in `metrics_dir/search_<family>.json` and the plot data in `plots_dir/search_<family>.csv`
    (both default to siblings of `out_dir`: reports/metrics/, reports/plots/)."""
    family = summary["family"]
    out_dir = Path(out_dir)
    write_json(out_dir / f"{family}.json", summary)
    write_json((metrics_dir or out_dir.parent / "metrics") / f"search_{family}.json", search_metrics(summary))
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


def fuse_seeds(cfg) -> bool:
    """Whether a trial's seeds train as one fused model: `train.fuse`, where auto means on CUDA."""
    return cfg.fuse == "always" or (cfg.fuse == "auto" and select_device(cfg.device).type == "cuda")


def training_workers(params: Params) -> int:
    """Models trained at once: `train.workers`, where 0 means one per CPU core, or one on an accelerator
    (several processes would only compete for it)."""
    if params.train.workers:
        return params.train.workers
    return worker_count(0) if select_device(params.train.device).type == "cpu" else 1


def run_trials(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    objective,
    wanted: int,
    *,
    max_starts: int,
    max_retry: int | None,
    poll_seconds: float = 1.0,
    parallel: int = 1,
) -> None:
    """Run trials, up to `parallel` at once, until the study holds `wanted` finished trials.

    Finished means complete or pruned: a pruned trial has decided its setting (it cannot
    win) as surely as a complete one, so pruning saves training instead of buying more
    trials, and `n_trials` counts what Optuna's own `n_trials` counts, minus failures.
    A trial starts only while finished + running trials are fewer than `wanted`; when
    other workers hold the missing trials this worker waits, and takes over a trial that
    comes back as WAITING because its worker died (here: at once; elsewhere: heartbeat).
    A failing trial (non-finite loss, bad setting) is recorded as FAIL with its reason
    and the study goes on; `max_starts` bounds the trials this worker starts. Trials run
    at once are sampled before any of them is told (TPE's constant liar counts the
    running ones), each in its own thread with its own heartbeat; their seeds share the
    training pool.

    Why not `study.optimize(callbacks=[MaxTrialsCallback(wanted, states=(COMPLETE,))])`: the callback
    stops a worker only after one of its trials finishes, so trials that other workers (or this
    worker's other threads) started meanwhile still complete. Measured with optuna 5.0.0 and
    MaxTrialsCallback(3): 3 complete trials with n_jobs=1, 4 with n_jobs=2, 5 with n_jobs=4. This
    loop counts running trials before it starts one, which keeps exactly `wanted`, and fails and
    re-queues a dead local worker's trial before counting.
    """
    started = 0
    while True:
        fail_dead_local_trials(study, storage, max_retry)
        optuna.storages.fail_stale_trials(study)  # other hosts' dead workers, by heartbeat
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
        running = states.count(TrialState.RUNNING)
        if finished >= wanted:
            return
        if finished + running >= wanted:
            time.sleep(poll_seconds)
            continue
        if started >= max_starts:
            log.error("stopping after %d trial(s) started by this worker: %d of %d finished", started, finished, wanted)
            return
        batch = min(parallel, wanted - finished - running, max_starts - started)
        started += batch
        study.optimize(
            objective, n_trials=batch, n_jobs=batch, catch=(RuntimeError, ValueError), callbacks=[_report_failure]
        )


def _report_failure(study: optuna.Study, trial: FrozenTrial) -> None:
    if trial.state == TrialState.FAIL:
        log.error(
            "trial %d failed (%s); the study goes on",
            trial.number,
            trial.user_attrs.get("fail_reason", "no reason recorded"),
        )


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
    """The `tubervae search` command: run the study up to `n_trials` finished (complete or pruned) trials."""
    if family not in params.search.spaces:
        raise ValueError(
            f"family {family!r} has no search space in params.yaml (search.spaces); "
            f"configured: {sorted(params.search.spaces)}"
        )
    root = Path(root)
    processed_dir, reports_dir = under(root, processed_dir), under(root, reports_dir)
    space = params.search.spaces[family]
    wanted = n_trials or space.n_trials
    if wanted < 1:
        raise ValueError(f"--n-trials must be at least 1, got {wanted}")
    data = load_training_data(processed_dir)
    tracker = Tracker.open(root, run_id)
    tracker.mark_stale_runs_killed()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(family, params, data.data_version)
    with warnings.catch_warnings():
        # The heartbeat and its retry callback are marked experimental; they are what resumes a killed worker.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study_storage = make_storage(storage or storage_url(root), params)
        legacy = legacy_study_name(family, params, data.data_version)
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
        describe_study(study, family, params, data.data_version)
        if params.search.enqueue_grid:
            enqueue_grid(study, space)
        workers = training_workers(params)
        with contextlib.ExitStack() as stack:
            pool = None
            if workers > 1:
                pool = stack.enter_context(
                    TrainingPool(
                        workers, tracker, processed_dir, root / "checkpoints", max_restarts=params.search.max_retry
                    )
                )
            objective = Objective(
                family,
                params,
                tracker,
                data,
                study_run_id=run_id,
                checkpoint_dir=root / "checkpoints",
                progress=progress,
                pool=pool,
            )
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
