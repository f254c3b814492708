"""Choosing the champion VAE among the runs the udr stage scored (reports/udr/models.csv).

Policy (thesis §2.3.4 and §4.2.3):
1. Only settings whose trial was feasible (median informative components ≥ min_active).
2. Rank settings by their within-family UDR (the median over seeds), never by A2A,
   which punishes families that learn a different representation (the herd effect).
3. Settings within `register.udr_tolerance` of the best UDR count as tied; among them
   the one with more informative components (#top) wins, because UDR ignores factors
   a collapsed model has lost (small black spots go first); then the higher UDR.
4. Within the chosen setting, the seed with the highest UDR (then more components).

`register.select: job` chooses for the grading job instead, as the thesis does by eye: among
the feasible settings within the tolerance of the best UDR (step 3's ties), each setting's best
seed is scored by the cross-validated balanced accuracy of the multi-defect rule
(`tubervae.classify.any_rule`) on the labelled photos alone; the best score wins (ties: the UDR
policy's order). No test photo is touched. Both champions are written to champion.json
either way, so the classify stage reports them side by side.

`register.select: centrality` needs neither labels nor factors: the feasible model of highest
ModelCentrality (Lin et al., ICML 2020; the udr stage's `centrality` column: a model's mean symmetrised
UDR pair score to the other models of its family), the medoid of its family's pool. In the UDR trial
it gave up less MIG than the search's UDR rule in both β families on the simulator, but more than a
random pick on one outside data set's β-VAE (docs/udr-and-search.md).

`search.objective: elbo`, `job` or `measured_mig` chooses as that search did: the feasible setting of
best median held-out ELBO on the test photos (or job score on the labelled photos, or MIG on the
measured photos), and its seed of best value (`register.select: job` still chooses among the UDR
ties). champion.json names the UDR champion beside it.

What becomes of the chosen model (the gate, the Model Registry) is `tubervae.runs.promotion`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tubervae.classify import gate
from tubervae.classify.any_rule import RuleSettings, job_score
from tubervae.config import FEW_LABELS, Params
from tubervae.data.processed import load_split
from tubervae.models.encoding import encode, heldout_elbo
from tubervae.runs import vae_artifacts
from tubervae.runs.measured import measured_mig, measured_photos
from tubervae.runs.tracker import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    """The chosen model (`champion`, a row of the models table), by which `select`, and every champion beside
    it: the UDR policy's, the objective's (None for `search.objective: udr`), the job's candidates, best first
    (None without both classes among the labels)."""

    champion: pd.Series
    select: str
    by_udr: pd.Series
    by_objective: pd.Series | None
    job: pd.DataFrame | None


def holdout_labels(processed_dir: Path) -> dict:
    """The labelled photos (images, labels 0 good / 1 bad) that no guidance head trained on: the rules that
    score models for the job are fitted and judged on them."""
    labelled = load_split("labelled", processed_dir)
    known = labelled["labels"] >= 0
    guide = labelled["guide"][known].astype(bool) if "guide" in labelled else None
    labelled = {"images": labelled["images"][known], "labels": labelled["labels"][known]}
    holdout = gate.holdout_rows(guide, len(labelled["labels"]))
    return {k: v[holdout] for k, v in labelled.items()}


def choose(
    tracker: Tracker, by_udr: pd.Series, models: pd.DataFrame, labelled: dict, processed_dir: Path, params: Params
) -> Choice:
    """The model to register under `register.select` and `search.objective` (module docstring), beside `by_udr`,
    the UDR policy's champion (`choose_champion`)."""
    cfg = params.register
    n_good, n_bad = int((labelled["labels"] == 0).sum()), int((labelled["labels"] == 1).sum())
    select = selection(cfg.select, n_good, n_bad)
    has_labels = n_good > 0 and n_bad > 0
    job = (
        choose_for_the_job(tracker, udr_candidates(models, cfg.udr_tolerance), labelled, params) if has_labels else None
    )
    by_objective = objective_champion(tracker, models, labelled, processed_dir, params, (n_good, n_bad))
    if select == "job":
        champion = job.iloc[0]
    elif select == "centrality":
        champion = centrality_candidates(models).iloc[0]
    else:
        champion = by_udr if by_objective is None else by_objective
    return Choice(champion=champion, select=select, by_udr=by_udr, by_objective=by_objective, job=job)


def choose_champion(models: pd.DataFrame, udr_tolerance: float) -> pd.Series:
    """The champion row of reports/udr/models.csv under the UDR policy (module docstring)."""
    return udr_candidates(models, udr_tolerance).iloc[0]


def udr_candidates(models: pd.DataFrame, udr_tolerance: float) -> pd.DataFrame:
    """The best seed of every feasible setting within `udr_tolerance` of the best UDR, in the UDR policy's order."""
    needed = {"run_id", "family", "beta", "c_max", "setting", "seed", "n_active", "udr_within", "feasible"}
    missing = needed - set(models.columns)
    if missing:
        raise ValueError(f"the models table lacks columns {sorted(missing)}")
    feasible = _feasible(models, "udr_within")
    settings = (
        feasible.groupby(["family", "beta", "c_max"])
        .agg(udr=("udr_within", "median"), n_top=("n_active", "median"))
        .reset_index()
    )
    return _best_seeds(feasible, settings, udr_tolerance)


def centrality_candidates(models: pd.DataFrame) -> pd.DataFrame:
    """The feasible models by ModelCentrality within their family, the medoid first (ties: more informative
    components, then the higher UDR)."""
    if "centrality" not in models.columns:
        raise ValueError(
            "the models table has no centrality column (written by an older udr stage): run the udr stage "
            "again (dvc repro udr) to use register.select: centrality"
        )
    if models.centrality.isna().all():
        raise RuntimeError(
            "register.select is 'centrality', but no family has two models to compare (ModelCentrality is a "
            "model's mean similarity to the rest of its family): train more seeds or settings, or use udr"
        )
    feasible = _feasible(models, "centrality")
    order = feasible.sort_values(["centrality", "n_active", "udr_within"], ascending=False, kind="stable")
    return order.reset_index(drop=True)


def _best_seeds(feasible: pd.DataFrame, settings: pd.DataFrame, udr_tolerance: float) -> pd.DataFrame:
    close = settings[settings.udr >= settings.udr.max() - udr_tolerance]
    return _best_seed_of_each(feasible, close.sort_values(["n_top", "udr"], ascending=False), "udr_within")


def _feasible(models: pd.DataFrame, column: str) -> pd.DataFrame:
    """The feasible models with a value in `column`; a clear error when there is none."""
    feasible = models[models.feasible.astype(bool) & models[column].notna()]
    if feasible.empty:
        raise RuntimeError(
            "no feasible model to register: every trial has fewer informative components than "
            "search.min_active; train longer, lower β, or lower search.min_active"
        )
    return feasible


def _best_seed_of_each(feasible: pd.DataFrame, settings: pd.DataFrame, column: str) -> pd.DataFrame:
    """For each setting row of `settings`, in its order, the setting's model of best `column` (ties: more
    informative components)."""
    rows = []
    for _, chosen in settings.iterrows():
        members = feasible[
            (feasible.family == chosen.family) & (feasible.beta == chosen.beta) & (feasible.c_max == chosen.c_max)
        ]
        rows.append(members.sort_values([column, "n_active"], ascending=False).iloc[0])
    return pd.DataFrame(rows).reset_index(drop=True)


def selection(select: str, n_good: int, n_bad: int) -> str:
    """`register.select` as it can be honoured: `job` needs both classes among the labels (else `udr`, said so),
    and warns when they are few."""
    if select == "job" and not (n_good > 0 and n_bad > 0):
        log.warning(
            "register.select is 'job' but the labelled split holds %d good and %d bad photos (a rule needs both): "
            "the champion is chosen by UDR alone",
            n_good,
            n_bad,
        )
        return "udr"
    if select == "job" and min(n_good, n_bad) < FEW_LABELS:
        log.warning(
            "register.select is 'job' with only %d good and %d bad labelled photos: the rules' cross-validated "
            "scores that choose the champion are rough",
            n_good,
            n_bad,
        )
    return select


def rule_inputs(tracker: Tracker, run_id: str, labelled: dict):
    """The run's latents of the labelled photos and its mean KL per component (its probe latents')."""
    vae, _ = vae_artifacts.load_vae(tracker, run_id)
    z, _ = encode(vae, labelled["images"])
    return z, vae_artifacts.latents(tracker, run_id)["kl"]


def rule_cv_score(tracker: Tracker, run_id: str, labelled: dict, params: Params) -> float:
    """Cross-validated balanced accuracy of the multi-defect rule on the run's latents of the labelled photos."""
    z, kl = rule_inputs(tracker, run_id, labelled)
    settings = RuleSettings.from_params(params)
    return job_score(
        z,
        labelled["labels"] == 1,
        kl,
        kl_threshold=settings.kl_threshold,
        max_rules=settings.max_rules,
        n_folds=settings.n_folds,
        random_state=settings.random_state,
    )


def choose_for_the_job(tracker: Tracker, candidates: pd.DataFrame, labelled: dict, params: Params) -> pd.DataFrame:
    """`candidates` with their `rule_cv` score, best for the job first (ties keep the UDR policy's order)."""
    scored = candidates.assign(rule_cv=[rule_cv_score(tracker, r, labelled, params) for r in candidates.run_id])
    return scored.sort_values("rule_cv", ascending=False, kind="stable").reset_index(drop=True)


def objective_champion(
    tracker: Tracker, models: pd.DataFrame, labelled: dict, processed_dir: Path, params: Params, counts: tuple
) -> pd.Series | None:
    """The champion under `search.objective` elbo, job or measured_mig (None for udr); `counts`: the labels'
    (good, bad)."""
    objective = params.search.objective
    if objective == "job" and min(counts) == 0:
        raise ValueError(
            f"search.objective is 'job', but the labelled split holds {counts[0]} good and {counts[1]} bad photos "
            f"(the rule needs both): use search.objective: udr or elbo"
        )
    if objective == "udr":
        return None
    photos = None
    if objective == "elbo":
        photos = load_split("test", processed_dir)["images"]
    elif objective == "measured_mig":
        photos = measured_photos(processed_dir, params.search.measured_photos)
    return objective_candidates(with_objective(tracker, models, params, photos, labelled), objective).iloc[0]


def objective_candidates(models: pd.DataFrame, column: str) -> pd.DataFrame:
    """`search.objective` other than udr: the best seed of every feasible setting, settings by their median
    `column` (the objective's per-model value), best first."""
    feasible = _feasible(models, column)
    keys = ["family", "beta", "c_max"]
    settings = feasible.groupby(keys).agg(value=(column, "median")).reset_index().sort_values("value", ascending=False)
    return _best_seed_of_each(feasible, settings, column)


def with_objective(tracker: Tracker, models: pd.DataFrame, params: Params, photos, labelled: dict) -> pd.DataFrame:
    """`models` with each feasible model's value under `search.objective` in that column; `photos`: the test
    images (elbo) or the measured photos (measured_mig)."""
    objective = params.search.objective

    def value(run_id: str) -> float:
        if objective == "job":
            return rule_cv_score(tracker, run_id, labelled, params)
        vae = vae_artifacts.load_vae(tracker, run_id)[0]
        if objective == "measured_mig":
            return measured_mig(vae, photos)
        return heldout_elbo(vae, photos, params.train.rec_kind)

    return models.assign(**{objective: [value(r.run_id) if r.feasible else np.nan for r in models.itertuples()]})
