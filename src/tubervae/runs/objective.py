"""The search's objective: one trial trains one setting on every seed and scores it with within-setting UDR
(or, with `search.objective: elbo`, with the seeds' held-out ELBO on the test photos; with `job`, with
the cross-validated balanced accuracy of the multi-defect rule on the labelled photos; with
`measured_mig`, with MIG on the few photos whose factors were measured, `tubervae.runs.measured`; UDR and
the informative components are recorded and decide feasibility either way).

Each trial is an MLflow run (`trial <n> <family> <setting>`) under the study's, with its seeds' runs
nested under it. Seeds whose finished run already exists are reused, the others trained by a
`SeedTrainer` (here, in a pool, or fused), each in one MLflow run throughout.

With a pruner the seeds train segment by segment (`prune_steps`); after each intermediate segment
the seeds' probe latents are scored exactly as at the end, the value is reported to Optuna as
`judged_value` (0 while infeasible) and logged on the trial's run at that step, and the trial is
pruned when the pruner says so, judging against feasible trials only. A pruned trial's run and its
seeds' runs end KILLED, tagged `optuna_state=PRUNED` and `pruned_at_step`, and the seeds'
checkpoints go unless `train.keep_checkpoints`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tubervae.classify.any_rule import job_score
from tubervae.config import GUIDED_COMPONENT, Params, SearchSpace, base_family, is_guided
from tubervae.data.processed import load_split
from tubervae.models.encoding import encode, heldout_elbo
from tubervae.runs import trials, vae_artifacts
from tubervae.runs.measured import measured_mig, measured_photos
from tubervae.runs.progress import SearchProgress
from tubervae.runs.pruning import prune_steps
from tubervae.runs.seed_trainers import SeedTrainer
from tubervae.runs.tracker import Tracker
from tubervae.runs.training_run import TrainingData, checkpoint_file, find_finished_run, run_key
from tubervae.training.setting import Setting

log = logging.getLogger(__name__)


def suggest_setting(trial: optuna.Trial, family: str, space: SearchSpace) -> Setting:
    beta = trial.suggest_float("beta", space.beta[0], space.beta[1], log=space.beta_log)
    c_max = trial.suggest_float("c_max", space.c_max[0], space.c_max[1]) if base_family(family) == "cbeta_vae" else 0.0
    guide_weight = 0.0
    if is_guided(family):  # the head's weight λ spans decades: searched on a log scale
        guide_weight = trial.suggest_float("guide_weight", space.guide_weight[0], space.guide_weight[1], log=True)
    return Setting(family=family, beta=beta, c_max=c_max, guide_weight=guide_weight)


def trial_position(trial: optuna.Trial) -> int:
    """Which of the study's trials this one is, counting the finished ones and those running before it:
    "trial k of n" in the progress lines, whatever numbers failed or resumed trials took."""
    k = 1
    for other in trial.study.get_trials(deepcopy=False):
        if other.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            other.state == TrialState.RUNNING and other.number < trial.number
        ):
            k += 1
    return k


def job_photos(processed_dir: Path | None) -> dict:
    """The labelled photos `search.objective: job` scores on; refused at once without both classes."""
    labelled = load_split("labelled", processed_dir)
    known = labelled["labels"] >= 0
    images, labels = labelled["images"][known], labelled["labels"][known]
    n_good, n_bad = int((labels == 0).sum()), int((labels == 1).sum())
    if min(n_good, n_bad) < 2:
        raise ValueError(
            f"search.objective is 'job', but the labelled split holds {n_good} good and {n_bad} bad photos: the "
            f"multi-defect rule needs at least 2 of each; label more photos or use search.objective: udr or elbo"
        )
    return {"images": images, "labels": labels}


class Objective:
    """Train one setting on every seed, score it with within-setting UDR (module docstring)."""

    def __init__(
        self,
        family: str,
        params: Params,
        tracker: Tracker,
        data: TrainingData,
        trainer: SeedTrainer,
        *,
        study_run_id: str | None,
        checkpoint_dir: Path,
        progress: SearchProgress | None = None,
    ):
        """`progress`: the trials' lines on stderr (start, part-way and final UDR, pruning)."""
        self.family, self.params, self.tracker, self.data, self.trainer = family, params, tracker, data, trainer
        self.space = params.search.spaces[family]
        self.study_run_id, self.checkpoint_dir = study_run_id, checkpoint_dir
        self.stops = prune_steps(params)
        self.progress = progress
        # UDR ranks a guided family's seeds over its unsupervised components: the guided one is left out.
        self.excluded = (GUIDED_COMPONENT,) if is_guided(family) else ()
        objective = params.search.objective
        self.labelled = job_photos(data.processed_dir) if objective == "job" else None
        self.measured = None
        if objective == "measured_mig":
            self.measured = measured_photos(data.processed_dir, params.search.measured_photos)
            log.info(
                "measured_mig: MIG on %d photos with measured factors %s",
                len(self.measured["images"]),
                self.measured["sources"],
            )

    def __call__(self, trial: optuna.Trial) -> float:
        trials.record_worker(trial)
        try:
            return self._evaluate(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trials.record_failure(trial, exc)
            raise

    def _evaluate(self, trial: optuna.Trial) -> float:
        setting = suggest_setting(trial, self.family, self.space)
        cfg, search, udr = self.params.train, self.params.search, self.params.udr
        beta_norm = setting.normalised_beta(cfg.latent_dim, int(self.data.train.shape[1]))
        tags = {
            "kind": "trial",
            "family": self.family,
            "setting": setting.label,
            "optuna_study": trial.study.study_name,
            "optuna_trial": trial.number,
        }
        name = f"trial {trial.number} {self.family} {setting.label}"
        with self.tracker.run(name, parent_id=self.study_run_id, tags=tags, killed_by=(optuna.TrialPruned,)) as parent:
            trials.record_runs(trial, trial_run=parent)
            if self.progress:
                shown = f"β {setting.beta:.3g}" + (f", C_max {setting.c_max:.3g}" if self.family == "cbeta_vae" else "")
                self.progress.trial_started(parent, trial_position(trial), trial.number, shown, search.seeds, cfg.steps)
            self.tracker.log_params(
                parent,
                {
                    "family": self.family,
                    "beta": setting.beta,
                    "beta_norm": beta_norm,
                    "c_max": setting.c_max,
                    **(
                        {"guide_weight": setting.guide_weight, "guided_component": GUIDED_COMPONENT}
                        if setting.guided
                        else {}
                    ),
                    "seeds": search.seeds,
                    "similarity": udr.similarity,
                    "aggregate": udr.aggregate,
                    "optuna_trial": trial.number,
                    "pruner": search.pruner,
                },
            )
            seed_runs = self._train_seeds(trial, setting, parent)
            trials.record_runs(trial, seed_runs=seed_runs)
            score = trials.score_seeds(
                [vae_artifacts.latents(self.tracker, run_id) for run_id in seed_runs], udr, excluded=self.excluded
            )
            reason = trials.record_score(trial, score, min_active=search.min_active, beta_norm=beta_norm)
            if self.progress:
                self.progress.scored(parent, score.value, score.n_active, not reason)
            value, extra = score.value, {}
            if search.objective != "udr":
                per_seed = [self._score_seed(run_id) for run_id in seed_runs]
                value = trials.record_objective(trial, search.objective, per_seed)
                extra = {search.objective: value, **{f"{search.objective}_seed/{i}": v for i, v in enumerate(per_seed)}}
            self.tracker.log_metrics(
                parent,
                {
                    "udr": score.value,
                    "n_active": score.n_active,
                    "feasible": float(not reason),
                    **{f"udr_seed/{i}": s for i, s in enumerate(score.udr)},
                    **extra,
                },
                cfg.steps,  # after any intermediate udr, so the run's latest udr is the objective
            )
            self.tracker.set_tags(
                parent, {"feasible": not reason, "infeasible_reason": reason, "seed_run_ids": ",".join(seed_runs)}
            )
        return value

    def _score_seed(self, run_id: str) -> float:
        """The seed's value under `search.objective`, also logged on its run: `elbo`, its held-out ELBO on the
        test photos; `job`, the cross-validated balanced accuracy of the multi-defect rule on the labelled ones;
        `measured_mig`, MIG on the measured photos."""
        params = self.params
        vae, _ = vae_artifacts.load_vae(self.tracker, run_id)
        if params.search.objective == "elbo":
            name, value = "elbo_heldout", heldout_elbo(vae, self.data.test, params.train.rec_kind)
        elif params.search.objective == "measured_mig":
            name, value = "measured_mig", measured_mig(vae, self.measured)
        else:
            z, _ = encode(vae, self.labelled["images"])
            value = job_score(
                z,
                self.labelled["labels"] == 1,
                vae_artifacts.latents(self.tracker, run_id)["kl"],
                kl_threshold=params.udr.kl_threshold,
                max_rules=params.classify.max_rules,
                n_folds=params.classify.cv_folds,
                random_state=params.classify.seed,
            )
            name = "job_cv"
        self.tracker.log_metrics(run_id, {name: value}, params.train.steps)
        return value

    def _train_seeds(self, trial: optuna.Trial, setting: Setting, parent: str) -> list[str]:
        """Run ids of the setting's seeds: finished runs are reused, the rest trained, segment by segment
        with a pruner, each seed in one MLflow run throughout."""
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
            finished = {}
            if self.stops:
                finished = {seed: vae_artifacts.latents(self.tracker, run_id) for seed, run_id in runs.items()}
            for stop in self.stops:
                results = self._train_segment(setting, todo, parent, stop, open_runs)
                latents = {**finished, **{seed: result["latents"] for seed, result in results.items()}}
                self._judge(trial, parent, stop, [latents[seed] for seed in sorted(latents)])
            results = self._train_segment(setting, todo, parent, None, open_runs)
        except trials.Pruned as pruned:
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

        Every seed that ends this segment well is put in `open_runs` (taken out at the end) before an
        error of another is raised, so no run that the segment left RUNNING is forgotten.
        """
        segment = self.trainer.train(setting, seeds, parent, stop, dict(open_runs))
        for seed, result in segment.results.items():
            if stop is None:
                open_runs.pop(seed, None)
            else:
                open_runs[seed] = result["run_id"]
        if segment.error is not None:
            raise segment.error
        return segment.results

    def _judge(self, trial: optuna.Trial, parent: str, step: int, latents: list[dict]) -> None:
        """Score the seeds part-way, report to Optuna, and raise `Pruned` when the trial should stop."""
        search = self.params.search
        score = trials.score_seeds(latents, self.params.udr, excluded=self.excluded)
        feasible = score.feasible(search.min_active)
        trial.report(trials.judged_value(score, search.min_active), step)
        if self.progress:
            self.progress.judged(parent, step, score.value, feasible)
        self.tracker.log_metrics(
            parent, {"udr": score.value, "n_active": score.n_active, "feasible": float(feasible)}, step
        )
        if not trial.should_prune():
            return
        if feasible:
            raise trials.Pruned(step, f"{search.pruner} pruner: median UDR {score.value:.4g} at step {step}")
        raise trials.Pruned(
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
        pruned: trials.Pruned,
    ) -> None:
        """Record the pruning on the trial and its runs, end the trained seeds' runs KILLED, remove their
        checkpoints (a setting that cannot win is not resumed)."""
        tags = {"optuna_state": "PRUNED", "pruned_at_step": pruned.step}
        trials.record_pruned(trial, pruned, [seed_runs[seed] for seed in sorted(seed_runs)])
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
        if self.progress:
            self.progress.pruned(parent, pruned.reason)

    def _end_open_runs(self, open_runs: dict[int, str], tags: dict) -> None:
        """End KILLED, with `tags`, the seed runs an intermediate segment left RUNNING (not those that failed since)."""
        for run_id in open_runs.values():
            if self.tracker.status(run_id) == "RUNNING":
                self.tracker.end_run(run_id, "KILLED", tags)
        open_runs.clear()
