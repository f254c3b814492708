"""The tracker (tubervae.runs.tracker): system metrics and the experiment's description, params logged once,
one store per project root, and a copied project told where its artifacts go.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

import pytest
from mlflow.entities import Param

from conftest import new_project
from conftest import store_client as client_for
from conftest import store_runs as all_runs
from tubervae.runs import tracker as tracker_module
from tubervae.runs.tracker import Tracker

pytestmark = pytest.mark.usefixtures("isolated_training")  # each test tracks into its own folder


@pytest.mark.slow
def test_a_run_with_system_metrics_logs_them_and_the_experiment_opens_on_its_runs(
    tmp_path, monkeypatch, empty_mlflow_db
):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    tracker = Tracker(tmp_path)
    with tracker.run("quiet") as quiet:
        time.sleep(0.3)
    with tracker.run("watched", system_metrics=True) as watched:
        time.sleep(0.3)
    assert not [k for k in tracker.client.get_run(quiet).data.metrics if k.startswith("system/")]
    run = tracker.client.get_run(watched)
    assert run.info.status == "FINISHED"
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    history = tracker.client.get_metric_history(watched, "system/cpu_utilization_percentage")
    assert len(history) >= 2 and [m.step for m in history] == list(range(len(history)))
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    # The runs list's description says how to show udr and MIG as columns; a former default is brought up to
    # date, a description someone wrote is kept.
    note = "mlflow.note.content"
    assert "**Columns**" in tags[note] and "`udr` and `mig`" in tags[note]
    (former,) = tracker_module.FORMER_NOTES
    tracker.client.set_experiment_tag(tracker.experiment_id, note, former)
    assert Tracker(tmp_path).client.get_experiment(tracker.experiment_id).tags[note] == tags[note]
    tracker.client.set_experiment_tag(tracker.experiment_id, note, "mine")
    assert Tracker(tmp_path).client.get_experiment(tracker.experiment_id).tags[note] == "mine"


def test_log_params_skips_equal_values_and_refuses_conflicting_ones(tmp_path, empty_mlflow_db):
    new_project(tmp_path, empty_mlflow_db)
    tracker = Tracker(tmp_path)
    rid = tracker.create_run("params")
    client = client_for(tmp_path)
    client.log_batch(rid, params=[Param("beta", "4"), Param("family", "beta_vae")])

    tracker.log_params(rid, {"beta": 4.0, "family": "beta_vae", "lr": 0.001})
    assert client.get_run(rid).data.params == {"beta": "4", "family": "beta_vae", "lr": "0.001"}
    with pytest.raises(ValueError, match=r"param 'beta'.*'4'.*'5.0'"):
        tracker.log_params(rid, {"beta": 5.0})
    with pytest.raises(ValueError, match=r"param 'family'.*'beta_vae'.*'beta_tcvae'"):
        tracker.log_params(rid, {"family": "beta_tcvae"})
    assert client.get_run(rid).data.params["beta"] == "4"


def test_trackers_of_two_roots_in_one_process_each_use_their_own_store(tmp_path, empty_mlflow_db):
    first, second = tmp_path / "first", tmp_path / "second"
    for root in (first, second):
        new_project(root, empty_mlflow_db)
    ids = {root: Tracker(root).create_run(root.name) for root in (first, second)}

    assert "MLFLOW_TRACKING_URI" not in os.environ  # not left behind for later Trackers or child processes
    for root, rid in ids.items():
        assert [r.info.run_id for r in all_runs(client_for(root))] == [rid]


def test_a_copied_project_is_told_that_its_artifacts_go_to_the_originals_store(tmp_path, empty_mlflow_db, caplog):
    original, copy = tmp_path / "original", tmp_path / "copy"
    new_project(original, empty_mlflow_db)
    Tracker(original).create_run("first")
    shutil.copytree(original, copy)  # cp -r: the store's absolute artifact location comes along
    with caplog.at_level(logging.WARNING, logger="tubervae.runs.tracker"):
        Tracker(original)
        assert not caplog.records  # at home, nothing to say
        Tracker(copy)
    (record,) = caplog.records
    assert str(original / "mlruns") in record.getMessage() and "move mlflow.db away" in record.getMessage()
