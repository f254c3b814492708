"""A stage killed while its MLflow run is open leaves no run RUNNING once the stage runs again.

Each stage below is started as `tubervae <stage>` in a child process that stops for good
inside its open run (at its first artifact upload), killed with SIGKILL, then run again as
`dvc repro` would: the rerun marks the dead process's run KILLED and finishes its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import labelled_disc_splits, train_tiny_runs, write_processed
from tubervae import cli
from tubervae.config import DataConfig, Params
from tubervae.runs import training_run
from tubervae.runs.tracker import Tracker
from tubervae.stages import evalset

pytestmark = pytest.mark.slow  # every test kills a subprocess

STAGES = ("udr", "register", "classify", "evaluate")  # the order dvc repro runs them in
PARAMS = {
    "search": {"seeds": 2, "min_active": 0},
    "udr": {"heatmap_pairs": 0},
    "classify": {"label_sizes": [6, 20], "n_draws": 1, "cnn_steps": 5, "gallery_size": 0},
    "evaluate": {
        "n_points": 40,
        "n_bootstrap": 20,
        "n_train": 20,
        "n_test": 20,
        "dci_method": "gbt_regressor",
        "workers": 1,  # the 4 tiny models scored in the stage's process: no pool to start
    },
}
# Run as `python stopper.py <stage> <marker>`: the stage, frozen at its first upload inside its run.
STOPPER = """
import os, sys, time
from pathlib import Path
from tubervae.runs import registry
from tubervae.runs.tracker import Tracker

def stop_here(*args, **kwargs):
    Path(sys.argv[2]).write_text(str(os.getpid()))
    time.sleep(3600)

Tracker.log_artifacts = stop_here
registry.log_pyfunc = stop_here

if __name__ == "__main__":
    from tubervae.cli import main

    sys.exit(main([sys.argv[1]]))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory, empty_mlflow_db):
    """Four tiny trained models, the tiny data and an empty evaluation set (the test split has factors)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
            mp.delenv(name, raising=False)
        root = tmp_path_factory.mktemp("killed")
        shutil.copyfile(empty_mlflow_db, root / "mlflow.db")
        splits, names = labelled_disc_splits(seed=1)
        write_processed(root / "data" / "processed", splits, names)
        (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
        # photos 'from a folder': the evaluation set stays empty and evaluate scores the test split's factors
        evalset.run(Params(data=DataConfig(source=str(root))), out_dir=root / "data" / "evalset")
        mp.setattr(training_run, "figures", lambda *args, **kwargs: {})
        tracker = Tracker(root)
        data = training_run.load_training_data(root / "data" / "processed")
        train_tiny_runs(tracker, data, [(beta, seed) for beta in (1.0, 4.0) for seed in (0, 1)])
        (root / "stopper.py").write_text(STOPPER)
        yield root


def runs_of(root, kind: str) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, f"tags.kind = '{kind}'")


def kill_inside_its_run(root, stage: str, sig: int = signal.SIGKILL) -> int:
    """Start `tubervae <stage>`, wait until it is inside its open run, send `sig`; its pid, once it is gone."""
    marker = root / f"{stage}.stopped"
    marker.unlink(missing_ok=True)  # left by an earlier test's stop of the same stage
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = open(root / f"{stage}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(root / "stopper.py"), stage, str(marker)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, f"{stage} ended early:\n{(root / f'{stage}.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{stage} never opened its run"
            time.sleep(0.2)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert proc.returncode == -sig, f"{stage} ended with {proc.returncode}, not by the signal {sig}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        log.close()
    return proc.pid


@pytest.mark.parametrize("stage", STAGES)
def test_killed_stage_leaves_no_run_running_after_the_rerun(project, stage, monkeypatch):
    monkeypatch.chdir(project)
    pid = kill_inside_its_run(project, stage)
    (killed,) = [r for r in runs_of(project, stage) if r.data.tags.get("pid") == str(pid)]
    assert killed.info.status == "RUNNING"

    assert cli.main([stage]) == 0  # what `dvc repro` runs next
    statuses = {r.info.run_id: r.info.status for r in runs_of(project, stage)}
    assert statuses[killed.info.run_id] == "KILLED"
    assert "RUNNING" not in statuses.values() and "FINISHED" in statuses.values()


@pytest.mark.parametrize("stage", ["udr", "register"])
def test_a_sigterm_marks_the_open_run_killed_on_the_way_out(project, stage, monkeypatch):
    """`timeout` or a scheduler stops a stage with SIGTERM: its run ends KILLED at once, not RUNNING until a rerun."""
    monkeypatch.chdir(project)
    pid = kill_inside_its_run(project, stage, signal.SIGTERM)
    (stopped,) = [r for r in runs_of(project, stage) if r.data.tags.get("pid") == str(pid)]
    assert stopped.info.status == "KILLED"
    assert stopped.info.end_time is not None


def test_a_pool_workers_run_is_killed_with_its_owner_even_while_the_worker_lingers(tmp_path, empty_mlflow_db):
    """A search killed under its training pool: the rerun may start before the orphaned worker has
    exited (it polls for its owner once a second). Its run is marked KILLED all the same, after the
    worker is gone; a live owner's worker keeps its run RUNNING."""
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    dead_owner = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner.wait()
    lingering = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        orphan_tracker = Tracker(tmp_path, owner_pid=dead_owner.pid)
        orphan = orphan_tracker.create_run("orphan", tags={"kind": "vae"})
        orphan_tracker.set_tags(orphan, {"pid": str(lingering.pid)})  # as if the lingering process held it
        owned = Tracker(tmp_path, owner_pid=os.getpid())
        held = owned.create_run("held", tags={"kind": "vae"})
        owned.set_tags(held, {"pid": str(busy.pid)})

        start = time.monotonic()
        marked = Tracker(tmp_path).mark_stale_runs_killed()
        assert marked == [orphan]
        assert lingering.poll() is not None and time.monotonic() - start < 10  # waited for it, not longer
        assert owned.status(orphan) == "KILLED" and owned.status(held) == "RUNNING"
        assert owned.get_run(orphan).data.tags["owner_pid"] == str(dead_owner.pid)
        # Reopened by a live process (a resumed segment), the run is that process's: no former owner lingers.
        plain = Tracker(tmp_path)
        with plain.run("orphan", run_id=orphan):
            assert plain.get_run(orphan).data.tags["owner_pid"] == str(os.getpid())
            assert Tracker(tmp_path).mark_stale_runs_killed() == []
        assert owned.status(orphan) == "FINISHED"
    finally:
        for proc in (lingering, busy):
            proc.kill()
            proc.wait()
