"""What the test modules share: the on-disk data/processed, an empty MLflow store, a subprocess runner.

Kept whole: conftest.py is the one place pytest shares with every test module; what two or more test files
need (their tiny projects, session fixtures such as `registry_project`, helpers) lives here in sections named
by the files that use them, and the xdist schedule (FILE_SECONDS, SAME_WORKER_AS) must sit in this file.

Test modules import the plain helpers (`from conftest import write_processed, run_command`)
and request the fixtures by name.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from tubervae.data.processed import SPLITS, save_meta, save_split
from tubervae.data.splits import fingerprint

if TYPE_CHECKING:
    import optuna
    from mlflow.tracking import MlflowClient

    from tubervae.config import TrainConfig
    from tubervae.runs.tracker import Tracker
    from tubervae.runs.training_run import TrainingData
    from tubervae.training.setting import Setting

DECOY_RUN_ID = "0123456789abcdef0123456789abcdef"


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs one worker per core) each worker computes on one thread,
    and so do the stages and scripts it starts: N workers of all the cores each would fight over them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = "1"
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def new_sqlite_stores_copy_one_schema(empty_mlflow_db):
    """Every MLflow sqlite store this test process creates gets its schema copied from `empty_mlflow_db`:
    MLflow builds a schema by running its whole migration history, about 2 s a store, and the copy
    (SQLite's backup of that freshly built, still empty database) takes milliseconds. Stores on other
    back ends, and stores built by the stages and scripts the tests start, are built by MLflow itself."""
    import sqlite3

    import mlflow.store.db.utils as db_utils

    build = db_utils._initialize_tables

    def initialize_tables(engine):
        database = engine.url.database
        if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
            return build(engine)
        with contextlib.closing(sqlite3.connect(empty_mlflow_db)) as schema:
            with contextlib.closing(sqlite3.connect(database)) as target:
                schema.backup(target)
        return None

    db_utils._initialize_tables = initialize_tables
    yield
    db_utils._initialize_tables = build


@pytest.fixture(scope="session", autouse=True)
def working_folder_of_decoys(tmp_path_factory):
    """Every test runs from a working folder that looks like a finished pipeline but is not one:
    a champion.json naming a run no store holds, and an mlflow.db and optuna.db that are not
    databases. A stage that reads its project's files from the working folder, instead of from
    its `root` or the paths it is given, then fails loudly."""
    decoys = tmp_path_factory.mktemp("decoy-working-folder")
    (decoys / "reports" / "register").mkdir(parents=True)
    (decoys / "reports" / "register" / "champion.json").write_text(
        json.dumps({"run_id": DECOY_RUN_ID, "champions": {"udr": {"run_id": DECOY_RUN_ID}}})
    )
    for name in ("mlflow.db", "optuna.db"):
        (decoys / name).write_text("a decoy, not a database: a test read it from the working folder\n")
    for name in ("data/processed", "data/raw", "reports/udr", "reports/search"):
        (decoys / name).mkdir(parents=True, exist_ok=True)
    before = os.getcwd()
    os.chdir(decoys)
    try:
        yield decoys
    finally:
        os.chdir(before)


def write_processed(
    folder: Path,
    splits: dict[str, tuple],
    factor_names=(),
    *,
    data_version: str | None = None,
    crop_fraction: float = 0.8,
    guide: np.ndarray | None = None,
) -> dict:
    """data/processed as the preprocess stage writes it, from (images, labels[, factors[, rows]]) per split.

    Labels are 1 bad, 0 good, −1 unlabelled; rows default to consecutive numbers over the
    splits. `guide` is the labelled split's guide mask (none: no photo guides a head). Returns
    meta.json's content; the data version defaults to the hash of the arrays.
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
        if name == "labelled" and guide is not None:
            arrays["guide"] = np.asarray(guide, dtype=bool)
            everything.append(arrays["guide"])
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


def labelled_disc_splits(seed: int = 0, size: int = 16) -> tuple[dict[str, tuple], list[str]]:
    """A few dozen photos of bright discs on black (bad discs are dim), split as preprocess splits.

    Position, radius and brightness vary; the labelled split holds 10 good + 10 bad.
    Returns the splits for `write_processed` and the factor names.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]

    def photos(n, bad_fraction):
        bad = rng.random(n) < bad_fraction
        factors = rng.uniform(0, 1, (n, 3)).astype(np.float32)
        images = np.zeros((n, size, size, 3), np.uint8)
        for i in range(n):
            cx, r = 5 + 6 * factors[i, 0], 2 + 3 * factors[i, 1]
            level = 60 + 60 * factors[i, 2] if bad[i] else 150 + 100 * factors[i, 2]
            images[i][(xx - cx) ** 2 + (yy - size / 2) ** 2 <= r * r] = (level, 0.8 * level, 0.5 * level)
        return images, bad.astype(np.int64), factors

    splits = {}
    for name, n, bad_fraction in (("train", 64, 0.75), ("test", 40, 0.5), ("udr_probe", 32, 0.5)):
        images, labels, factors = photos(n, bad_fraction)
        splits[name] = (images, np.full(n, -1, np.int64) if name == "udr_probe" else labels, factors)
    (good, _, good_f), (bad, _, bad_f) = photos(10, 0.0), photos(10, 1.0)
    splits["labelled"] = (
        np.concatenate([good, bad]),
        np.r_[np.zeros(10, np.int64), np.ones(10, np.int64)],
        np.concatenate([good_f, bad_f]),
    )
    return splits, ["x", "radius", "brightness"]


def train_tiny_runs(tracker, data, betas_and_seeds, *, latent_dim: int = 3) -> list[str]:
    """Tiny β-VAE runs (8 steps, 1 thread) tracked in MLflow, one per (β, seed); their run ids in order.

    Callers that do not test the training pictures patch `tubervae.runs.training_run.figures` first.
    """
    from tubervae.config import TrainConfig
    from tubervae.runs.training_run import run_tracked
    from tubervae.training.setting import Setting

    cfg = TrainConfig(
        latent_dim=latent_dim,
        steps=8,
        batch_size=16,
        log_every=4,
        checkpoint_every=8,
        snapshot_every=0,
        device="cpu",
        threads=1,
    )
    return [
        run_tracked(
            tracker,
            Setting("beta_vae", beta),
            seed,
            cfg,
            data,
            kl_threshold=0.01,
            checkpoint_dir=tracker.root / "checkpoints",
            progress=False,
        )["run_id"]
        for beta, seed in betas_and_seeds
    ]


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, payload: dict | None = None, timeout: float = 60) -> tuple[int, dict | str]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body


def with_makefile(root: Path) -> Path:
    """`root` as a project whose Makefile targets run against its own stores: the Makefile and
    pyproject.toml (their times kept, so the environment counts as installed) and `.venv`, this
    test run's environment."""
    project = Path(__file__).resolve().parents[1]
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(project / name, root / name)
    venv = root / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    return root


def make_target(target: str, **variables) -> list[str]:
    """`make TARGET VAR=value …` without reinstalling: the installed-stamp is taken as up to date."""
    return ["make", "-o", ".venv/.installed-stamp", target, *(f"{k}={v}" for k, v in variables.items())]


@contextmanager
def started(command: list[str], cwd: Path, env: dict, log_path: Path, ready_url: str):
    """A server started by `command` in its own process group; yields its Popen once `ready_url`
    answers 200, and stops the whole group."""
    env = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, f"the server exited early:\n{log_path.read_text()[-3000:]}"
            try:
                if http(ready_url, timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no answer on {ready_url} in 90 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        yield server
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(server.pid, sig)
            except ProcessLookupError:
                break
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(0.5)


@contextmanager
def served(model_uri, env: dict, log_path: Path, *, make_root: Path | None = None):
    """`mlflow models serve` on a free port, or `make serve` in `make_root` (a `with_makefile`
    project), as the README runs it; yields (url, the server's Popen)."""
    port = free_port()
    if make_root is None:
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_uri), "--env-manager", "local"]
        command, cwd = [*command, "-h", "127.0.0.1", "-p", str(port), "-w", "1"], log_path.parent
    else:
        command, cwd = make_target("serve", SERVE_PORT=port, SERVE_MODEL=model_uri), make_root
    url = f"http://127.0.0.1:{port}"
    with started(command, cwd, env, log_path, f"{url}/ping") as server:
        yield url, server


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow sqlite database with its schema only: building the schema takes seconds, copying it none."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def tuber_factors(**overrides) -> dict[str, float]:
    """A simulated tuber's factor row: a mid-range good tuber; keyword arguments change single factors."""
    base = dict(
        x=0.0,
        y=0.0,
        size=0.45,
        elongation=1.3,
        rotation=30.0,
        tone=0.3,
        brightness=1.0,
        spot_area=0.0,
        greening=0.0,
        rot=0.0,
    )
    base.update(overrides)
    return base


# --- codes and factors for the supervised disentanglement metrics (test_mig, test_dci, test_sap, ...)

METRIC_ROWS = 800
METRIC_FACTOR_NAMES = ["shape", "scale", "flag", "tone"]
METRIC_LEVELS = [5, 4, 2]  # the discrete factors' levels; "tone" is continuous


def rotate_45(codes, i, j):
    """Components i and j replaced by their 45° rotation: each then carries half of both factors."""
    rotated = codes.copy()
    rotated[:, i] = (codes[:, i] - codes[:, j]) / np.sqrt(2)
    rotated[:, j] = (codes[:, i] + codes[:, j]) / np.sqrt(2)
    return rotated


def factorial(copies):
    """Two balanced binary factors, every combination ``copies`` times: independent exactly."""
    return np.array([[a, b] for a in (0, 1) for b in (0, 1)] * copies, dtype=float)


@pytest.fixture(scope="session")
def metric_codes():
    """Factors and three codes of them: (factors, aligned, rotated, noise), `METRIC_ROWS` rows each.

    Factors: three discrete (5, 4 and 2 equally likely levels) and one continuous, independent.
    Aligned: component j = standardised factor j + 1 % noise, then one pure-noise component.
    Rotated: the aligned code with "shape" and "scale" mixed by a 45° rotation. Noise: nothing.
    """
    rng = np.random.default_rng(0)
    n = METRIC_ROWS
    discrete = np.column_stack([rng.integers(0, levels, n) for levels in METRIC_LEVELS]).astype(float)
    factors = np.hstack([discrete, rng.uniform(0.0, 1.0, size=(n, 1))])
    standardised = (factors - factors.mean(axis=0)) / factors.std(axis=0)
    copied = standardised + 0.01 * rng.standard_normal(factors.shape)
    aligned = np.hstack([copied, rng.standard_normal((factors.shape[0], 1))])
    rotated = rotate_45(aligned, 0, 1)  # "shape" and "scale" mixed
    noise = rng.standard_normal(aligned.shape)
    return factors, aligned, rotated, noise


# --- tiny searches (test_search, test_study, test_trials, test_pool, test_objective, test_pruning, ...):
# 16×16 discs, 20 training steps, 2 seeds. Each trained run normally also draws three matplotlib
# pictures (traversals etc.), which cost more than the training here; those belong to the train stage
# and are tested with it, so these tests replace them with nothing (`no_pictures`; in worker
# subprocesses too, through `WORKER`, a small launcher that then calls the `tubervae` command's `main`).

FAMILY = "beta_vae"
STEPS, CHECKPOINT_EVERY, LOG_EVERY = 20, 5, 5
RAW_PARAMS = {
    "data": {"n_images": 300},
    "preprocess": {"image_size": 16, "probe_size": 48},
    "train": {
        "latent_dim": 4,
        "steps": STEPS,
        "batch_size": 16,
        "lr": 0.02,
        "checkpoint_every": CHECKPOINT_EVERY,
        "log_every": LOG_EVERY,
        "snapshot_every": 0,
        "device": "cpu",
        "threads": 1,
        "workers": 1,
        "precision": "float32",  # lr 0.02 opens every component in 20 steps in float32; `auto` differs by CPU
    },
    "search": {"seeds": 2, "min_active": 0, "spaces": {FAMILY: {"n_trials": 1, "beta": [1.0, 8.0], "beta_log": True}}},
    "udr": {"similarity": "spearman"},
}

# Started as `python worker.py <tubervae arguments>`: the `tubervae` command without the
# per-run pictures. With BLOCK_AT_SEED_1 set to a path it writes that file and stops for
# good when seed 1 logs step 10 (after the step-5 checkpoint, before the step-10 one),
# so the test can kill it in the middle of a trial; only the first seed 1 to get there stops.
WORKER = """
import os, sys, time
from pathlib import Path
import tubervae.runs.training_run as stage

stage.figures = lambda *args, **kwargs: {}
marker = os.environ.get("BLOCK_AT_SEED_1")
if marker:
    train_model = stage.train_model

    def blocking_train_model(setting, seed, cfg, **kwargs):
        on_log = kwargs["on_log"]

        def hooked(metrics, step):
            on_log(metrics, step)
            if seed == 1 and step >= 10 and not Path(marker).exists():  # once: a seed that goes again trains on
                Path(marker).write_text(str(os.getpid()))
                time.sleep(3600)

        kwargs["on_log"] = hooked
        return train_model(setting, seed, cfg, **kwargs)

    stage.train_model = blocking_train_model

if __name__ == "__main__":  # training pool workers re-import this file (spawn): only the parent runs the CLI
    from tubervae.cli import main

    sys.exit(main(sys.argv[1:]))
"""


def merged(base: dict, **sections) -> dict:
    out = json.loads(json.dumps(base))
    for section, values in sections.items():
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(out[section].get(key), dict):
                out[section][key].update(value)
            else:
                out[section][key] = value
    return out


def write_processed_discs(folder: Path, size: int = 16, seed: int = 0, guide: np.ndarray | None = None) -> None:
    """data/processed as the preprocess stage writes it: bright discs at random places, sizes, brightness."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    counts = {"train": 128, "test": 16, "labelled": 16, "udr_probe": 48}
    splits = {}
    for name, n in counts.items():
        f = np.column_stack(
            [rng.uniform(4, size - 4, n), rng.uniform(4, size - 4, n), rng.uniform(2, 4, n), rng.uniform(0.4, 1.0, n)]
        ).astype(np.float32)
        disc = (xx - f[:, 0, None, None]) ** 2 + (yy - f[:, 1, None, None]) ** 2 <= f[:, 2, None, None] ** 2
        gray = (disc * f[:, 3, None, None] * 255).astype(np.uint8)
        labels = -np.ones(n, np.int64) if name == "udr_probe" else (f[:, 2] > 3).astype(np.int64)
        splits[name] = (np.repeat(gray[..., None], 3, axis=-1), labels, f)
    write_processed(
        folder, splits, ["x", "y", "radius", "brightness"], data_version=f"discs-{size}-{seed}", guide=guide
    )


@pytest.fixture
def project(tmp_path, empty_mlflow_db, monkeypatch) -> Path:
    """A project root with tiny processed data and a fresh MLflow database; cwd is the root."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    write_processed_discs(tmp_path / "data" / "processed")
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    return tmp_path


@pytest.fixture
def no_pictures(monkeypatch):
    monkeypatch.setattr("tubervae.runs.training_run.figures", lambda *args, **kwargs: {})


def run_search(root: Path, raw: dict, **kwargs) -> dict:
    from tubervae.config import parse_params
    from tubervae.stages import search

    return search.run(
        parse_params(raw),
        FAMILY,
        root=root,
        processed_dir=root / "data" / "processed",
        reports_dir=root / "reports" / "search",
        progress=False,
        **kwargs,
    )


def load_study(root: Path, raw: dict, storage: str | None = None) -> optuna.Study:
    import optuna

    from tubervae.config import parse_params
    from tubervae.runs.study import storage_url, study_name
    from tubervae.runs.training_run import load_training_data

    data = load_training_data(root / "data" / "processed")
    name = study_name(FAMILY, parse_params(raw), data.data_version)
    return optuna.load_study(study_name=name, storage=storage or storage_url(root))


def client(root: Path) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def all_runs(root: Path) -> list:
    c = client(root)
    ids = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(ids, max_results=1000)


def start_worker(root: Path, args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`tubervae <args>` in `root`; its output goes to a log file (a full pipe would stall it)."""
    (root / "worker.py").write_text(WORKER)
    log = open(root / f"worker-{len(list(root.glob('worker-*.log')))}.log", "w")
    try:
        proc = subprocess.Popen(
            [sys.executable, str(root / "worker.py"), *args],
            cwd=root,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()
    proc.log_path = Path(log.name)
    return proc


def stop(proc: subprocess.Popen) -> str:
    """Kill the worker if it still runs; its output."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    return proc.log_path.read_text()


def kill_search_at_seed_1(project: Path, timeout: float) -> tuple[int, int]:
    """Start `tubervae search` (the WORKER script) and kill -9 it once seed 1 has logged step 10.

    Returns the pid of the process that trained seed 1 and that of the search.
    """
    marker = project / "blocked"
    proc = start_worker(project, ["search", "--family", FAMILY], env={"BLOCK_AT_SEED_1": str(marker)})
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists() or not marker.read_text():
            assert proc.poll() is None, f"search ended early:\n{stop(proc)}"
            assert time.monotonic() < deadline, f"seed 1 never got to step 10:\n{stop(proc)}"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    return int(marker.read_text()), proc.pid


# --- a tiny model registry (test_registry, test_quality_gate, test_model_server, test_promotion): 16×16
# labelled discs (bad discs are dim), β-VAEs trained for 8 steps and registered by the register stage.

TINY_SIZE = 16
TINY_LATENT = 4
TINY_CROP = 0.8
TINY_DATA_VERSION = "tiny-v1"
VAE_NAME = "tubervae-vae"
QUALITY_NAME = "tuber-quality"


def write_labelled_discs(folder: Path, seed: int = 0) -> Path:
    """The files the preprocess stage writes, for a few dozen 16×16 photos (bad discs are dim)."""
    splits, names = labelled_disc_splits(seed, TINY_SIZE)
    write_processed(folder, splits, names, data_version=TINY_DATA_VERSION, crop_fraction=TINY_CROP)
    return folder


def load_split(folder: Path, split: str) -> dict:
    with np.load(folder / f"{split}.npz") as data:
        return {k: data[k] for k in data.files}


def models_row(run_id, family, beta, seed, udr, n_active, feasible=True, c_max=0.0, udr_a2a=0.3):
    setting = f"{beta:g}" if family != "cbeta_vae" else f"{beta:g}_{c_max:g}"
    return {
        "run_id": run_id,
        "trial": 0,
        "feasible": feasible,
        "family": family,
        "beta": float(beta),
        "c_max": float(c_max),
        "seed": seed,
        "setting": setting,
        "data_version": TINY_DATA_VERSION,
        "n_active": n_active,
        "udr_within": udr,
        "udr_a2a": udr_a2a,
    }


def write_models_csv(udr_dir: Path, rows: list[dict]) -> None:
    import pandas as pd

    udr_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(udr_dir / "models.csv", index=False)


def two_tiny_vaes(root: Path, empty_db: Path) -> tuple[Path, Tracker, dict[float, str]]:
    """Tiny processed data under `root` and two tracked β-VAE runs on it (β 2 and 6, seed 0), by β.

    The store starts as a copy of `empty_db` (the `empty_mlflow_db` fixture): building its schema takes seconds."""
    from tubervae.runs.tracker import Tracker
    from tubervae.runs.training_run import TrainingData

    processed = write_labelled_discs(root / "data" / "processed")
    shutil.copy(empty_db, root / "mlflow.db")
    tracker = Tracker(root)
    data = TrainingData(
        train=load_split(processed, "train")["images"],
        probe=load_split(processed, "udr_probe")["images"],
        test=load_split(processed, "test")["images"],
        data_version=TINY_DATA_VERSION,
    )
    # The training pictures are not under test here and cost most of a tiny run's time.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tubervae.runs.training_run.figures", lambda *args, **kwargs: {})
        runs = dict(zip((2.0, 6.0), train_tiny_runs(tracker, data, [(2.0, 0), (6.0, 0)], latent_dim=TINY_LATENT)))
    return processed, tracker, runs


@contextlib.contextmanager
def one_model_registry(tmp_path_factory, empty_db: Path, name: str, beta: int, udr: float = 0.70, n_active: int = 3):
    """A module fixture's project: `two_tiny_vaes` under a fresh folder `name`, the VAE of `beta` alone in the UDR
    table; MLFLOW_TRACKING_URI unset while it lives. Yields (root, processed, runs by β)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp(name)
        processed, _, runs = two_tiny_vaes(root, empty_db)
        write_models_csv(root / "reports" / "udr", [models_row(runs[float(beta)], "beta_vae", beta, 0, udr, n_active)])
        yield root, processed, runs


def tiny_params():
    from tubervae.config import parse_params

    return parse_params(
        {"classify": {"label_sizes": [6, 100], "n_draws": 1, "cnn_steps": 5, "gallery_size": 4, "seed": 0}}
    )


def use_registry(root: Path) -> str:
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


@pytest.fixture(scope="session")
def registry_project(tmp_path_factory, empty_mlflow_db):
    """Two tiny VAEs; register β=2 (only model in the first UDR table), then β=6 (better, in the second),
    then the second table again (no change); then classify with the champion. Built once per session (per
    xdist worker): the tests that use it leave its registry as they found it."""
    from tubervae.stages import classify, register

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("project")
        processed, tracker, runs = two_tiny_vaes(root, empty_mlflow_db)
        params = tiny_params()
        udr_dir = root / "reports" / "udr"
        out = root / "reports" / "register" / "champion.json"
        kwargs = dict(root=root, udr_dir=udr_dir, processed_dir=processed, out_path=out)

        write_models_csv(udr_dir, [models_row(runs[2.0], "beta_vae", 2, 0, 0.40, 4)])
        first = register.run(params, **kwargs)
        first_file = json.loads(out.read_text())
        table = [models_row(runs[2.0], "beta_vae", 2, 0, 0.40, 4), models_row(runs[6.0], "beta_vae", 6, 0, 0.70, 3)]
        write_models_csv(udr_dir, table)
        second = register.run(params, **kwargs)
        again = register.run(params, **kwargs)

        metrics = classify.run(params, root=root, processed_dir=processed, out_dir=root / "reports" / "classify")
        yield {
            "root": root,
            "processed": processed,
            "runs": runs,
            "first": first,
            "first_file": first_file,
            "second": second,
            "again": again,
            "second_file": json.loads(out.read_text()),
            "metrics": metrics,
            "table": table,
        }


def client_for(root: Path) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    uri = use_registry(root)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def store_folder(client: MlflowClient, name: str, version: str | None = None) -> Path:
    """Where the tracking store keeps the files of `name`'s version (default: the champion's)."""
    version = version or client.get_model_version_by_alias(name, "champion").version
    uri = client.get_model_version_download_uri(name, version)
    return Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))


def logged_vae(client: MlflowClient, run_id: str):
    """The MLflow model that the training run `run_id` logged (exactly one), named for what it is."""
    experiment = client.get_run(run_id).info.experiment_id
    (model,) = client.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}'")
    params = client.get_run(run_id).data.params
    beta = f"{float(params['beta']):.3g}".replace(".", ",")
    assert model.name == f"vae-{params['family']}-{beta}-s{params['seed']}"  # as the run: s0 beta_vae 2.61
    return model


MARKER_CODE = "\nimport pathlib\npathlib.Path({marker!r}).write_text('the code from the artifact store ran')\n"


@contextmanager
def changed_file(path: Path, content: bytes):
    """`path` (in the tracking store) holding `content` for the duration; put back, or removed if it was new."""
    original = path.read_bytes() if path.exists() else None
    path.write_bytes(content)
    try:
        yield path
    finally:
        if original is None:
            path.unlink()
        else:
            path.write_bytes(original)


@pytest.fixture
def no_model_loads(monkeypatch):
    """The list of every `mlflow.pyfunc.load_model` call made through the registry (each still runs)."""
    import mlflow

    from tubervae.runs import registry

    calls, real = [], mlflow.pyfunc.load_model
    monkeypatch.setattr(registry.mlflow.pyfunc, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


# --- photos of any size and labels rewritten (test_registry, test_model_server, test_ingest, test_quality_gate)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """One 16×16 colour grid hidden in two photos of other sizes so that the pipeline's centre crop
    (0.8 of the shorter side) and box resize recover it exactly:
    a 50×40 PNG (crop 32×32 at x 9, y 4; each grid cell a 2×2 block) and a 30×20 array (crop 16×16 at x 7, y 2),
    also sent PNG-encoded as `encoded`.
    """
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    grid = rng.integers(0, 256, (TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    big = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    big[4:36, 9:41] = grid.repeat(2, axis=0).repeat(2, axis=1)
    path = folder / "tuber.png"
    Image.fromarray(big).save(path)
    small = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    small[2:18, 7:23] = grid
    not_image = folder / "notes.png"
    not_image.write_text("this is not a picture")
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, "PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return {"grid": grid, "path": path, "array": small, "encoded": encoded, "not_image": not_image}


def png_16_bit_rgb(pixels: np.ndarray) -> bytes:
    """A PNG with 16 bits per channel (colour type 2, depth 16), written by hand: Pillow writes none."""
    wide = (pixels.astype(">u2") * 257).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in wide)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def with_labels(processed: Path, keep) -> None:
    """Rewrite the labelled and test splits' labels: `keep(split, labels)` returns the new labels, -1 unlabelled."""
    for split in ("labelled", "test"):
        with np.load(processed / f"{split}.npz") as data:
            arrays = {k: data[k] for k in data.files}
        arrays["labels"] = keep(split, arrays["labels"]).astype(arrays["labels"].dtype)
        np.savez(processed / f"{split}.npz", **arrays)


# --- runs as the training stage leaves them, for the udr and evaluate stages (test_udr_stage, test_evaluate):
# disc photos with their factors, an own tracking store per project root, latents logged as artifacts.

N_PROBE = 200
PROBE_FACTOR_NAMES = ["x", "y", "radius", "brightness"]
MODEL_STEPS = 40  # the steps logged for the runs of `log_model`


@pytest.fixture
def own_tracking_store(monkeypatch):
    """Every Tracker of a test uses sqlite:///<its root>/mlflow.db, whatever the caller's shell says."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


def fresh_root(root: Path, empty_mlflow_db: Path) -> Path:
    """A project root with an empty tracking store whose Default experiment stores under root/mlruns."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_mlflow_db, root / "mlflow.db")
    with sqlite3.connect(root / "mlflow.db") as con:
        con.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(root / "mlruns" / "0"),)
        )
    con.close()
    return root


def bright_discs(rng: np.random.Generator, n: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs on a dark background; factors x, y (offset from the centre), radius, brightness."""
    factors = np.column_stack(
        [rng.uniform(-3, 3, n), rng.uniform(-3, 3, n), rng.uniform(2, 5, n), rng.uniform(0.4, 1.0, n)]
    ).astype(np.float32)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    images = np.full((n, size, size, 3), 20, np.uint8)
    for i, (x, y, r, b) in enumerate(factors):
        inside = (xx - x) ** 2 + (yy - y) ** 2 <= r**2
        images[i][inside] = np.array([255 * b, 230 * b, 160 * b]).astype(np.uint8)
    return images, factors


def write_probe_discs(
    root: Path, *, seed: int = 0, n_train: int = 120, n_test: int = 60, with_factors: bool = True
) -> str:
    """The files the preprocess stage writes, for disc images; returns the data version."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    images, factors = bright_discs(rng, n)
    labels = (factors[:, 3] < 0.7).astype(np.int8)  # dim discs are 'bad'
    rows = {"train": np.arange(n_train), "test": np.arange(n_train, n)}
    rows["labelled"] = np.concatenate([np.flatnonzero(labels[:n_train] == c)[:5] for c in (0, 1)])
    rows["udr_probe"] = np.arange(min(N_PROBE, n_train))
    splits = {
        name: (images[idx], labels[idx], factors[idx] if with_factors else None, idx) for name, idx in rows.items()
    }
    meta = write_processed(root / "data" / "processed", splits, PROBE_FACTOR_NAMES if with_factors else ())
    return meta["data_version"]


def log_model(
    tracker: Tracker,
    *,
    family: str,
    beta: float,
    c_max: float = 0.0,
    seed: int,
    data_version: str,
    mu: np.ndarray,
    kl: np.ndarray,
    guide_weight: float = 0.0,
    legacy: bool = False,
) -> str:
    """A finished VAE run as the training stage leaves it, as far as the udr stage reads it: a few params and
    the whole configuration in its file; `legacy`: as runs were logged before that file, every setting a param."""
    from tubervae.config import TrainConfig
    from tubervae.runs import training_run as train_stage
    from tubervae.runs import vae_artifacts
    from tubervae.training.setting import Setting

    setting = Setting(family=family, beta=beta, c_max=c_max, guide_weight=guide_weight)
    tags = {"kind": "vae", "family": family, "setting": setting.label, "seed": seed}
    guide = {"guide_weight": guide_weight, "guided_component": 0} if setting.guided else {}
    config = {"family": family, "beta": beta, "c_max": c_max, "seed": seed, "data_version": data_version, **guide}
    with tracker.run(f"{family} {setting.label} seed {seed}", tags=tags) as rid:
        if legacy:
            tracker.log_params(rid, {**config, "steps": MODEL_STEPS})
        else:
            tracker.log_params(rid, train_stage.run_params(setting, seed, TrainConfig(steps=MODEL_STEPS)))
            vae_artifacts.log_training_config(tracker, rid, {**config, "steps": MODEL_STEPS})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "latents.npz"
            np.savez(path, mu=mu, logvar=np.zeros_like(mu), kl=kl)
            tracker.log_artifact(rid, path)
    return rid


def clean_copy(truth: np.ndarray, keep: list[int], n_dead: int, rng: np.random.Generator):
    """The factors `keep`, permuted, sign-flipped and rescaled, plus `n_dead` collapsed components."""
    n = len(truth)
    signs = rng.choice([-1.0, 1.0], len(keep))
    scales = rng.uniform(0.5, 2.0, len(keep))
    live = truth[:, keep] * signs * scales + 0.02 * rng.normal(size=(n, len(keep)))
    dead = 0.01 * rng.normal(size=(n, n_dead))
    mu = np.hstack([live, dead])
    kl = np.concatenate([rng.uniform(0.5, 2.0, len(keep)), np.full(n_dead, 0.001)])
    order = rng.permutation(mu.shape[1])
    return mu[:, order], kl[order]


def stage_paths(root: Path) -> dict:
    return dict(
        root=root,
        search_dir=root / "reports" / "search",
        out_dir=root / "reports" / "udr",
        processed_dir=root / "data" / "processed",
    )


def is_png(path: Path) -> bool:
    with Image.open(path) as img:
        return img.format == "PNG" and img.size[0] > 50 and img.size[1] > 50


# --- tiny training runs (test_train, test_training_run, test_tracker, test_device): 16×16 images of bright
# discs (position, radius and brightness are the factors), a 4-component latent space, batches of 16 and
# at most 40 steps on one thread. `isolated_training` tracks each test into its own folder.

SPLIT_SIZES = {"train": 128, "test": 24, "labelled": 16, "udr_probe": 32}
DISC_FACTOR_NAMES = ["x", "y", "radius", "brightness"]


def disc_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Grey discs on black: uint8 (n, 16, 16, 3) and their factors (n, 4)."""
    factors = np.stack(
        [rng.uniform(4, 12, n), rng.uniform(4, 12, n), rng.uniform(2, 4, n), rng.uniform(0.4, 1.0, n)], axis=1
    ).astype(np.float32)
    yy, xx = np.mgrid[0:TINY_SIZE, 0:TINY_SIZE] + 0.5
    inside = (xx - factors[:, 0, None, None]) ** 2 + (yy - factors[:, 1, None, None]) ** 2 <= factors[
        :, 2, None, None
    ] ** 2
    grey = np.round(inside * factors[:, 3, None, None] * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1), factors


def write_training_discs(folder: Path) -> dict:
    """The files the preprocess stage writes, for a tiny disc data set; returns meta.json's content."""
    rng = np.random.default_rng(0)
    splits = {}
    for name, n in SPLIT_SIZES.items():
        images, factors = disc_images(n, rng)
        labels = (np.arange(n) % 2) if name == "labelled" else np.full(n, -1)
        splits[name] = (images, labels, factors)
    return write_processed(folder, splits, DISC_FACTOR_NAMES)


def tiny_cfg(**changes) -> TrainConfig:
    from tubervae.config import TrainConfig

    values = dict(
        latent_dim=TINY_LATENT,
        steps=10,
        batch_size=16,
        lr=1e-3,
        checkpoint_every=5,
        log_every=5,
        snapshot_every=0,
        device="cpu",
        threads=1,
        precision="float32",  # tests that compare numbers say which; `auto` differs between CPUs
    )
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture
def isolated_training(monkeypatch, tmp_path):
    """Each test tracks into its own folder and leaves torch's thread count as it found it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def new_project(root: Path, empty_db: Path) -> dict:
    """A project root with tiny processed data and an empty MLflow store; returns meta.json's content."""
    meta = write_training_discs(root / "data" / "processed")
    shutil.copyfile(empty_db, root / "mlflow.db")
    return meta


@pytest.fixture
def data(tmp_path) -> TrainingData:
    """The tiny disc photos of `write_training_discs`, loaded as the train stage loads them."""
    from tubervae.runs import training_run as stage

    write_training_discs(tmp_path / "data" / "processed")
    return stage.load_training_data(tmp_path / "data" / "processed")


def train(data: TrainingData, cfg: TrainConfig, setting: Setting | None = None, seed: int = 0, **kwargs):
    """`train_model` on the tiny disc photos, without a progress bar; the setting defaults to β-VAE β 4."""
    from tubervae.training.loop import train_model
    from tubervae.training.setting import Setting

    setting = Setting("beta_vae", 4.0) if setting is None else setting
    kwargs.setdefault("data_version", data.data_version)
    return train_model(
        setting,
        seed,
        cfg,
        train_images=data.train,
        probe_images=data.probe,
        test_images=data.test,
        progress=False,
        **kwargs,
    )


def assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert list(a) == list(b)
    unequal = [k for k in a if not torch.equal(a[k].cpu(), b[k].cpu())]
    assert not unequal, f"tensors differ: {unequal}"


def store_client(root: Path) -> MlflowClient:
    """An independent client on the documented default store, sqlite:///<root>/mlflow.db."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")


def store_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("tubervae")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def guided_discs(folder: Path, *, flip: str = "") -> TrainingData:
    """Tiny disc photos with labels everywhere: labelled rows 0..7 guide, 8..15 are the holdout labels.

    `flip` turns good into bad and back in one place: "holdout" (the labelled rows that do not guide),
    "test" (the test split's labels) or "guide" (one guide row).
    """
    from tubervae.runs import training_run as stage

    rng = np.random.default_rng(0)
    splits = {}
    for name, n in SPLIT_SIZES.items():
        images, factors = disc_images(n, rng)
        labels = np.arange(n) % 2 if name in ("labelled", "test") else np.full(n, -1)
        splits[name] = [images, labels, factors]
    guide = np.arange(SPLIT_SIZES["labelled"]) < 8
    labelled, test = splits["labelled"][1], splits["test"][1]
    if flip == "holdout":
        labelled[~guide] = 1 - labelled[~guide]
    elif flip == "test":
        splits["test"][1] = 1 - test
    elif flip == "guide":
        labelled[3] = 1 - labelled[3]
    write_processed(folder, {k: tuple(v) for k, v in splits.items()}, DISC_FACTOR_NAMES, guide=guide)
    return stage.load_training_data(folder)


# --- latents and labelled photos for the rules and the classify stage (test_classify, test_grading)


def separable_latents(seed=0, n_good=20, n_bad=20, d=4, component=2):
    """Component `component` has good in [-2, -1] and bad in [1, 2]; the rest is noise."""
    rng = np.random.default_rng(seed)
    latents = rng.normal(size=(n_good + n_bad, d))
    bad = np.r_[np.zeros(n_good, bool), np.ones(n_bad, bool)]
    latents[~bad, component] = rng.uniform(-2, -1, n_good)
    latents[bad, component] = rng.uniform(1, 2, n_bad)
    return latents, bad


def guided_processed(folder):
    """A tiny processed folder whose labelled split's first 6 rows guide a head, and a guided champion's config."""
    rng = np.random.default_rng(0)
    splits = {}
    for name, n in {"train": 12, "test": 12, "labelled": 12, "udr_probe": 4}.items():
        labels = np.arange(n) % 2 if name in ("labelled", "test") else np.full(n, -1)
        splits[name] = (rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8), labels)
    guide = np.arange(12) < 6
    meta = write_processed(folder, splits, guide=guide)
    return splits, guide, meta, {"image_size": 16, "data_version": meta["data_version"]}


# --- how `make test` shares the files between its workers (pytest-xdist, `--dist loadfile`)

# Seconds a file's tests took in a full run on 2 cores (`--durations`, summed; AMD EPYC Zen 4, pytest-xdist's two
# workers and nothing else running), for the files over 10 s: only their order counts. Files are handed out
# longest first, so that the long ones run side by side on the two workers rather than one after another at the
# end (xdist's own order is by number of tests, which puts these last); the rest follow in xdist's order. A
# file's figure only orders the queue: a wrong one costs time, never a test.
FILE_SECONDS: dict[str, float] = {
    "test_pipeline.py": 116,
    "test_gpu_smoke_profile.py": 81,
    "test_pool.py": 67,
    "test_killed_stages.py": 48,
    "test_dvc_workflow.py": 47,
    "test_pruning.py": 47,
    "test_registry.py": 39,  # with test_quality_gate.py and test_model_server.py (SAME_WORKER_AS)
    "test_train.py": 37,  # in a new environment: inductor compiles the compiled-training test afresh (~25 s)
    "test_study.py": 30,
    "test_udr_stage.py": 26,
    "test_objective.py": 18,
    "test_training_run.py": 18,
    "test_fused.py": 14,
    "test_evaluate.py": 14,
    "test_trials.py": 13,
    "test_settings_flow.py": 12,
    "test_supervised.py": 11,
}
# Files whose tests share a session fixture with another file's: they run on that file's worker, which builds
# the fixture once (registry_project, a tiny trained registry).
SAME_WORKER_AS = {"test_quality_gate.py": "test_registry.py", "test_model_server.py": "test_registry.py"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, longest files first, with the files of SAME_WORKER_AS kept together."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongestFilesFirst(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            folder, _, name = path.rpartition("/")
            return f"{folder}/{SAME_WORKER_AS[name]}" if name in SAME_WORKER_AS else path

        def schedule(self) -> None:
            if self.collection is None and self.collection_is_completed and not self.workqueue:
                # xdist fills its queue by assigning to it, which keeps the order of keys already there.
                nodeids = next(iter(self.registered_collections.values()))
                sizes: dict[str, int] = {}
                for nodeid in nodeids:
                    scope = self._split_scope(nodeid)
                    sizes[scope] = sizes.get(scope, 0) + 1
                for scope in sorted(sizes, key=lambda s: (-FILE_SECONDS.get(s.rpartition("/")[2], 0.0), -sizes[s])):
                    self.workqueue[scope] = {}
            super().schedule()
            if self.collection is None:  # the workers collected different tests: xdist stops the run
                self.workqueue.clear()

    return LongestFilesFirst(config, log)


def pytest_collection_modifyitems(config, items):
    """A test marked `cuda` is skipped where torch sees no CUDA device (tests/test_cuda.py)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
