"""A family's Optuna study (`tubervae.runs.study`): storage, name, objective, dead workers' trials, two workers."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import (
    FAMILY,
    LOG_EVERY,
    RAW_PARAMS,
    STEPS,
    all_runs,
    client,
    free_port,
    http,
    kill_search_at_seed_1,
    load_study,
    make_target,
    merged,
    run_search,
    start_worker,
    started,
    stop,
    with_makefile,
)
from tubervae.config import parse_params
from tubervae.runs import study as optuna_study
from tubervae.runs.study import fail_dead_local_trials, make_storage, storage_url, study_name
from tubervae.runs.training_run import load_training_data, run_key
from tubervae.training.setting import Setting


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
    history = client(project).get_metric_history(seed1.info.run_id, "curves/loss")
    assert sorted(m.step for m in history) == list(range(2 * LOG_EVERY, STEPS + 1, LOG_EVERY))


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
