"""The four supervised disentanglement metrics at once: MIG, DCI, SAP and the FactorVAE score.

Each metric is a pure function of encoder means ``representations`` (n, d) and
ground-truth ``factors`` (n, k) from the simulator, plus a random state, and
returns a dict, so the same numbers come out wherever it is called (the
evaluate stage, a notebook, a test). Each lives in its own module, as in
disentanglement_lib (Locatello et al. 2019, ``evaluation/metrics``: mig.py,
dci.py, sap_score.py, factor_vae.py, with the unsupervised study's settings):
:mod:`.mig`, :mod:`.dci`, :mod:`.sap`, :mod:`.factor_vae`; what they share, and
what a fixed set of encoded images changes in all of them, is in
:mod:`.metric_utils`. The defaults are the published definitions; cheaper or
older variants stay available as named ``method`` options, and each docstring
says which option is the published one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from tubervae.checks import check_random_state
from tubervae.evaluation.dci import dci
from tubervae.evaluation.factor_vae import factor_vae_score
from tubervae.evaluation.metric_utils import N_TEST, N_TRAIN, check_metric_inputs, resolve_discrete
from tubervae.evaluation.mig import mig
from tubervae.evaluation.sap import sap

__all__ = ["evaluate_all"]


def evaluate_all(
    representations,
    factors,
    factor_names: Sequence[str],
    *,
    random_state,
    dci_method: str = "gbt",
    sap_method: str = "svm",
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    n_jobs: int | None = 1,
    discrete=None,
) -> dict:
    """All four metrics with flat keys for tracking, plus per-factor tables.

    With the defaults every key follows disentanglement_lib's published
    definition (see each function for what a fixed image set changes):

    - ``mig``: :func:`mig`, 20-bin histogram MI gap / factor entropy.
    - ``dci_d``, ``dci_c``, ``dci_i``: :func:`dci` with ``dci_method``
      (default ``"gbt"``: GradientBoostingClassifier on the 20-bin / discrete
      factor labels; ``dci_i`` is test accuracy, ``dci_i_chance`` the
      majority-class accuracy; with ``"gbt_regressor"`` or ``"lasso"``
      ``dci_i`` is a test R² instead).
    - ``sap``: :func:`sap` with ``sap_method`` (default ``"svm"``:
      LinearSVC(C=0.01) test accuracy per component on the factor labels).
    - ``factorvae``: :func:`factor_vae_score`, held-out majority-vote
      accuracy (the data-set variant: factors held fixed by grouping images);
      ``factorvae_train`` and ``factorvae_chance`` beside it.

    DCI and SAP fit on at most ``n_train`` rows and score on ``n_test``
    others; ``n_jobs`` fits DCI's per-factor models in parallel. DCI is
    nearly all of a call's cost, so ``dci_method`` and ``n_train`` set it
    (benchmarks/bench_evaluate.py times the evaluate stage's scoring). Also returns
    ``dci_num_train``, ``dci_num_test``; a DataFrame ``per_factor`` (index
    factor names; columns mig, mig_component, dci_completeness, dci_informativeness,
    dci_informativeness_chance, sap, discrete); and ``importance``, the DCI
    matrix as a DataFrame (rows "z0".."z{d-1}", columns factor names) for the
    "which component tracks which factor" heat map.
    """
    reps, facs = check_metric_inputs(representations, factors)
    names = list(factor_names) if not isinstance(factor_names, str) else None
    if names is None or len(names) != facs.shape[1] or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"factor_names must be a sequence of {facs.shape[1]} strings (one per factor column); got {factor_names!r}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"factor_names must be unique; got {names}")
    mask = resolve_discrete(facs, discrete)
    rng = check_random_state(random_state)
    seeds = rng.integers(0, 2**31 - 1, size=3)
    sizes = dict(n_train=n_train, n_test=n_test, discrete=mask)
    mig_scores = mig(reps, facs, discrete=mask)
    dci_scores = dci(reps, facs, random_state=int(seeds[0]), method=dci_method, n_jobs=n_jobs, **sizes)
    sap_scores = sap(reps, facs, random_state=int(seeds[1]), method=sap_method, **sizes)
    fvae = factor_vae_score(reps, facs, random_state=int(seeds[2]), discrete=mask)
    components = [f"z{i}" for i in range(reps.shape[1])]
    per_factor = pd.DataFrame(
        {
            "mig": mig_scores["mig_per_factor"],
            "mig_component": np.argmax(mig_scores["mutual_info"], axis=0),  # the component that holds the factor
            "dci_completeness": dci_scores["dci_completeness_per_factor"],
            "dci_informativeness": dci_scores["dci_informativeness_per_factor"],
            "dci_informativeness_chance": dci_scores["dci_informativeness_chance_per_factor"],
            "sap": sap_scores["sap_per_factor"],
            "discrete": mask,
        },
        index=pd.Index(names, name="factor"),
    )
    importance = pd.DataFrame(
        dci_scores["importance"],
        index=pd.Index(components, name="component"),
        columns=pd.Index(names, name="factor"),
    )
    return {
        "mig": mig_scores["mig"],
        "dci_d": dci_scores["dci_disentanglement"],
        "dci_c": dci_scores["dci_completeness"],
        "dci_i": dci_scores["dci_informativeness"],
        "dci_i_chance": dci_scores["dci_informativeness_chance"],
        "sap": sap_scores["sap"],
        "factorvae": fvae["factorvae_eval_accuracy"],
        "factorvae_train": fvae["factorvae_train_accuracy"],
        "factorvae_chance": fvae["factorvae_chance"],
        "dci_num_train": dci_scores["dci_num_train"],
        "dci_num_test": dci_scores["dci_num_test"],
        "per_factor": per_factor,
        "importance": importance,
    }
