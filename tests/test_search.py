"""The Optuna search stage on tiny studies: 16×16 discs, 20 training steps, 2 seeds.

Each trained run normally also draws three matplotlib pictures (traversals etc.), which
cost more than the training here; those belong to the train stage and are tested with
it, so these tests replace them with nothing (in worker subprocesses too, through a small
launcher that then calls the `tubervae` command's own `main`).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import free_port, http, make_target, started, with_makefile, write_processed
from tubervae.config import ConfigError, parse_params
from tubervae.evaluation.udr import udr_scores
from tubervae.runs import study as optuna_study
from tubervae.runs import vae_artifacts
from tubervae.runs.pool import SeedJob, TrainingPool, TrainingWorkerDied
from tubervae.runs.pruning import make_pruner, prune_steps
from tubervae.runs.study import fail_dead_local_trials, fingerprint, make_storage, storage_url, study_name
from tubervae.runs.tracker import Tracker, process_alive
from tubervae.runs.training_run import load_training_data, run_key
from tubervae.stages import search
from tubervae.training.loop import train_model
from tubervae.training.setting import Setting

FAMILY = "beta_vae"
STEPS, CHECKPOINT_EVERY, LOG_EVERY = 20, 5, 5
RAW_PARAMS = {
    "data": {"n_images": 300},
    "preprocess": {"image_size": 16, "probe_size": 48},
    "train": {
        "latent_dim": 4,
        "steps": STEPS,
        "batch_size": 16,
        "lr": 0.02,
        "checkpoint_every": CHECKPOINT_EVERY,
        "log_every": LOG_EVERY,
        "snapshot_every": 0,
        "device": "cpu",
        "threads": 1,
        "workers": 1,
        "precision": "float32",  # lr 0.02 opens every component in 20 steps in float32; `auto` differs by CPU
    },
    "search": {"seeds": 2, "min_active": 0, "spaces": {FAMILY: {"n_trials": 1, "beta": [1.0, 8.0], "beta_log": True}}},
    "udr": {"similarity": "spearman"},
}

# Started as `python worker.py <tubervae arguments>`: the `tubervae` command without the
# per-run pictures. With BLOCK_AT_SEED_1 set to a path it writes that file and stops for
# good when seed 1 logs step 10 (after the step-5 checkpoint, before the step-10 one),
# so the test can kill it in the middle of a trial; only the first seed 1 to get there stops.
WORKER = """
import os, sys, time
from pathlib import Path
import tubervae.runs.training_run as stage

stage.figures = lambda *args, **kwargs: {}
marker = os.environ.get("BLOCK_AT_SEED_1")
if marker:
    train_model = stage.train_model

    def blocking_train_model(setting, seed, cfg, **kwargs):
        on_log = kwargs["on_log"]

        def hooked(metrics, step):
            on_log(metrics, step)
            if seed == 1 and step >= 10 and not Path(marker).exists():  # once: a seed that goes again trains on
                Path(marker).write_text(str(os.getpid()))
                time.sleep(3600)

        kwargs["on_log"] = hooked
        return train_model(setting, seed, cfg, **kwargs)

    stage.train_model = blocking_train_model

if __name__ == "__main__":  # training pool workers re-import this file (spawn): only the parent runs the CLI
    from tubervae.cli import main

    sys.exit(main(sys.argv[1:]))
"""


def merged(base: dict, **sections) -> dict:
    out = json.loads(json.dumps(base))
    for section, values in sections.items():
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(out[section].get(key), dict):
                out[section][key].update(value)
            else:
                out[section][key] = value
    return out


def write_processed_discs(folder: Path, size: int = 16, seed: int = 0, guide: np.ndarray | None = None) -> None:
    """data/processed as the preprocess stage writes it: bright discs at random places, sizes, brightness."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    counts = {"train": 128, "test": 16, "labelled": 16, "udr_probe": 48}
    splits = {}
    for name, n in counts.items():
        f = np.column_stack(
            [rng.uniform(4, size - 4, n), rng.uniform(4, size - 4, n), rng.uniform(2, 4, n), rng.uniform(0.4, 1.0, n)]
        ).astype(np.float32)
        disc = (xx - f[:, 0, None, None]) ** 2 + (yy - f[:, 1, None, None]) ** 2 <= f[:, 2, None, None] ** 2
        gray = (disc * f[:, 3, None, None] * 255).astype(np.uint8)
        labels = -np.ones(n, np.int64) if name == "udr_probe" else (f[:, 2] > 3).astype(np.int64)
        splits[name] = (np.repeat(gray[..., None], 3, axis=-1), labels, f)
    write_processed(
        folder, splits, ["x", "y", "radius", "brightness"], data_version=f"discs-{size}-{seed}", guide=guide
    )


@pytest.fixture
def project(tmp_path, empty_mlflow_db, monkeypatch) -> Path:
    """A project root with tiny processed data and a fresh MLflow database; cwd is the root."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    write_processed_discs(tmp_path / "data" / "processed")
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    return tmp_path


@pytest.fixture
def no_pictures(monkeypatch):
    monkeypatch.setattr("tubervae.runs.training_run.figures", lambda *args, **kwargs: {})


def run_search(root: Path, raw: dict, **kwargs) -> dict:
    return search.run(
        parse_params(raw),
        FAMILY,
        root=root,
        processed_dir=root / "data" / "processed",
        reports_dir=root / "reports" / "search",
        progress=False,
        **kwargs,
    )


def load_study(root: Path, raw: dict, storage: str | None = None) -> optuna.Study:
    data = load_training_data(root / "data" / "processed")
    name = study_name(FAMILY, parse_params(raw), data.data_version)
    return optuna.load_study(study_name=name, storage=storage or storage_url(root))


def client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def all_runs(root: Path) -> list:
    c = client(root)
    ids = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(ids, max_results=1000)


def first_suggestion(seed: int, low: float, high: float) -> float:
    """What a fresh TPE sampler with this seed proposes first, on an empty study."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    return study.ask().suggest_float("beta", low, high, log=True)


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_family_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="cbeta_vae.*no search space"):
        search.run(parse_params(RAW_PARAMS), "cbeta_vae", root=tmp_path, processed_dir=tmp_path / "missing")


def test_storage_open_retries_when_workers_race_to_create_the_schema(tmp_path, monkeypatch):
    """Two workers creating Optuna's tables in a fresh PostgreSQL database collide once; the loser retries."""
    import sqlalchemy.exc

    real = optuna_study.RDBStorage
    calls = []

    def collide_once(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("CREATE TYPE trialstate", {}, Exception("duplicate key value"))
        return real(url, **kwargs)

    monkeypatch.setattr(optuna_study, "RDBStorage", collide_once)
    monkeypatch.setattr(optuna_study.time, "sleep", lambda seconds: None)
    params = parse_params(RAW_PARAMS)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = make_storage(url, params)
    assert calls == [url, url]
    assert storage.get_heartbeat_interval() == params.search.heartbeat_interval

    def always_down(url, **kwargs):
        calls.append(url)
        raise sqlalchemy.exc.OperationalError("connect", {}, Exception("server down"))

    calls.clear()
    monkeypatch.setattr(optuna_study, "RDBStorage", always_down)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        make_storage(url, params, attempts=3)
    assert len(calls) == 3


@pytest.mark.slow
def test_dead_local_worker_trial_is_failed_once_and_requeued_clean(tmp_path):
    """A RUNNING trial whose worker process is gone fails with a reason and comes back WAITING.

    The copy keeps the parameters but none of the dead worker's attributes (host, pid, run ids):
    with them, another worker on this host could mistake the retry for the dead trial; nor the
    rungs successive halving had recorded for it.
    """
    params = parse_params(RAW_PARAMS)
    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", params)
    study = optuna.create_study(storage=storage, direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):
        trial = study.ask({"beta": optuna.distributions.FloatDistribution(1.0, 8.0)})
        for key, value in {"host": socket.gethostname(), "pid": pid, "mlflow_run_id": "abc"}.items():
            trial.set_user_attr(key, value)
        storage.set_trial_system_attr(trial._trial_id, "completed_rung_0", 0.5)  # successive halving's record

    assert fail_dead_local_trials(study, storage, max_retry=3) == [0]
    assert fail_dead_local_trials(study, storage, max_retry=3) == []  # nothing left to fail
    first, alive, retry = study.get_trials()
    assert (first.state, first.system_attrs["fail_reason"]) == (TrialState.FAIL, "worker killed")
    assert alive.state == TrialState.RUNNING  # its worker (this process) lives
    assert retry.state == TrialState.WAITING and retry.params == first.params
    assert retry.user_attrs == {} and retry.system_attrs["failed_trial"] == 0
    assert "fail_reason" not in retry.system_attrs
    assert not [key for key in retry.system_attrs if key.startswith("completed_rung_")]  # judged afresh


@pytest.mark.slow
def test_make_dashboard_shows_the_study_its_objective_and_its_settings(project, no_pictures):
    """`make dashboard`, as the README starts it, shows the study, its objective's name and its attributes."""
    run_search(project, RAW_PARAMS)
    study = load_study(project, RAW_PARAMS)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    root = with_makefile(project)
    with started(
        make_target("dashboard", DASHBOARD_PORT=port), root, {}, project / "dashboard.log", f"{url}/api/studies"
    ):
        listed = {s["study_name"]: s["study_id"] for s in http(f"{url}/api/studies")[1]["study_summaries"]}
        status, shown = http(f"{url}/api/studies/{listed[study.study_name]}?after=0")
        assert status == 200 and shown["objective_names"] == ["udr"]
        assert {a["key"] for a in shown["user_attrs"]} >= {"fingerprint", "data_version", "objective"}


def test_search_prints_its_progress_to_stderr(project, no_pictures, capsys):
    """One line per event: the study, each trial's start (k of n), each seed's steps (every tenth, the
    loss), each trial's UDR; on stderr, so that stdout keeps the command's one summary line."""
    raw = merged(RAW_PARAMS, search={"spaces": {FAMILY: {"n_trials": 2}}})
    search.run(
        parse_params(raw),
        FAMILY,
        root=project,
        processed_dir=project / "data" / "processed",
        reports_dir=project / "reports" / "search",
    )
    out, err = capsys.readouterr()
    assert "search beta_vae:" not in out
    lines = [line for line in err.splitlines() if line.startswith("search beta_vae: ")]
    assert lines[0].startswith("search beta_vae: study ") and "holds 0 of 2 finished trials" in lines[0]
    for k in (1, 2):
        assert any(
            f"trial {k} of 2 (Optuna #{k - 1}, β " in line and "2 seeds of 20 steps" in line for line in lines
        ), lines
        for seed in (0, 1):
            steps = [line for line in lines if line.startswith(f"search beta_vae: trial {k} of 2, seed {seed}: step ")]
            # logged every 5 of 20 steps: each log passes a tenth, so each is a line, the last one step 20 of 20
            assert [line.split("step ")[1].split(",")[0] for line in steps] == [
                "5 of 20",
                "10 of 20",
                "15 of 20",
                "20 of 20",
            ]
            assert all(", loss " in line for line in steps)
        assert any(line.startswith(f"search beta_vae: trial {k} of 2 scored: median UDR ") for line in lines)


def test_completed_study_resumes_without_training_and_moves_on(project, no_pictures):
    """n_trials is a total; a resumed study asks new points; trial runs hold their seeds' runs."""
    first = run_search(project, RAW_PARAMS)
    runs_after_first = {r.info.run_id for r in all_runs(project)}
    assert first["n_complete"] == 1 and len(runs_after_first) == 3  # one trial run + two seed runs

    again = run_search(project, RAW_PARAMS)  # complete already: nothing to do
    assert {r.info.run_id for r in all_runs(project)} == runs_after_first
    assert [t["number"] for t in again["trials"]] == [0]

    summary = run_search(project, RAW_PARAMS, n_trials=2)
    study = load_study(project, RAW_PARAMS)
    # For people and optuna-dashboard: the objective's name and the settings behind the fingerprint.
    params = parse_params(RAW_PARAMS)
    data_version = load_training_data(project / "data" / "processed").data_version
    assert study.metric_names == ["udr"]
    assert study.study_name.startswith(f"{FAMILY}-{params.train.steps}steps-{params.search.seeds}seeds-")
    attrs = study.user_attrs
    assert attrs["fingerprint"] == study.study_name.rsplit("-", 1)[1] == fingerprint(params, data_version)
    assert attrs["data_version"] == data_version and attrs["seeds"] == params.search.seeds
    assert attrs["train"]["steps"] == params.train.steps and attrs["udr"]["similarity"] == params.udr.similarity
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert len(all_runs(project)) == 6
    # Trial k draws from a sampler seeded sampler_seed + k: the resumed trial is not a repeat.
    betas = [t.params["beta"] for t in trials]
    assert betas[0] == pytest.approx(first_suggestion(0, 1.0, 8.0))
    assert betas[1] == pytest.approx(first_suggestion(1, 1.0, 8.0))
    assert betas[0] != pytest.approx(betas[1])

    # lr 0.02 opens every component within 20 steps, so the UDR checks below compare real numbers.
    assert all(t.user_attrs["n_active"] > 0 and t.value > 0 for t in trials)

    c = client(project)
    best = max(trials, key=lambda t: (t.value, t.user_attrs["n_active"]))
    assert summary["best_trial"] == best.number
    for trial in trials:
        parent = c.get_run(trial.user_attrs["mlflow_run_id"])
        tags, metrics, params = parent.data.tags, parent.data.metrics, parent.data.params
        assert parent.info.status == "FINISHED"
        assert tags["kind"] == "trial" and tags["family"] == FAMILY
        assert tags["optuna_study"] == study.study_name and tags["optuna_trial"] == str(trial.number)
        assert tags["setting"] == Setting(FAMILY, trial.params["beta"]).label
        assert tags["best_trial"] == str(trial.number == best.number)
        assert float(params["beta"]) == pytest.approx(trial.params["beta"])
        per_seed = [metrics["udr_seed/0"], metrics["udr_seed/1"]]
        assert per_seed == pytest.approx(trial.user_attrs["udr_per_seed"])
        assert metrics["udr"] == pytest.approx(float(np.median(per_seed))) == pytest.approx(trial.value)
        assert metrics["n_active"] == pytest.approx(float(np.median(trial.user_attrs["n_active_per_seed"])))
        assert metrics["feasible"] == 1.0 and tags["feasible"] == "True"

        children = c.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        by_seed = {int(r.data.tags["seed"]): r for r in children}
        assert sorted(by_seed) == [0, 1]
        assert [by_seed[s].info.run_id for s in (0, 1)] == trial.user_attrs["seed_run_ids"]
        assert all(r.info.status == "FINISHED" and r.data.tags["kind"] == "vae" for r in children)
        # The trial's UDR is the UDR of exactly these children's probe latents.
        latents = [vae_artifacts.latents(Tracker(project), r) for r in trial.user_attrs["seed_run_ids"]]
        recomputed = udr_scores([z["mu"] for z in latents], [z["kl"] for z in latents], similarity="spearman")
        assert np.nan_to_num(recomputed.scores) == pytest.approx(trial.user_attrs["udr_per_seed"])

    report = json.loads((project / "reports" / "search" / f"{FAMILY}.json").read_text())
    assert report["study"] == study.study_name and report["n_complete"] == 2
    assert report["best_trial"] == best.number
    assert report["best_mlflow_run_id"] == best.user_attrs["mlflow_run_id"]
    assert [t["seed_run_ids"] for t in report["trials"]] == [t.user_attrs["seed_run_ids"] for t in trials]
    for name in (f"{FAMILY}_udr_vs_beta.png", f"{FAMILY}_history.png"):
        assert is_png(project / "reports" / "search" / name)


@pytest.mark.slow
def test_grid_points_come_first_failures_are_recorded_and_infeasible_trials_never_win(
    project, no_pictures, monkeypatch
):
    """Grid point β=7 diverges (NaN loss): FAIL with its reason; β=2 and β=3 follow in order.

    min_active 5 exceeds the 4 latent components, so every complete trial is infeasible.
    """
    import tubervae.training.setting as train_module

    real_make_loss = train_module.make_loss

    def loss_nan_at_beta_7(family, **hp):
        loss = real_make_loss(family, **hp)

        def poisoned(x, out, step):
            terms = loss(x, out, step)
            if hp["beta"] == 7.0:
                terms["loss"] = terms["loss"] * float("nan")
            return terms

        return poisoned

    monkeypatch.setattr(train_module, "make_loss", loss_nan_at_beta_7)
    raw = merged(
        RAW_PARAMS,
        search={
            "min_active": 5,
            "enqueue_grid": True,
            "spaces": {FAMILY: {"n_trials": 2, "grid": [{"beta": 7}, {"beta": 2}, {"beta": 3}]}},
        },
    )
    summary = run_search(project, raw)

    trials = load_study(project, raw).get_trials()
    assert [(t.state, t.params["beta"]) for t in trials] == [
        (TrialState.FAIL, 7.0),
        (TrialState.COMPLETE, 2.0),
        (TrialState.COMPLETE, 3.0),
    ]
    reason = trials[0].user_attrs["fail_reason"]
    assert reason.startswith("NonFiniteLossError") and "non-finite" in reason
    assert summary["trials"][0]["fail_reason"] == reason

    c = client(project)
    failed_parent = c.get_run(trials[0].user_attrs["mlflow_run_id"])
    assert failed_parent.info.status == "FAILED" and "NonFiniteLossError" in failed_parent.data.tags["error"]
    failed_seed = c.search_runs(
        [failed_parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{failed_parent.info.run_id}'"
    )
    assert [(r.info.status, r.data.tags["failure"]) for r in failed_seed] == [("FAILED", "non-finite loss")]

    for t in trials[1:]:
        n_active = float(np.median(t.user_attrs["n_active_per_seed"]))
        assert t.user_attrs["feasible"] is False
        assert t.user_attrs["infeasible_reason"] == (
            f"median informative components {n_active:g} below search.min_active 5"
        )
        assert t.constraints == {"min_active": pytest.approx(5 - n_active)}  # > 0: infeasible to Optuna
        assert c.get_run(t.user_attrs["mlflow_run_id"]).data.tags["feasible"] == "False"
    assert summary["n_complete"] == 2 and summary["n_feasible"] == 0
    assert summary["best_trial"] is None and summary["best_value"] is None
    report = json.loads((project / "reports" / "search" / f"{FAMILY}.json").read_text())
    assert [t["feasible"] for t in report["trials"]] == [None, False, False]
    assert is_png(project / "reports" / "search" / f"{FAMILY}_udr_vs_beta.png")

    # A rerun neither enqueues the grid again nor repeats the failed point.
    run_search(project, raw)
    assert len(load_study(project, raw).get_trials()) == 3


def start_worker(root: Path, args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`tubervae <args>` in `root`; its output goes to a log file (a full pipe would stall it)."""
    (root / "worker.py").write_text(WORKER)
    log = open(root / f"worker-{len(list(root.glob('worker-*.log')))}.log", "w")
    try:
        proc = subprocess.Popen(
            [sys.executable, str(root / "worker.py"), *args],
            cwd=root,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()
    proc.log_path = Path(log.name)
    return proc


def stop(proc: subprocess.Popen) -> str:
    """Kill the worker if it still runs; its output."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    return proc.log_path.read_text()


def kill_search_at_seed_1(project: Path, timeout: float) -> tuple[int, int]:
    """Start `tubervae search` (the WORKER script) and kill -9 it once seed 1 has logged step 10.

    Returns the pid of the process that trained seed 1 and that of the search.
    """
    marker = project / "blocked"
    proc = start_worker(project, ["search", "--family", FAMILY], env={"BLOCK_AT_SEED_1": str(marker)})
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists() or not marker.read_text():
            assert proc.poll() is None, f"search ended early:\n{stop(proc)}"
            assert time.monotonic() < deadline, f"seed 1 never got to step 10:\n{stop(proc)}"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    return int(marker.read_text()), proc.pid


@pytest.mark.slow
def test_worker_killed_mid_trial_is_retried_and_resumes_from_its_checkpoint(project, no_pictures):
    (project / "params.yaml").write_text(yaml.safe_dump(RAW_PARAMS))
    kill_search_at_seed_1(project, timeout=120)

    study = load_study(project, RAW_PARAMS)
    [killed] = study.get_trials()
    assert killed.state == TrialState.RUNNING
    killed_parent = killed.user_attrs["mlflow_run_id"]
    assert {r.info.status for r in all_runs(project)} == {"RUNNING", "FINISHED"}  # seed 0 done, seed 1 cut off

    summary = run_search(project, RAW_PARAMS)

    trials = load_study(project, RAW_PARAMS).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].system_attrs["fail_reason"] == "worker killed"
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == killed.params
    assert summary["n_complete"] == 1
    assert [t["fail_reason"] for t in summary["trials"]] == ["worker killed", ""]

    runs = all_runs(project)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    status = {r.info.run_id: r.info.status for r in runs}
    assert status[killed_parent] == "KILLED"
    # Each seed trained to the end exactly once: seed 0's run is reused, not repeated.
    data = load_training_data(project / "data" / "processed")
    cfg = parse_params(RAW_PARAMS).train
    setting = Setting(FAMILY, retry.params["beta"])
    for seed, run_id in enumerate(retry.user_attrs["seed_run_ids"]):
        finished = [
            r.info.run_id
            for r in runs
            if r.data.tags.get("run_key") == run_key(setting, seed, cfg, data) and r.info.status == "FINISHED"
        ]
        assert finished == [run_id]
    seed0, seed1 = (client(project).get_run(r) for r in retry.user_attrs["seed_run_ids"])
    assert seed0.data.tags["mlflow.parentRunId"] == killed_parent
    assert seed1.data.tags["mlflow.parentRunId"] == retry.user_attrs["mlflow_run_id"]
    # Seed 1 went on from its step-5 checkpoint: its new run logs only the later steps.
    history = client(project).get_metric_history(seed1.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(2 * LOG_EVERY, STEPS + 1, LOG_EVERY))


# --- two workers, one PostgreSQL study -------------------------------------------------------------


def postgres_bin() -> Path | None:
    def version(path: str) -> tuple:
        return tuple(int(part) for part in Path(path).parts[4].split(".") if part.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (trust auth), stopped and deleted afterwards."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed; .ci/run installs them")
    import psycopg2

    as_user: list[str] = []
    cluster = Path(tempfile.mkdtemp(prefix="tubervae-pg-"))  # outside tmp_path: the server user must reach it
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(cluster, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = cluster / "data", free_port()
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
    started = False
    try:
        subprocess.run(
            [
                *as_user,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *pg_ctl,
                "-l",
                str(cluster / "server.log"),
                "-o",
                f"-h 127.0.0.1 -p {port} -k {cluster} -F -c max_connections=40",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )
        started = True
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        try:
            conn.autocommit = True
            conn.cursor().execute("CREATE DATABASE optuna")
        finally:
            conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        if started:
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(cluster, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgres_study_without_losing_or_repeating_trials(project, postgres_url):
    """Both workers start at once on a fresh study: exactly n_trials complete, distinct numbers and settings.

    MLflow stays on the project's sqlite file, shared by both; the `project` fixture made its
    tables beforehand (two processes creating a fresh mlflow.db at once race).
    """
    raw = merged(RAW_PARAMS, search={"spaces": {FAMILY: {"n_trials": 3}}})
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    args = ["search", "--family", FAMILY, "--storage", postgres_url]
    workers = [start_worker(project, args) for _ in range(2)]
    try:
        for w in workers:
            w.wait(timeout=240)
    finally:
        outputs = [stop(w) for w in workers]
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out
        assert f"{FAMILY}: 3 complete trials" in out

    trials = load_study(project, raw, storage=postgres_url).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert len({t.params["beta"] for t in trials}) == 3
    assert {t.user_attrs["pid"] for t in trials} <= {w.pid for w in workers}
    runs = all_runs(project)
    assert {r.info.status for r in runs} == {"FINISHED"}
    parents = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert sorted(int(r.data.tags["optuna_trial"]) for r in parents) == [0, 1, 2]
    assert len([r for r in runs if r.data.tags.get("kind") == "vae"]) == 3 * 2
    report = json.loads((project / "reports" / "search" / f"{FAMILY}.json").read_text())
    assert report["n_complete"] == 3


# --- several models at once: a pool of training processes -------------------------------------------


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
    history = client(project).get_metric_history(seed1.info.run_id, "loss")
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
    history = client(project).get_metric_history(resumed.info.run_id, "loss")
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


def test_a_study_whose_trials_all_fail_stops_with_a_clear_error(project, no_pictures, monkeypatch):
    import tubervae.training.setting as train_module

    def always_nan(family, **hp):
        def poisoned(x, out, step):
            terms = real(x, out, step)
            return {**terms, "loss": terms["loss"] * float("nan")}

        real = real_make_loss(family, **hp)
        return poisoned

    real_make_loss = train_module.make_loss
    monkeypatch.setattr(train_module, "make_loss", always_nan)
    raw = merged(RAW_PARAMS, search={"max_retry": 1})
    with pytest.raises(RuntimeError, match=r"holds 0 of 1 finished trials.*beta_vae\.json"):
        run_search(project, raw)
    report = json.loads((project / "reports" / "search" / f"{FAMILY}.json").read_text())
    assert report["n_complete"] == 0 and len(report["trials"]) == 2  # 1 × (1 + max_retry) starts
    assert all("non-finite" in t["fail_reason"] for t in report["trials"])


def test_a_study_resumed_with_another_objective_is_refused_before_any_training(project):
    """The objective is not in the fingerprint: a changed search.objective meets its old study and is refused."""
    elbo = merged(RAW_PARAMS, search={"objective": "elbo"})
    data_version = load_training_data(project / "data" / "processed").data_version
    name = study_name(FAMILY, parse_params(RAW_PARAMS), data_version)
    assert study_name(FAMILY, parse_params(elbo), data_version) == name
    study = optuna.create_study(study_name=name, storage=storage_url(project), direction="maximize")
    optuna_study.describe_study(study, FAMILY, parse_params(RAW_PARAMS), data_version)
    assert study.user_attrs["search_objective"] == "udr" and study.metric_names == ["udr"]
    with pytest.raises(ValueError, match=rf"study '{name}' optimised search\.objective 'udr'.*'elbo'.*delete-study"):
        run_search(project, elbo)
    assert all_runs(project) == [] and load_study(project, RAW_PARAMS).trials == []
    # A study begun before the setting existed is a UDR study: refused too.
    legacy = optuna.create_study(study_name="old", storage=storage_url(project), direction="maximize")
    legacy.set_metric_names(["udr"])
    with pytest.raises(ValueError, match="optimised search.objective 'udr'"):
        optuna_study.check_objective(legacy, "elbo")
    optuna_study.check_objective(legacy, "udr")  # resumed with its own objective: goes on


def test_search_objective_elbo_needs_no_pruner():
    with pytest.raises(ConfigError, match=r"search\.pruner 'median' judges trials part-way by their UDR"):
        parse_params(merged(RAW_PARAMS, search={"objective": "elbo", "pruner": "median"}))


def seed_value(objective: str, tracker: Tracker, run_id: str, root: Path, params) -> float:
    """A seed's value under `search.objective`, recomputed from its logged model."""
    from tubervae.classify.any_rule import job_score
    from tubervae.data.processed import load_split
    from tubervae.models.encoding import encode, heldout_elbo

    vae = vae_artifacts.load_vae(tracker, run_id)[0]
    if objective == "elbo":
        return heldout_elbo(vae, load_training_data(root / "data" / "processed").test, "bernoulli")
    labelled = load_split("labelled", root / "data" / "processed")
    z, _ = encode(vae, labelled["images"])
    kl = vae_artifacts.latents(tracker, run_id)["kl"]
    cls = params.classify
    return job_score(
        z, labelled["labels"] == 1, kl, max_rules=cls.max_rules, n_folds=cls.cv_folds, random_state=cls.seed
    )


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["elbo", "job"])
def test_search_objective_end_to_end_values_trials_and_picks_the_champion_by_it(project, no_pictures, objective):
    """Trials valued by their seeds' median held-out ELBO (job score), the study records it, register follows it."""
    from tubervae.stages import register, udr

    raw = merged(RAW_PARAMS, search={"objective": objective, "spaces": {FAMILY: {"n_trials": 2}}})
    params = parse_params(raw)
    summary = run_search(project, raw)
    study = load_study(project, raw)
    assert study.metric_names == [objective] and study.user_attrs["search_objective"] == objective
    assert (
        summary["search_objective"] == objective
        and {"elbo": "ELBO", "job": "multi-defect"}[objective] in (summary["objective"])
    )
    tracker = Tracker(project)
    value_of = {}
    for trial in study.trials:
        per_seed = [seed_value(objective, tracker, r, project, params) for r in trial.user_attrs["seed_run_ids"]]
        assert trial.user_attrs[f"{objective}_per_seed"] == pytest.approx(per_seed)
        assert trial.value == pytest.approx(float(np.median(per_seed)))
        assert trial.value != pytest.approx(float(np.median(trial.user_attrs["udr_per_seed"])))
        value_of.update(zip(trial.user_attrs["seed_run_ids"], per_seed))
    metrics = json.loads((project / "reports" / "metrics" / f"search_{FAMILY}.json").read_text())
    assert metrics[f"best_{objective}"] == pytest.approx(max(t.value for t in study.trials))
    assert "best_udr" not in metrics

    udr.run(
        params,
        root=project,
        search_dir=project / "reports" / "search",
        out_dir=project / "reports" / "udr",
        processed_dir=project / "data" / "processed",
    )
    champion = register.run(
        params,
        root=project,
        udr_dir=project / "reports" / "udr",
        processed_dir=project / "data" / "processed",
        out_path=project / "reports" / "register" / "champion.json",
    )
    best = max(study.trials, key=lambda t: t.value)  # the setting of best median value, then its best seed
    expected = max(best.user_attrs["seed_run_ids"], key=value_of.get)
    if objective == "job":  # ties in a 16-photo score: any seed of the best value will do
        assert value_of[champion["run_id"]] == pytest.approx(value_of[expected])
    else:
        assert champion["run_id"] == expected
    assert champion["search_objective"] == objective
    assert champion["champions"]["objective"][objective] == pytest.approx(value_of[champion["run_id"]])
    assert f"best median {objective}" in champion["policy"]


def test_search_objective_job_is_refused_without_both_classes_of_labels(project):
    from tubervae.data.processed import load_split, save_split
    from tubervae.runs.objective import job_photos

    processed = project / "data" / "processed"
    labelled = load_split("labelled", processed)
    save_split(processed, "labelled", {**labelled, "labels": np.zeros_like(labelled["labels"])})  # all good
    with pytest.raises(ValueError, match=r"search.objective is 'job', but the labelled split holds 16 good and 0 bad"):
        job_photos(processed)
    with pytest.raises(ValueError, match="holds 16 good and 0 bad"):
        run_search(project, merged(RAW_PARAMS, search={"objective": "job"}))
    assert all_runs(project) == []


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # twins then differ by rounding only (float32 Adam amplifies it)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.slow
def test_fused_seeds_keep_one_mlflow_run_each_and_are_reused_unfused(project, no_pictures, float64):
    """`train.fuse: always`: a trial's seeds train as one fused model, yet each seed has its own FINISHED run
    with its metric history, probe latents and the weights of its separately trained twin, and a study run
    without fusing reuses them: fusing never changes what a run is."""
    raw = merged(RAW_PARAMS, train={"fuse": "always"})
    summary = run_search(project, raw)
    assert summary["n_complete"] == 1
    runs = all_runs(project)
    assert {r.info.status for r in runs} == {"FINISHED"}
    vae_runs = [r for r in runs if r.data.tags.get("kind") == "vae"]
    assert sorted(int(r.data.tags["seed"]) for r in vae_runs) == [0, 1]
    trial = summary["trials"][0]
    cfg = parse_params(raw).train
    data = load_training_data(project / "data" / "processed")
    for seed, run_id in enumerate(trial["seed_run_ids"]):
        history = client(project).get_metric_history(run_id, "loss")
        assert [m.step for m in history] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
        alone = train_model(
            Setting(FAMILY, trial["params"]["beta"]),
            seed,
            cfg,
            train_images=data.train,
            probe_images=data.probe,
            test_images=data.test,
            data_version=data.data_version,
            progress=False,
        )
        fused, _ = vae_artifacts.load_vae(Tracker(project), run_id)
        for name, value in alone.model.state_dict().items():
            torch.testing.assert_close(fused.state_dict()[name], value, atol=1e-9, rtol=0)
        np.testing.assert_allclose(
            vae_artifacts.latents(Tracker(project), run_id)["kl"], alone.latents["kl"], rtol=1e-6
        )
    assert not list((project / "checkpoints").glob("*.pt"))  # removed once each model is in MLflow

    again = run_search(project, merged(raw, train={"fuse": "never"}), n_trials=1)
    assert again["trials"][0]["seed_run_ids"] == trial["seed_run_ids"]
    assert len([r for r in all_runs(project) if r.data.tags.get("kind") == "vae"]) == 2


# --- pruning: settings judged part-way ----------------------------------------------------------------

PRUNING = {"pruner": "median", "prune_at": [0.25, 0.5], "prune_startup_trials": 1}  # judged at steps 5 and 10


class PrunePlan(optuna.pruners.BasePruner):
    """Prunes trial n at step plan[n]; every other trial goes on."""

    def __init__(self, plan: dict[int, int]):
        self.plan = plan

    def prune(self, study, trial) -> bool:
        return self.plan.get(trial.number) == trial.last_step


def runs_of(root: Path, parent_id: str) -> list:
    c = client(root)
    ids = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(ids, filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.mark.slow
def test_pruned_trials_are_killed_in_mlflow_leave_no_checkpoint_and_count_towards_n_trials(
    project, no_pictures, monkeypatch
):
    """Trial 0 pruned at ¼, trial 2 at ½: PRUNED in Optuna, their runs and seed runs KILLED and tagged, no
    checkpoint left; trial 1 completes with one continuous run per seed; 3 trials asked, 3 run, 1 complete."""
    monkeypatch.setattr(search, "make_pruner", lambda params: PrunePlan({0: 5, 2: 10}))
    raw = merged(RAW_PARAMS, search={**PRUNING, "spaces": {FAMILY: {"n_trials": 3}}})
    summary = run_search(project, raw)

    trials = load_study(project, raw).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED]
    assert [sorted(t.intermediate_values) for t in trials] == [[5], [5, 10], [5, 10]]
    assert (summary["n_complete"], summary["n_pruned"], summary["best_trial"]) == (1, 2, 1)
    assert summary["best_value"] == pytest.approx(trials[1].value)
    assert [t["pruned_at_step"] for t in summary["trials"]] == [5, None, 10]
    assert not list((project / "checkpoints").glob("*.pt"))
    assert not [r for r in all_runs(project) if r.info.status == "RUNNING"]

    c = client(project)
    for trial, step in ((trials[0], 5), (trials[2], 10)):
        assert trial.user_attrs["pruned_at_step"] == step
        assert (
            trial.user_attrs["pruned_reason"]
            == f"median pruner: median UDR {trial.intermediate_values[step]:.4g} at step {step}"
        )
        parent = c.get_run(trial.user_attrs["mlflow_run_id"])
        assert parent.info.status == "KILLED" and "error" not in parent.data.tags
        assert (parent.data.tags["optuna_state"], parent.data.tags["pruned_at_step"]) == ("PRUNED", str(step))
        udr_history = dict((m.step, m.value) for m in c.get_metric_history(parent.info.run_id, "udr"))
        assert udr_history == pytest.approx(trial.intermediate_values)
        seeds = runs_of(project, parent.info.run_id)
        assert sorted(r.info.run_id for r in seeds) == sorted(trial.user_attrs["seed_run_ids"])
        for run in seeds:
            assert run.info.status == "KILLED"
            assert (run.data.tags["optuna_state"], run.data.tags["pruned_at_step"]) == ("PRUNED", str(step))
            assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "loss")) == list(range(5, step + 1, 5))

    # the complete trial: one run per seed, one history over its three segments, its udr the objective
    parent = c.get_run(trials[1].user_attrs["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and "optuna_state" not in parent.data.tags
    assert parent.data.metrics["udr"] == pytest.approx(trials[1].value)
    udr_steps = sorted(m.step for m in c.get_metric_history(parent.info.run_id, "udr"))
    assert udr_steps == [5, 10, STEPS]
    seeds = runs_of(project, parent.info.run_id)
    assert len(seeds) == 2 and {r.info.status for r in seeds} == {"FINISHED"}
    for run in seeds:
        assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "loss")) == list(range(5, STEPS + 1, 5))
        assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "n_active")) == [5, 10, STEPS]
    assert len([r for r in all_runs(project) if r.data.tags.get("kind") == "vae"]) == 3 * 2

    metrics = json.loads((project / "reports" / "metrics" / f"search_{FAMILY}.json").read_text())
    assert (metrics["n_complete"], metrics["n_pruned"]) == (1, 2)
    run_search(project, raw)  # 3 finished trials already: nothing to do
    assert len(load_study(project, raw).get_trials()) == 3


@pytest.mark.slow
def test_a_setting_infeasible_part_way_is_judged_0_and_stopped_once_a_feasible_one_did_better(project, no_pictures):
    """β = 1000 collapses every component. As the first trial it has nothing to lose against and
    completes (infeasible); β = 1 then completes feasible (the infeasible trial sets no bar); β = 900,
    infeasible at step 5, reports 0 there and is pruned: β = 1 did better at step 5."""
    grid = [{"beta": 1000.0}, {"beta": 1.0}, {"beta": 900.0}]
    raw = merged(
        RAW_PARAMS,
        search={
            **PRUNING,
            "min_active": 2,
            "enqueue_grid": True,
            "spaces": {FAMILY: {"n_trials": 3, "beta": [1.0, 1000.0], "grid": grid}},
        },
    )
    summary = run_search(project, raw)
    collapsed, opened, pruned = load_study(project, raw).get_trials()
    assert (collapsed.state, collapsed.user_attrs["feasible"]) == (TrialState.COMPLETE, False)
    assert collapsed.intermediate_values == {5: 0.0, 10: 0.0}
    assert (opened.state, opened.user_attrs["feasible"]) == (TrialState.COMPLETE, True)
    assert opened.intermediate_values[5] > 0
    assert (pruned.state, pruned.intermediate_values) == (TrialState.PRUNED, {5: 0.0})
    assert pruned.user_attrs["pruned_reason"].startswith("median pruner: infeasible at step 5 (median informative")
    assert (summary["n_complete"], summary["n_pruned"], summary["best_trial"]) == (2, 1, 1)
    parent = client(project).get_run(pruned.user_attrs["mlflow_run_id"])
    assert parent.info.status == "KILLED" and parent.data.metrics["feasible"] == 0.0  # logged as it was: raw udr


@pytest.mark.parametrize("where", ["here", "fused", "pool"])
@pytest.mark.slow
def test_a_trial_that_is_not_pruned_scores_as_without_pruning(project, no_pictures, empty_mlflow_db, where):
    """Segments in-process, fused or in the training pool: the same seeds, the same objective, bit for bit."""
    train = {"here": {}, "fused": {"fuse": "always"}, "pool": {"workers": 2}}[where]
    plain = run_search(project, merged(RAW_PARAMS, train=train))
    other = project / "pruned"
    other.mkdir()
    shutil.copy(empty_mlflow_db, other / "mlflow.db")
    raw = merged(RAW_PARAMS, train=train, search=PRUNING)
    pruned = search.run(
        parse_params(raw),
        FAMILY,
        root=other,
        processed_dir=project / "data" / "processed",
        reports_dir=other / "reports" / "search",
        progress=False,
    )
    [a], [b] = plain["trials"], pruned["trials"]
    assert (a["state"], b["state"]) == ("COMPLETE", "COMPLETE")
    assert a["params"] == b["params"] and a["value"] == b["value"] and a["udr_per_seed"] == b["udr_per_seed"]
    assert [step for step, _ in b["intermediate_udr"]] == [5, 10] and a["intermediate_udr"] == []
    assert {r.info.status for r in all_runs(other)} == {"FINISHED"}
    for run_a, run_b in zip(a["seed_run_ids"], b["seed_run_ids"]):
        za, zb = vae_artifacts.latents(Tracker(project), run_a), vae_artifacts.latents(Tracker(other), run_b)
        np.testing.assert_array_equal(za["mu"], zb["mu"])


@pytest.mark.slow
def test_a_search_killed_between_segments_resumes_each_seed_from_its_checkpoint(project, no_pictures):
    """Killed while seed 1 trains its second segment (seed 0 has finished it): the retry resumes seed 0 at
    step 10 and seed 1 at step 5, trains no step twice past its checkpoint, and leaves no run RUNNING."""
    raw = merged(RAW_PARAMS, search=PRUNING)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    kill_search_at_seed_1(project, timeout=180)
    assert {r.info.status for r in all_runs(project)} == {"RUNNING"}  # the trial and both seeds, between segments
    cut = {r.data.tags["seed"]: r.info.run_id for r in all_runs(project) if r.data.tags.get("kind") == "vae"}
    assert sorted(cut) == ["0", "1"]

    summary = run_search(project, raw)
    assert (summary["n_complete"], summary["n_pruned"]) == (1, 0)
    runs = all_runs(project)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    status = {r.info.run_id: r.info.status for r in runs}
    assert status[cut["0"]] == status[cut["1"]] == "KILLED"
    retry = [t for t in load_study(project, raw).get_trials() if t.state == TrialState.COMPLETE][0]
    c = client(project)
    seed0, seed1 = retry.user_attrs["seed_run_ids"]
    # the killed runs hold what was logged before the kill; the new ones only what came after each checkpoint
    assert sorted(m.step for m in c.get_metric_history(cut["0"], "loss")) == [5, 10]
    assert sorted(m.step for m in c.get_metric_history(seed0, "loss")) == [15, 20]
    assert sorted(m.step for m in c.get_metric_history(seed1, "loss")) == [10, 15, 20]
    finished = [r for r in runs if r.data.tags.get("kind") == "vae" and r.info.status == "FINISHED"]
    assert sorted(r.info.run_id for r in finished) == sorted([seed0, seed1])


def test_a_guided_study_searches_the_heads_weight_and_scores_its_seeds_without_the_guided_component(
    project, no_pictures
):
    family = "guided_beta_vae"
    raw = merged(
        RAW_PARAMS,
        search={"spaces": {family: {"n_trials": 1, "beta": [1.0, 8.0], "guide_weight": [10.0, 100.0]}}},
    )
    paths = dict(
        root=project,
        processed_dir=project / "data" / "processed",
        reports_dir=project / "reports" / "search",
        progress=False,
    )
    with pytest.raises(ValueError, match="family 'guided_beta_vae' is guided, but the labelled split holds no guide"):
        search.run(parse_params(raw), family, **paths)
    write_processed_discs(project / "data" / "processed", guide=np.arange(16) < 8)
    summary = search.run(parse_params(raw), family, **paths)
    (trial,) = summary["trials"]
    assert trial["state"] == "COMPLETE" and 10.0 <= trial["params"]["guide_weight"] <= 100.0
    tracker = Tracker(project)
    runs = [client(project).get_run(rid) for rid in trial["seed_run_ids"]]
    assert {(r.data.params["guided_component"], r.data.params["n_guide"]) for r in runs} == {("0", "8")}
    assert {float(r.data.params["guide_weight"]) for r in runs} == {trial["params"]["guide_weight"]}
    latents = [vae_artifacts.latents(tracker, rid) for rid in trial["seed_run_ids"]]
    mus, kls = [z["mu"] for z in latents], [z["kl"] for z in latents]
    without = udr_scores(mus, kls, similarity="spearman", excluded=[(0,), (0,)])
    assert trial["udr_per_seed"] == pytest.approx(np.nan_to_num(without.scores))
    assert trial["n_active"] == float(np.median(without.n_informative))
    assert without.n_informative.tolist() != udr_scores(mus, kls, similarity="spearman").n_informative.tolist()


def test_prune_at_must_be_increasing_fractions():
    for bad, message in (([0.5, 0.25], "must increase"), ([0.25, 1.0], "must be less than 1.0"), ([], "is empty")):
        with pytest.raises(ConfigError, match=message):
            parse_params(merged(RAW_PARAMS, search={**PRUNING, "prune_at": bad}))
    with pytest.raises(ConfigError, match="not one of"):
        parse_params(merged(RAW_PARAMS, search={"pruner": "asha"}))
    assert prune_steps(parse_params(merged(RAW_PARAMS, search=PRUNING))) == [5, 10]
    assert prune_steps(parse_params(RAW_PARAMS)) == []  # pruner none: trials train in one go


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband"])
def test_settings_that_ended_infeasible_set_no_bar_for_pruning(pruner):
    """A collapsed setting's high UDR part-way must not stop settings that end feasible: only feasible
    trials compete. One infeasible trial at 0.9: a trial at 0.2 goes on; a feasible one at 0.5: it stops."""
    params = parse_params(merged(RAW_PARAMS, search={**PRUNING, "pruner": pruner}))
    study = optuna.create_study(direction="maximize", pruner=make_pruner(params))
    beta = optuna.distributions.FloatDistribution(1.0, 8.0)

    def finished(value: float, feasible: bool) -> None:
        study.add_trial(
            optuna.trial.create_trial(
                params={"beta": 2.0},
                distributions={"beta": beta},
                value=value,
                intermediate_values={5: value},
                user_attrs={"feasible": feasible},
                system_attrs={"completed_rung_0": value},  # what successive halving recorded at step 5
            )
        )

    def judged_at_step_5() -> bool:
        trial = study.ask({"beta": beta})
        trial.report(0.2, 5)
        pruned = trial.should_prune()
        study.tell(trial, state=TrialState.PRUNED if pruned else TrialState.FAIL)
        return pruned

    finished(0.9, feasible=False)
    assert not judged_at_step_5()
    if pruner == "hyperband":  # its brackets split the trials by number: judged in its own bracket or not
        return
    finished(0.5, feasible=True)
    assert judged_at_step_5()
