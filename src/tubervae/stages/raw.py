"""`raw` stage: the photo set in data/raw/, simulated (default) or imported from a folder.

A folder of real photos: `good/` and `bad/` subfolders give labels; photos elsewhere
are unlabelled (still used by the unsupervised stages). A `factors.csv` at the top of the
folder gives the known factors of some or all of the photos (`tubervae.data.factors`): checked
against the photos kept, and the measured photos' rows (only theirs) written as
data/raw/factors.csv, so the evaluate stage scores the models against them; the log and
factors.csv's line in ingest.csv say how many of the kept photos are measured. Every entry
under the folder gets a line in reports/data/ingest.csv (`tubervae.data.images.scan_folder`
lists the rules): files with an image suffix are inspected (`tubervae.data.images.inspect_image`) and are
"accepted", "converted" or "rejected"; files without one and links to folders inside the
folder are "skipped"; broken links, link loops, links leading outside the folder (never
followed: nothing outside is opened, copied or walked), fifos and folders that cannot be
listed are "rejected". A link
inside the folder to a photo inside the folder is followed: the photo is read from its
real path and labelled by the link's place (so a photo linked from `good/` is imported
once more, as a good one). The user's folder is only read, never changed. A relative
`data.source` is a folder of the project (`root`), never of the working folder. A name that
is not valid UTF-8 is reported with its odd bytes escaped (`tubervae.data.images.shown_name`).

The stage is all or nothing: data/raw/, ingest.csv and the contact sheet replace the previous
ones together, once the whole import succeeded. An empty folder is a one-line error; an import
refused for its photos writes its report to ingest.failed.csv instead, and the error names it.

`data.max_rejected_fraction` is the rejected share of the entries that look like photos
(an image suffix), rejected links named like photos included. Files without an image
suffix (README.txt, Thumbs.db, .DS_Store) are neither in the numerator nor in the
denominator: they say nothing about the photos, and counting them would make an import
pass or fail on the clutter beside the photos. Rejections without an image suffix (a fifo,
a folder that cannot be listed, a link named `data` leading outside) are logged as a
warning and written to the report but do not count.
"""

from __future__ import annotations

import logging
import shutil
from multiprocessing import Pool
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tubervae.config import DataConfig, Params, worker_count
from tubervae.data.factors import FACTORS_FILE, factors_for_photos, read_factor_table
from tubervae.data.images import IMAGE_SUFFIXES, inspect_image, scan_folder, shown_name, source_folder
from tubervae.io import atomic_path, staged_dir, under, write_csv

log = logging.getLogger(__name__)
LABEL_FOLDERS = ("good", "bad")


class IngestError(RuntimeError):
    """Too little of the photo folder is usable."""


def _label_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0].lower() if len(parts) > 1 and parts[0].lower() in LABEL_FOLDERS else ""


def _ingest_one(task):
    index, source, read_from, root, out_dir, wrong_size = task
    result = inspect_image(read_from, wrong_size=wrong_size)  # read_from is inside root: checked by scan_folder
    row = {
        "source": shown_name(source.relative_to(root)),
        "status": result.status,
        "reason": shown_name(result.reason),
        "label": _label_of(source, root),
        "file": "",
    }
    if result.image is not None:
        if result.status == "accepted":
            suffix = read_from.suffix.lower() if read_from.suffix.lower() in IMAGE_SUFFIXES else source.suffix.lower()
            name = f"images/photo_{index:05d}{suffix}"
            shutil.copyfile(read_from, out_dir / name)
        else:
            name = f"images/photo_{index:05d}.png"
            result.image.save(out_dir / name)
        row["file"] = name
    return row


def import_folder(
    cfg: DataConfig, out_dir: Path, report_path: Path, *, root: str | Path = ".", failed_path: Path | None = None
) -> pd.DataFrame:
    """Inspect and copy the folder `data.source` (relative: to the project folder `root`) into `out_dir`;
    returns the ingestion report (one row per entry).

    The report is written to `report_path` only when the import succeeds. When it fails for the photos'
    sake (no image file, none usable, too many rejected), it goes to `failed_path` (default
    `failed_report(report_path)`) instead, and the error names that file: the previous report keeps
    describing the previous import, which stays in place.
    """
    folder = source_folder(cfg.source, root)  # relative: to the project folder, never the working folder
    if not folder.is_dir():
        raise IngestError(f"data.source: {cfg.source!r} ({folder}) is neither 'synthetic' nor an existing folder")
    entries = scan_folder(folder)
    if not entries:
        raise IngestError(
            f"data.source: the folder {folder} is empty: put the photos in it (good/ and bad/ for labels)"
        )
    candidates = [e for e in entries if e.read_from is not None]
    (out_dir / "images").mkdir(parents=True)
    tasks = [(i, e.source, e.read_from, folder, out_dir, cfg.wrong_size) for i, e in enumerate(candidates)]
    workers = worker_count(cfg.workers)
    with Pool(workers) if workers > 1 and tasks else _InProcess() as pool:
        inspected = list(tqdm(pool.imap(_ingest_one, tasks, chunksize=16), total=len(tasks), desc="ingest", unit="img"))
    rows = iter(inspected)
    report = pd.DataFrame(
        [
            next(rows)
            if e.read_from is not None
            else {
                "source": shown_name(e.source.relative_to(folder)),
                "status": e.status,
                "reason": shown_name(e.reason),
                "label": _label_of(e.source, folder),
                "file": "",
            }
            for e in entries
        ],
        columns=["source", "status", "reason", "label", "file"],
    )
    factors_path = folder / FACTORS_FILE
    has_factors = factors_path.is_file()
    if has_factors:  # how many photos it measures is said once the table is checked
        report.loc[report.source == FACTORS_FILE, "reason"] = "the photos' known factors (data/raw/factors.csv)"
    failed = failed_path or failed_report(report_path)
    failed.unlink(missing_ok=True)
    photo_like = report[pd.Series([e.has_image_suffix for e in entries], index=report.index)]
    others_rejected = int((report.status == "rejected").sum()) - int((photo_like.status == "rejected").sum())
    if others_rejected:
        log.warning("%d entries without an image suffix were rejected; reasons are in the report", others_rejected)
    usable = int(report.status.isin(["accepted", "converted"]).sum())
    problem = None
    if photo_like.empty:
        problem = f"data.source: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}; what was found"
    elif usable == 0:
        problem = f"none of the {len(photo_like)} image files is usable; the reasons"
    elif (rejected := (photo_like.status == "rejected").mean()) > cfg.max_rejected_fraction:
        problem = (
            f"{rejected:.1%} of the image files were rejected, above data.max_rejected_fraction "
            f"{cfg.max_rejected_fraction:.1%}; the reasons"
        )
    if problem:
        write_csv(failed, report)
        raise IngestError(f"{problem} are in {failed} (the previous import and its report are unchanged)")
    kept = report[report.status.isin(["accepted", "converted"])]
    if has_factors:
        read_from = {
            shown_name(e.source.relative_to(folder)): shown_name(e.read_from.relative_to(folder).as_posix())
            for e in candidates
        }
        photos = kept.assign(read_from=kept.source.map(read_from))
        factors = factors_for_photos(read_factor_table(factors_path), photos, report.source, factors_path)
        measured = f"{len(factors)} of the {len(kept)} photos kept"
        report.loc[report.source == FACTORS_FILE, "reason"] = f"the known factors of {measured} (data/raw/factors.csv)"
        write_csv(out_dir / FACTORS_FILE, factors)
        log.info("factors (%s) measured for %s", ", ".join(factors.columns[1:]), measured)
    write_csv(report_path, report)
    write_csv(out_dir / "labels.csv", kept[["file", "label", "source"]])
    log.info(
        "imported %d photos (%d converted, %d rejected, %d skipped)",
        usable,
        int((report.status == "converted").sum()),
        int((report.status == "rejected").sum()),
        int((report.status == "skipped").sum()),
    )
    return report


def failed_report(report_path: Path) -> Path:
    """Where the report of an import that failed goes, beside the report of the last one that succeeded."""
    return report_path.with_name(f"{report_path.stem}.failed{report_path.suffix}")


class _InProcess:
    """Pool stand-in for one worker: easier to debug, no process start-up."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap(fn, tasks, chunksize=1):
        return map(fn, tasks)


def run(
    params: Params,
    *,
    root: str | Path = ".",
    out_dir: str | Path = "data/raw",
    reports_dir: str | Path = "reports/data",
) -> Path:
    """Produce data/raw/ (images/, labels.csv, factors.csv when simulated) and the data reports, as
    `params.data` says."""
    from tubervae.data import synth_dataset, synth_factors

    cfg = params.data
    out_dir, reports_dir = under(root, out_dir), under(root, reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    # The report and the contact sheet are made beside the photos and take their place together, once
    # the whole import succeeded: a failure leaves the previous import and its report as they were.
    with (
        atomic_path(reports_dir / "ingest.csv") as report_tmp,
        atomic_path(reports_dir / "contact_sheet.png") as sheet_tmp,
        staged_dir(out_dir) as partial,
    ):
        if cfg.source == "synthetic":
            frame = synth_dataset.generate(
                partial,
                cfg.n_images,
                seed=cfg.seed,
                good_fraction=cfg.good_fraction,
                workers=worker_count(cfg.workers),
                fixed=synth_factors.SIMULATORS[cfg.simulator],
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
            report.to_csv(report_tmp, index=False)
        else:
            import_folder(cfg, partial, report_tmp, root=root, failed_path=failed_report(reports_dir / "ingest.csv"))
        synth_dataset.contact_sheet(partial, sheet_tmp, seed=cfg.seed)
    return out_dir
