"""A family study's trials: how a setting's seeds are scored, what each trial records, and the loop that
runs trials until the study holds `n_trials` finished ones.

A trial's value is the median over its seeds of the UDR within the setting (`search.objective: udr`)
or of their held-out ELBO (`elbo`), job score (`job`) or MIG on the measured photos (`measured_mig`);
a trial whose median number of informative components is below `search.min_active` is infeasible and
cannot win (UDR rewards collapsed models). What a trial records lives in its Optuna user attributes (the reports and
the resumption read them back): `host` and `pid` of its worker, its MLflow run, its seeds' runs,
the per-seed scores, feasibility, and for a pruned trial the step and the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from tubervae.config import Params, UdrConfig
from tubervae.evaluation.udr import udr_options, udr_scores
from tubervae.runs.study import fail_dead_local_trials, objective_text

log = logging.getLogger(__name__)


# scoring a setting's seeds ----------------------------------------------------------
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

    def feasible(self, min_active: int) -> bool:
        """Whether the setting may win: its median number of informative components reaches `min_active`."""
        return self.n_active >= min_active


def score_seeds(latents: list[dict], udr: UdrConfig, *, excluded: tuple[int, ...] = ()) -> SeedScores:
    """Within-setting UDR of the seeds' probe latents (dicts with `mu` and `kl`): one rule, part-way and at the end.

    `excluded`: components left out of every seed's UDR and informative count (a guided family's guided one)."""
    result = udr_scores(
        [z["mu"] for z in latents],
        [z["kl"] for z in latents],
        excluded=[excluded] * len(latents),
        **udr_options(udr),
    )
    return SeedScores(np.nan_to_num(result.scores, nan=0.0), np.asarray(result.n_informative))


def infeasible_reason(score: SeedScores, min_active: int) -> str:
    """Why the setting may not win ("" when it may)."""
    if score.feasible(min_active):
        return ""
    return f"median informative components {score.n_active:g} below search.min_active {min_active}"


def judged_value(score: SeedScores, min_active: int) -> float:
    """What a trial reports part-way: its median UDR where it is feasible, 0 where it is not.

    This is how the infeasibility rule judges part-way: a setting with fewer than `min_active`
    informative components would be worth nothing if it ended there, so it goes on only while no
    feasible setting did better at that step. Not a rule of its own (prune whenever too few
    components are informative): early in training every component is closed and they open
    later the larger β is, so at ⅛ of 600 steps that rule pruned the full grid's best setting
    (β = 4, `benchmarks/bench_pruning.py`).
    """
    return score.value if score.feasible(min_active) else 0.0


class Pruned(optuna.TrialPruned):
    """A trial stopped part-way (Optuna records it PRUNED): the training step and the reason."""

    def __init__(self, step: int, reason: str):
        super().__init__(reason)
        self.step, self.reason = step, reason


# what a trial records ---------------------------------------------------------------
def record_worker(trial: optuna.Trial) -> None:
    """The worker holding the trial: what `fail_dead_local_trials` checks after a kill."""
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())


def record_failure(trial: optuna.Trial, error: BaseException) -> None:
    trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}"[:2000])


def record_runs(trial: optuna.Trial, *, trial_run: str | None = None, seed_runs: list[str] | None = None) -> None:
    """The trial's MLflow run and its seeds' runs, in seed order."""
    if trial_run is not None:
        trial.set_user_attr("mlflow_run_id", trial_run)
    if seed_runs is not None:
        trial.set_user_attr("seed_run_ids", list(seed_runs))


def record_score(trial: optuna.Trial, score: SeedScores, *, min_active: int, beta_norm: float) -> str:
    """The final scores, feasibility and the constraint TPE reads; returns the infeasible reason ("" if none)."""
    reason = infeasible_reason(score, min_active)
    trial.set_user_attr("beta_norm", beta_norm)
    trial.set_user_attr("udr_per_seed", [float(s) for s in score.udr])
    trial.set_user_attr("n_active_per_seed", [int(n) for n in score.n_informative])
    trial.set_user_attr("n_active", score.n_active)
    trial.set_user_attr("feasible", not reason)
    trial.set_user_attr("infeasible_reason", reason)
    trial.set_constraint("min_active", float(min_active - score.n_active))
    return reason


def record_objective(trial: optuna.Trial, objective: str, per_seed: list[float]) -> float:
    """The seeds' values under a `search.objective` other than udr (`<objective>_per_seed`); returns the
    trial's value, their median."""
    trial.set_user_attr(f"{objective}_per_seed", [float(v) for v in per_seed])
    return float(np.median(per_seed))


def record_pruned(trial: optuna.Trial, pruned: Pruned, seed_runs: list[str]) -> None:
    trial.set_user_attr("pruned_at_step", pruned.step)
    trial.set_user_attr("pruned_reason", pruned.reason)
    record_runs(trial, seed_runs=seed_runs)


# reading a study back ----------------------------------------------------------------
def best_feasible(study: optuna.Study) -> FrozenTrial | None:
    """The best complete feasible trial: a pruned trial (stopped part-way, its value an intermediate one) never wins."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("feasible")]
    return max(done, key=lambda t: (t.value, t.user_attrs.get("n_active", 0)), default=None)


def summarise(study: optuna.Study, family: str, params: Params) -> dict:
    """The whole study as reports/search/<family>.json holds it: every trial's records, and the best."""
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
                "objective_per_seed": t.user_attrs.get(f"{params.search.objective}_per_seed")
                or t.user_attrs.get("udr_per_seed"),
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
        "objective": objective_text(params),
        "search_objective": params.search.objective,
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
    """The study's headline numbers for `dvc metrics show` / `dvc exp show`: numbers only, no ids.

    The trial counts and the best value at the top; the best trial's number, settings and active
    components as the group `best` (`io.metrics_files` writes it to search_<family>_best.json)."""
    metrics: dict = {
        "n_complete": summary["n_complete"],
        "n_pruned": summary["n_pruned"],
        "n_feasible": summary["n_feasible"],
    }
    best: dict = {}  # always a group: its file is a declared output, empty while no trial is feasible
    if summary["best_value"] is not None:
        metrics[f"best_{summary.get('search_objective', 'udr')}"] = summary["best_value"]
        best["best_trial"] = summary["best_trial"]
        best.update({f"best_{k}": v for k, v in (summary["best_params"] or {}).items()})
        best["best_n_active"] = summary["best_n_active"]
    metrics["best"] = best
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


# running trials ------------------------------------------------------------------------
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
