"""All four metrics at once (`tubervae.evaluation.supervised.evaluate_all`): aligned, rotated and noise codes."""

import math

import numpy as np
import pandas as pd
import pytest

from conftest import METRIC_FACTOR_NAMES as NAMES
from conftest import METRIC_ROWS as N
from tubervae.evaluation.dci import dci_from_importance
from tubervae.evaluation.factor_vae import factor_vae_score
from tubervae.evaluation.supervised import evaluate_all


@pytest.fixture(scope="module")
def cases(metric_codes):
    factors, aligned, rotated, noise = metric_codes
    results = {
        name: evaluate_all(reps, factors, NAMES, random_state=1)
        for name, reps in [("aligned", aligned), ("rotated", rotated), ("noise", noise)]
    }
    return factors, aligned, results


@pytest.mark.slow
def test_aligned_representation_scores_near_top(cases):
    # Hand-derived expectations, published definitions (the defaults):
    # - MIG: a discrete factor's levels fall in distinct bins of its copy, so I = H exactly; the other
    #   components are independent (I = plug-in bias, ~0.01 H): ~0.99. "tone" loses ~10 % of its
    #   20 bins to the noise and the shifted code bins: ~0.9. Mean ~0.96.
    # - DCI: each factor is predicted from its own copy only: D, C ~1; accuracy 1 on the discrete
    #   factors, ~0.9 on the 20 bins of "tone": I ~0.97.
    # - SAP (LinearSVC accuracies): the binary "flag" scores 1 on its copy and chance 0.5 elsewhere,
    #   a gap of 1 - 0.5; multi-level and 20-bin factors have smaller gaps (a 1-D linear one-vs-rest
    #   classifier cannot single out middle levels), so the mean is well below 1.
    # - FactorVAE: holding a factor fixed leaves its copy with (almost) no variance: accuracy ~1.
    _, _, results = cases
    top = results["aligned"]
    assert top["mig"] > 0.9
    assert top["dci_d"] > 0.9 and top["dci_c"] > 0.9
    assert top["dci_i"] > 0.9
    assert top["per_factor"].loc["flag", "sap"] == pytest.approx(0.5, abs=0.08)
    assert top["sap"] > 0.2
    assert top["factorvae"] > 0.95
    # The heat map shows factor j tracked by component j.
    importance = top["importance"]
    assert list(importance.columns) == NAMES
    assert list(importance.index) == [f"z{i}" for i in range(5)]
    assert [importance[name].idxmax() for name in NAMES] == ["z0", "z1", "z2", "z3"]
    assert top["per_factor"]["discrete"].tolist() == [True, True, True, False]


@pytest.mark.slow
def test_rotation_lowers_mig_dci_d_and_sap_but_keeps_informativeness(cases):
    # Rotating the copies of "shape" and "scale" by 45° gives z0 and z1 the same information on both.
    # - MIG: their gaps drop to ~0, the other two stay: ~0.96 -> ~0.48.
    # - DCI-D: rows z0, z1 split ~evenly over two of four factors, 1 - log_4(2) = 0.5 each, holding
    #   about half the importance: ~0.75 (from ~1).
    # - SAP: the best two components for "shape" and "scale" are z0 and z1, equally good: gap ~0.
    # - DCI-I: the factors stay predictable from (z0, z1) together.
    # - DCI-C: columns "shape" and "scale" split evenly over two of five components: 1 - log_5(2).
    # - FactorVAE: votes for "shape" and "scale" go to z0 or z1 at random; half of them are lost: ~0.75.
    _, _, results = cases
    top, mixed = results["aligned"], results["rotated"]
    assert mixed["mig"] == pytest.approx(top["mig"] / 2, abs=0.05)
    assert mixed["per_factor"].loc[["shape", "scale"], "mig"].max() < 0.05
    assert mixed["dci_d"] == pytest.approx(0.75, abs=0.05)
    per_component = dci_from_importance(mixed["importance"])["dci_disentanglement_per_component"]
    np.testing.assert_allclose(per_component[:2], 1 - math.log(2, 4), atol=0.05)
    np.testing.assert_allclose(
        mixed["per_factor"].loc[["shape", "scale"], "dci_completeness"], 1 - math.log(2, 5), atol=0.05
    )
    assert mixed["factorvae"] == pytest.approx(0.75, abs=0.08)
    assert mixed["sap"] < top["sap"] - 0.05
    assert mixed["per_factor"].loc[["shape", "scale"], "sap"].max() < 0.12
    assert mixed["dci_i"] > top["dci_i"] - 0.05
    # The untouched factors keep their scores.
    for key in ["mig", "sap"]:
        np.testing.assert_allclose(
            mixed["per_factor"].loc[["flag", "tone"], key], top["per_factor"].loc[["flag", "tone"], key], atol=0.05
        )


@pytest.mark.slow
def test_pure_noise_scores_near_zero_and_chance(cases):
    # No component carries anything: gaps are plug-in / sampling noise, predictions are at chance
    # (majority-class accuracy for DCI-I, one factor in four for FactorVAE).
    _, _, results = cases
    noise = results["noise"]
    assert noise["mig"] < 0.05
    assert noise["sap"] < 0.05
    assert noise["dci_d"] < 0.2
    assert noise["dci_i"] < noise["dci_i_chance"] + 0.05
    assert noise["factorvae_chance"] == pytest.approx(1 / len(NAMES))
    assert abs(noise["factorvae"] - 1 / len(NAMES)) < 0.12


@pytest.mark.slow
def test_constant_factor_is_skipped_not_crashing(cases):
    factors, aligned, _ = cases
    with_constant = np.hstack([factors, np.zeros((N, 1))])
    result = evaluate_all(aligned, with_constant, NAMES + ["rot"], random_state=2, dci_method="gbt_fast")
    per_factor = result["per_factor"]
    assert per_factor.loc["rot", ["mig", "dci_completeness", "dci_informativeness", "sap"]].isna().all()
    assert per_factor.drop(index="rot")[["mig", "sap", "dci_informativeness"]].notna().all().all()
    assert (result["importance"]["rot"] == 0).all()
    for key in ["mig", "dci_d", "dci_c", "dci_i", "sap", "factorvae"]:
        assert np.isfinite(result[key]), key
    assert result["mig"] > 0.9 and result["factorvae"] > 0.95
    assert result["factorvae_chance"] == pytest.approx(1 / 4)


@pytest.mark.slow
def test_same_random_state_gives_same_results(cases):
    factors, aligned, _ = cases
    small = aligned[:300], factors[:300]
    first = evaluate_all(*small, NAMES, random_state=7, dci_method="gbt_fast")
    second = evaluate_all(*small, NAMES, random_state=7, dci_method="gbt_fast")
    for key, value in first.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, second[key])
        else:
            assert value == second[key], key
    other = factor_vae_score(*small, random_state=8, num_train=50, num_eval=50)
    again = factor_vae_score(*small, random_state=8, num_train=50, num_eval=50)
    assert other == again


def test_bad_options_raise_value_error():
    reps, facs = np.random.default_rng(0).normal(size=(20, 3)), np.zeros((20, 2))
    with pytest.raises(ValueError, match="factor_names must be a sequence of 2"):
        evaluate_all(reps, facs, ["a"], random_state=0)
