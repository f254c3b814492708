"""What optuna-dashboard shows beside a study's trials: how its champion is chosen, and which seed won.

A study's "Best trial" is its highest median UDR among feasible trials; the registered champion is
chosen across every family by the register stage's policy, which may prefer another trial (settings
within `register.udr_tolerance` of the best tie, and more informative components win). So that the
dashboard says so, each study carries three user attributes:

- `how_to_read`: the sentence above, written by the search;
- `champion_policy`: the policy in force, written by the search and brought up to date by register;
- `champion`: written by register on every study of the champion's data version: on the champion's
  own study, which trial and seed became `tubervae-vae@champion` (and whether that is the study's best
  trial); on the others, that the champion comes from another study, and which.
"""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tubervae.config import Params, RegisterConfig

log = logging.getLogger(__name__)
HOW_TO_READ, POLICY, CHAMPION = "how_to_read", "champion_policy", "champion"
READING = (
    "Best trial: this family's highest median UDR among feasible trials. The registered champion "
    "(tubervae-vae@champion) is chosen across all families by champion_policy, so it may come from "
    "another trial or study: see champion once the register stage has run."
)


def champion_policy(cfg: RegisterConfig) -> str:
    """The register stage's policy in one sentence (`tubervae.runs.champion`'s docstring has the reasons)."""
    policy = (
        "feasible settings only (median informative components >= search.min_active), ranked by median "
        f"within-family UDR (never all-against-all); settings within {cfg.udr_tolerance:g} of the best UDR "
        "tie, and the one with more informative components wins; within it, the seed with the highest UDR"
    )
    if cfg.select == "centrality":
        return (
            "feasible models only (median informative components >= search.min_active); register.select "
            "centrality: the model of highest ModelCentrality, its mean UDR pair score to the rest of its "
            "family (the medoid)"
        )
    if cfg.select == "job":
        policy += (
            "; register.select job: among the tied settings' best seeds, the best cross-validated multi-defect "
            "rule on the labelled photos"
        )
    return policy


def note_policy(study: optuna.Study, params: Params) -> None:
    """The search's notes on its study: how to read it, and the champion policy in force."""
    study.set_user_attr(HOW_TO_READ, READING)
    study.set_user_attr(POLICY, champion_policy(params.register))


def champion_trial(study: optuna.Study, run_id: str) -> optuna.trial.FrozenTrial | None:
    """The trial of `study` one of whose seeds' runs is `run_id`."""
    for trial in study.get_trials(deepcopy=False):
        if run_id in (trial.user_attrs.get("seed_run_ids") or []):
            return trial
    return None


def note_champion(storage: str, champion: dict, policy: str) -> list[str]:
    """Write `champion` and `champion_policy` on every study of the champion's data version in `storage`;
    the names of the studies noted. `champion`: register's summary (run_id, family, setting, seed, model,
    version, data_version). A local storage that does not exist is left unmade."""
    if storage.startswith("sqlite:///") and not Path(urllib.parse.unquote(storage.removeprefix("sqlite:///"))).exists():
        return []
    names = optuna.study.get_all_study_names(storage)
    studies = [optuna.load_study(study_name=name, storage=storage) for name in names]
    studies = [s for s in studies if s.user_attrs.get("data_version") == champion["data_version"]]
    found = [(s, t) for s in studies if (t := champion_trial(s, champion["run_id"])) is not None]
    model = f"{champion['model']}@champion (version {champion['version']})"
    if not found:
        log.info("no study in %s holds the champion's run %s: no champion note", storage, champion["run_id"])
        return []
    home, trial = found[0]
    where = f"trial {trial.number} ({champion['family']} {champion['setting']}), seed {champion['seed']}"
    for study in studies:
        study.set_user_attr(POLICY, policy)
        if study is home:
            note = f"{where} is {model}, run {champion['run_id']}"
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            feasible = [t for t in complete if t.user_attrs.get("feasible") and t.value is not None]
            best = max(feasible, key=lambda t: (t.value, t.user_attrs.get("n_active", 0)), default=None)
            if best is not None and best.number != trial.number:
                own = "" if trial.value is None else f" against {trial.value:.3f}"
                note += (
                    f"; not this study's best trial ({best.number}, median UDR {best.value:.3f}{own}): "
                    "champion_policy chose it"
                )
        else:
            note = f"none of this study's trials: the champion is {where} of study {home.study_name}, {model}"
        study.set_user_attr(CHAMPION, note)
    return [study.study_name for study in studies]
