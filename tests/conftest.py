"""What the test modules share: the on-disk data/processed, an empty MLflow store, a subprocess runner.

Test modules import the plain helpers (`from conftest import write_processed, run_command`)
and request the fixtures by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tubervae.data.processed import SPLITS, save_meta, save_split
from tubervae.data.splits import fingerprint


def write_processed(
    folder: Path,
    splits: dict[str, tuple],
    factor_names=(),
    *,
    data_version: str | None = None,
    crop_fraction: float = 0.8,
) -> dict:
    """data/processed as the preprocess stage writes it, from (images, labels[, factors[, rows]]) per split.

    Labels are 1 bad, 0 good, −1 unlabelled; rows default to consecutive numbers over the
    splits. Returns meta.json's content; the data version defaults to the hash of the arrays.
    """
    if set(splits) != set(SPLITS):
        raise ValueError(f"write_processed needs the splits {SPLITS}, got {sorted(splits)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts, start, everything = {}, 0, []
    for name in SPLITS:
        images, labels, factors, rows = (*splits[name], None, None)[:4]
        labels = np.asarray(labels)
        rows = np.arange(start, start + len(images)) if rows is None else np.asarray(rows)
        start += len(images)
        arrays = {
            "images": images,
            "labels": labels,
            "rows": rows,
            "files": np.asarray([f"images/{name}_{i:05d}.png" for i in rows]),
        }
        if factors is not None:
            arrays.update(factors=np.asarray(factors, np.float32), factor_names=np.asarray(list(factor_names)))
        save_split(folder, name, arrays)
        everything += [images, labels]
        counts[name] = {
            "n": int(len(images)),
            "good": int((labels == 0).sum()),
            "bad": int((labels == 1).sum()),
            "unlabelled": int((labels == -1).sum()),
        }
    meta = {
        "data_version": data_version or fingerprint(*everything),
        "image_size": int(images.shape[1]),
        "crop_fraction": crop_fraction,
        "factor_names": list(factor_names),
        "splits": counts,
    }
    save_meta(folder, meta)
    return meta


def run_command(
    args: list[str], cwd: Path, *, env: dict | None = None, timeout: float = 180, check: bool = False
) -> subprocess.CompletedProcess:
    """Run a command in its own process group, output captured; the whole group is killed if it overruns."""
    proc = subprocess.Popen(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(map(str, args))} ran over {timeout} s:\n{out[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    result = subprocess.CompletedProcess(args, proc.returncode, out, None)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {result.returncode}:\n{out[-3000:]}")
    return result


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow sqlite database with its schema only: building the schema takes seconds, copying it none."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path
