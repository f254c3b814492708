"""Pruning (`tubervae.runs.pruning`): settings judged part-way, pruned trials' runs, feasible trials only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import (
    FAMILY,
    RAW_PARAMS,
    STEPS,
    all_runs,
    client,
    kill_search_at_seed_1,
    load_study,
    merged,
    run_search,
)
from tubervae.config import ConfigError, parse_params
from tubervae.runs import vae_artifacts
from tubervae.runs.pruning import make_pruner, prune_steps
from tubervae.runs.tracker import Tracker
from tubervae.stages import search

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
            assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "curves/loss")) == list(
                range(5, step + 1, 5)
            )

    # the complete trial: one run per seed, one history over its three segments, its udr the objective
    parent = c.get_run(trials[1].user_attrs["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and "optuna_state" not in parent.data.tags
    assert parent.data.metrics["udr"] == pytest.approx(trials[1].value)
    udr_steps = sorted(m.step for m in c.get_metric_history(parent.info.run_id, "udr"))
    assert udr_steps == [5, 10, STEPS]
    seeds = runs_of(project, parent.info.run_id)
    assert len(seeds) == 2 and {r.info.status for r in seeds} == {"FINISHED"}
    for run in seeds:
        assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "curves/loss")) == list(
            range(5, STEPS + 1, 5)
        )
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
    assert sorted(m.step for m in c.get_metric_history(cut["0"], "curves/loss")) == [5, 10]
    assert sorted(m.step for m in c.get_metric_history(seed0, "curves/loss")) == [15, 20]
    assert sorted(m.step for m in c.get_metric_history(seed1, "curves/loss")) == [10, 15, 20]
    finished = [r for r in runs if r.data.tags.get("kind") == "vae" and r.info.status == "FINISHED"]
    assert sorted(r.info.run_id for r in finished) == sorted([seed0, seed1])


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
