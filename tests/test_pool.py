"""The training pool (`tubervae.runs.pool`): one worker process per core, each training one seed at a time."""

from __future__ import annotations

import logging
import os
import signal
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import pytest
import torch
import yaml
from optuna.trial import TrialState

from conftest import (
    FAMILY,
    LOG_EVERY,
    RAW_PARAMS,
    STEPS,
    all_runs,
    client,
    kill_search_at_seed_1,
    load_study,
    merged,
    run_search,
    start_worker,
    stop,
)
from tubervae.config import parse_params
from tubervae.runs import pool as pool_module
from tubervae.runs import vae_artifacts
from tubervae.runs.pool import SeedJob, TrainingPool, TrainingWorkerDied
from tubervae.runs.tracker import Tracker, process_alive
from tubervae.runs.training_run import load_training_data
from tubervae.stages import search
from tubervae.training.loop import train_model
from tubervae.training.setting import Setting


@pytest.mark.slow
def test_parallel_workers_train_each_seed_once_and_as_in_process(project):
    """Two worker processes, two trials at once: every seed trains once, to the weights an in-process
    1-thread training of the same seed gives, nested under its own trial."""
    raw = merged(RAW_PARAMS, train={"workers": 2}, search={"parallel_trials": 2, "spaces": {FAMILY: {"n_trials": 2}}})
    summary = run_search(project, raw)
    assert summary["n_complete"] == 2

    runs = all_runs(project)
    assert {r.info.status for r in runs} == {"FINISHED"}
    vae_runs = [r for r in runs if r.data.tags.get("kind") == "vae"]
    assert len(vae_runs) == 4 and len({r.data.tags["run_key"] for r in vae_runs}) == 4
    worker_pids = {r.data.tags["pid"] for r in vae_runs}
    assert str(os.getpid()) not in worker_pids  # trained in the pool, not here
    for trial in summary["trials"]:
        for run_id in trial["seed_run_ids"]:
            assert client(project).get_run(run_id).data.tags["mlflow.parentRunId"] == trial["mlflow_run_id"]

    # the same seed trained here, in-process with one thread, gives the same weights
    trial = summary["trials"][0]
    cfg = parse_params(raw).train
    data = load_training_data(project / "data" / "processed")
    here = train_model(
        Setting(FAMILY, trial["params"]["beta"]),
        1,
        cfg,
        train_images=data.train,
        probe_images=data.probe,
        test_images=data.test,
        data_version=data.data_version,
        progress=False,
    )
    there, _ = vae_artifacts.load_vae(Tracker(project), trial["seed_run_ids"][1])
    for name, value in here.model.state_dict().items():
        assert torch.equal(value.cpu(), there.state_dict()[name]), name


def test_a_seed_sent_again_after_its_run_finished_is_answered_by_that_run(project, monkeypatch):
    """A seed lost with a broken executor may have finished on a worker that the break then stopped: sent
    again, a worker answers with its FINISHED run and trains nothing, so no run key holds two models.
    (The worker's job function, in this process, with what a worker's set-up gives it.)"""
    tracker = Tracker(project)
    data = load_training_data(project / "data" / "processed")
    worker = {"tracker": tracker, "data": data, "checkpoint_dir": project / "checkpoints", "steps": None}
    monkeypatch.setattr(pool_module, "_worker", worker)
    job = SeedJob(Setting(FAMILY, 1.0), 0, parse_params(RAW_PARAMS).train, 0.01, None)
    first = pool_module._train(job)
    again = pool_module._train(job)
    assert "n_active" in first and again == {"run_id": first["run_id"]}
    vae_runs = [r for r in all_runs(project) if r.data.tags.get("kind") == "vae"]
    assert [(r.info.run_id, r.info.status) for r in vae_runs] == [(first["run_id"], "FINISHED")]


@pytest.mark.slow
def test_a_pools_seeds_print_their_progress_through_the_search_and_mlflow_stays_quiet(project, capfd, monkeypatch):
    """The pool's workers send their steps back to the search's process, which prints them; their MLflow
    (system metrics started and stopped) says nothing at INFO unless the search's MLflow logger does."""
    mlflow_logger = logging.getLogger("mlflow")
    monkeypatch.setattr(mlflow_logger, "level", logging.WARNING)  # as the `tubervae` command sets it without -v
    raw = merged(RAW_PARAMS, train={"workers": 2})
    search.run(
        parse_params(raw),
        FAMILY,
        root=project,
        processed_dir=project / "data" / "processed",
        reports_dir=project / "reports" / "search",
    )
    _, err = capfd.readouterr()
    for seed in (0, 1):
        assert f"search beta_vae: trial 1 of 1, seed {seed}: step 20 of 20, loss " in err
    assert "trial 1 of 1 scored: median UDR" in err
    assert "system metrics" not in err.lower(), err[-3000:]


@pytest.mark.slow
def test_killed_search_takes_its_training_workers_along_and_resumes(project):
    """kill -9 of a search with a training pool: the workers die with it (no orphan trains on), and
    the rerun retries the trial, reuses the finished seed and resumes the cut one from its checkpoint."""
    raw = merged(RAW_PARAMS, train={"workers": 2})
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    worker_pid, search_pid = kill_search_at_seed_1(project, timeout=180)
    assert worker_pid != search_pid  # seed 1 trains in a pool worker
    deadline = time.monotonic() + 30
    while process_alive(worker_pid):
        assert time.monotonic() < deadline, "the training worker outlived its killed search"
        time.sleep(0.2)

    summary = run_search(project, merged(raw, train={"workers": 1}))
    assert summary["n_complete"] == 1
    runs = all_runs(project)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    retry = [t for t in load_study(project, raw).get_trials() if t.state == TrialState.COMPLETE][0]
    seed1 = client(project).get_run(retry.user_attrs["seed_run_ids"][1])
    history = client(project).get_metric_history(seed1.info.run_id, "curves/loss")
    assert sorted(m.step for m in history) == list(range(2 * LOG_EVERY, STEPS + 1, LOG_EVERY))
    finished = [r for r in runs if r.data.tags.get("kind") == "vae" and r.info.status == "FINISHED"]
    assert len(finished) == 2 and len({r.data.tags["run_key"] for r in finished}) == 2


@pytest.mark.slow
def test_a_training_worker_killed_while_its_search_lives_is_replaced_and_its_seed_resumes(project):
    """kill -9 of one pool worker (as the kernel's out-of-memory killer would) while two trials share the pool:
    the search starts fresh workers, the lost seeds go again from their checkpoints, every trial completes,
    and the dead worker's run is KILLED, none RUNNING."""
    raw = merged(RAW_PARAMS, train={"workers": 2}, search={"spaces": {FAMILY: {"n_trials": 2}}})
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    marker = project / "blocked"
    proc = start_worker(project, ["search", "--family", FAMILY], env={"BLOCK_AT_SEED_1": str(marker)})
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() or not marker.read_text():
            assert proc.poll() is None, f"search ended early:\n{stop(proc)}"
            assert time.monotonic() < deadline, f"seed 1 never got to step 10:\n{stop(proc)}"
            time.sleep(0.1)
        worker_pid = int(marker.read_text())
        assert worker_pid != proc.pid  # a pool worker, not the search
        os.kill(worker_pid, signal.SIGKILL)
        proc.wait(timeout=240)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "a training worker died" in out
    assert [t.state for t in load_study(project, raw).get_trials()] == [TrialState.COMPLETE] * 2

    runs = all_runs(project)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert worker_pid in {int(r.data.tags["pid"]) for r in killed}
    assert all(r.data.tags.get("kind") == "vae" for r in killed)  # the trials' own runs lived on
    finished = [r for r in runs if r.data.tags.get("kind") == "vae" and r.info.status == "FINISHED"]
    assert len(finished) == 4 and len({r.data.tags["run_key"] for r in finished}) == 4
    cut = next(r for r in killed if int(r.data.tags["pid"]) == worker_pid)
    resumed = next(r for r in finished if r.data.tags["run_key"] == cut.data.tags["run_key"])
    history = client(project).get_metric_history(resumed.info.run_id, "curves/loss")
    assert sorted(m.step for m in history) == list(range(2 * LOG_EVERY, STEPS + 1, LOG_EVERY))  # from step 5 on


class _Executor:
    """A stand-in for the pool's process executor: answers each job at once with `answer(job)`, which may
    raise (BrokenProcessPool: a worker died under it); `broken` refuses every job, as a broken executor does."""

    def __init__(self, answer=None, broken=False):
        self.answer, self.broken, self.sent = answer, broken, []

    def submit(self, fn, job):
        if self.broken:
            raise BrokenProcessPool("broken")
        self.sent.append(job.seed)
        future = Future()
        try:
            future.set_result(self.answer(job))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


class _ScriptedPool(TrainingPool):
    """A TrainingPool whose successive executors are the given stand-ins, in order."""

    def __init__(self, executors, tracker, **kwargs):
        self.executors, self.started = list(executors), []
        super().__init__(2, tracker, ".", "checkpoints", **kwargs)

    def _new_executor(self):
        self.started.append(self.executors.pop(0))
        return self.started[-1]


@pytest.mark.slow
def test_a_pool_sends_again_only_the_jobs_a_dead_worker_lost_and_keeps_the_others_results(project, monkeypatch):
    tracker = Tracker(project)
    marked = []
    monkeypatch.setattr(tracker, "mark_stale_runs_killed", lambda: marked.append(True))
    cfg = parse_params(RAW_PARAMS).train
    jobs = [SeedJob(Setting(FAMILY, 1.0), seed, cfg, 0.01, None) for seed in range(3)]

    def seed_1_dies(job):
        if job.seed == 1:
            raise BrokenProcessPool("a worker died")
        if job.seed == 2:
            raise ValueError("not finite")  # a training error is the job's outcome, not a reason to restart
        return {"run_id": f"first-{job.seed}"}

    first, second = _Executor(seed_1_dies), _Executor(lambda job: {"run_id": f"second-{job.seed}"})
    pool = _ScriptedPool([first, second], tracker)
    outcomes = pool.train(jobs)
    assert outcomes[0] == {"run_id": "first-0"} and outcomes[1] == {"run_id": "second-1"}
    assert isinstance(outcomes[2], ValueError)
    assert first.sent == [0, 1, 2] and second.sent == [1]  # only the lost seed went again
    assert marked == [True]  # the dead worker's run was marked KILLED before it did

    # an executor that broke before the jobs could be sent (another trial saw the death first): all go again
    pool = _ScriptedPool([_Executor(broken=True), _Executor(lambda job: {"run_id": job.seed})], tracker)
    assert pool.train(jobs[:2]) == [{"run_id": 0}, {"run_id": 1}]

    # a restart that another thread has already made is not made twice
    pool = _ScriptedPool([_Executor(seed_1_dies), _Executor(lambda job: {})], tracker)
    pool._restart(generation=0)
    pool._restart(generation=0)
    assert len(pool.started) == 2 and pool._generation == 1

    # max_restarts = 0: the first death is final
    pool = _ScriptedPool([_Executor(seed_1_dies)], tracker, max_restarts=0)
    with pytest.raises(TrainingWorkerDied, match="died once while training beta_vae 1 seed 1"):
        pool.train(jobs[:2])


@pytest.mark.slow
def test_a_pool_whose_workers_keep_dying_gives_up_with_an_error_that_says_so(project):
    """Workers that cannot start (their data is gone) break the pool each time: after `max_restarts` fresh
    starts the pool stops with an error naming the seeds and what to do, instead of looping."""
    tracker = Tracker(project)
    job = SeedJob(Setting(FAMILY, 1.0), 0, parse_params(RAW_PARAMS).train, 0.01, None)
    with TrainingPool(2, tracker, project / "no-such-data", project / "checkpoints", max_restarts=1) as pool:
        with pytest.raises(
            TrainingWorkerDied, match=r"died 2 times while training beta_vae 1 seed 0.*train\.workers: 1"
        ):
            pool.train([job])
    with pytest.raises(ValueError, match="max_restarts"):
        TrainingPool(2, tracker, project, project / "checkpoints", max_restarts=-1)
