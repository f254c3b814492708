"""`preprocess` stage: centre crop, resize, split into train / test / labelled / udr_probe.

The format of what it writes, data/processed/, is `tubervae.data.processed`. Known factors
(data/raw/factors.csv) reach every split as one row per photo, NaN for a photo that is not
measured; meta.json's `measured` counts the measured photos of each split.
"""

from __future__ import annotations

import logging
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from tubervae.config import Params, PreprocessConfig, worker_count
from tubervae.data.factors import measured_rows
from tubervae.data.images import load_model_input
from tubervae.data.processed import SPLITS, save_meta, save_split
from tubervae.data.splits import encode_labels, fingerprint, guide_mask, split_indices
from tubervae.io import staged_dir, under

log = logging.getLogger(__name__)


def _load(path, crop_fraction, image_size):
    return load_model_input(path, crop_fraction=crop_fraction, image_size=image_size)


def read_photos(paths: list[Path], cfg: PreprocessConfig, workers: int) -> np.ndarray:
    """The photos as model inputs, uint8 N×S×S×3 in the paths' order: each decoded, centre-cropped and
    resized (`data.images.load_model_input`), in `workers` processes when there are more than one."""
    fn = partial(_load, crop_fraction=cfg.crop_fraction, image_size=cfg.image_size)
    progress = dict(total=len(paths), desc="preprocess", unit="img")
    if workers > 1:
        with Pool(workers) as pool:
            arrays = list(tqdm(pool.imap(fn, paths, chunksize=32), **progress))
    else:
        arrays = list(tqdm(map(fn, paths), **progress))
    return np.stack(arrays)


def read_raw(raw_dir: Path) -> pd.DataFrame:
    """The raw stage's labels.csv, with its factors.csv (when there is one) merged in by file: a photo
    without a row there is not measured, and its factors are NaN."""
    labels_path = raw_dir / "labels.csv"
    if not labels_path.exists():
        raise FileNotFoundError(f"{labels_path} is missing: run the raw stage first (dvc repro raw)")
    frame = pd.read_csv(labels_path, keep_default_na=False, dtype={"label": str})
    factors_path = raw_dir / "factors.csv"
    if factors_path.exists():
        factors = pd.read_csv(factors_path)
        factors = factors.drop(columns=[c for c in ("label",) if c in factors.columns])
        names = [c for c in factors.columns if c != "file"]
        redo = "rerun the raw stage (dvc repro raw) rather than editing data/raw"
        incomplete = factors["file"][~measured_rows(factors[names].to_numpy(dtype=np.float64))]
        unknown = factors["file"][~factors["file"].isin(frame["file"])]
        for photos, what in ((incomplete, "without every factor"), (unknown, f"naming no photo of {labels_path}")):
            if len(photos):
                raise ValueError(
                    f"{factors_path} has {len(photos)} row(s) {what}, e.g. {', '.join(photos.astype(str).iloc[:5])}: "
                    f"{redo}"
                )
        frame = frame.merge(factors, on="file", how="left", validate="one_to_one")
    return frame


def run(
    params: Params,
    *,
    root: str | Path = ".",
    raw_dir: str | Path = "data/raw",
    out_dir: str | Path = "data/processed",
) -> dict:
    """Crop, resize and split the raw photos into `out_dir` (written whole or not at all); returns its meta.json.

    The settings are `params.preprocess`; `params.data.workers` decode the photos."""
    cfg = params.preprocess
    raw_dir, out_dir = under(root, raw_dir), under(root, out_dir)
    frame = read_raw(raw_dir)
    labels = encode_labels(frame["label"].tolist())
    images = read_photos([raw_dir / f for f in frame["file"]], cfg, worker_count(params.data.workers))
    splits = split_indices(
        labels,
        test_fraction=cfg.test_fraction,
        labelled_per_class=cfg.labelled_per_class,
        probe_size=cfg.probe_size,
        seed=cfg.seed,
    )
    guide = guide_mask(labels[splits["labelled"]], fraction=cfg.guide_fraction, seed=cfg.seed)
    with staged_dir(out_dir) as partial_dir:
        meta = write_splits(partial_dir, frame, images, labels, splits, guide, cfg)
    if meta["factor_names"]:
        log.info(
            "known factors for %d of the %d photos (%s)",
            int(measured_rows(frame[meta["factor_names"]].to_numpy(dtype=np.float64)).sum()),
            len(frame),
            ", ".join(f"{name} {meta['measured'][name]} of {meta['splits'][name]['n']}" for name in SPLITS),
        )
    for cls in ("good", "bad"):
        if meta["splits"]["labelled"][cls] < cfg.labelled_per_class:
            log.warning(
                "only %d %s photos in the labelled set (wanted %d)",
                meta["splits"]["labelled"][cls],
                cls,
                cfg.labelled_per_class,
            )
    return meta


def write_splits(
    folder: Path,
    frame: pd.DataFrame,
    images: np.ndarray,
    labels: np.ndarray,
    splits: dict,
    guide: np.ndarray,
    cfg: PreprocessConfig,
) -> dict:
    """Every split's arrays (`tubervae.data.processed`) and meta.json in `folder`; returns the meta."""
    factor_names = [c for c in frame.columns if c not in ("file", "label", "source")]
    counts, measured = {}, {}
    for name in SPLITS:
        rows = splits[name]
        arrays = {
            "images": images[rows],
            "labels": labels[rows],
            "rows": rows,
            "files": np.asarray(frame["file"].to_numpy()[rows], dtype=str),
        }
        if name == "labelled":
            arrays["guide"] = guide
        if factor_names:
            arrays["factors"] = frame[factor_names].to_numpy(dtype=np.float32)[rows]
            arrays["factor_names"] = np.asarray(factor_names, dtype=str)
        save_split(folder, name, arrays)
        measured[name] = int(measured_rows(arrays["factors"]).sum()) if factor_names else 0
        counts[name] = {
            "n": len(rows),
            "good": int((labels[rows] == 0).sum()),
            "bad": int((labels[rows] == 1).sum()),
            "unlabelled": int((labels[rows] == -1).sum()),
        }
    meta = {
        "data_version": fingerprint(images, labels, np.concatenate([splits[s] for s in SPLITS]), guide),
        "image_size": cfg.image_size,
        "crop_fraction": cfg.crop_fraction,
        "factor_names": factor_names,
        "splits": counts,
        "measured": measured,  # photos of each split with known factors (every factor finite)
        "guide": {
            "good": int((guide & (labels[splits["labelled"]] == 0)).sum()),
            "bad": int((guide & (labels[splits["labelled"]] == 1)).sum()),
        },
    }
    save_meta(folder, meta)
    return meta
