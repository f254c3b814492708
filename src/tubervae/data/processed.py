"""The on-disk format of data/processed/, read by every stage after preprocessing.

Each split is one uncompressed .npz with `images` (uint8, n×s×s×3), `labels` (1 bad,
0 good, −1 unlabelled), `rows` (row in data/raw/labels.csv), `files`, and `factors` +
`factor_names` when the photos carry ground-truth factors. `factors` (float32, n×k) has one
row per photo of the split; a photo whose factors were not measured (a folder's factors.csv
may measure only some photos) has a row of NaN, and `tubervae.data.factors.measured_rows`
selects the others. The labelled split also holds
`guide` (bool): the photos a guided family's head may train on; the others are the holdout
labels (`guide_mask` reads data without the key as all holdout). meta.json holds the data
version (a hash of the arrays) that every training run records, each split's counts, and
`measured`: how many photos of each split have factors (0 without factors).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tubervae.io import atomic_path, write_json

SPLITS = ("train", "test", "labelled", "udr_probe")


def save_split(folder: str | Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    """Write one split's arrays (see the module docstring for the keys)."""
    _check_split(name)
    missing = {"images", "labels", "rows", "files"} - set(arrays)
    if missing:
        raise ValueError(f"split {name!r} lacks arrays {sorted(missing)}")
    with atomic_path(Path(folder) / f"{name}.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def save_meta(folder: str | Path, meta: dict) -> None:
    write_json(Path(folder) / "meta.json", meta)


def load_split(name: str, processed_dir: str | Path = "data/processed") -> dict[str, np.ndarray]:
    """Load one split into memory; a clear error when preprocessing has not run."""
    _check_split(name)
    path = Path(processed_dir) / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the preprocess stage first (dvc repro preprocess)")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def guide_mask(labelled: dict[str, np.ndarray]) -> np.ndarray:
    """The labelled split's `guide` array (True = a guided head may train on the photo); all False without one."""
    n = len(labelled["labels"])
    guide = labelled.get("guide")
    if guide is None:
        return np.zeros(n, dtype=bool)
    guide = np.asarray(guide)
    if guide.dtype != bool or guide.shape != (n,):
        raise ValueError(f"the labelled split's guide must be {n} booleans, got {guide.dtype} {guide.shape}")
    return guide & (np.asarray(labelled["labels"]) >= 0)


def load_meta(processed_dir: str | Path = "data/processed") -> dict:
    path = Path(processed_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the preprocess stage first (dvc repro preprocess)")
    return json.loads(path.read_text())


def save_evalset(
    folder: str | Path,
    images: np.ndarray,
    factors: np.ndarray,
    factor_names,
    scored_names,
    labels: np.ndarray,
    meta: dict,
) -> None:
    """The dedicated evaluation set (data/evalset/): arrays as the models see them, factors, labels."""
    folder = Path(folder)
    with atomic_path(folder / "evalset.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            images=images,
            factors=np.asarray(factors, np.float32),
            labels=labels,
            factor_names=np.asarray(list(factor_names)),
            scored_names=np.asarray(list(scored_names)),
        )
    write_json(folder / "meta.json", meta)


def load_evalset(folder: str | Path = "data/evalset") -> dict[str, np.ndarray] | None:
    """The evaluation set's arrays, or None when the data has no simulated ground truth (meta n = 0)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} is missing: run the evalset stage first (dvc repro evalset)")
    if json.loads(meta_path.read_text()).get("n", 0) == 0:
        return None
    with np.load(folder / "evalset.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _check_split(name: str) -> None:
    if name not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
