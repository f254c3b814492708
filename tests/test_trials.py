"""A study's trials (`tubervae.runs.trials`): the loop to n_trials, what each trial records, the summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from conftest import FAMILY, RAW_PARAMS, all_runs, client, load_study, merged, run_search, write_processed_discs
from tubervae.config import parse_params
from tubervae.evaluation.udr import udr_scores
from tubervae.runs import vae_artifacts
from tubervae.runs.study import fingerprint
from tubervae.runs.tracker import Tracker
from tubervae.runs.training_run import load_training_data
from tubervae.stages import search
from tubervae.training.setting import Setting


def first_suggestion(seed: int, low: float, high: float) -> float:
    """What a fresh TPE sampler with this seed proposes first, on an empty study."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    return study.ask().suggest_float("beta", low, high, log=True)


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    configs = [vae_artifacts.read_training_config(tracker, r) for r in runs]
    assert {(c["guided_component"], c["n_guide"]) for c in configs} == {(0, 8)}
    assert {float(r.data.params["guide_weight"]) for r in runs} == {trial["params"]["guide_weight"]}
    latents = [vae_artifacts.latents(tracker, rid) for rid in trial["seed_run_ids"]]
    mus, kls = [z["mu"] for z in latents], [z["kl"] for z in latents]
    without = udr_scores(mus, kls, similarity="spearman", excluded=[(0,), (0,)])
    assert trial["udr_per_seed"] == pytest.approx(np.nan_to_num(without.scores))
    assert trial["n_active"] == float(np.median(without.n_informative))
    assert without.n_informative.tolist() != udr_scores(mus, kls, similarity="spearman").n_informative.tolist()
