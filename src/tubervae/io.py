"""Atomic file output: a crash or a kill never leaves half a file or half a folder.

Every writer of the project goes through `atomic_path` (one file) or `staged_dir`
(a whole folder): the content is written beside its destination, then renamed over it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    `mode` is applied before the rename (mkstemp makes owner-only files; reports are for everyone).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def under(root: str | Path, path: str | Path) -> Path:
    """`path` read from the project folder `root` (an absolute path stays as it is), never from the
    working folder: a stage run from elsewhere reads and writes its own project's files."""
    return Path(root) / path


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def metrics_files(numbers: dict, main: str, prefix: str | None = None) -> dict[str, dict]:
    """A stage's numbers-only metrics as the files that `dvc metrics show <file>` prints one table each for,
    one column per number: the top-level numbers in `<main>.json`, each group of numbers (a dict) in
    `<prefix><group>.json` (prefix: `<main>_`), so that no file's table outgrows a terminal. `<main>.json`
    is left out when the numbers are all in groups, and written empty when there are none at all."""
    prefix = f"{main}_" if prefix is None else prefix
    top = {k: v for k, v in numbers.items() if not isinstance(v, dict)}
    groups = {f"{prefix}{group}.json": values for group, values in numbers.items() if isinstance(values, dict)}
    return ({f"{main}.json": top} if top or not groups else {}) | groups


def write_metrics(folder: str | Path, numbers: dict, main: str, prefix: str | None = None) -> list[Path]:
    """Write `metrics_files(numbers, main, prefix)` into `folder`; returns the paths written."""
    paths = []
    for name, values in metrics_files(numbers, main, prefix).items():
        write_json(Path(folder) / name, values)
        paths.append(Path(folder) / name)
    return paths


def write_csv(path: str | Path, frame) -> None:
    """Write a pandas DataFrame as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def fresh_dir(path: str | Path) -> Path:
    """`path` as an empty folder: a stage's figures folder, declared whole to DVC, keeps nothing
    of an earlier run (a heat map the new settings no longer draw)."""
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh sibling folder; on success it replaces `final`, on error it is removed.

    Outputs of a stage appear whole or not at all.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)
