"""`source` stage: a fingerprint of the photos that `data.source` names, so that DVC sees them change.

dvc.yaml cannot name the photo folder as a dependency of the raw stage: `data.source` is either
'synthetic' (no folder at all) or a folder anywhere, inside the project or not, and a DVC
dependency must exist. So this stage always runs (`always_changed` in dvc.yaml), scans the
folder as the import would (`tubervae.data.images.folder_fingerprint`: every entry's name and
decision, the content of every photo and of factors.csv) and writes reports/data/source.json.
The raw stage depends on that file, so `dvc repro` re-imports exactly when a photo or
factors.csv was added, removed, renamed or changed, and skips the import otherwise. With
`data.source: synthetic` the file holds that word only, and never changes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tubervae.config import DataConfig, Params
from tubervae.data.images import folder_fingerprint, source_folder
from tubervae.io import under, write_json

log = logging.getLogger(__name__)


def fingerprint(cfg: DataConfig, root: str | Path = ".") -> dict:
    """The fingerprint of `data.source` (a relative folder is read from the project folder `root`)."""
    if cfg.source == "synthetic":
        return {"source": "synthetic"}
    folder = source_folder(cfg.source, root)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.source: {cfg.source!r} ({folder}) is neither 'synthetic' nor an existing folder")
    return {"source": cfg.source, **folder_fingerprint(folder)}


def run(params: Params, *, root: str | Path = ".", out_path: str | Path = "reports/data/source.json") -> dict:
    """Write the fingerprint of `params.data.source` to `out_path` (atomically) and return it."""
    found = fingerprint(params.data, root)
    write_json(under(root, out_path), found)
    return found
