"""`classify` stage: good/bad tubers from one latent component of the champion VAE.

As in the thesis (§4.2.3), a threshold on one component fitted on the labelled set
(100 good + 100 bad), but the component, threshold and direction are chosen
automatically by balanced accuracy on those labels only. Held-out test metrics sit
next to the majority-class baseline ("always bad" is ~81.7 % accurate at the thesis's
class ratio, above its 81.3 %): balanced accuracy is the honest figure. The thesis's
suggested improvements (logistic regression, gradient boosting on the informative
components) and a pixel CNN that sees the same labels are measured beside it, with a
label-efficiency table.

A tuber is bad for black spots OR greening OR rot, so one cut on one component is capped;
the served rule is an OR of up to three cuts, each on its own informative component
(all components when none is informative), chosen greedily on the labels with the number
of cuts fixed by cross-validation on the labelled set (`classify.any_rule`). It sits in the
same table, and is registered as the pyfunc model `tuber-quality`; with one cut it is the
thesis's rule.

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

A guided champion (a `guided_<family>` model) is read through its guided component: the rule is
one cut on it. Its guidance saw the labelled split's guide rows, which therefore separate
perfectly on it; its rule and the learners on its components are fitted on the holdout labels alone (the rows no
guidance head trained on), and the gate judges them there; the pixel CNN, which reads pixels, learns
from every label as the reference of what the labels buy.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tubervae import classify as clf
from tubervae import plots
from tubervae.classify import gate
from tubervae.config import FEW_LABELS, ClassifyConfig, Params
from tubervae.data.processed import guide_mask, load_meta, load_split
from tubervae.evaluation.udr import informative_mask
from tubervae.io import fresh_dir, write_csv, write_json, write_metrics
from tubervae.models.encoding import encode, probe_latents
from tubervae.runs import quality_model_code, registry, vae_artifacts
from tubervae.runs.progress import steps_line
from tubervae.runs.quality_model import quality_model_artifacts, quality_signature
from tubervae.runs.registry import CHALLENGER, CHAMPION
from tubervae.runs.serving import photo_example
from tubervae.runs.tracker import Tracker
from tubervae.stages.common import beside, open_tracker, project_paths

log = logging.getLogger(__name__)
THESIS_ACCURACY = 0.813
RANKING_COLUMNS = ["component", "threshold", "direction", "balanced_accuracy", "auc", "kl", "informative"]


def label_shortfall(bad_labelled: np.ndarray, bad_test: np.ndarray) -> str | None:
    """Why the labels cannot fit and score a good/bad rule (one line), or None when they can."""
    n_bad, n_good = int(bad_labelled.sum()), int((~bad_labelled).sum())
    if n_bad == 0 or n_good == 0:
        return (
            f"the labelled split holds {n_good} good and {n_bad} bad photos, and a rule needs both: "
            f"put labelled photos in the folder's good/ and bad/"
        )
    if len(bad_test) == 0:
        return "the test split holds no labelled photo to score a rule on: add photos to the folder's good/ and bad/"
    return None


def write_skipped(reason: str, out_dir: Path, metrics_path: Path, n_labelled: dict, model_name: str) -> dict:
    """The stage's declared outputs when the labels cannot carry a classifier: the reason, empty tables."""
    log.warning("classify skipped, %s not registered: %s", model_name, reason)
    metrics = {"skipped": reason, "n_labelled": n_labelled}
    write_json(out_dir / "metrics.json", metrics)
    write_metrics(fresh_dir(metrics_path), {}, "classify")
    write_csv(out_dir / "components.csv", pd.DataFrame(columns=RANKING_COLUMNS))
    write_csv(out_dir / "champions.csv", pd.DataFrame(columns=["selection", "served", "run_id"]))
    write_csv(
        out_dir / "label_efficiency.csv",
        pd.DataFrame(columns=["method", "n_labels", "mean_balanced_accuracy", "std_balanced_accuracy", "n_draws"]),
    )
    for name in ("scatter.png", "label_efficiency.png"):
        plots.save_figure(plots.message_figure(f"classify skipped: {reason}"), out_dir / name)
    return metrics


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
    """Test balanced accuracy of the champion by UDR and of the champion for the job (register.select), one row each.

    The served champion's figures are `fitted`'s; the other's rules are fitted the same way (`clf.fit_rules`) on
    the same labels. None when champion.json names only one champion (no labelled photos at register time).
    """
    path = Path(champion_path)
    champions = json.loads(path.read_text()).get("champions", {}) if path.exists() else {}
    if "job" not in champions:
        return None
    x_lab, y_lab, x_test, y_test = photos.x_lab, photos.y_lab, photos.x_test, photos.y_test
    rows = []
    for selection in ("udr", "job"):
        entry = champions[selection]
        if entry["run_id"] == served:
            scores = {"threshold": fitted.threshold_metrics, "any_rule": fitted.any_rule_metrics}
        else:
            vae, _ = vae_artifacts.load_vae(tracker, entry["run_id"])
            (z_lab, _), (z_test, _) = encode(vae, x_lab), encode(vae, x_test)
            kl = vae_artifacts.latents(tracker, entry["run_id"])["kl"]
            rules = clf.fit_rules(z_lab, y_lab, kl, clf.RuleSettings.from_params(params))
            scores = {
                name: clf.binary_metrics(
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
class Photos:
    """The labelled photos the rules are fitted on and the labelled test photos they are scored on."""

    x_lab: np.ndarray
    y_lab: np.ndarray  # True = bad
    x_test: np.ndarray
    y_test: np.ndarray
    majority_bad: bool  # the majority class of the training split's labels: the baseline's answer
    guide: np.ndarray | None = None  # True = a guidance head trained on this labelled photo (None: none did)
    guided_component: int | None = None  # a guided champion's component (its x_lab/y_lab: the holdout labels)

    @property
    def n_labelled(self) -> dict:
        return {"good": int((~self.y_lab).sum()), "bad": int(self.y_lab.sum())}

    @property
    def holdout(self) -> np.ndarray:
        """The labelled rows a rule is fitted and judged on: those no guidance head saw (all when none did)."""
        return gate.holdout_rows(self.guide, len(self.y_lab))

    @property
    def labels_used(self) -> str:
        h = self.holdout
        which = "all labelled photos" if h.all() else f"the labelled photos no guidance head trained on, of {h.size}"
        return f"{int((~self.y_lab[h]).sum())} good + {int(self.y_lab[h].sum())} bad ({which})"


@dataclass
class Fitted:
    """The champion's components on the photos, every rule and learner fitted, and their test figures."""

    z_lab: np.ndarray
    z_test: np.ndarray
    kl: np.ndarray
    is_informative: np.ndarray
    candidates: list[int]  # the components the rules and learners may use: the informative ones, all when none is
    ranking: pd.DataFrame
    threshold_rule: clf.ThresholdRule  # the thesis's one cut, reported beside the served any_rule
    any_rule: clf.AnyOfRule
    threshold_metrics: dict
    any_rule_metrics: dict
    alternatives: dict
    efficiency: pd.DataFrame

    @property
    def candidate_note(self) -> str:
        """Which components are the candidates, in words (metrics.json's `candidates`)."""
        return "informative" if self.is_informative.any() else "all (no component is informative)"


def run(
    params: Params,
    *,
    root: str | Path = ".",
    processed_dir: str | Path = "data/processed",
    out_dir: str | Path = "reports/classify",
    champion_path: str | Path = "reports/register/champion.json",
    metrics_path: str | Path | None = None,
    run_id: str | None = None,
) -> dict:
    """Fit, score and register the classifier; the folder `metrics_path` (default reports/metrics/classify/
    beside `out_dir`) receives the headline figures as numbers only, for `dvc metrics`: one file per method
    or topic (`<group>.json`, `io.metrics_files`), so that each prints as a table of a few columns."""
    started_at = time.time()  # the stage's run, opened when it logs, spans its work
    cfg = params.classify
    processed_dir, out_dir, champion_path = project_paths(root, processed_dir, out_dir, champion_path)
    metrics_path = beside(root, metrics_path, out_dir, "metrics/classify")
    tracker = open_tracker(root, run_id)
    refused = vae_refused(tracker, params.register.model_name)
    if refused:
        return write_skipped(refused, out_dir, metrics_path, {}, cfg.model_name)
    version, vae_model = load_champion(tracker, params.register.model_name)
    vae, vae_config = vae_model.vae, vae_model.config
    meta = load_meta(processed_dir)
    photos = labelled_photos(processed_dir, vae_config, meta)
    shortfall = label_shortfall(photos.y_lab, photos.y_test)
    if shortfall:
        return write_skipped(shortfall, out_dir, metrics_path, photos.n_labelled, cfg.model_name)
    probe = load_split("udr_probe", processed_dir)["images"]
    fitted = fit(vae, photos, probe, params)
    verdict = judge(tracker, fitted, photos, probe, params)
    metrics = metrics_report(fitted, photos, version, vae_config, params)
    side_by_side = champions_side_by_side(tracker, champion_path, metrics["champion"]["run_id"], fitted, photos, params)
    if side_by_side is not None:
        metrics["champions"] = side_by_side.to_dict("records")
    write_reports(fitted, photos, side_by_side, out_dir, gallery_size=cfg.gallery_size)
    numbers = headline_metrics(
        fitted.threshold_metrics, fitted.any_rule_metrics, fitted.alternatives, n_rules=len(fitted.any_rule.rules)
    )
    numbers["gate"] = _finite(verdict.figures())
    write_metrics(fresh_dir(metrics_path), numbers, "classify", prefix="")
    tags = {"kind": "classify"} | ({"forced_promotion": "true"} if verdict.forced else {})
    with tracker.run("classify", run_id=run_id, started_at=started_at, tags=tags) as rid:
        tracker.log_metrics(rid, numbers)
        registered = register_quality_model(
            tracker, rid, fitted, photos, vae, vae_config, version, meta["data_version"], cfg.model_name, verdict
        )
        metrics |= verdict_report(verdict, cfg.model_name, registered)
        write_json(out_dir / "metrics.json", metrics)
        tracker.log_artifacts(rid, out_dir, "classify")
    return metrics


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


def labelled_photos(processed_dir: Path, vae_config: dict, meta: dict) -> Photos:
    """The labelled photos of the labelled and test splits (unlabelled ones are left out), checked against the
    champion's image size."""
    if vae_config["data_version"] != meta["data_version"]:
        log.warning(
            "the champion was trained on data version %s, the processed data is %s",
            vae_config["data_version"],
            meta["data_version"],
        )
    labelled, test, train = (load_split(s, processed_dir) for s in ("labelled", "test", "train"))
    if vae_config["image_size"] != labelled["images"].shape[1]:
        raise RuntimeError(
            f"the champion expects {vae_config['image_size']}px images but data/processed holds "
            f"{labelled['images'].shape[1]}px: rerun the search and register stages"
        )
    guided = vae_config.get("guided_component")
    usable, test_known = labelled["labels"] >= 0, test["labels"] >= 0
    train_labels = train["labels"][train["labels"] >= 0]
    return Photos(
        x_lab=labelled["images"][usable],
        y_lab=labelled["labels"][usable] == 1,
        x_test=test["images"][test_known],
        y_test=test["labels"][test_known] == 1,
        majority_bad=bool((train_labels == 1).mean() >= 0.5) if len(train_labels) else True,
        guide=guide_mask(labelled)[usable],
        guided_component=None if guided is None else int(guided),
    )


def fit(vae, photos: Photos, probe_images: np.ndarray, params: Params) -> Fitted:
    """Every rule and learner fitted on the labelled photos alone, scored on the test photos."""
    cfg = params.classify
    if min(photos.n_labelled.values()) < FEW_LABELS:
        log.warning(
            "only %d good and %d bad labelled photos (%d test photos): the rules and their test figures are rough",
            photos.n_labelled["good"],
            photos.n_labelled["bad"],
            len(photos.y_test),
        )
    z_lab, _ = encode(vae, photos.x_lab)
    z_test, _ = encode(vae, photos.x_test)
    y_lab, y_test, majority = photos.y_lab, photos.y_test, photos.majority_bad
    kl = probe_latents(vae, probe_images)["kl"]
    is_informative = informative_mask(kl, params.udr.kl_threshold)
    if not is_informative.any():
        log.warning(
            "no component of the champion is informative (KL > %g): the rules choose among all components",
            params.udr.kl_threshold,
        )

    ranking = clf.rank_threshold_rules(z_lab, y_lab)
    ranking["kl"] = kl[ranking.component.to_numpy()]
    ranking["informative"] = is_informative[ranking.component.to_numpy()]
    # The rules are fitted on the labels no guidance head saw: those memorised by a head would place the cut
    # badly. The thesis's rule is one cut on one component; a guided champion's is on its guided component.
    h, guided = photos.holdout, photos.guided_component
    one_cut = None if guided is None else [guided]
    rules = clf.fit_rules(z_lab[h], y_lab[h], kl, clf.RuleSettings.from_params(params), threshold_components=one_cut)

    def test_metrics(model, x_test: np.ndarray = z_test) -> dict:
        return clf.binary_metrics(
            y_test, model.predict(x_test), model.decision_function(x_test), majority_label=majority
        )

    # Learners on a guided champion's components see the holdout labels only (z0 separates the guide rows).
    zl, yl = (z_lab[h], y_lab[h]) if guided is not None else (z_lab, y_lab)
    learners = {
        "logistic": clf.fit_logistic(zl, yl, components=rules.candidates, random_state=cfg.seed),
        "gradient_boosting": clf.fit_gradient_boosting(zl, yl, components=rules.candidates, random_state=cfg.seed),
    }
    any_rule_metrics = test_metrics(rules.any_rule)
    alternatives = {"any_rule": any_rule_metrics} | {name: test_metrics(m) for name, m in learners.items()}
    cnn = clf.fit_pixel_cnn(
        photos.x_lab,
        y_lab,
        random_state=cfg.seed,
        steps=cfg.cnn_steps,
        on_step=steps_line("classify: the pixel CNN", cfg.cnn_steps),
    )
    alternatives["pixel_cnn"] = test_metrics(cnn, photos.x_test)
    train_images = photos.x_lab if guided is None else photos.x_lab[h]
    return Fitted(
        z_lab=z_lab,
        z_test=z_test,
        kl=kl,
        is_informative=is_informative,
        candidates=rules.candidates,
        ranking=ranking,
        threshold_rule=rules.threshold,
        any_rule=rules.any_rule,
        threshold_metrics=test_metrics(rules.threshold),
        any_rule_metrics=any_rule_metrics,
        alternatives=alternatives,
        efficiency=efficiency_table((zl, yl, train_images), (z_test, y_test, photos.x_test), rules.candidates, cfg),
    )


def efficiency_table(train: tuple, test: tuple, candidates: list[int], cfg: ClassifyConfig) -> pd.DataFrame:
    """Test balanced accuracy against the number of labels (`clf.label_efficiency`, summarised), each method
    fitted as the stage fits it: `classify.max_rules` and `cv_folds` for the any_rule. `train` and `test`:
    (latents, bad, images)."""
    (zl, yl, train_images), (z_test, y_test, test_images) = train, test
    sizes = tuple(s for s in cfg.label_sizes if s <= len(yl))
    if not sizes:
        log.warning(
            "every classify.label_sizes %s exceeds the %d labelled photos: measuring at %d only",
            list(cfg.label_sizes),
            len(yl),
            len(yl),
        )
        sizes = (len(yl),)
    # Every rule and learner sees the informative components (all of them when none is), the CNN the pixels.
    efficiency = clf.label_efficiency(
        zl,
        yl,
        z_test,
        y_test,
        train_images=train_images,
        test_images=test_images,
        methods=("threshold", "any_rule", "logistic", "gradient_boosting", "pixel_cnn"),
        components=candidates,
        sizes=sizes,
        n_draws=cfg.n_draws,
        random_state=cfg.seed,
        cnn_steps=cfg.cnn_steps,
        max_rules=cfg.max_rules,
        n_folds=cfg.cv_folds,
    )
    return clf.summarise_label_efficiency(efficiency)


def gate_estimate(z: np.ndarray, bad: np.ndarray, kl: np.ndarray, params: Params) -> gate.Estimate:
    """The served rule's procedure (`clf.fit_served_rule` over the model's candidate components, from its `kl`)
    cross-validated on (z, bad); the folds depend only on the labels and the seed."""
    cfg, settings = params.classify, clf.RuleSettings.from_params(params)
    return gate.estimate_rule(
        lambda latents, labels: clf.fit_served_rule(latents, labels, kl, settings),
        z,
        bad,
        n_folds=cfg.cv_folds,
        n_repeats=cfg.gate_repeats,
        n_bootstrap=cfg.gate_bootstrap,
        random_state=cfg.seed,
    )


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
    challenger = gate_estimate(z, bad, fitted.kl, params)
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
    return gate_estimate(z, photos.y_lab[h], kl, params), None


def metrics_report(fitted: Fitted, photos: Photos, version, vae_config: dict, params: Params) -> dict:
    """reports/classify/metrics.json: the champion, both rules with their components' KL, every method's figures."""
    cfg, kl, is_informative = params.classify, fitted.kl, fitted.is_informative
    return {
        "champion": {
            "model": params.register.model_name,
            "version": int(version.version),
            "run_id": version.tags.get("source_run_id"),
            "family": vae_config["family"],
            "beta": vae_config["beta"],
            "c_max": vae_config["c_max"],
            "seed": vae_config["seed"],
            "guide_weight": vae_config.get("guide_weight", 0.0),
            "guided_component": photos.guided_component,
            "labels": "all labelled" if photos.guided_component is None else "holdout (guide = False) only",
        },
        "threshold_rule": {
            **fitted.threshold_rule.as_dict(),
            "kl": float(kl[fitted.threshold_rule.component]),
            "informative": bool(is_informative[fitted.threshold_rule.component]),
        },
        "any_rule": {
            "rule": fitted.any_rule.describe(),
            "rules": [
                {**entry, "kl": float(kl[entry["component"]]), "informative": bool(is_informative[entry["component"]])}
                for entry in fitted.any_rule.as_dict()["rules"]
            ],
            "candidates": fitted.candidate_note,
            "candidate_components": fitted.candidates,
            "max_rules": cfg.max_rules,
            "n_folds": cfg.cv_folds,
            "cv_balanced_accuracy": {str(k + 1): v for k, v in enumerate(fitted.any_rule.cv_balanced_accuracy)},
            "train_balanced_accuracy": fitted.any_rule.train_balanced_accuracy,
            "test": fitted.any_rule_metrics,
        },
        "candidate_components": fitted.candidates,
        "candidates": fitted.candidate_note,
        "n_labelled": photos.n_labelled,
        "threshold_rule_test": fitted.threshold_metrics,
        "alternatives": {
            k: {m: v[m] for m in ("accuracy", "balanced_accuracy", "roc_auc", "f1_bad")}
            for k, v in fitted.alternatives.items()
        },
        "thesis": {
            "accuracy": THESIS_ACCURACY,
            "note": "one threshold on one β-TCVAE component; majority baseline at the thesis's class ratio: 0.817",
        },
    }


def write_reports(
    fitted: Fitted, photos: Photos, side_by_side: pd.DataFrame | None, out_dir: Path, *, gallery_size: int
) -> None:
    """The tables and figures of reports/classify (metrics.json comes once the model is registered)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if side_by_side is not None:
        write_csv(out_dir / "champions.csv", side_by_side)
    write_csv(out_dir / "components.csv", fitted.ranking)
    write_csv(out_dir / "label_efficiency.csv", fitted.efficiency)
    # One draw has no spread (its std is NaN): plot it without an error bar.
    plots.save_figure(
        plots.label_efficiency_figure(
            fitted.efficiency.rename(columns={"mean_balanced_accuracy": "mean", "std_balanced_accuracy": "std"}).fillna(
                {"std": 0.0}
            )
        ),
        out_dir / "label_efficiency.png",
    )
    plots.save_figure(served_rule_scatter(fitted, photos.y_lab), out_dir / "scatter.png")
    rule = fitted.any_rule  # the served rule
    y_test = photos.y_test
    wrong = np.flatnonzero(rule.predict(fitted.z_test) != y_test)[:gallery_size]
    if len(wrong):
        per_row = 8
        rows = [photos.x_test[wrong[i : i + per_row]] for i in range(0, len(wrong), per_row)]
        titles = [
            [f"{'bad' if y_test[k] else 'good'} as {'good' if y_test[k] else 'bad'}" for k in wrong[i : i + per_row]]
            for i in range(0, len(wrong), per_row)
        ]
        plots.save_figure(plots.image_grid_figure(rows, titles=titles), out_dir / "misclassified.png")


def served_rule_scatter(fitted: Fitted, y_lab: np.ndarray):
    """The labelled photos on the served rule's first two cuts, both drawn; a rule of one cut is shown against
    the best other candidate component."""
    cuts = fitted.any_rule.rules[:2]
    components = [cut.component for cut in cuts]
    if len(components) == 1:
        others = [int(c) for c in fitted.ranking.component if int(c) in fitted.candidates and int(c) != components[0]]
        components.append((others or components)[0])
    return plots.scatter_threshold_figure(
        fitted.z_lab[:, components],
        y_lab,
        [f"z{c}" for c in components],
        threshold=cuts[0].threshold,
        other_threshold=cuts[1].threshold if len(cuts) > 1 else None,
        title=f"served rule: {fitted.any_rule.describe()}",
    )


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


def headline_metrics(threshold: dict, any_rule: dict, alternatives: dict, *, n_rules: int) -> dict:
    """The test figures as numbers only, by method: what `dvc metrics show` and `dvc exp show` compare
    across commits (ids and notes stay in reports/classify/metrics.json). Undefined figures (a ROC AUC
    on one class) are left out."""
    keys = ("balanced_accuracy", "accuracy", "roc_auc")
    metrics: dict = {
        "threshold": _finite({k: threshold[k] for k in keys}),
        "any_rule": _finite({**{k: any_rule[k] for k in keys}, "n_rules": n_rules}),
        "majority": _finite({"accuracy": threshold["majority_accuracy"]}),
    }
    for name, scores in alternatives.items():
        if name != "any_rule":
            metrics[name] = _finite({"balanced_accuracy": scores["balanced_accuracy"]})
    return metrics


def _finite(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(float(v))}
