"""The data stages end to end: `dvc repro preprocess` in a temporary copy of the project.

Kept whole: its subject is the data stages together (raw then preprocess, some tests the evalset and evaluate
stages after them, through `dvc repro` or in-process), not one module; the `dvc repro` tests share the module
fixture `dvc_project`, and the photo-folder tests share its helpers (`photo`, `load_processed`, `snapshot`).

One DVC project with 60 simulated photos is built once for the module (`dvc_project`);
tests that change it put it back as they found it. A folder of real photos, failures
half-way and the MLproject entry points are checked beside it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import run_command
from tubervae import cli
from tubervae.config import DataConfig, Params, PreprocessConfig
from tubervae.data.factors import FactorTableError, measured_rows
from tubervae.data.splits import fingerprint
from tubervae.data.synth_factors import FACTOR_NAMES
from tubervae.stages import evalset, evaluate, preprocess, raw

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPLITS = ("train", "test", "labelled", "udr_probe")
N_IMAGES, PROBE, PER_CLASS, SIZE, CROP = 60, 20, 5, 16, 0.8
TINY = {
    "data": {"n_images": N_IMAGES, "workers": 2},
    "preprocess": {"image_size": SIZE, "probe_size": PROBE, "labelled_per_class": PER_CLASS, "crop_fraction": CROP},
}


# ------------------------------------------------------------------ helpers


def tiny_params(**changes) -> dict:
    """The project's params.yaml with the tiny data settings (and `changes`, section -> values)."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for section, values in {**TINY, **changes}.items():
        params[section] = {**params[section], **TINY.get(section, {}), **values}
    return params


def write_params(root: Path, params: dict, name: str = "params.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_cmd(args: list[str], root: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a command in `root` (see conftest.run_command), without the caller's MLflow and DVC settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(root.parent / "dvc_site_cache"),
        MPLBACKEND="Agg",
    )
    return run_command(args, root, env=env, timeout=timeout)


def repro(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cmd([str(BIN / "dvc"), "repro", *extra, "preprocess"], root)


def load_processed(folder: Path) -> tuple[dict, dict]:
    splits = {}
    for name in SPLITS:
        with np.load(folder / f"{name}.npz", allow_pickle=False) as data:
            splits[name] = {k: data[k] for k in data.files}
    return splits, json.loads((folder / "meta.json").read_text())


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def block_mean(img: Image.Image, crop_fraction: float, size: int) -> np.ndarray:
    """Centre square of side crop_fraction × shorter side, averaged over size × size blocks."""
    array = np.asarray(img.convert("RGB"), dtype=float)
    h, w = array.shape[:2]
    side = round(min(h, w) * crop_fraction)
    top, left = (h - side) // 2, (w - side) // 2
    square = array[top : top + side, left : left + side]
    k = side // size
    return square.reshape(size, k, size, k, 3).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    """A copy of the project's pipeline and sources with tiny params, after `dvc repro preprocess`."""
    root = tmp_path_factory.mktemp("pipeline") / "project"
    root.mkdir()
    shutil.copyfile(PROJECT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(PROJECT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    write_params(root, tiny_params())
    init = run_cmd([str(BIN / "dvc"), "init", "--no-scm", "-q"], root)
    assert init.returncode == 0, init.stdout
    first = repro(root)
    assert first.returncode == 0, first.stdout[-4000:]
    return {
        "root": root,
        "output": first.stdout,
        "data_version": json.loads((root / "data/processed/meta.json").read_text())["data_version"],
    }


# ------------------------------------------------------------------ dvc repro


@pytest.mark.slow
def test_repro_builds_raw_and_processed_data(dvc_project):
    root = dvc_project["root"]
    out = dvc_project["output"]
    assert "Running stage 'raw'" in out and "Running stage 'preprocess'" in out

    # data/raw: the simulated photos, their labels and true factors.
    photos = sorted((root / "data/raw/images").iterdir())
    assert len(photos) == N_IMAGES
    for path in photos:
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (640, 480))
    labels = pd.read_csv(root / "data/raw/labels.csv", keep_default_na=False)
    factors = pd.read_csv(root / "data/raw/factors.csv")
    assert labels.columns.tolist() == ["file", "label"] and len(labels) == N_IMAGES
    assert factors.columns.tolist() == ["file", *FACTOR_NAMES]
    assert factors.file.tolist() == labels.file.tolist() == [f"images/{p.name}" for p in photos]
    no_defect = (factors.spot_count == 0) & (factors.greening == 0) & (factors.rot == 0)
    assert (labels.label == np.where(no_defect, "good", "bad")).all()
    assert 0 < no_defect.sum() < N_IMAGES  # both classes present

    # reports/data: one ingestion line per photo, a contact sheet.
    ingest = pd.read_csv(root / "reports/data/ingest.csv", keep_default_na=False)
    assert ingest.columns.tolist() == ["source", "status", "reason", "label", "file"]
    assert (ingest.status == "generated").all()
    assert ingest.file.tolist() == labels.file.tolist() and ingest.label.tolist() == labels.label.tolist()
    with Image.open(root / "reports/data/contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and min(sheet.size) > 200

    # data/processed: four splits of the same rows, arrays as documented.
    splits, meta = load_processed(root / "data/processed")
    codes = np.where(labels.label == "good", 0, 1)
    for name, arrays in splits.items():
        rows = arrays["rows"]
        n = len(rows)
        assert arrays["images"].dtype == np.uint8 and arrays["images"].shape == (n, SIZE, SIZE, 3), name
        assert arrays["images"].std() > 5 and arrays["images"].max() > 100, name  # photos, not blanks
        assert arrays["labels"].dtype == np.int8 and (arrays["labels"] == codes[rows]).all(), name
        assert arrays["files"].tolist() == labels.file.to_numpy()[rows].tolist(), name
        assert arrays["factors"].dtype == np.float32 and arrays["factors"].shape == (n, len(FACTOR_NAMES))
        np.testing.assert_allclose(arrays["factors"], factors[list(FACTOR_NAMES)].to_numpy()[rows], rtol=1e-6)
        assert arrays["factor_names"].tolist() == list(FACTOR_NAMES)
        assert meta["splits"][name] == {
            "n": n,
            "good": int((codes[rows] == 0).sum()),
            "bad": int((codes[rows] == 1).sum()),
            "unlabelled": 0,
        }
    train, test = set(splits["train"]["rows"]), set(splits["test"]["rows"])
    assert not train & test and train | test == set(range(N_IMAGES))
    for cls in (0, 1):  # the test set keeps the class ratio
        assert (codes[list(test)] == cls).sum() == round(0.2 * (codes == cls).sum())
    labelled, probe = splits["labelled"]["rows"], splits["udr_probe"]["rows"]
    assert set(labelled) <= train and sorted(codes[labelled].tolist()) == [0] * PER_CLASS + [1] * PER_CLASS
    assert set(probe) <= train and len(set(probe)) == PROBE

    # Pixels: the centre crop of the photo, shrunk by block averaging (JPEG decoding may differ slightly).
    first = splits["train"]
    with Image.open(root / "data/raw" / first["files"][0]) as img:
        expected = block_mean(img, CROP, SIZE)
    assert np.abs(first["images"][0] - expected).mean() < 3

    # meta.json: the settings and a data version that is the hash of exactly these arrays.
    assert meta["image_size"] == SIZE and meta["crop_fraction"] == CROP
    assert meta["factor_names"] == list(FACTOR_NAMES)
    images = np.empty((N_IMAGES, SIZE, SIZE, 3), np.uint8)
    for name in ("train", "test"):
        images[splits[name]["rows"]] = splits[name]["images"]
    order = np.concatenate([splits[name]["rows"] for name in SPLITS])
    # The guide mask (which labelled photos a guidance head may train on) is part of the data version.
    guide = splits["labelled"]["guide"]
    assert guide.dtype == bool and 0 < guide.sum() < len(guide)
    assert meta["data_version"] == fingerprint(images, codes.astype(np.int8), order, guide)

    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert lock["raw"]["params"]["params.yaml"]["data"]["n_images"] == N_IMAGES
    assert lock["preprocess"]["params"]["params.yaml"]["preprocess"]["image_size"] == SIZE


@pytest.mark.slow
def test_second_repro_does_nothing(dvc_project):
    root = dvc_project["root"]
    before = snapshot(root / "data")
    stamps = {p: p.stat().st_mtime_ns for p in (root / "data/processed").iterdir()}
    again = repro(root)
    assert again.returncode == 0, again.stdout
    assert "Stage 'raw' didn't change, skipping" in again.stdout
    assert "Stage 'preprocess' didn't change, skipping" in again.stdout
    # Only the source stage runs every time: it fingerprints data.source, and nothing changed.
    assert "Running stage" not in again.stdout.replace("Running stage 'source'", "")
    assert snapshot(root / "data") == before
    assert {p: p.stat().st_mtime_ns for p in (root / "data/processed").iterdir()} == stamps
    status = run_cmd([str(BIN / "dvc"), "status", "preprocess"], root)
    assert status.returncode == 0 and "up to date" in status.stdout


@pytest.mark.slow
def test_preprocessing_is_deterministic(dvc_project, tmp_path):
    """Another simulation and preprocessing, in one process instead of two, gives the same data."""
    root = dvc_project["root"]
    params = tiny_params()
    data_cfg = DataConfig(**{**params["data"], "workers": 1})
    prep_cfg = PreprocessConfig(**params["preprocess"])
    raw.run(Params(data=data_cfg), out_dir=tmp_path / "raw", reports_dir=tmp_path / "reports")
    assert snapshot(tmp_path / "raw") == snapshot(root / "data/raw")
    first = preprocess.run(
        Params(data=DataConfig(workers=1), preprocess=prep_cfg), raw_dir=tmp_path / "raw", out_dir=tmp_path / "a"
    )
    second = preprocess.run(
        Params(data=DataConfig(workers=2), preprocess=prep_cfg), raw_dir=tmp_path / "raw", out_dir=tmp_path / "b"
    )
    assert first["data_version"] == second["data_version"] == dvc_project["data_version"]
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


@pytest.mark.slow
def test_changed_param_reruns_preprocess_only(dvc_project):
    root = dvc_project["root"]
    raw_stamps = {p: p.stat().st_mtime_ns for p in (root / "data/raw").rglob("*")}
    try:
        write_params(root, tiny_params(preprocess={"seed": 1}))
        changed = repro(root)
        assert changed.returncode == 0, changed.stdout
        assert "Stage 'raw' didn't change, skipping" in changed.stdout
        assert "Running stage 'preprocess'" in changed.stdout
        splits, meta = load_processed(root / "data/processed")
        assert meta["data_version"] != dvc_project["data_version"]  # another split
        assert {p: p.stat().st_mtime_ns for p in (root / "data/raw").rglob("*")} == raw_stamps
        lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
        assert lock["preprocess"]["params"]["params.yaml"]["preprocess"]["seed"] == 1
    finally:
        write_params(root, tiny_params())
        restored = repro(root)
    assert restored.returncode == 0, restored.stdout
    _, meta = load_processed(root / "data/processed")
    assert meta["data_version"] == dvc_project["data_version"]


@pytest.mark.slow
def test_invalid_param_fails_the_stage_without_output(dvc_project):
    root = dvc_project["root"]
    raw_before = snapshot(root / "data/raw")
    processed_before = snapshot(root / "data/processed") if (root / "data/processed").exists() else None
    lock_before = (root / "dvc.lock").read_text()
    try:
        write_params(root, tiny_params(preprocess={"image_size": 20}))
        failed = repro(root)
        assert failed.returncode != 0
        assert "preprocess.image_size: 20 is not one of [16, 32, 64, 128]" in failed.stdout
        # Every stage validates the whole file, so the first one to run (source, which always runs) stops the
        # pipeline; preprocess wrote nothing, not even a partial folder.
        assert "failed to reproduce 'source'" in failed.stdout
        assert not (root / "data" / "processed").exists() or snapshot(root / "data/processed") == processed_before
        assert snapshot(root / "data/raw") == raw_before
        assert (root / "dvc.lock").read_text() == lock_before
    finally:
        write_params(root, tiny_params())
        restored = repro(root)
    assert restored.returncode == 0, restored.stdout
    _, meta = load_processed(root / "data/processed")
    assert meta["data_version"] == dvc_project["data_version"]


@pytest.mark.slow
def test_stage_errors_leave_existing_output_untouched(dvc_project, tmp_path, monkeypatch, capsys):
    root = dvc_project["root"]
    before = snapshot(root / "data")
    monkeypatch.chdir(root)

    # A setting refused by validation: exit status 2, the key and value named.
    bad = write_params(tmp_path, tiny_params(data={"n_images": 0}), "bad.yaml")
    assert cli.main(["--params", str(bad), "raw"]) == 2
    assert "data.n_images: 0 is below the minimum 1" in capsys.readouterr().err
    # Valid settings the data cannot satisfy: exit status 1 and what to change.
    bad = write_params(tmp_path, tiny_params(preprocess={"probe_size": 55}), "bad.yaml")
    assert cli.main(["--params", str(bad), "preprocess"]) == 1
    err = capsys.readouterr().err
    assert "the UDR probe needs 55 training images but only 48 remain" in err and "probe_size" in err

    # A failure while the splits are being written (here: the disk fills after the first file).
    written = []
    real_savez = np.savez

    def savez_then_fail(path, **arrays):
        if written:
            raise OSError("No space left on device")
        written.append(path)
        real_savez(path, **arrays)

    monkeypatch.setattr(preprocess.np, "savez", savez_then_fail)
    other_split = PreprocessConfig(**tiny_params(preprocess={"seed": 1})["preprocess"])  # other bytes
    with pytest.raises(OSError, match="No space left"):
        preprocess.run(
            Params(data=DataConfig(workers=1), preprocess=other_split),
            raw_dir=root / "data/raw",
            out_dir=root / "data/processed",
        )
    assert written  # the stage did get half-way
    assert snapshot(root / "data") == before
    assert sorted(p.name for p in (root / "data").iterdir()) == ["processed", "raw"]


# ------------------------------------------------------------------ a folder of real photos


def photo(colour, size=(640, 480), radius=120, background=128, mode="RGB") -> Image.Image:
    """A disc of `colour` in the middle of a grey picture."""
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    array = np.full((h, w, 3), background, np.uint8)
    array[(xx - w / 2) ** 2 + (yy - h / 2) ** 2 <= radius**2] = colour
    img = Image.fromarray(array, "RGB")
    return img.convert(mode) if mode != "RGB" else img


def test_real_photo_folder_goes_through_preprocess(tmp_path):
    folder = tmp_path / "photos"
    for name in ("good", "bad"):
        (folder / name).mkdir(parents=True)
    for i in range(14):
        photo((40, 60, 150 + 5 * i)).save(folder / "good" / f"g{i:02d}.png")
        photo((150 + 5 * i, 50, 40)).save(folder / "bad" / f"b{i:02d}.png")
    photo((40, 60, 220), size=(800, 600), radius=150).save(folder / "good" / "large.png")
    photo((220, 50, 40), size=(800, 600), radius=150).save(folder / "bad" / "large.png")
    photo((200, 200, 200), mode="L").save(folder / "bad" / "grey.png")  # rejected: no colour
    photo((90, 160, 60)).save(folder / "unsorted.png")  # no label folder: unlabelled
    untouched = snapshot(folder)

    raw_dir, reports = tmp_path / "data/raw", tmp_path / "reports/data"
    raw.run(
        Params(data=DataConfig(source=str(folder), workers=1, max_rejected_fraction=0.1)),
        out_dir=raw_dir,
        reports_dir=reports,
    )
    assert snapshot(folder) == untouched
    ingest = pd.read_csv(reports / "ingest.csv", keep_default_na=False).set_index("source")
    assert len(ingest) == 32
    assert (
        ingest.loc["bad/grey.png", "status"] == "rejected" and "colour mode L" in ingest.loc["bad/grey.png", "reason"]
    )
    assert ingest.loc["good/large.png", "reason"] == "kept at 800x600"
    assert (ingest.drop(index=["bad/grey.png"]).status == "accepted").all()
    assert ingest.loc["unsorted.png", "label"] == ""
    assert not (raw_dir / "factors.csv").exists()
    with Image.open(reports / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG"

    meta = preprocess.run(
        Params(
            data=DataConfig(workers=1),
            preprocess=PreprocessConfig(image_size=SIZE, probe_size=10, labelled_per_class=3, crop_fraction=CROP),
        ),
        raw_dir=raw_dir,
        out_dir=tmp_path / "data/processed",
    )
    assert meta["factor_names"] == []
    assert meta["splits"]["test"] == {"n": 6, "good": 3, "bad": 3, "unlabelled": 0}
    assert meta["splits"]["train"] == {"n": 25, "good": 12, "bad": 12, "unlabelled": 1}
    assert meta["splits"]["labelled"] == {"n": 6, "good": 3, "bad": 3, "unlabelled": 0}
    splits, _ = load_processed(tmp_path / "data/processed")
    labels = pd.read_csv(raw_dir / "labels.csv", keep_default_na=False)
    for arrays in splits.values():
        assert "factors" not in arrays and arrays["images"].shape[1:] == (SIZE, SIZE, 3)
        centre = arrays["images"][:, SIZE // 2, SIZE // 2].astype(int)
        sources = labels.source.to_numpy()[arrays["rows"]]
        for label, rgb, source in zip(arrays["labels"], centre, sources):
            # Each image keeps the label of the folder its photo came from: blue good, red bad.
            expected = {"good": 0, "bad": 1}.get(source.split("/")[0], -1) if "/" in source else -1
            assert label == expected, source
            if label == 0:
                assert rgb[2] > rgb[0] + 50, source
            elif label == 1:
                assert rgb[0] > rgb[2] + 50, source
    # An accepted PNG is shrunk exactly: the block mean of its centre crop.
    train = splits["train"]
    sources = labels.source.to_numpy()[train["rows"]]
    k = int(np.flatnonzero(np.char.startswith(sources.astype(str), "bad/b"))[0])
    with Image.open(folder / sources[k]) as img:
        expected = block_mean(img, CROP, SIZE)
    assert np.abs(train["images"][k] - expected).max() <= 1


UNLABELLED_RUN = {
    "data": {"workers": 1},
    "preprocess": {"image_size": SIZE, "probe_size": 10, "crop_fraction": CROP},
    # workers 1: the tiny models train and are scored in the stages' own processes, no pools to start
    "train": {"latent_dim": 3, "steps": 10, "batch_size": 8, "snapshot_every": 0, "checkpoint_every": 10, "workers": 1},
    "search": {"seeds": 2, "min_active": 0, "spaces": {"beta_vae": {"n_trials": 1, "beta": [1.0, 4.0]}}},
    "register": {"select": "job"},
    "classify": {"cnn_steps": 5, "n_draws": 1},
    "evaluate": {
        "n_bootstrap": 20,
        "n_train": 10,
        "n_test": 10,
        "dci_method": "lasso",
        "sap_method": "correlation",
        "workers": 1,
    },
}


@pytest.mark.slow
def test_dvc_repro_completes_on_a_synth_folder_without_labels_with_and_without_factors(tmp_path):
    """`tubervae synth` run from a folder without params.yaml writes a folder that imports as it is:
    no labels (no good/ or bad/), its factors.csv. The whole pipeline then completes: classify and the
    job's selection say what they skipped, evaluate scores the held-out photos' factors; and again
    from a copy of the folder without factors.csv, where evaluate says it has nothing to score."""
    folder = tmp_path / "photos"
    made = run_cmd([str(BIN / "tubervae"), "synth", "--out", folder, "--n-images", 60, "--workers", 1], tmp_path)
    assert made.returncode == 0, made.stdout[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["factors.csv", "images", "labels.csv"]
    root = tmp_path / "project"
    root.mkdir()
    shutil.copyfile(PROJECT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(PROJECT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    assert run_cmd([str(BIN / "dvc"), "init", "--no-scm", "-q"], root).returncode == 0
    write_params(root, tiny_params(**{**UNLABELLED_RUN, "data": {"workers": 1, "source": str(folder)}}))
    done = run_cmd([str(BIN / "dvc"), "repro"], root, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    meta = json.loads((root / "data/processed/meta.json").read_text())
    assert meta["splits"]["test"]["n"] == 12 and meta["splits"]["labelled"]["n"] == 0
    assert "classify skipped, tuber-quality not registered" in done.stdout
    assert "chosen by UDR alone" in done.stdout
    assert "a rule needs both" in json.loads((root / "reports/classify/metrics.json").read_text())["skipped"]
    evaluated = json.loads((root / "reports/evaluate/metrics.json").read_text())
    assert "skipped" not in evaluated and evaluated["n_models"] == 2

    bare = tmp_path / "photos-without-factors"
    shutil.copytree(folder, bare)
    (bare / "factors.csv").unlink()
    write_params(root, tiny_params(**{**UNLABELLED_RUN, "data": {"workers": 1, "source": str(bare)}}))
    again = run_cmd([str(BIN / "dvc"), "repro"], root, timeout=600)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "skipped" in json.loads((root / "reports/evaluate/metrics.json").read_text())
    assert "skipped" in json.loads((root / "reports/classify/metrics.json").read_text())


def test_a_folders_factors_reach_the_splits_and_the_evaluate_stage(tmp_path):
    """A researcher's own photos with measured factors: factors.csv travels with the photos (under
    their imported names, a link described by its target's name too) into every split, and the
    evaluate stage scores the test split against it."""
    folder = tmp_path / "photos"
    for name in ("good", "bad"):
        (folder / name).mkdir(parents=True)
    rows = []
    for i in range(10):
        for label, colour in (("good", (40, 60, 150 + 8 * i)), ("bad", (150 + 8 * i, 50, 40))):
            source = f"{label}/{label[0]}{i:02d}.png"
            photo(colour, radius=60 + 5 * i).save(folder / source)
            rows.append({"file": source, "radius": 60 + 5 * i, "redness": colour[0] / 255})
    photo((10, 10, 10), mode="L").save(folder / "bad" / "grey.png")  # rejected: its row is not needed
    (folder / "good" / "again.png").symlink_to(folder / "good" / "g03.png")  # described as good/g03.png
    table = pd.DataFrame(rows)
    table.loc[0, "file"] = "./" + table.loc[0, "file"]  # spelt as a shell would
    table.to_csv(folder / "factors.csv", index=False)

    raw_dir, reports = tmp_path / "data/raw", tmp_path / "reports/data"
    raw.run(
        Params(data=DataConfig(source=str(folder), workers=1, max_rejected_fraction=0.1)),
        out_dir=raw_dir,
        reports_dir=reports,
    )
    ingest = pd.read_csv(reports / "ingest.csv", keep_default_na=False).set_index("source")
    assert "factors" in ingest.loc["factors.csv", "reason"]
    labels = pd.read_csv(raw_dir / "labels.csv", keep_default_na=False)
    imported = pd.read_csv(raw_dir / "factors.csv")
    assert imported.file.tolist() == labels.file.tolist() and list(imported.columns) == ["file", "radius", "redness"]
    described_as = labels.source.replace({"good/again.png": "good/g03.png"})
    expected = pd.DataFrame(rows).set_index("file").loc[described_as]
    np.testing.assert_allclose(imported[["radius", "redness"]], expected)

    processed = tmp_path / "data/processed"
    meta = preprocess.run(
        Params(
            data=DataConfig(workers=1),
            preprocess=PreprocessConfig(image_size=SIZE, probe_size=6, labelled_per_class=2, crop_fraction=CROP),
        ),
        raw_dir=raw_dir,
        out_dir=processed,
    )
    assert meta["factor_names"] == ["radius", "redness"]
    evalset_dir = tmp_path / "data/evalset"
    evalset.run(Params(data=DataConfig(source=str(folder))), out_dir=evalset_dir)
    images, factors, names, source, measured = evaluate.scored_data(evalset_dir, processed)
    assert (names, source) == (["radius", "redness"], "test split")
    test_rows = load_processed(processed)[0]["test"]["rows"]
    np.testing.assert_allclose(factors, expected.to_numpy()[test_rows], rtol=1e-6)
    assert len(images) == len(test_rows) and measured == {"photos": len(test_rows), "of": len(test_rows)}


def test_a_factors_csv_for_a_few_photos_gives_nan_rows_to_the_others(tmp_path):
    """factors.csv measures 3 of the 8 photos kept: data/raw/factors.csv holds those 3 rows, and every
    split's factors have a row per photo, NaN exactly for the 5 photos not measured."""
    folder = tmp_path / "photos"
    sources = []
    for i in range(4):
        for label, colour in (("good", (40, 60, 150 + 20 * i)), ("bad", (150 + 20 * i, 50, 40))):
            (folder / label).mkdir(parents=True, exist_ok=True)
            sources.append(f"{label}/{label[0]}{i}.png")
            photo(colour, radius=60 + 10 * i).save(folder / sources[-1])
    table = pd.DataFrame(
        {"file": ["bad/b2.png", "good/g0.png", "good/g3.png"], "radius": [80, 60, 90], "hue": [1, 2, 3]}
    )
    table.to_csv(folder / "factors.csv", index=False)
    raw_dir = tmp_path / "data/raw"
    raw.run(Params(data=DataConfig(source=str(folder), workers=1)), out_dir=raw_dir, reports_dir=tmp_path / "reports")
    labels = pd.read_csv(raw_dir / "labels.csv", keep_default_na=False)
    assert sorted(labels.source) == sorted(sources)
    imported = pd.read_csv(raw_dir / "factors.csv")
    by_source = labels.set_index("file").source
    assert sorted(by_source[imported.file]) == sorted(table.file)

    processed = tmp_path / "data/processed"
    settings = PreprocessConfig(image_size=SIZE, probe_size=2, labelled_per_class=1, crop_fraction=CROP)
    meta = preprocess.run(Params(data=DataConfig(workers=1), preprocess=settings), raw_dir=raw_dir, out_dir=processed)
    assert meta["factor_names"] == ["radius", "hue"]
    splits, written = load_processed(processed)
    assert written["measured"] == meta["measured"]
    truth = table.set_index("file")
    for name, arrays in splits.items():
        names = labels.source.to_numpy()[arrays["rows"]]
        measured = np.isin(names, table.file)
        assert arrays["factors"].shape == (len(names), 2) and arrays["factors"].dtype == np.float32, name
        assert np.isnan(arrays["factors"][~measured]).all(), name
        np.testing.assert_array_equal(arrays["factors"][measured], truth.loc[names[measured]].to_numpy(), name)
        np.testing.assert_array_equal(measured_rows(arrays["factors"]), measured, name)
        assert meta["measured"][name] == measured.sum(), name
    assert meta["measured"]["train"] + meta["measured"]["test"] == 3

    # The test split holds 2 photos: too few measured to score, and evaluate says so.
    evalset_dir = tmp_path / "data/evalset"
    evalset.run(Params(data=DataConfig(source=str(folder))), out_dir=evalset_dir)
    why = evaluate.scored_data(evalset_dir, processed)
    assert why == (
        f"{meta['measured']['test']} of the test split's 2 photos have measured factors (factors.csv); "
        "the supervised metrics need at least 4"
    )


def test_preprocess_refuses_an_edited_raw_factors_csv(tmp_path):
    raw_dir = tmp_path / "raw"
    (raw_dir / "images").mkdir(parents=True)
    for i in range(4):
        photo((40, 60, 150)).save(raw_dir / "images" / f"p{i}.png")
    files = [f"images/p{i}.png" for i in range(4)]
    pd.DataFrame({"file": files, "label": ["good", "bad", "good", "bad"]}).to_csv(raw_dir / "labels.csv", index=False)
    for rows, message in (
        ({"file": files[:2], "size": [1.0, np.nan]}, "1 row(s) without every factor, e.g. images/p1.png"),
        ({"file": ["images/other.png"], "size": [1.0]}, "1 row(s) naming no photo of"),
    ):
        pd.DataFrame(rows).to_csv(raw_dir / "factors.csv", index=False)
        with pytest.raises(ValueError, match=re.escape(message)):
            preprocess.read_raw(raw_dir)
    pd.DataFrame({"file": files[2:], "size": [1.0, 2.0]}).to_csv(raw_dir / "factors.csv", index=False)
    frame = preprocess.read_raw(raw_dir)
    np.testing.assert_array_equal(frame["size"], [np.nan, np.nan, 1.0, 2.0])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.iloc[:0], "factors.csv measures none of the 20 photo(s) kept: it has no row"),
        (lambda t: t.assign(redness=t.redness.where(t.index != 4)), "'redness' has no finite value for 1 photo(s)"),
        (lambda t: t.assign(redness=t.redness.astype(object).where(t.index != 2, "red")), "'redness' must be numeric"),
        (lambda t: pd.concat([t, t.iloc[[0]].assign(file="elsewhere/x.png")]), "not in the folder: 'elsewhere/x.png'"),
    ],
)
def test_a_bad_factors_csv_stops_the_import_with_what_is_wrong(tmp_path, edit, message):
    folder = tmp_path / "photos"
    rows = []
    for i in range(10):
        for label in ("good", "bad"):
            (folder / label).mkdir(parents=True, exist_ok=True)
            photo((40 + 10 * i, 60, 150)).save(folder / label / f"{label[0]}{i:02d}.png")
            rows.append({"file": f"{label}/{label[0]}{i:02d}.png", "redness": i / 10})
    edit(pd.DataFrame(rows)).to_csv(folder / "factors.csv", index=False)
    with pytest.raises(FactorTableError, match=re.escape(message)):
        raw.run(
            Params(data=DataConfig(source=str(folder), workers=1)),
            out_dir=tmp_path / "raw",
            reports_dir=tmp_path / "reports",
        )
    assert not (tmp_path / "raw").exists()  # nothing half-written for the next stage


# ------------------------------------------------------------------ MLproject and dvc.yaml agree


def _parsed(command: str):
    words = shlex.split(command)
    assert words[0] == "tubervae", command
    return cli.build_parser().parse_args(words[1:])


def test_mlproject_entry_points_run_the_dvc_stage_commands():
    from mlflow.projects._project_spec import load_project

    project = load_project(str(PROJECT))
    assert Path(project.env_config_path).resolve() == (PROJECT / "conda.yaml").resolve()
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    # The whole pipeline leaves the run `mlflow run` opened empty: each stage opens its own in the project's
    # experiment (a stage handed a run of another experiment refuses it).
    assert project.get_entry_point("main").command == "MLFLOW_RUN_ID= dvc repro"
    for name, stage in stages.items():
        entry = project.get_entry_point(name)
        if "foreach" in stage:
            for family in yaml.safe_load((PROJECT / "params.yaml").read_text())["search"]["spaces"]:
                from_dvc = vars(_parsed(stage["do"]["cmd"].replace("${key}", family)))
                from_mlflow = vars(_parsed(entry.compute_command({"family": family}, None)))
                assert from_mlflow["n_trials"] == 0  # 0 = the number in params.yaml, as dvc runs it
                assert {**from_mlflow, "n_trials": None} == from_dvc
        else:
            assert vars(_parsed(entry.compute_command({}, None))) == vars(_parsed(stage["cmd"])), name
    # Whole numbers arrive from MLflow as floats ('1.0'): the train entry point must take them.
    train = _parsed(
        project.get_entry_point("train").compute_command(
            {"family": "cbeta_vae", "beta": 700, "c_max": 6.0, "seed": 1.0}, None
        )
    )
    assert (train.command, train.family, train.beta, train.c_max, train.seed) == ("train", "cbeta_vae", 700.0, 6.0, 1)
    assert isinstance(train.seed, int)


@pytest.mark.slow
def test_hand_run_search_and_dvc_repro_agree(dvc_project):
    """A study resumed by hand to 2 trials, then `dvc repro`: the report says 2, as optuna.db does."""
    root = dvc_project["root"]
    tiny_search = tiny_params(
        train={
            "latent_dim": 4,
            "steps": 10,
            "batch_size": 8,
            "snapshot_every": 0,
            "checkpoint_every": 10,
            "log_every": 5,
            "device": "cpu",
            "threads": 1,
            "workers": 1,
        },
        search={
            "seeds": 2,
            "min_active": 0,
            "spaces": {"beta_vae": {"n_trials": 1, "beta": [1.0, 4.0], "beta_log": True}},
        },
    )
    write_params(root, tiny_search)
    first = run_cmd([str(BIN / "dvc"), "repro", "search@beta_vae"], root)
    assert first.returncode == 0, first.stdout[-3000:]
    by_hand = run_cmd([str(BIN / "tubervae"), "search", "--family", "beta_vae", "--n-trials", "2"], root)
    assert by_hand.returncode == 0, by_hand.stdout[-3000:]
    report = root / "reports" / "search" / "beta_vae.json"
    assert json.loads(report.read_text())["n_complete"] == 2
    again = run_cmd([str(BIN / "dvc"), "repro", "search@beta_vae"], root)
    assert again.returncode == 0, again.stdout[-3000:]
    summary = json.loads(report.read_text())
    assert summary["n_complete"] == 2 and len(summary["trials"]) == 2  # not a cached report of 1 trial
    write_params(root, tiny_params())  # the other tests of this module expect the data settings alone
