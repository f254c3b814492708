"""The tuber-quality classifier's gate and its Model Registry version (MLflow); the classify stage's edge.

Nothing is promoted unchecked. Every run registers a new version of `tuber-quality`; it becomes
`@champion` only through the gate (`tubervae.classify.gate`): the served rule's fitting procedure,
cross-validated (`classify.gate_repeats` × `classify.cv_folds` folds) on the labelled photos that no
guidance head trained on, must have a bootstrap interval whose lower end is above 0.5, and an estimate
not below the current champion's, whose own VAE encodes the same photos and whose rule is fitted the
same way on the same folds. Otherwise the version gets alias `challenger` and the champion keeps
serving; with no champion, nothing is served. `classify.force_promotion` overrides the gate, and is
logged (version and run tag `forced_promotion`, a warning). The test split never decides: its figures,
and MLflow's own classifier evaluation of the version, are reported only. Every version carries a model
card (its description and tags): data version and labels, the gate's figures, the test figures beside
the majority baseline, what it was compared with and the decision.

Also here, what the stage reads from the registry: the champion VAE (`load_champion`), why there is none
(`vae_refused`), and the other champion of champion.json scored beside the served one
(`champions_side_by_side`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tubervae.classify import gate
from tubervae.classify.any_rule import RuleSettings, fit_rules
from tubervae.classify.grading import Fitted, Photos
from tubervae.classify.scores import binary_metrics
from tubervae.config import Params
from tubervae.models.encoding import encode, probe_latents
from tubervae.runs import quality_model_code, registry, vae_artifacts
from tubervae.runs.quality_model import quality_model_artifacts, quality_signature
from tubervae.runs.registry import CHALLENGER, CHAMPION
from tubervae.runs.serving import photo_example
from tubervae.runs.tracker import Tracker

log = logging.getLogger(__name__)


def vae_refused(tracker: Tracker, name: str) -> str | None:
    """Why there is no VAE to build a rule on when the register stage's gate refused every model so far
    (`name@challenger` without `name@champion`), or None."""
    if registry.version_by_alias(tracker, name, CHAMPION) is not None:
        return None
    challenger = registry.version_by_alias(tracker, name, CHALLENGER)
    if challenger is None:
        return None
    why = challenger.tags.get("decision_reason", "see reports/register/champion.json")
    return (
        f"there is no {name}@{CHAMPION}: the register stage's gate refused version {challenger.version} "
        f"(@{CHALLENGER}: {why}), so no rule is built and nothing is served (register.force_promotion overrides)"
    )


def load_champion(tracker: Tracker, name: str):
    version = registry.version_by_alias(tracker, name, CHAMPION)
    if version is None:
        raise RuntimeError(
            f"no model {name}@{CHAMPION} in the registry: run the search and the register stage "
            f"first (dvc repro register)"
        )
    return version, registry.load_version(tracker, version).unwrap_python_model()


def champions_side_by_side(
    tracker: Tracker, champion_path, served: str, fitted: Fitted, photos: Photos, params: Params
) -> pd.DataFrame | None:
    """Test balanced accuracy of the champion by UDR, of the champion for the job and, with register.select:
    centrality, of the medoid, one row each.

    The served champion's figures are `fitted`'s; the others' rules are fitted the same way (`fit_rules`) on
    the same labels. None when champion.json names no job champion (no labelled photos at register time).
    """
    path = Path(champion_path)
    champions = json.loads(path.read_text()).get("champions", {}) if path.exists() else {}
    if "job" not in champions:
        return None
    x_lab, y_lab, x_test, y_test = photos.x_lab, photos.y_lab, photos.x_test, photos.y_test
    rows = []
    for selection in [s for s in ("udr", "job", "centrality") if s in champions]:
        entry = champions[selection]
        if entry["run_id"] == served:
            scores = {"threshold": fitted.threshold_metrics, "any_rule": fitted.any_rule_metrics}
        else:
            vae, _ = vae_artifacts.load_vae(tracker, entry["run_id"])
            (z_lab, _), (z_test, _) = encode(vae, x_lab), encode(vae, x_test)
            kl = vae_artifacts.latents(tracker, entry["run_id"])["kl"]
            rules = fit_rules(z_lab, y_lab, kl, RuleSettings.from_params(params))
            scores = {
                name: binary_metrics(
                    y_test, r.predict(z_test), r.decision_function(z_test), majority_label=photos.majority_bad
                )
                for name, r in (("threshold", rules.threshold), ("any_rule", rules.any_rule))
            }
        rows.append(
            {
                "selection": selection,
                "served": entry["run_id"] == served,
                **{k: entry[k] for k in ("run_id", "family", "setting", "seed", "udr_within")},
                "rule_cv_balanced_accuracy": entry.get("rule_cv_balanced_accuracy", float("nan")),
                "threshold_test_balanced_accuracy": scores["threshold"]["balanced_accuracy"],
                "any_rule_test_balanced_accuracy": scores["any_rule"]["balanced_accuracy"],
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Verdict:
    """The gate's decision on the new version, with both figures (either may be missing, `note` says why)."""

    challenger: gate.Estimate | None
    champion: gate.Estimate | None
    champion_version: str | None  # the version behind @champion before this run, if any
    promote: bool
    forced: bool
    reason: str
    labels_used: str
    note: str | None = None  # why the champion's figure is missing although there is a champion

    def figures(self) -> dict:
        """The gate's numbers for `dvc metrics` and the run."""
        out = {"promoted": float(self.promote)}
        if self.challenger is not None:
            figure = self.challenger
            out |= {"balanced_accuracy": figure.value, "low": figure.low, "high": figure.high}
        if self.champion is not None:
            out["champion_balanced_accuracy"] = self.champion.value
        return out

    def as_dict(self) -> dict:
        return {
            "challenger": None if self.challenger is None else self.challenger.as_dict(),
            "champion": None
            if self.champion_version is None
            else {
                "version": int(self.champion_version),
                "estimate": None if self.champion is None else self.champion.as_dict(),
                "note": self.note,
            },
            "labels": self.labels_used,
            "promoted": self.promote,
            "forced": self.forced,
            "reason": self.reason,
        }

    def served(self, model_name: str, version: int) -> dict | None:
        """What `model_name@champion` is after this run; None when nothing is served."""
        if self.promote:
            return {"model": model_name, "version": int(version), "alias": CHAMPION}
        if self.champion_version is not None:
            return {"model": model_name, "version": int(self.champion_version), "alias": CHAMPION}
        return None

    def line(self, model_name: str, version: int) -> str:
        """The one line the stage says: where the new version went, why, and both figures."""
        if self.promote:
            where = f"{model_name} version {version} is @{CHAMPION}"
        elif self.champion_version is not None:
            kept = f"version {self.champion_version} stays @{CHAMPION}"
            where = f"{model_name} version {version} is @{CHALLENGER}, {kept}"
        else:
            where = f"{model_name} version {version} is @{CHALLENGER} and nothing is served (there is no champion)"
        note = f" ({self.note})" if self.note else ""
        return f"{where}: {self.reason}{note}"


def judge(tracker: Tracker, fitted: Fitted, photos: Photos, probe: np.ndarray, params: Params) -> Verdict:
    """The gate on the new rule: its estimate on the holdout labels against chance and the current champion's."""
    cfg = params.classify
    h = photos.holdout
    z, bad = fitted.z_lab[h], photos.y_lab[h]
    current = registry.version_by_alias(tracker, cfg.model_name, CHAMPION)
    if min(int(bad.sum()), int((~bad).sum())) < 2:
        reason = (
            f"not promoted: the gate needs 2 labelled photos of each class that no guidance head trained on, "
            f"got {photos.labels_used}"
        )
        promote = cfg.force_promotion
        return Verdict(
            None,
            None,
            None if current is None else str(current.version),
            promote,
            promote,
            f"forced promotion (force_promotion is set; {reason})" if promote else reason,
            photos.labels_used,
        )
    challenger = gate.estimate_served_rule(z, bad, fitted.kl, RuleSettings.from_params(params), **_repeats(params))
    champion, note = (None, None) if current is None else champion_estimate(tracker, current, photos, probe, params)
    promote, reason = gate.decide_promotion(challenger, champion, force=cfg.force_promotion)
    return Verdict(
        challenger,
        champion,
        None if current is None else str(current.version),
        promote,
        cfg.force_promotion,
        reason,
        photos.labels_used,
        note,
    )


def champion_estimate(tracker: Tracker, current, photos: Photos, probe: np.ndarray, params: Params):
    """The current champion's rule procedure re-estimated on the same holdout labels and folds: its own VAE
    encodes the photos, its own informative components are the candidates. (None, why) when it cannot be."""
    name = params.classify.model_name
    try:
        model = registry.load_registered(tracker, name, CHAMPION).unwrap_python_model()
    except Exception as exc:  # any failure to load (store, files, digests) leaves it without a figure, said so
        log.warning("%s@%s (version %s) could not be loaded: %s", name, CHAMPION, current.version, exc)
        return None, f"champion version {current.version} could not be loaded, so it was not compared: {exc}"
    size = int(model.config["image_size"])
    if size != photos.x_lab.shape[1]:
        return None, (
            f"champion version {current.version} reads {size}px photos, the data is {photos.x_lab.shape[1]}px: "
            f"not compared"
        )
    h = photos.holdout
    z, _ = encode(model.vae, photos.x_lab[h])
    kl = probe_latents(model.vae, probe)["kl"]
    return gate.estimate_served_rule(z, photos.y_lab[h], kl, RuleSettings.from_params(params), **_repeats(params)), None


def _repeats(params: Params) -> dict:
    """How often the gate cross-validates the served rule, and resamples it for its interval."""
    return {"n_repeats": params.classify.gate_repeats, "n_bootstrap": params.classify.gate_bootstrap}


def verdict_report(verdict: Verdict, model_name: str, registered: dict) -> dict:
    """What metrics.json says of the new version: where it went, the gate's figures and line (said once, as a
    warning unless the version was promoted unforced), and what is served now."""
    line = verdict.line(model_name, registered["version"])
    if verdict.forced:
        log.warning("classify.force_promotion is set: %s", line)
    elif verdict.promote:
        log.info("%s", line)
    else:
        log.warning("%s", line)
    return {
        "registered": registered,
        "gate": verdict.as_dict() | {"line": line},
        "served": verdict.served(model_name, registered["version"]),
    }


def register_quality_model(
    tracker: Tracker,
    run_id: str,
    fitted: Fitted,
    photos: Photos,
    vae,
    vae_config: dict,
    vae_version,
    data_version: str,
    model_name: str,
    verdict: Verdict,
) -> dict:
    """Log the served rule on the classify run as a pyfunc model, register it as a new version of `model_name`
    with its model card, evaluate it on the test split with MLflow's classifier evaluation (reported only), and
    give it alias `champion` when the gate promoted it, else `challenger`."""
    any_rule = fitted.any_rule
    # The served rule is the OR of cuts; the tags name its rules (one value per rule, comma-separated).
    tags = {
        "rule": any_rule.describe(),
        "component": ",".join(str(r.component) for r in any_rule.rules),
        "threshold": ",".join(str(r.threshold) for r in any_rule.rules),
        "direction": ",".join(r.direction for r in any_rule.rules),
        "n_rules": len(any_rule.rules),
        "test_balanced_accuracy": fitted.any_rule_metrics["balanced_accuracy"],
        "threshold_rule_test_balanced_accuracy": fitted.threshold_metrics["balanced_accuracy"],
        "vae_version": vae_version.version,
        "data_version": data_version,
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_id = registry.log_pyfunc(
            tracker,
            run_id,
            quality_model_code.CODE,
            quality_model_artifacts(Path(tmp), vae, vae_config, any_rule),
            name=model_name,
            signature=quality_signature(any_rule),
            input_example=photo_example(photos.x_test, int(vae_config["image_size"])),
        )
    version = registry.register_model(tracker, model_name, model_id, tags=tags)
    evaluation = registry.evaluate_classifier(
        tracker,
        run_id,
        model_id,
        test_table(photos, int(vae_config["image_size"])),
        targets="truth",
        predictions="label",
        labels=["good", "bad"],
    )
    alias = CHAMPION if verdict.promote else CHALLENGER
    description, card = model_card(fitted, photos, vae_version, data_version, verdict, evaluation, model_name)
    registry.describe_version(tracker, model_name, version.version, description, card)
    registry.set_alias(tracker, model_name, alias, version.version)
    if verdict.promote:
        registry.mark_champion(tracker, model_name, model_id)
    return {"model": model_name, "version": int(version.version), "alias": alias}


def test_table(photos: Photos, image_size: int) -> pd.DataFrame:
    """The labelled test photos as requests send them (PNG, base64) with their truth, for MLflow's evaluation."""
    rows = [photo_example(photos.x_test[i : i + 1], image_size) for i in range(len(photos.y_test))]
    table = pd.concat(rows, ignore_index=True)
    table["truth"] = np.where(photos.y_test, "bad", "good")
    return table


def model_card(
    fitted: Fitted, photos: Photos, vae_version, data_version: str, verdict: Verdict, evaluation: dict, model_name: str
) -> tuple[str, dict]:
    """A version's model card: the description (Markdown) and the tags that say the same at a glance."""
    test, rule = fitted.any_rule_metrics, fitted.any_rule
    challenger, champion = verdict.challenger, verdict.champion
    validation = (
        f"{challenger.describe()} ({int(challenger.level * 100)} % bootstrap interval; {len(challenger.per_repeat)} "
        f"repeats of {challenger.n_folds}-fold stratified cross-validation of the rule's fitting)"
        if challenger is not None
        else "not estimated (too few labels)"
    )
    compared = (
        "no champion"
        if verdict.champion_version is None
        else f"{model_name} version {verdict.champion_version}: "
        + (f"{champion.describe()} on the same labels and folds" if champion is not None else verdict.note)
    )
    decision = CHAMPION if verdict.promote else CHALLENGER
    description = gate.model_card(
        f"{model_name}: {rule.describe()}",
        {
            "Data": {
                "data version": data_version,
                "labels used": photos.labels_used + ", labelled split",
                "VAE": f"tubervae-vae version {vae_version.version}",
            },
            "Validation (labelled split, the gate's figure)": {"balanced accuracy": validation},
            "Test (held-out split, reported only: it decides nothing)": {
                "photos": f"{test['n']} ({test['n_bad']} bad)",
                "balanced accuracy": f"{test['balanced_accuracy']:.3f}",
                "accuracy": f"{test['accuracy']:.3f}, majority baseline {test['majority_accuracy']:.3f}",
                "ROC AUC": "n/a" if test["roc_auc"] is None else f"{test['roc_auc']:.3f}",
                "MLflow evaluation": ", ".join(f"{k} {v:.3f}" for k, v in sorted(evaluation.items())),
            },
            "Reference figures (test balanced accuracy, same labels)": {
                name: f"{scores['balanced_accuracy']:.3f}" for name, scores in fitted.alternatives.items()
            },
            "Compared with": {"champion": compared},
            "Decision": {"alias": decision, "forced": verdict.forced, "reason": verdict.reason},
        },
    )
    tags = {
        "labels": photos.labels_used,
        "gate_balanced_accuracy": "" if challenger is None else f"{challenger.value:.4f}",
        "gate_interval": "" if challenger is None else f"[{challenger.low:.4f}, {challenger.high:.4f}]",
        "compared_with": compared,
        "test_majority_accuracy": test["majority_accuracy"],
        "decision": decision,
        "decision_reason": verdict.reason,
        "forced_promotion": str(verdict.forced).lower(),
    }
    return description, tags
