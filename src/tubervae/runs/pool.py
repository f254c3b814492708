"""Several models trained at once: one worker process per core, one torch thread each.

Small convolutions do not scale across threads, independent models do: on two cores two
1-thread processes train about 1.37× the images of one 2-thread process; a whole search
gains less for now, 1.18–1.23× in `benchmarks/bench_parallel.py` (benchmarks/README.md).
A `TrainingPool` runs `run_tracked` for one seed per task in worker processes, each with
its own MLflow client and its own copy of the training data, so the guarantees of a single
run hold for each: a killed worker's seed resumes from its checkpoint, and its MLflow run is
marked KILLED by the next start.

Workers are started with 'spawn' (no inherited sqlite connections or thread pools) and
watch the process that started them: when it dies, they exit within a second, so a
killed search never leaves an orphan training a seed that the resumed search would
train a second time, and their runs carry the search's pid, so a rerun that starts within that
second still marks them KILLED. (Linux's parent-death signal would fire when the *thread* that
started a worker ends, and trials run in threads.) As with any 'spawn' pool, a script
that starts one must guard its entry point (`if __name__ == "__main__":`): the workers
import the main module. The `tubervae` command and `python -m tubervae.cli` do.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from tubervae.config import TrainConfig
from tubervae.runs.tracker import Tracker
from tubervae.runs.training_run import TrainingData, load_training_data, run_tracked
from tubervae.training import Setting

log = logging.getLogger(__name__)
_PARENT_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class SeedJob:
    """One model to train: a setting, a seed, and the MLflow run (a trial's) to nest it under.

    `stop_at` trains one segment only (`run_tracked`'s), and `run_id` is the seed's run that an
    earlier segment left open, which this one continues.
    """

    setting: Setting
    seed: int
    cfg: TrainConfig
    kl_threshold: float
    parent_id: str | None
    stop_at: int | None = None
    run_id: str | None = None


class TrainingPool:
    """`workers` processes that each train one `SeedJob` at a time; use as a context manager."""

    def __init__(self, workers: int, tracker: Tracker, processed_dir: str | Path, checkpoint_dir: str | Path):
        if workers < 2:
            raise ValueError(f"a training pool needs at least 2 workers, got {workers}; train in-process instead")
        self.workers = workers
        self._executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(
                str(tracker.root),
                tracker.experiment_id,
                str(Path(processed_dir).resolve()),
                str(checkpoint_dir),
            ),
        )

    def submit(self, job: SeedJob) -> Future:
        """A future of `run_tracked`'s result for the job (its run id and final metrics)."""
        return self._executor.submit(_train, job)

    def close(self, *, cancel: bool = False) -> None:
        self._executor.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> TrainingPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)


# --- inside a worker process ---------------------------------------------------------

_worker: dict = {}


def _start_worker(root: str, experiment_id: str, processed_dir: str, checkpoint_dir: str) -> None:
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(1)
    _worker["tracker"] = Tracker(root, experiment_id=experiment_id, owner_pid=parent)
    _worker["data"] = load_training_data(processed_dir)
    _worker["checkpoint_dir"] = Path(checkpoint_dir)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)  # the search died: its checkpoint and the next start's stale-run clean-up take over


def _train(job: SeedJob) -> dict:
    data: TrainingData = _worker["data"]
    cfg = job.cfg if job.cfg.threads == 1 else TrainConfig(**{**job.cfg.__dict__, "threads": 1})
    return run_tracked(
        _worker["tracker"],
        job.setting,
        job.seed,
        cfg,
        data,
        kl_threshold=job.kl_threshold,
        parent_id=job.parent_id,
        run_id=job.run_id,
        checkpoint_dir=_worker["checkpoint_dir"],
        progress=False,
        stop_at=job.stop_at,
    )
