"""Training a trial's seeds to a given step, one MLflow run each: here, in a worker pool, or fused.

The search asks one thing of training: "bring these seeds of this setting to step `stop` (None: the
end), continuing the runs an earlier segment left open, and hand back each seed's result". Three ways
answer it, chosen by `seed_trainer`:

- `SerialTrainer`: one seed after another in this process (`run_tracked`);
- `PoolTrainer`: the seeds side by side in a `TrainingPool` of one-thread workers (a CPU's cores);
- `FusedTrainer`: the seeds as one fused model (`tubervae.training.fused`), on CUDA or when `train.fuse: always`.

Every way gives the same runs, checkpoints and weights for a seed, so a study resumes across them.
A result is `run_tracked`'s dict (`run_id`, `step`, the probe `latents`, the metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tubervae.config import ConfigError, Params, TrainConfig, is_guided, worker_count
from tubervae.runs.pool import SeedJob, TrainingPool
from tubervae.runs.progress import StepCallback
from tubervae.runs.tracker import Tracker
from tubervae.runs.training_run import TrainingData, run_tracked, run_tracked_fused
from tubervae.training.device import select_device
from tubervae.training.setting import Setting


@dataclass
class Segment:
    """What one call brought about: each seed's result, and the error that stopped the others (if any).

    The seeds that ended well are all here even when another failed, so that no run a segment left
    RUNNING is forgotten by the caller.
    """

    results: dict[int, dict]
    error: BaseException | None = None


class SeedTrainer(Protocol):
    def train(
        self, setting: Setting, seeds: list[int], parent_id: str, stop: int | None, run_ids: dict[int, str]
    ) -> Segment:
        """Train `seeds` of `setting` under the trial run `parent_id` to step `stop` (None: to the end),
        continuing `run_ids[seed]` where an earlier segment left one open."""
        ...


@dataclass
class SerialTrainer:
    tracker: Tracker
    cfg: TrainConfig
    data: TrainingData
    kl_threshold: float
    checkpoint_dir: Path
    progress: bool = True
    on_step: StepCallback | None = None  # progress lines instead of the bar

    def train(self, setting, seeds, parent_id, stop, run_ids) -> Segment:
        results: dict[int, dict] = {}
        for seed in seeds:
            try:
                results[seed] = run_tracked(
                    self.tracker,
                    setting,
                    seed,
                    self.cfg,
                    self.data,
                    parent_id=parent_id,
                    run_id=run_ids.get(seed),
                    kl_threshold=self.kl_threshold,
                    checkpoint_dir=self.checkpoint_dir,
                    progress=self.progress and self.on_step is None,
                    stop_at=stop,
                    on_step=self.on_step,
                )
            except BaseException as exc:  # an interrupt too: the caller ends the open runs, then re-raises
                return Segment(results, exc)
        return Segment(results)


@dataclass
class PoolTrainer:
    pool: TrainingPool
    cfg: TrainConfig
    kl_threshold: float

    def train(self, setting, seeds, parent_id, stop, run_ids) -> Segment:
        jobs = [
            SeedJob(setting, seed, self.cfg, self.kl_threshold, parent_id, stop, run_ids.get(seed)) for seed in seeds
        ]
        outcomes = self.pool.train(jobs)  # waits for every seed: none may outlive its trial's run
        results = {job.seed: out for job, out in zip(jobs, outcomes) if not isinstance(out, BaseException)}
        errors = [out for out in outcomes if isinstance(out, BaseException)]
        return Segment(results, errors[0] if errors else None)


@dataclass
class FusedTrainer:
    tracker: Tracker
    cfg: TrainConfig
    data: TrainingData
    kl_threshold: float
    checkpoint_dir: Path
    on_step: StepCallback | None = None

    def train(self, setting, seeds, parent_id, stop, run_ids) -> Segment:
        try:
            fused = run_tracked_fused(
                self.tracker,
                setting,
                seeds,
                self.cfg,
                self.data,
                kl_threshold=self.kl_threshold,
                parent_id=parent_id,
                checkpoint_dir=self.checkpoint_dir,
                stop_at=stop,
                run_ids=[run_ids.get(seed) for seed in seeds],
                on_step=self.on_step,
            )
        except BaseException as exc:  # every seed's run is marked FAILED by run_tracked_fused
            return Segment({}, exc)
        return Segment(dict(zip(seeds, fused)))


def fuse_seeds(cfg: TrainConfig, family: str | None = None) -> bool:
    """Whether a trial's seeds train as one fused model: `train.fuse`, where auto means on CUDA.

    A guided family never fuses (`tubervae.training.fused` has no guide batch): under auto it trains one model
    each; `train.fuse: always` refuses it with a ConfigError."""
    if family is not None and is_guided(family):
        if cfg.fuse == "always":
            raise ConfigError(
                f"train.fuse: 'always' cannot train {family}: a guided family's seeds train one model each; "
                "use auto or never"
            )
        return False
    return cfg.fuse == "always" or (cfg.fuse == "auto" and select_device(cfg.device).type == "cuda")


def training_workers(params: Params) -> int:
    """Models trained at once: `train.workers`, where 0 means one per CPU core, or one on an accelerator
    (several processes would only compete for it)."""
    if params.train.workers:
        return params.train.workers
    return worker_count(0) if select_device(params.train.device).type == "cpu" else 1


def seed_trainer(
    params: Params,
    tracker: Tracker,
    data: TrainingData,
    checkpoint_dir: Path,
    *,
    pool: TrainingPool | None = None,
    progress: bool = True,
    on_step: StepCallback | None = None,
    family: str | None = None,
) -> SeedTrainer:
    """Fused where `train.fuse` says so (never for a guided `family`), else the pool when there is one, else
    one seed after another.

    `on_step` hears each seed's logged steps (the pool's are given to it when it is made)."""
    cfg, kl_threshold = params.train, params.udr.kl_threshold
    if fuse_seeds(cfg, family):
        return FusedTrainer(tracker, cfg, data, kl_threshold, checkpoint_dir, on_step)
    if pool is not None:
        return PoolTrainer(pool, cfg, kl_threshold)
    return SerialTrainer(tracker, cfg, data, kl_threshold, checkpoint_dir, progress, on_step)
