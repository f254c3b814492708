"""`evalset` stage: a dedicated simulated evaluation set for the supervised metrics.

Ground-truth factors exist only where photos are simulated, and the supervised metrics
need many photos (MIG of a near-perfect code reads about 0.41 at n = 400 against 0.52 at
n = 10 000), none of them used for training or model selection. This stage simulates
`evaluate.set_size` photos from the simulator's evaluation streams (never a training
photo, whatever the seeds), takes each through the pipeline's JPEG, decode, centre crop
and resize in memory, and keeps only the arrays: data/evalset/evalset.npz (format:
`tubervae.data.processed.save_evalset`). With a real photo folder it records an empty
set, and the evaluate stage scores the test split's own factors when the folder has them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tubervae.config import Params, worker_count
from tubervae.data import synth_dataset, synth_factors
from tubervae.data.processed import save_evalset
from tubervae.data.splits import fingerprint
from tubervae.io import staged_dir, under, write_json

log = logging.getLogger(__name__)


def run(params: Params, *, root: str | Path = ".", out_dir: str | Path = "data/evalset") -> dict:
    data, prep, cfg = params.data, params.preprocess, params.evaluate
    out_dir = under(root, out_dir)
    with staged_dir(out_dir) as partial:
        if data.source != "synthetic":
            meta = {"n": 0, "reason": "the photos come from a folder: no simulated ground truth"}
            write_json(partial / "meta.json", meta)
            return meta
        images, table = synth_dataset.model_inputs(
            cfg.set_size,
            seed=cfg.set_seed,
            crop_fraction=prep.crop_fraction,
            image_size=prep.image_size,
            good_fraction=data.good_fraction,
            fixed=synth_factors.SIMULATORS[data.simulator],
            workers=worker_count(data.workers),
        )
        labels = (table["label"] == "bad").to_numpy(np.int8)
        factors = table[list(synth_factors.FACTOR_NAMES)].to_numpy(np.float32)
        meta = {
            "n": int(len(images)),
            "seed": cfg.set_seed,
            "image_size": prep.image_size,
            "crop_fraction": prep.crop_fraction,
            "simulator": data.simulator,
            "good": int((labels == 0).sum()),
            "bad": int((labels == 1).sum()),
            "scored_factors": list(synth_factors.SCORED_FACTORS),
            "version": fingerprint(images, factors),
        }
        save_evalset(partial, images, factors, synth_factors.FACTOR_NAMES, synth_factors.SCORED_FACTORS, labels, meta)
    log.info("evaluation set: %d simulated photos (%d bad)", meta["n"], meta["bad"])
    return meta
