"""`register` stage: promote the champion VAE in the MLflow Model Registry.

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

`search.objective: elbo` or `job` chooses as that search did: the feasible setting of best median
held-out ELBO on the test photos (or job score on the labelled photos), and its seed of best value
(`register.select: job` still chooses among the UDR ties). champion.json names the UDR champion
beside it.

The champion becomes a new version of `tubervae-vae` with alias `champion`: the MLflow
model `vae` that its training run logged (a pyfunc `VaeModel` with its signature and input
example), so the version links to the run that trained it, with its params and metrics. A
run without a logged model (trained before models were logged) gets it now, on that run.
If the alias already points at that run, nothing changes. The stage's own `register` run
logs the champion's figures as metrics and champion.json as an artifact.

Nothing is promoted unchecked: the chosen model becomes `@champion` only when its selection score is
not below the current champion's on the same data version (`tubervae.classify.gate`); otherwise it is
registered with alias `challenger`, the champion stays, and the stage says why in one line naming both
figures. The score is the one `register.select` chose by:
- `udr`: the within-family UDR. The champion's figure is its UDR in the same table (reports/udr/models.csv)
  when its run is there, else the UDR its version recorded. UDR has no chance level, so feasibility
  (policy step 1) is its only bar.
- `job`: the multi-defect rule's balanced accuracy, cross-validated on the labelled photos no guidance
  head trained on (`classify.gate_repeats` repeats, a bootstrap interval): its interval's lower end must
  be above 0.5 and its estimate not below the champion's, whose VAE encodes the same photos with the same
  folds.
When the data version changed since the champion was trained, its figure was measured on other photos:
the champion is not compared (the card and the line say so) and the new model is promoted on its own
bar (feasible; with `job`, above chance). `register.force_promotion` promotes in any case and is logged
(version and run tag `forced_promotion`, a warning). Every registered version carries a model card
(description and tags): the data version, the labels used, the selection figures, what it was compared
with and the decision.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tubervae.classify import gate
from tubervae.classify.any_rule import RuleSettings, fit_served_rule, job_score
from tubervae.config import FEW_LABELS, Params
from tubervae.data.processed import load_meta, load_split
from tubervae.io import write_json
from tubervae.models.encoding import encode, heldout_elbo
from tubervae.runs import registry, vae_artifacts
from tubervae.runs.registry import CHALLENGER, CHAMPION
from tubervae.runs.study import storage_url
from tubervae.runs.study_notes import champion_policy, note_champion
from tubervae.runs.tracker import Tracker
from tubervae.stages.common import open_tracker, project_paths

log = logging.getLogger(__name__)


def choose_champion(models: pd.DataFrame, udr_tolerance: float) -> pd.Series:
    """The champion row of reports/udr/models.csv under the policy above."""
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


def _rule_inputs(tracker: Tracker, run_id: str, labelled: dict):
    """The run's latents of the labelled photos and its mean KL per component (its probe latents')."""
    vae, _ = vae_artifacts.load_vae(tracker, run_id)
    z, _ = encode(vae, labelled["images"])
    return z, vae_artifacts.latents(tracker, run_id)["kl"]


def objective_candidates(models: pd.DataFrame, column: str) -> pd.DataFrame:
    """`search.objective` elbo or job: the best seed of every feasible setting, settings by their median
    `column` (the objective's per-model value), best first."""
    feasible = _feasible(models, column)
    keys = ["family", "beta", "c_max"]
    settings = feasible.groupby(keys).agg(value=(column, "median")).reset_index().sort_values("value", ascending=False)
    return _best_seed_of_each(feasible, settings, column)


def with_objective(
    tracker: Tracker, models: pd.DataFrame, params: Params, test_images: np.ndarray, labelled: dict
) -> pd.DataFrame:
    """`models` with each feasible model's value under `search.objective` (elbo or job) in that column."""
    objective = params.search.objective

    def value(run_id: str) -> float:
        if objective == "job":
            return rule_cv_score(tracker, run_id, labelled, params)
        return heldout_elbo(vae_artifacts.load_vae(tracker, run_id)[0], test_images, params.train.rec_kind)

    return models.assign(**{objective: [value(r.run_id) if r.feasible else np.nan for r in models.itertuples()]})


def rule_cv_score(tracker: Tracker, run_id: str, labelled: dict, params: Params) -> float:
    """Cross-validated balanced accuracy of the multi-defect rule on the run's latents of the labelled photos."""
    z, kl = _rule_inputs(tracker, run_id, labelled)
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


def rule_estimate(tracker: Tracker, run_id: str, labelled: dict, params: Params) -> gate.Estimate:
    """The gate's figure for `register.select: job`: the served rule's procedure (`fit_served_rule`)
    cross-validated (`classify.gate_repeats` repeats, a bootstrap interval) on the run's latents of the gate's
    labels."""
    z, kl = _rule_inputs(tracker, run_id, labelled)
    cfg, settings = params.classify, RuleSettings.from_params(params)
    return gate.estimate_rule(
        lambda latents, bad: fit_served_rule(latents, bad, kl, settings),
        z,
        labelled["labels"] == 1,
        n_folds=cfg.cv_folds,
        n_repeats=cfg.gate_repeats,
        n_bootstrap=cfg.gate_bootstrap,
        random_state=cfg.seed,
    )


def choose_for_the_job(tracker: Tracker, candidates: pd.DataFrame, labelled: dict, params: Params) -> pd.DataFrame:
    """`candidates` with their `rule_cv` score, best for the job first (ties keep the UDR policy's order)."""
    scored = candidates.assign(rule_cv=[rule_cv_score(tracker, r, labelled, params) for r in candidates.run_id])
    return scored.sort_values("rule_cv", ascending=False, kind="stable").reset_index(drop=True)


def run(
    params: Params,
    *,
    root: str | Path = ".",
    udr_dir: str | Path = "reports/udr",
    processed_dir: str | Path = "data/processed",
    out_path: str | Path = "reports/register/champion.json",
    run_id: str | None = None,
) -> dict:
    started_at = time.time()  # the stage's run, opened when it logs, spans its work
    cfg = params.register
    udr_dir, processed_dir, out_path = project_paths(root, udr_dir, processed_dir, out_path)
    models_path = udr_dir / "models.csv"
    if not models_path.exists():
        raise FileNotFoundError(f"{models_path} is missing: run the udr stage first (dvc repro udr)")
    models = pd.read_csv(models_path, dtype={"setting": str})
    by_udr = choose_champion(models, cfg.udr_tolerance)
    tracker = open_tracker(root, run_id, create=False)  # runs come from earlier stages: never a new store
    meta = load_meta(processed_dir)
    labelled = holdout_labels(processed_dir)
    n_good, n_bad = int((labelled["labels"] == 0).sum()), int((labelled["labels"] == 1).sum())
    has_labels = n_good > 0 and n_bad > 0
    select = selection(cfg.select, n_good, n_bad)
    job = (
        choose_for_the_job(tracker, udr_candidates(models, cfg.udr_tolerance), labelled, params) if has_labels else None
    )
    by_objective = objective_champion(tracker, models, labelled, processed_dir, params, (n_good, n_bad))
    champion = job.iloc[0] if select == "job" else by_udr if by_objective is None else by_objective
    verdict = judge(tracker, champion, models, select, labelled, meta, params)
    tags = {"kind": "register", "source_run_id": champion.run_id}
    if verdict["forced"]:
        tags["forced_promotion"] = "true"
        log.warning("register.force_promotion is set: %s", verdict["reason"])
    with tracker.run("register", run_id=run_id, started_at=started_at, tags=tags) as rid:
        version = promote(tracker, cfg.model_name, champion, meta, verdict)
        verdict["line"] = gate_line(cfg.model_name, version.version, verdict)
        (log.info if verdict["promote"] and not verdict["forced"] else log.warning)("%s", verdict["line"])
        champions = {"udr": by_udr, "objective": by_objective, "job": job}
        summary = champion_report(champion, version, champions, select, verdict, meta, params)
        write_json(out_path, summary)
        if summary["alias"] == CHAMPION:  # the studies name the champion only when it changed
            note_champion_on_studies(root, summary, params)
        headline = {"version": summary["version"], "udr_within": summary["udr_within"], "n_active": summary["n_active"]}
        tracker.log_metrics(rid, headline)
        tracker.log_artifacts(rid, Path(out_path).parent, "register")
    return summary


def holdout_labels(processed_dir: Path) -> dict:
    """The labelled photos (images, labels 0 good / 1 bad) that no guidance head trained on: the rules that
    score models for the job are fitted and judged on them."""
    labelled = load_split("labelled", processed_dir)
    known = labelled["labels"] >= 0
    guide = labelled["guide"][known].astype(bool) if "guide" in labelled else None
    labelled = {"images": labelled["images"][known], "labels": labelled["labels"][known]}
    holdout = gate.holdout_rows(guide, len(labelled["labels"]))
    return {k: v[holdout] for k, v in labelled.items()}


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


def objective_champion(
    tracker: Tracker, models: pd.DataFrame, labelled: dict, processed_dir: Path, params: Params, counts: tuple
) -> pd.Series | None:
    """The champion under `search.objective` elbo or job (None for udr); `counts`: the labels' (good, bad)."""
    objective = params.search.objective
    if objective == "job" and min(counts) == 0:
        raise ValueError(
            f"search.objective is 'job', but the labelled split holds {counts[0]} good and {counts[1]} bad photos "
            f"(the rule needs both): use search.objective: udr or elbo"
        )
    if objective == "udr":
        return None
    test = load_split("test", processed_dir)["images"] if objective == "elbo" else None
    return objective_candidates(with_objective(tracker, models, params, test, labelled), objective).iloc[0]


def champion_report(
    champion: pd.Series, version, champions: dict, select: str, verdict: dict, meta: dict, params: Params
) -> dict:
    """champion.json: the registered version and its model, the policy and the gate, and every champion
    (`champions`: the UDR policy's, the objective's or None, the job's candidates or None)."""
    cfg, objective = params.register, params.search.objective
    by_udr, by_objective, job = champions["udr"], champions["objective"], champions["job"]
    return {
        "model": cfg.model_name,
        "alias": CHAMPION if verdict["promote"] else CHALLENGER,
        "version": int(version.version),
        "run_id": champion.run_id,
        "family": champion.family,
        "setting": str(champion.setting),
        "seed": int(champion.seed),
        "udr_within": float(champion.udr_within),
        "n_active": int(champion.n_active),
        "data_version": version.tags.get("data_version", meta["data_version"]),
        "policy": (
            f"feasible settings, best median {objective} (search.objective); its best seed by {objective}"
            if by_objective is not None and select != "job"
            else f"feasible settings, best within-family UDR; ties within {cfg.udr_tolerance} -> more "
            f"informative components"
        )
        + ("; then the best cross-validated multi-defect rule on the labelled photos" if select == "job" else ""),
        "select": select,
        "gate": _public(verdict),
        "search_objective": objective,
        "champions": {
            "udr": _champion_entry(_scored(by_udr, job)),
            **(
                {"objective": {**_champion_entry(by_objective), objective: float(by_objective[objective])}}
                if by_objective is not None
                else {}
            ),
            **({"job": _champion_entry(job.iloc[0]), "job_candidates": len(job)} if job is not None else {}),
        },
    }


def note_champion_on_studies(root: str | Path, summary: dict, params: Params) -> None:
    """The champion's trial and seed, and the policy, as user attributes of the studies in optuna.db
    (optuna-dashboard shows them); a study store that cannot be read costs a warning, not the stage."""
    try:
        policy = champion_policy(dataclasses.replace(params.register, select=summary["select"]))
        note_champion(storage_url(root), summary, policy)
    except Exception as exc:  # the registry is what counts; the dashboard's note is a courtesy
        log.warning("the studies could not be noted with the champion (%s: %s)", type(exc).__name__, exc)


def _scored(row: pd.Series, scored: pd.DataFrame | None) -> pd.Series:
    """`row` with its rule score when the job's candidates scored it (the UDR champion always is one)."""
    if scored is None or not (scored.run_id == row.run_id).any():
        return row
    return scored[scored.run_id == row.run_id].iloc[0]


def _champion_entry(row: pd.Series) -> dict:
    """What champion.json says of one champion (the classify stage reads run_id)."""
    out = {"run_id": row.run_id, "family": row.family, "setting": str(row.setting), "seed": int(row.seed)}
    out["udr_within"] = float(row.udr_within)
    if "rule_cv" in row:
        out["rule_cv_balanced_accuracy"] = float(row.rule_cv)
    return out


def judge(
    tracker: Tracker, chosen: pd.Series, models: pd.DataFrame, select: str, labelled: dict, meta: dict, params: Params
) -> dict:
    """The gate on the chosen model (module docstring): its selection score against the current champion's."""
    cfg = params.register
    current = registry.version_by_alias(tracker, cfg.model_name, CHAMPION)
    verdict = {"champion_version": None if current is None else str(current.version), "note": None, "select": select}
    verdict["labels"] = (
        f"{int((labelled['labels'] == 0).sum())} good + {int((labelled['labels'] == 1).sum())} bad (labelled split)"
        if select == "job"
        else "none (UDR is unsupervised)"
    )
    if current is not None and current.tags.get("source_run_id") == chosen.run_id:
        reason = f"already the champion (version {current.version})"
        return verdict | {"challenger": None, "champion": None, "promote": True, "forced": False, "reason": reason}
    champion = None
    if current is not None:
        trained_on = current.tags.get("data_version")
        if trained_on != meta["data_version"]:
            verdict["note"] = (
                f"champion version {current.version} was trained on data version {trained_on}, the data is "
                f"{meta['data_version']}: its figure is of other photos, so it is not compared"
            )
        elif select == "job":
            try:
                champion = rule_estimate(tracker, current.tags["source_run_id"], labelled, params)
            except Exception as exc:  # a deleted run or unreadable weights leave it without a figure, said so
                verdict["note"] = (
                    f"champion version {current.version} could not be scored, so it is not compared: {exc}"
                )
        else:
            row = models[models.run_id == current.tags.get("source_run_id")]
            value = float(row.udr_within.iloc[0]) if len(row) and row.udr_within.notna().iloc[0] else None
            if value is None:
                value = float(current.tags.get("udr", "nan"))
                verdict["note"] = f"champion version {current.version} is not in this UDR table: its UDR as registered"
            champion = gate.Estimate(value=value, name="within-family UDR") if np.isfinite(value) else None
    bad = labelled["labels"] == 1
    if select == "job" and min(int(bad.sum()), int((~bad).sum())) < 2:
        # Too few labels to cross-validate: the score has no interval, and the gate cannot see it beat chance.
        challenger = gate.Estimate(value=float(chosen.rule_cv), n_labels=int(bad.size))
    elif select == "job":
        challenger = rule_estimate(tracker, chosen.run_id, labelled, params)
    else:
        challenger = gate.Estimate(value=float(chosen.udr_within), name="within-family UDR")
    promote, reason = gate.decide_promotion(
        challenger, champion, force=cfg.force_promotion, chance=gate.CHANCE if select == "job" else None
    )
    return verdict | {
        "challenger": challenger,
        "champion": champion,
        "promote": promote,
        "forced": cfg.force_promotion,
        "reason": reason,
    }


def gate_line(name: str, version, verdict: dict) -> str:
    """The one line the stage says about the gate: where the version went, why, both figures."""
    if verdict["promote"]:
        where = f"{name} version {version} is @{CHAMPION}"
    elif verdict["champion_version"] is not None:
        where = f"{name} version {version} is @{CHALLENGER}, version {verdict['champion_version']} stays @{CHAMPION}"
    else:
        where = f"{name} version {version} is @{CHALLENGER} and nothing is served (there is no champion)"
    return f"{where}: {verdict['reason']}" + (f" ({verdict['note']})" if verdict["note"] else "")


def _public(verdict: dict) -> dict:
    """The verdict as champion.json holds it (estimates as dicts)."""
    return {k: v.as_dict() if isinstance(v, gate.Estimate) else v for k, v in verdict.items()}


def model_card(tracker: Tracker, name: str, champion: pd.Series, meta: dict, verdict: dict) -> tuple[str, dict]:
    """A VAE version's model card: its description (Markdown) and the tags that say the same at a glance."""
    challenger, holder = verdict["challenger"], verdict["champion"]
    compared = (
        "no champion"
        if verdict["champion_version"] is None
        else f"{name} version {verdict['champion_version']}: "
        + (f"{holder.name} {holder.describe()}" if holder is not None else verdict["note"])
    )
    test_rec = tracker.get_run(champion.run_id, origin="reports/udr/models.csv").data.metrics.get("test_rec")
    decision = CHAMPION if verdict["promote"] else CHALLENGER
    description = gate.model_card(
        f"{name}: {champion.family} {champion.setting} seed {int(champion.seed)}",
        {
            "Data": {"data version": meta["data_version"], "labels used": verdict["labels"]},
            "Selection (register.select: " + verdict["select"] + ")": {
                "within-family UDR": f"{float(champion.udr_within):.3f}",
                "informative components": int(champion.n_active),
                **(
                    {challenger.name: challenger.describe() + " (95 % bootstrap interval, cross-validated)"}
                    if challenger is not None and challenger.low is not None
                    else {}
                ),
            },
            "Test (held-out split, reported only)": {
                "reconstruction loss": "n/a" if test_rec is None else f"{test_rec:.4g}",
                "grading": "the tuber-quality version built on this VAE gives the test figures beside the "
                "majority baseline",
            },
            "Compared with": {"champion": compared},
            "Decision": {"alias": decision, "forced": verdict["forced"], "reason": verdict["reason"]},
        },
    )
    tags = {"compared_with": compared, "decision": decision, "decision_reason": verdict["reason"]}
    if challenger is not None:
        tags["selection_score"] = f"{challenger.name} {challenger.describe()}"
    tags["forced_promotion"] = str(bool(verdict["forced"])).lower()  # always set: a reused version may carry one
    return description, tags


def promote(tracker: Tracker, name: str, champion: pd.Series, meta: dict, verdict: dict | None = None):
    """`name@champion` on the champion's logged model, or `name@challenger` when the gate's `verdict` refused it;
    the version it points at, with its model card when there is a verdict.

    Nothing changes when the alias already is that run. A version of that very model made by an
    earlier attempt that died before moving the alias is reused, so a rerun adds no duplicate.
    """
    current = registry.version_by_alias(tracker, name, CHAMPION)
    # A version without file digests (registered before they were recorded) is replaced, never kept.
    if current is not None and current.tags.get("source_run_id") == champion.run_id and registry.has_digests(current):
        log.info("%s@%s already is run %s (version %s)", name, CHAMPION, champion.run_id, current.version)
        if current.source.startswith("models:/"):
            registry.mark_champion(tracker, name, current.source.removeprefix("models:/"))
        return current
    model_id = registry.ensure_vae_model(tracker, champion.run_id, crop_fraction=meta["crop_fraction"])
    version = (registry.versions_of(tracker, name, model_id) or [None])[-1]
    if version is None:
        version = registry.register_model(tracker, name, model_id, tags=version_tags(tracker, champion, meta))
    alias = CHAMPION if verdict is None or verdict["promote"] else CHALLENGER
    if verdict is not None:
        registry.describe_version(tracker, name, version.version, *model_card(tracker, name, champion, meta, verdict))
    registry.set_alias(tracker, name, alias, version.version)
    if alias == CHAMPION:
        registry.mark_champion(tracker, name, model_id)
    log.info("registered %s version %s (run %s) as %s", name, version.version, champion.run_id, alias)
    return tracker.client.get_model_version(name, version.version)


def version_tags(tracker: Tracker, champion: pd.Series, meta: dict) -> dict:
    """What a version says of its model at a glance; warns when the data moved on since training."""
    trained_on = tracker.get_run(champion.run_id, origin="reports/udr/models.csv").data.params.get("data_version")
    trained_on = trained_on or meta["data_version"]
    if trained_on != meta["data_version"]:
        log.warning(
            "the champion was trained on data version %s, the processed data is %s: rerun the search and udr stages",
            trained_on,
            meta["data_version"],
        )
    return {
        "family": champion.family,
        "setting": champion.setting,
        "seed": int(champion.seed),
        "udr": float(champion.udr_within),
        "n_active": int(champion.n_active),
        "data_version": trained_on,
        "source_run_id": champion.run_id,
    }
