"""Several models trained at once: one worker process per core, one torch thread each.

Small convolutions do not scale across threads, independent models do: 1-thread processes,
one per core, train more images than one process with every core's thread, and a whole search
trains more models per hour (measured in `benchmarks/bench_parallel.py`).
A `TrainingPool` runs `run_tracked` for one seed per task in worker processes, each with
its own MLflow client and its own copy of the training data, so the guarantees of a single
run hold for each: a killed worker's seed resumes from its checkpoint, and its MLflow run is
marked KILLED.

A worker that dies while its search lives (killed by hand, or by the kernel for memory) takes
the executor down with it, and every seed in flight with it. `TrainingPool.train` then starts
fresh workers, marks the dead ones' runs KILLED and sends the lost seeds again; each resumes
from its last checkpoint in a new run, so no step already checkpointed trains twice. It restarts
them `max_restarts` times in one call; the next death gives up with an error that says so.

Workers are forked from a 'forkserver' that imported this module, and with it torch, MLflow
and the training code, once: a fresh process with no sqlite connections or thread pools, as
'spawn' gives, but the imports (most of a new worker's start) are paid once per search, not once
per worker and again for each replacement. A worker watches the search, not its parent (the
forkserver, which lives as long as any worker does), and exits within a second once the search
is gone, so a killed search never leaves an orphan training a seed that the resumed search would
train a second time; the forkserver then ends too. Their runs carry the search's pid, so a rerun
that starts within that second still marks them KILLED. As with 'spawn', a script that starts a
pool must guard its entry point (`if __name__ == "__main__":`): the forkserver imports the main
module, so what it sets up reaches the workers. The `tubervae` command and `python -m
tubervae.cli` do.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import torch

from tubervae.config import TrainConfig
from tubervae.runs.progress import StepCallback
from tubervae.runs.tracker import Tracker, process_alive
from tubervae.runs.training_run import TrainingData, find_finished_run, load_training_data, run_key, run_tracked
from tubervae.training.setting import Setting

log = logging.getLogger(__name__)
_OWNER_POLL_SECONDS = 1.0
# 'spawn' where there is no forkserver (Windows): the same workers, each importing on its own.
_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
_CONTEXT = multiprocessing.get_context(_METHOD)


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


class TrainingWorkerDied(RuntimeError):
    """Training workers kept dying: the pool was restarted `max_restarts` times in one call."""


class TrainingPool:
    """`workers` processes that each train one `SeedJob` at a time; use as a context manager.

    Thread-safe: the trials a search runs at once in threads share one pool.
    """

    def __init__(
        self,
        workers: int,
        tracker: Tracker,
        processed_dir: str | Path,
        checkpoint_dir: str | Path,
        *,
        max_restarts: int = 3,
        on_step: StepCallback | None = None,
    ):
        """`on_step` hears the workers' seeds' logged steps, in this process (a queue carries them back)."""
        if workers < 2:
            raise ValueError(f"a training pool needs at least 2 workers, got {workers}; train in-process instead")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        self.workers, self.max_restarts = workers, max_restarts
        self._tracker = tracker
        self._steps = _CONTEXT.Queue() if on_step is not None else None
        self._initargs = (
            str(tracker.root),
            tracker.experiment_id,
            str(Path(processed_dir).resolve()),
            str(checkpoint_dir),
            self._steps,
            logging.getLogger("mlflow").getEffectiveLevel(),  # the workers' MLflow is as quiet as this process's
            os.getpid(),  # the workers' runs end with this process
        )
        self._reader = None
        if on_step is not None:
            self._reader = threading.Thread(target=_relay, args=(self._steps, on_step), daemon=True)
            self._reader.start()
        self._lock = threading.Lock()
        self._generation = 0
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        # Read when the process's forkserver starts (the first pool's first worker): it imports the main
        # module and this one (torch, MLflow, the training code) before it forks any worker.
        if _METHOD == "forkserver":
            _CONTEXT.set_forkserver_preload(["__main__", __name__])
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=_CONTEXT,
            initializer=_start_worker,
            initargs=self._initargs,
        )

    def train(self, jobs: list[SeedJob]) -> list[dict | BaseException]:
        """`run_tracked`'s result for each job, in order, or the exception its training raised.

        Waits for every job, so none outlives the caller's trial. Jobs lost to a dead worker go
        again on fresh workers (see the module docstring); `TrainingWorkerDied` past `max_restarts`.
        """
        outcomes: dict[int, dict | BaseException] = {}
        todo = list(enumerate(jobs))
        restarts = 0
        while todo:
            with self._lock:
                generation = self._generation
                futures = [(i, self._submit(job)) for i, job in todo]
            lost = []
            for i, future in futures:
                if future is None:  # not sent: the pool had broken already
                    lost.append((i, jobs[i]))
                    continue
                try:
                    outcomes[i] = future.result()
                except BrokenProcessPool:
                    lost.append((i, jobs[i]))
                except Exception as exc:
                    outcomes[i] = exc
            if lost:
                if restarts == self.max_restarts:
                    seeds = ", ".join(f"{job.setting.family} {job.setting.label} seed {job.seed}" for _, job in lost)
                    times = "once" if restarts == 0 else f"{restarts + 1} times"
                    raise TrainingWorkerDied(
                        f"training worker processes died {times} while training {seeds} (killed, out of "
                        f"memory, or unable to start: see the errors above); their checkpoints are kept: rerun to "
                        f"resume, or set train.workers: 1 to train in the search's own process"
                    )
                restarts += 1
                self._restart(generation)
            todo = lost
        return [outcomes[i] for i in range(len(jobs))]

    def _submit(self, job: SeedJob) -> Future | None:
        """The job's future, or None when a worker died since the last restart (another trial's, say)."""
        try:
            return self._executor.submit(_train, job)
        except BrokenProcessPool:
            return None

    def _restart(self, generation: int) -> None:
        """Fresh workers in place of a broken executor, once per break however many trials saw it."""
        with self._lock:
            if generation != self._generation:
                return  # another trial's thread has restarted it already
            broken = self._executor
            broken.shutdown(wait=True, cancel_futures=True)  # every old worker has exited: its run is stale
            self._tracker.mark_stale_runs_killed()
            log.warning(
                "a training worker died: started %d fresh ones; the lost seeds resume from their checkpoints",
                self.workers,
            )
            self._executor = self._new_executor()
            self._generation += 1

    def close(self, *, cancel: bool = False) -> None:
        with self._lock:
            executor = self._executor
        executor.shutdown(wait=True, cancel_futures=cancel)
        if self._reader is not None:
            self._steps.put(None)  # after every worker's last step: the relay prints them all, then ends
            self._reader.join(timeout=10)
            self._reader = None

    def __enter__(self) -> TrainingPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)


def _relay(steps, on_step: StepCallback) -> None:
    """The search's side of the workers' step queue: hand each event to `on_step` until the pool closes.

    A worker killed while it wrote an event can leave the queue unreadable: the lines stop, the search goes on."""
    while True:
        try:
            event = steps.get()
        except Exception:
            log.debug("the training pool's progress queue broke", exc_info=True)
            return
        if event is None:
            return
        try:
            on_step(event)
        except Exception:  # a progress line is never worth a search
            log.debug("progress line failed", exc_info=True)


# --- inside a worker process ---------------------------------------------------------

_worker: dict = {}


def _start_worker(
    root: str,
    experiment_id: str,
    processed_dir: str,
    checkpoint_dir: str,
    steps,
    mlflow_level: int,
    owner_pid: int,
) -> None:
    logging.getLogger("mlflow").setLevel(mlflow_level)  # no system-metrics INFO lines per seed unless asked (-v)
    threading.Thread(target=_exit_with_owner, args=(owner_pid,), daemon=True).start()
    torch.set_num_threads(1)
    _worker["tracker"] = Tracker(root, experiment_id=experiment_id, owner_pid=owner_pid)
    _worker["data"] = load_training_data(processed_dir)
    _worker["checkpoint_dir"] = Path(checkpoint_dir)
    _worker["steps"] = steps
    gc.freeze()  # torch, MLflow and the data stay for the worker's life: no full collection walks them again


def _exit_with_owner(owner_pid: int) -> None:
    while process_alive(owner_pid):
        time.sleep(_OWNER_POLL_SECONDS)
    os._exit(1)  # the search died: its checkpoint and the next start's stale-run clean-up take over


def _train(job: SeedJob) -> dict:
    """`run_tracked` of the job, or the run that already holds its finished model (`{"run_id": …}` only).

    A seed sent again after a worker died may have finished meanwhile on a worker that the broken executor
    then stopped: its run is FINISHED, its checkpoint gone, and only its result was lost. Training it again
    would log the same weights twice under one run key, so the finished run answers instead."""
    data: TrainingData = _worker["data"]
    cfg = job.cfg if job.cfg.threads == 1 else TrainConfig(**{**job.cfg.__dict__, "threads": 1})
    if job.stop_at is None or job.stop_at >= cfg.steps:
        finished = find_finished_run(_worker["tracker"], run_key(job.setting, job.seed, cfg, data))
        if finished is not None:
            log.info("%s seed %d: its run %s finished already", job.setting.label, job.seed, finished)
            return {"run_id": finished}
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
        on_step=None if _worker.get("steps") is None else _worker["steps"].put,
    )
