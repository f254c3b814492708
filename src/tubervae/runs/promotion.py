"""What becomes of the chosen VAE (`tubervae.runs.champion`): the gate, the Model Registry, champion.json.

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
  (the policy's first step) is its only bar.
- `centrality`: ModelCentrality in the same table; a champion whose run is not there is not compared.
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
from pathlib import Path

import numpy as np
import pandas as pd

from tubervae.classify import gate
from tubervae.classify.any_rule import RuleSettings
from tubervae.config import Params
from tubervae.runs import registry, vae_artifacts
from tubervae.runs.champion import Choice, rule_inputs
from tubervae.runs.registry import CHALLENGER, CHAMPION
from tubervae.runs.study import storage_url
from tubervae.runs.study_notes import champion_policy, note_champion
from tubervae.runs.tracker import Tracker

log = logging.getLogger(__name__)
CENTRALITY = "ModelCentrality"  # the gate's name for register.select: centrality's figure


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
        else f"none ({'ModelCentrality' if select == 'centrality' else 'UDR'} is unsupervised)"
    )
    if current is not None and current.tags.get("source_run_id") == chosen.run_id:
        reason = f"already the champion (version {current.version})"
        return verdict | {"challenger": None, "champion": None, "promote": True, "forced": False, "reason": reason}
    bad = labelled["labels"] == 1
    settings, repeats = RuleSettings.from_params(params), _repeats(params)
    cross_validated = select == "job" and min(int(bad.sum()), int((~bad).sum())) >= 2
    # Both VAEs encode the labelled photos first; then both figures are cross-validated alike.
    chosen_inputs = rule_inputs(tracker, chosen.run_id, labelled) if cross_validated else None
    champion = None
    if current is not None:
        row = models[models.run_id == current.tags.get("source_run_id")]  # the champion's row in this table
        trained_on = current.tags.get("data_version")
        if trained_on != meta["data_version"]:
            verdict["note"] = (
                f"champion version {current.version} was trained on data version {trained_on}, the data is "
                f"{meta['data_version']}: its figure is of other photos, so it is not compared"
            )
        elif select == "job":
            try:
                z, kl = rule_inputs(tracker, current.tags["source_run_id"], labelled)
                champion = gate.estimate_served_rule(z, bad, kl, settings, **repeats)
            except Exception as exc:  # a deleted run or unreadable weights leave it without a figure, said so
                verdict["note"] = (
                    f"champion version {current.version} could not be scored, so it is not compared: {exc}"
                )
        elif select == "centrality":
            if len(row) and row.centrality.notna().iloc[0]:
                champion = gate.Estimate(value=float(row.centrality.iloc[0]), name=CENTRALITY)
            else:
                verdict["note"] = (
                    f"champion version {current.version} is not in this UDR table, so its ModelCentrality is "
                    "unknown and it is not compared"
                )
        else:
            value = float(row.udr_within.iloc[0]) if len(row) and row.udr_within.notna().iloc[0] else None
            if value is None:
                value = float(current.tags.get("udr", "nan"))
                verdict["note"] = f"champion version {current.version} is not in this UDR table: its UDR as registered"
            champion = gate.Estimate(value=value, name="within-family UDR") if np.isfinite(value) else None
    if cross_validated:
        z, kl = chosen_inputs
        challenger = gate.estimate_served_rule(z, bad, kl, settings, **repeats)
    elif select == "job":
        # Too few labels to cross-validate: the score has no interval, and the gate cannot see it beat chance.
        challenger = gate.Estimate(value=float(chosen.rule_cv), n_labels=int(bad.size))
    elif select == "centrality":
        challenger = gate.Estimate(value=float(chosen.centrality), name=CENTRALITY)
    else:
        challenger = gate.Estimate(value=float(chosen.udr_within), name="within-family UDR")
    promote, reason = gate.decide_promotion(
        challenger, champion, force=cfg.force_promotion, chance=gate.CHANCE if select == "job" else None
    )
    if cfg.force_promotion:
        log.warning("register.force_promotion is set: %s", reason)
    return verdict | {
        "challenger": challenger,
        "champion": champion,
        "promote": promote,
        "forced": cfg.force_promotion,
        "reason": reason,
    }


def _repeats(params: Params) -> dict:
    """How often the gate cross-validates a VAE's rule, and resamples it for its interval (classify section)."""
    return {"n_repeats": params.classify.gate_repeats, "n_bootstrap": params.classify.gate_bootstrap}


def run_tags(chosen: pd.Series, verdict: dict) -> dict:
    """The register run's tags: its source run, and `forced_promotion` when the gate was overruled."""
    return {"kind": "register", "source_run_id": chosen.run_id} | (
        {"forced_promotion": "true"} if verdict["forced"] else {}
    )


def promote_choice(tracker: Tracker, choice: Choice, verdict: dict, meta: dict, params: Params) -> dict:
    """The chosen model registered as the `verdict` says (`promote`), the gate's line said; champion.json's
    content (`champion_report`)."""
    name = params.register.model_name
    version = promote(tracker, name, choice.champion, meta, verdict)
    verdict["line"] = gate_line(name, version.version, verdict)
    (log.info if verdict["promote"] and not verdict["forced"] else log.warning)("%s", verdict["line"])
    return champion_report(choice, version, verdict, meta, params)


def record(tracker: Tracker, run_id: str, summary: dict, out_dir: Path, root: str | Path, params: Params) -> None:
    """The register run's metrics and artifacts (`out_dir`, which holds champion.json); the studies name a new
    champion (`note_champion_on_studies`)."""
    if summary["alias"] == CHAMPION:  # the studies name the champion only when it changed
        note_champion_on_studies(root, summary, params)
    headline = {"version": summary["version"], "udr_within": summary["udr_within"], "n_active": summary["n_active"]}
    tracker.log_metrics(run_id, headline)
    tracker.log_artifacts(run_id, Path(out_dir), "register")


def champion_report(choice: Choice, version, verdict: dict, meta: dict, params: Params) -> dict:
    """champion.json: the registered version and its model, the policy and the gate, and every champion
    (the UDR policy's, the objective's when there is one, the job's when the labels have both classes)."""
    cfg, objective = params.register, params.search.objective
    champion, select = choice.champion, choice.select
    by_udr, by_objective, job = choice.by_udr, choice.by_objective, choice.job
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
            "feasible models, the highest ModelCentrality within its family (the medoid; register.select)"
            if select == "centrality"
            else f"feasible settings, best median {objective} (search.objective); its best seed by {objective}"
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
            **({"centrality": _champion_entry(champion)} if select == "centrality" else {}),
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
    if "centrality" in row and pd.notna(row.centrality):
        out["centrality"] = float(row.centrality)
    if "rule_cv" in row:
        out["rule_cv_balanced_accuracy"] = float(row.rule_cv)
    return out


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
    run = tracker.get_run(champion.run_id, origin="reports/udr/models.csv")
    trained_on = vae_artifacts.read_training_config(tracker, run).get("data_version")
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
