"""The studies' notes for optuna-dashboard: how to read them, the champion policy, which seed won."""

from __future__ import annotations

import optuna
import pytest

from tubervae.config import Params, RegisterConfig
from tubervae.runs.study_notes import (
    CHAMPION,
    HOW_TO_READ,
    POLICY,
    champion_policy,
    note_champion,
    note_policy,
)


def add_trial(study: optuna.Study, value: float, runs: list[str], feasible: bool = True, n_active: int = 4) -> None:
    trial = optuna.trial.create_trial(
        params={"beta": 1.0 + value},
        distributions={"beta": optuna.distributions.FloatDistribution(0.5, 10.0)},
        value=value,
        user_attrs={"seed_run_ids": runs, "feasible": feasible, "n_active": n_active},
    )
    study.add_trial(trial)


@pytest.fixture
def storage(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    for name, version, trials in [
        ("beta_vae-a", "v1", [(0.60, ["r0", "r1"]), (0.58, ["r2", "champ"])]),
        ("beta_tcvae-a", "v1", [(0.50, ["r4", "r5"])]),
        ("beta_vae-old", "v0", [(0.70, ["r6", "r7"])]),
    ]:
        study = optuna.create_study(study_name=name, storage=url, direction="maximize")
        study.set_user_attr("data_version", version)
        for value, runs in trials:
            add_trial(study, value, runs)
    return url


def champion(**extra) -> dict:
    summary = {"run_id": "champ", "family": "beta_vae", "setting": "2.61", "seed": 1}
    return summary | {"model": "tubervae-vae", "version": 4, "data_version": "v1"} | extra


def test_the_champions_study_names_its_trial_and_seed_and_why_it_is_not_the_best(storage):
    noted = note_champion(storage, champion(), "the policy")
    assert sorted(noted) == ["beta_tcvae-a", "beta_vae-a"]
    home = optuna.load_study(study_name="beta_vae-a", storage=storage).user_attrs
    assert home[CHAMPION] == (
        "trial 1 (beta_vae 2.61), seed 1 is tubervae-vae@champion (version 4), run champ; not this study's best "
        "trial (0, median UDR 0.600 against 0.580): champion_policy chose it"
    )
    assert home[POLICY] == "the policy"
    other = optuna.load_study(study_name="beta_tcvae-a", storage=storage).user_attrs
    assert other[CHAMPION] == (
        "none of this study's trials: the champion is trial 1 (beta_vae 2.61), seed 1 of study beta_vae-a, "
        "tubervae-vae@champion (version 4)"
    )
    old = optuna.load_study(study_name="beta_vae-old", storage=storage).user_attrs
    assert CHAMPION not in old and POLICY not in old  # another data version: another pipeline's studies


def test_a_champion_from_the_best_trial_says_only_which_it_is(storage):
    note_champion(storage, champion(run_id="r1", seed=1, setting="1.6"), "p")
    home = optuna.load_study(study_name="beta_vae-a", storage=storage).user_attrs
    assert home[CHAMPION] == "trial 0 (beta_vae 1.6), seed 1 is tubervae-vae@champion (version 4), run r1"


def test_no_study_is_made_or_noted_where_there_is_none(tmp_path, storage):
    missing = tmp_path / "elsewhere" / "optuna.db"
    assert note_champion(f"sqlite:///{missing}", champion(), "p") == []
    assert not missing.exists()
    assert note_champion(storage, champion(run_id="unknown"), "p") == []
    assert CHAMPION not in optuna.load_study(study_name="beta_vae-a", storage=storage).user_attrs


def test_the_policy_says_the_tolerance_and_the_job_selection():
    assert "within 0.05 of the best UDR" in champion_policy(RegisterConfig())
    assert "multi-defect rule" not in champion_policy(RegisterConfig())
    assert "multi-defect rule" in champion_policy(RegisterConfig(udr_tolerance=0.1, select="job"))


def test_the_search_notes_how_to_read_its_study():
    study = optuna.create_study(direction="maximize")
    note_policy(study, Params())
    assert "Best trial" in study.user_attrs[HOW_TO_READ] and "champion" in study.user_attrs[HOW_TO_READ]
    assert study.user_attrs[POLICY] == champion_policy(Params().register)


def test_the_register_stage_notes_the_projects_studies_and_survives_a_broken_store(tmp_path, caplog):
    from tubervae.runs import promotion

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="beta_vae-a", storage=url, direction="maximize")
    study.set_user_attr("data_version", "v1")
    add_trial(study, 0.6, ["r0", "champ"])
    promotion.note_champion_on_studies(tmp_path, champion(select="job"), Params())
    attrs = optuna.load_study(study_name="beta_vae-a", storage=url).user_attrs
    assert attrs[CHAMPION].startswith("trial 0 (beta_vae 2.61), seed 1 is tubervae-vae@champion (version 4)")
    assert "multi-defect rule" in attrs[POLICY]  # the selection register made, not only the setting

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "optuna.db").write_text("not a database")
    promotion.note_champion_on_studies(broken, champion(select="udr"), Params())
    assert "could not be noted with the champion" in caplog.text
