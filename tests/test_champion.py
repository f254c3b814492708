"""The champion policies (runs/champion.py): the best median UDR among feasible settings, ties to more components;
register.select: centrality, the feasible medoid."""

import pandas as pd
import pytest

from conftest import models_row
from tubervae.runs.champion import centrality_candidates, choose_champion


def policy_table():
    """Per-setting medians, worked by hand:
    beta_vae β=4:   UDR 0.58 0.60 0.61 → 0.60, #top 3
    beta_tcvae β=6: UDR 0.50 0.57 0.62 → 0.57, #top 6 (seeds 6, 6, 5)
    cbeta_vae 700_6: UDR 0.30 0.40 0.95 → 0.40, #top 9 (one lucky seed, far below on the median)
    beta_vae β=1:   UDR 0.90 0.91 0.92, #top 1, infeasible (collapsed)
    """
    rows = [models_row(f"a{s}", "beta_vae", 4, s, u, 3, udr_a2a=0.1) for s, u in enumerate([0.58, 0.60, 0.61])]
    rows += [
        models_row(f"b{s}", "beta_tcvae", 6, s, u, n, udr_a2a=0.2)
        for s, (u, n) in enumerate([(0.50, 6), (0.57, 6), (0.62, 5)])
    ]
    rows += [
        models_row(f"c{s}", "cbeta_vae", 700, s, u, 9, c_max=6, udr_a2a=0.3) for s, u in enumerate([0.30, 0.40, 0.95])
    ]
    rows += [
        models_row(f"d{s}", "beta_vae", 1, s, u, 1, feasible=False, udr_a2a=0.99)
        for s, u in enumerate([0.90, 0.91, 0.92])
    ]
    return pd.DataFrame(rows)


def test_close_udr_prefers_the_setting_with_more_informative_components():
    # Best feasible median 0.60; within 0.05: β-VAE (0.60, 3) and β-TCVAE (0.57, 6) → more components win,
    # then that setting's best seed (0.62). Cβ-VAE's single 0.95 seed does not lift its median of 0.40.
    champion = choose_champion(policy_table(), udr_tolerance=0.05)
    assert (champion.run_id, champion.family, champion.seed) == ("b2", "beta_tcvae", 2)
    assert champion.udr_within == pytest.approx(0.62)


def test_a_tight_tolerance_keeps_the_best_udr():
    # Within 0.01 of 0.60 only β-VAE β=4 remains; its best seed has 0.61.
    champion = choose_champion(policy_table(), udr_tolerance=0.01)
    assert (champion.run_id, champion.family, champion.seed) == ("a2", "beta_vae", 2)


def test_infeasible_settings_never_win_and_a2a_is_ignored():
    table = policy_table()
    # The infeasible β=1 setting has the best median UDR (0.91) and the best A2A (0.99).
    medians = table.groupby("run_id").udr_within.first().groupby(lambda r: r[0]).median()
    assert medians.idxmax() == "d" and table.loc[table.udr_a2a.idxmax(), "run_id"].startswith("d")
    champion = choose_champion(table, udr_tolerance=0.05)
    assert champion.run_id.startswith("b")
    # Make the collapsed setting feasible: it now wins outright (0.91 is 0.31 above the rest).
    table.loc[table.run_id.str.startswith("d"), "feasible"] = True
    assert choose_champion(table, udr_tolerance=0.05).run_id == "d2"
    # A2A rankings do not move the choice: reversing them changes nothing.
    table = policy_table()
    table["udr_a2a"] = 1.0 - table["udr_a2a"]
    assert choose_champion(table, udr_tolerance=0.05).run_id == "b2"


def test_seed_ties_within_the_setting_go_to_more_components():
    rows = [
        models_row("s0", "beta_vae", 4, 0, 0.5, 4),
        models_row("s1", "beta_vae", 4, 1, 0.5, 6),
        models_row("s2", "beta_vae", 4, 2, float("nan"), 9),
    ]
    champion = choose_champion(pd.DataFrame(rows), udr_tolerance=0.05)
    assert champion.run_id == "s1"


def test_no_feasible_model_and_missing_columns_are_reported():
    table = policy_table()
    table["feasible"] = False
    with pytest.raises(RuntimeError, match="no feasible model.*min_active"):
        choose_champion(table, udr_tolerance=0.05)
    with pytest.raises(ValueError, match="n_active"):
        choose_champion(policy_table().drop(columns=["n_active"]), udr_tolerance=0.05)


def test_centrality_picks_the_feasible_model_of_highest_centrality_whatever_its_udr():
    table = policy_table()
    # b0 has the lowest UDR of its setting but the top centrality of the feasible models; the collapsed β=1
    # seeds are more central still, but infeasible
    table["centrality"] = [0.40, 0.42, 0.41, 0.55, 0.50, 0.30, 0.20, 0.25, 0.22, 0.90, 0.91, 0.92]
    order = centrality_candidates(table)
    assert order.run_id.tolist()[:3] == ["b0", "b1", "a1"]
    assert not order.run_id.str.startswith("d").any()
    assert choose_champion(table, udr_tolerance=0.05).run_id == "b2"  # the UDR policy is unchanged by it
    # ties go to more informative components, then the higher UDR
    table.loc[table.run_id == "a1", "centrality"] = 0.55
    table.loc[table.run_id == "a1", "n_active"] = 7
    assert centrality_candidates(table).run_id.iloc[0] == "a1"


def test_centrality_without_its_column_or_with_no_pool_of_two_is_reported():
    with pytest.raises(ValueError, match="no centrality column.*dvc repro udr"):
        centrality_candidates(policy_table())
    table = policy_table().assign(centrality=float("nan"))
    with pytest.raises(RuntimeError, match="no family has two models"):
        centrality_candidates(table)
