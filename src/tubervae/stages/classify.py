"""`classify` stage: good/bad tubers from the latent components of the champion VAE.

Settings in, a few calls, files out: the champion VAE (`tubervae-vae@champion`) and the labelled photos go
in; `tubervae.classify.grading` fits the thesis's one-cut rule, the served rule, the learners and the pixel
CNN on the labelled photos and scores them on the test photos (the thesis's figures and the
label-efficiency table); `tubervae.runs.quality_gate` judges the served rule and registers it as a version
of `tuber-quality` (`@champion` only through the gate); reports/classify comes out (metrics.json, tables,
figures), logged on the stage's own run.

A tuber is bad for black spots OR greening OR rot, so one cut on one component is capped;
the served rule is an OR of up to three cuts, each on its own informative component
(all components when none is informative), chosen greedily on the labels with the number
of cuts fixed by cross-validation on the labelled set (`classify.any_rule`). It sits in the
same table, and is registered as the pyfunc model `tuber-quality`; with one cut it is the
thesis's rule.

A guided champion (a `guided_<family>` model) is read through its guided component: the rule is
one cut on it. Its guidance saw the labelled split's guide rows, which therefore separate
perfectly on it; its rule and the learners on its components are fitted on the holdout labels alone (the rows no
guidance head trained on), and the gate judges them there; the pixel CNN, which reads pixels, learns
from every label as the reference of what the labels buy.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tubervae import plots
from tubervae.classify import grading
from tubervae.classify.grading import RANKING_COLUMNS, Fitted, Photos
from tubervae.config import Params
from tubervae.data.processed import guide_mask, load_meta, load_split
from tubervae.io import fresh_dir, write_csv, write_json, write_metrics
from tubervae.runs import quality_gate
from tubervae.runs.progress import steps_line
from tubervae.stages.common import beside, open_tracker, project_paths

log = logging.getLogger(__name__)


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
    refused = quality_gate.vae_refused(tracker, params.register.model_name)
    if refused:
        return write_skipped(refused, out_dir, metrics_path, {}, cfg.model_name)
    version, vae_model = quality_gate.load_champion(tracker, params.register.model_name)
    vae, vae_config = vae_model.vae, vae_model.config
    meta = load_meta(processed_dir)
    photos = labelled_photos(processed_dir, vae_config, meta)
    shortfall = grading.label_shortfall(photos.y_lab, photos.y_test)
    if shortfall:
        return write_skipped(shortfall, out_dir, metrics_path, photos.n_labelled, cfg.model_name)
    probe = load_split("udr_probe", processed_dir)["images"]
    fitted = grading.fit(vae, photos, probe, params, on_step=steps_line("classify: the pixel CNN", cfg.cnn_steps))
    verdict = quality_gate.judge(tracker, fitted, photos, probe, params)
    metrics = grading.metrics_report(fitted, photos, version, vae_config, params)
    served = metrics["champion"]["run_id"]
    side_by_side = quality_gate.champions_side_by_side(tracker, champion_path, served, fitted, photos, params)
    if side_by_side is not None:
        metrics["champions"] = side_by_side.to_dict("records")
    write_reports(fitted, photos, side_by_side, out_dir, gallery_size=cfg.gallery_size)
    numbers = grading.headline_metrics(fitted, gate=verdict.figures())
    write_metrics(fresh_dir(metrics_path), numbers, "classify", prefix="")
    tags = {"kind": "classify"} | ({"forced_promotion": "true"} if verdict.forced else {})
    with tracker.run("classify", run_id=run_id, started_at=started_at, tags=tags) as rid:
        tracker.log_metrics(rid, numbers)
        registered = quality_gate.register_quality_model(
            tracker, rid, fitted, photos, vae, vae_config, version, meta["data_version"], cfg.model_name, verdict
        )
        metrics |= quality_gate.verdict_report(verdict, cfg.model_name, registered)
        write_json(out_dir / "metrics.json", metrics)
        tracker.log_artifacts(rid, out_dir, "classify")
    return metrics


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
