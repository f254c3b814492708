"""`raw` stage: the photo set in data/raw/, simulated (default) or imported from a folder.

A folder of real photos: `good/` and `bad/` subfolders give labels; photos elsewhere
are unlabelled (still used by the unsupervised stages). Every file is inspected
(`tubervae.data.images.inspect_image`); each gets a line in reports/data/ingest.csv.
The user's folder is only read, never changed.
"""

from __future__ import annotations

import logging
import shutil
from multiprocessing import Pool
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tubervae.config import DataConfig, worker_count
from tubervae.data.images import inspect_image, list_images
from tubervae.io import staged_dir, write_csv

log = logging.getLogger(__name__)
LABEL_FOLDERS = ("good", "bad")


class IngestError(RuntimeError):
    """Too little of the photo folder is usable."""


def _label_of(path: Path, root: Path) -> str:
    first = path.relative_to(root).parts[0].lower()
    return first if first in LABEL_FOLDERS and len(path.relative_to(root).parts) > 1 else ""


def _ingest_one(task):
    index, source, root, out_dir, wrong_size = task
    result = inspect_image(source, wrong_size=wrong_size)
    row = {
        "source": str(source.relative_to(root)),
        "status": result.status,
        "reason": result.reason,
        "label": _label_of(source, root),
        "file": "",
    }
    if result.image is not None:
        if result.status == "accepted":
            name = f"images/photo_{index:05d}{source.suffix.lower()}"
            shutil.copyfile(source, out_dir / name)
        else:
            name = f"images/photo_{index:05d}.png"
            result.image.save(out_dir / name)
        row["file"] = name
    return row


def import_folder(cfg: DataConfig, out_dir: Path, report_path: Path) -> pd.DataFrame:
    """Inspect and copy a folder of photos into `out_dir`; returns the ingestion report."""
    root = Path(cfg.source).expanduser().resolve()
    if not root.is_dir():
        raise IngestError(f"data.source: {cfg.source!r} is neither 'synthetic' nor an existing folder")
    sources = list_images(root)
    if not sources:
        raise IngestError(f"data.source: no image files (jpg, png, bmp, tif, webp) under {root}")
    (out_dir / "images").mkdir(parents=True)
    tasks = [(i, p, root, out_dir, cfg.wrong_size) for i, p in enumerate(sources)]
    workers = worker_count(cfg.workers)
    with Pool(workers) if workers > 1 else _InProcess() as pool:
        rows = list(tqdm(pool.imap(_ingest_one, tasks, chunksize=16), total=len(tasks), desc="ingest", unit="img"))
    report = pd.DataFrame(rows, columns=["source", "status", "reason", "label", "file"])
    write_csv(report_path, report)
    rejected = (report.status == "rejected").mean()
    usable = int((report.status != "rejected").sum())
    if usable == 0:
        raise IngestError(f"none of the {len(report)} files is usable; reasons are in {report_path}")
    if rejected > cfg.max_rejected_fraction:
        raise IngestError(
            f"{rejected:.1%} of the files were rejected, above data.max_rejected_fraction "
            f"{cfg.max_rejected_fraction:.1%}; reasons are in {report_path}"
        )
    kept = report[report.status != "rejected"]
    write_csv(out_dir / "labels.csv", kept[["file", "label", "source"]])
    log.info(
        "imported %d photos (%d converted, %d rejected)",
        usable,
        int((report.status == "converted").sum()),
        int((report.status == "rejected").sum()),
    )
    return report


class _InProcess:
    """Pool stand-in for one worker: easier to debug, no process start-up."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap(fn, tasks, chunksize=1):
        return map(fn, tasks)


def run(cfg: DataConfig, *, out_dir: str | Path = "data/raw", reports_dir: str | Path = "reports/data") -> Path:
    """Produce data/raw/ (images/, labels.csv, factors.csv when simulated) and the data reports."""
    from tubervae.data import synth

    out_dir, reports_dir = Path(out_dir), Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    with staged_dir(out_dir) as partial:
        if cfg.source == "synthetic":
            frame = synth.generate(
                partial, cfg.n_images, seed=cfg.seed, good_fraction=cfg.good_fraction, workers=worker_count(cfg.workers)
            )
            report = pd.DataFrame(
                {
                    "source": frame["file"],
                    "status": "generated",
                    "reason": "",
                    "label": frame["label"],
                    "file": frame["file"],
                }
            )
            write_csv(reports_dir / "ingest.csv", report)
        else:
            import_folder(cfg, partial, reports_dir / "ingest.csv")
        synth.contact_sheet(partial, reports_dir / "contact_sheet.png", seed=cfg.seed)
    return out_dir
