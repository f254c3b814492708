"""Simulated data sets: a raw photo folder on disk (`generate`), an evaluation set in memory
(`model_inputs`), and a contact sheet of a folder (`contact_sheet`).

Factors are drawn by :mod:`.synth_factors` and each photo by :mod:`.synth_render`.
Images are reproducible: factors come from `default_rng([seed, 0])`, image i is
drawn from `default_rng([seed, 1, i])`, so the bytes do not depend on the number
of workers. An evaluation set draws from streams of its own, so it never repeats a
training photo.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from tubervae.checks import check_int
from tubervae.config import GOOD_FRACTION
from tubervae.data.images import load_model_input
from tubervae.data.synth_factors import (
    DEFECT_COLUMNS,
    FACTOR_NAMES,
    check_good_fraction,
    defect_names,
    labels_from_factors,
    sample_factors,
)
from tubervae.data.synth_render import render_tuber, warm_caches
from tubervae.io import atomic_path, write_csv


def _image_name(index: int, n_images: int) -> str:
    width = max(5, len(str(n_images - 1)))
    return f"images/tuber_{index:0{width}d}.jpg"


def _render_and_save(task: tuple) -> int:
    """Worker: draw image `index` from its own seed and write it (temp file, then rename)."""
    index, row, seed, path, quality = task
    rng = np.random.default_rng([seed, 1, index])
    image = render_tuber(row, rng)
    tmp = f"{path}.tmp{os.getpid()}"
    Image.fromarray(image, mode="RGB").save(tmp, format="JPEG", quality=quality)
    os.replace(tmp, path)
    return index


def generate(
    out_dir: str | os.PathLike,
    n_images: int,
    *,
    seed: int = 0,
    good_fraction: float = GOOD_FRACTION,
    workers: int | None = None,
    progress: bool = True,
    jpeg_quality: int = 90,
    fixed: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Write a simulated data set: images/tuber_*.jpg, labels.csv and factors.csv (`fixed`: `sample_factors`).

    The CSVs are written last (temp file + rename) and any old ones are removed
    first, so an interrupted run never leaves a labels.csv describing missing or
    stale images. Images of an earlier, larger run that the new CSVs do not list
    are deleted, so the folder is exactly the data set. Returns the factors with
    `file` (relative to `out_dir`) first and `label` last.
    """
    n_images = check_int("n_images", n_images, 1)
    seed = check_int("seed", seed, 0)
    check_good_fraction(good_fraction)
    jpeg_quality = check_int("jpeg_quality", jpeg_quality, 1, 95)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = check_int("workers", workers, 1)
    workers = min(workers, n_images)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir must be a directory, got the file {str(out)!r}")
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for name in ("labels.csv", "factors.csv"):
        (out / name).unlink(missing_ok=True)

    factors = sample_factors(n_images, np.random.default_rng([seed, 0]), good_fraction, fixed=fixed)
    files = [_image_name(i, n_images) for i in range(n_images)]
    records = factors.to_dict("records")
    tasks = [(i, records[i], seed, str(out / files[i]), jpeg_quality) for i in range(n_images)]

    warm_caches()  # forked workers inherit the textures instead of rebuilding them
    with tqdm(total=n_images, desc="simulating tubers", unit="img", disable=not progress) as bar:
        if workers == 1:
            for task in tasks:
                _render_and_save(task)
                bar.update()
        else:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            chunk = max(1, min(16, n_images // (4 * workers)))
            with ctx.Pool(workers) as pool:
                for _ in pool.imap_unordered(_render_and_save, tasks, chunksize=chunk):
                    bar.update()

    keep = {Path(f).name for f in files}
    for stale in images_dir.glob("tuber_*.jpg"):
        if stale.name not in keep:
            stale.unlink()

    table = factors.copy()
    table.insert(0, "file", files)
    table["label"] = labels_from_factors(factors).to_numpy()
    write_csv(out / "factors.csv", table[["file", *FACTOR_NAMES]])
    write_csv(out / "labels.csv", table[["file", "label"]])
    return table


# ------------------------------------------------------------------ an evaluation set in memory

# Random streams: the raw data set draws factors from [seed, 0] and photo i from [seed, 1, i];
# an evaluation set draws from [seed, 2] and [seed, 3, i], so it never repeats a training photo.
_EVAL_FACTORS_STREAM, _EVAL_IMAGES_STREAM = 2, 3


def _render_model_input(task: tuple) -> np.ndarray:
    """Worker: photo `index` as the pipeline would store and preprocess it (JPEG, decode, crop, resize)."""
    index, row, seed, quality, crop_fraction, image_size = task
    image = render_tuber(row, np.random.default_rng([seed, _EVAL_IMAGES_STREAM, index]))
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return load_model_input(buffer, crop_fraction=crop_fraction, image_size=image_size)


def model_inputs(
    n_images: int,
    *,
    seed: int,
    crop_fraction: float,
    image_size: int,
    good_fraction: float = GOOD_FRACTION,
    workers: int | None = None,
    progress: bool = True,
    jpeg_quality: int = 90,
    fixed: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """`n_images` simulated photos as the models see them, with their factors, written nowhere.

    Each photo takes the raw data's path (JPEG at `jpeg_quality`, then the preprocess
    stage's decode, centre crop and resize) without touching the disk, from random
    streams of its own: a held-out evaluation set of any size, never a training photo.
    Returns uint8 (n, size, size, 3) and the factors (`FACTOR_NAMES`, then `label`).
    `fixed` holds factors at constants (`sample_factors`).
    """
    n_images = check_int("n_images", n_images, 1)
    seed = check_int("seed", seed, 0)
    check_good_fraction(good_fraction)
    jpeg_quality = check_int("jpeg_quality", jpeg_quality, 1, 95)
    workers = min(check_int("workers", workers or os.cpu_count() or 1, 1), n_images)
    factors = sample_factors(n_images, np.random.default_rng([seed, _EVAL_FACTORS_STREAM]), good_fraction, fixed=fixed)
    records = factors.to_dict("records")
    tasks = [(i, records[i], seed, jpeg_quality, crop_fraction, image_size) for i in range(n_images)]
    warm_caches()
    with tqdm(total=n_images, desc="simulating an evaluation set", unit="img", disable=not progress) as bar:
        if workers == 1:
            arrays = []
            for task in tasks:
                arrays.append(_render_model_input(task))
                bar.update()
        else:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            chunk = max(1, min(32, n_images // (4 * workers)))
            with ctx.Pool(workers) as pool:
                arrays = []
                for array in pool.imap(_render_model_input, tasks, chunksize=chunk):
                    arrays.append(array)
                    bar.update()
    table = factors[list(FACTOR_NAMES)].copy()
    table["label"] = labels_from_factors(factors).to_numpy()
    return np.stack(arrays), table


# ----------------------------------------------------------------- looking at it


def contact_sheet(out_dir: str | os.PathLike, png_path: str | os.PathLike, *, n: int = 24, seed: int = 0) -> Path:
    """Save a grid of `n` random photos from a generated folder, captioned with label and defects."""
    # A pyplot-free figure on the Agg canvas: no global backend switch, nothing left open.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = check_int("n", n, 1)
    seed = check_int("seed", seed, 0)
    out = Path(out_dir)
    labels_path = out / "labels.csv"
    if not labels_path.is_file():
        raise ValueError(f"out_dir must hold a generated data set with labels.csv, got {str(out)!r}")
    labels = pd.read_csv(labels_path, keep_default_na=False, dtype={"label": str})
    factors_path = out / "factors.csv"
    factors = pd.read_csv(factors_path) if factors_path.is_file() else None
    if factors is not None and not set(DEFECT_COLUMNS.values()) <= set(factors.columns):
        factors = None  # an older simulator's columns: caption the label only
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(labels), size=min(n, len(labels)), replace=False))

    cols = min(6, len(picks))
    rows = math.ceil(len(picks) / cols)
    fig = Figure(figsize=(2.6 * cols, 2.25 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks):
        with Image.open(out / labels.loc[i, "file"]) as img:
            ax.imshow(np.asarray(img.convert("RGB")))
        caption = str(labels.loc[i, "label"]) or "unlabelled"
        if factors is not None:
            names = defect_names(factors.loc[i])
            if names:
                caption += ": " + ", ".join(names)
        colour = "tab:red" if labels.loc[i, "label"] == "bad" else "tab:blue"
        ax.set_title(caption, fontsize=8, color=colour)
    fig.tight_layout()
    png = Path(png_path)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return png
