"""`register` stage: promote the champion VAE in the MLflow Model Registry.

Settings in, a few calls, files out: the models the udr stage scored (reports/udr/models.csv) and the
labelled photos no guidance head trained on go in; `tubervae.runs.champion` chooses the model
(`register.select`, `search.objective`: the policy is its docstring); `tubervae.runs.promotion` passes it
through the gate and registers it as `tubervae-vae@champion` (or `@challenger`, the gate's line says why);
reports/register/champion.json comes out, logged with the champion's figures on the stage's own run.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from tubervae.config import Params
from tubervae.data.processed import load_meta
from tubervae.io import write_json
from tubervae.runs import champion, promotion
from tubervae.stages.common import open_tracker, project_paths


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
    udr_dir, processed_dir, out_path = project_paths(root, udr_dir, processed_dir, out_path)
    models_path = udr_dir / "models.csv"
    if not models_path.exists():
        raise FileNotFoundError(f"{models_path} is missing: run the udr stage first (dvc repro udr)")
    models = pd.read_csv(models_path, dtype={"setting": str})
    by_udr = champion.choose_champion(models, params.register.udr_tolerance)  # none feasible: said before any store
    tracker = open_tracker(root, run_id, create=False)  # runs come from earlier stages: never a new store
    meta, labelled = load_meta(processed_dir), champion.holdout_labels(processed_dir)
    choice = champion.choose(tracker, by_udr, models, labelled, processed_dir, params)
    verdict = promotion.judge(tracker, choice.champion, models, choice.select, labelled, meta, params)
    tags = promotion.run_tags(choice.champion, verdict)
    with tracker.run("register", run_id=run_id, started_at=started_at, tags=tags) as rid:
        summary = promotion.promote_choice(tracker, choice, verdict, meta, params)
        write_json(out_path, summary)
        promotion.record(tracker, rid, summary, out_path.parent, root, params)
    return summary
