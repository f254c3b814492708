"""The simulated data sets (`tubervae.data.synth_dataset`): determinism, files and labels, safety, the contact sheet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tubervae.data import synth_dataset, synth_factors


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_a")
    table = synth_dataset.generate(out, 6, seed=5, workers=1, progress=False)
    return out, table


def _folder_bytes(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_for_any_worker_count(dataset, tmp_path):
    out, _ = dataset
    synth_dataset.generate(tmp_path, 6, seed=5, workers=2, progress=False)
    first, second = _folder_bytes(out), _folder_bytes(tmp_path)
    assert sorted(first) == sorted(second)
    assert len([k for k in first if k.endswith(".jpg")]) == 6
    assert all(first[k] == second[k] for k in first)


def test_different_seed_gives_different_images_and_factors(dataset, tmp_path):
    out, table = dataset
    other = synth_dataset.generate(tmp_path, 6, seed=6, workers=1, progress=False)
    assert not np.allclose(table["x"], other["x"])
    for f in table["file"]:
        assert (out / f).read_bytes() != (tmp_path / f).read_bytes()


def test_images_are_640x480_rgb_jpeg(dataset):
    out, table = dataset
    for f in table["file"]:
        with Image.open(out / f) as img:
            assert (img.format, img.size, img.mode) == ("JPEG", (640, 480), "RGB")


def test_csvs_list_the_files_and_labels_follow_the_defects(dataset):
    out, table = dataset
    labels = pd.read_csv(out / "labels.csv")
    factors = pd.read_csv(out / "factors.csv")
    assert list(labels.columns) == ["file", "label"]
    assert list(factors.columns) == ["file", *synth_factors.FACTOR_NAMES]
    assert list(labels["file"]) == [f"images/tuber_{i:05d}.jpg" for i in range(6)]
    assert list(factors["file"]) == list(labels["file"])
    assert all((out / f).is_file() for f in labels["file"])
    for (_, lab), (_, fac) in zip(labels.iterrows(), factors.iterrows()):
        defective = fac["spot_area"] > 0 or fac["greening"] > 0 or fac["rot"] > 0
        assert (fac["spot_count"], fac["spot_size"]) == pytest.approx(synth_factors.spot_layout(fac["spot_area"]))
        assert lab["label"] == ("bad" if defective else "good")
    assert list(table["label"]) == list(labels["label"])


def test_contact_sheet_is_a_png(dataset, tmp_path):
    out, _ = dataset
    png = synth_dataset.contact_sheet(out, tmp_path / "sheet.png", n=4, seed=1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 200


def test_contact_sheet_of_an_older_folder_captions_labels_only(dataset, tmp_path):
    out, _ = dataset
    (tmp_path / "images").mkdir()
    for f in (out / "images").iterdir():
        (tmp_path / "images" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "labels.csv").write_bytes((out / "labels.csv").read_bytes())
    pd.read_csv(out / "factors.csv").drop(columns="spot_area").to_csv(tmp_path / "factors.csv", index=False)
    png = synth_dataset.contact_sheet(tmp_path, tmp_path / "sheet.png", n=2, seed=1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_crash_leaves_no_csv_and_rerun_removes_stale_images(tmp_path, monkeypatch):
    synth_dataset.generate(tmp_path, 4, seed=1, workers=1, progress=False)
    real = synth_dataset._render_and_save

    def fail_on_third(task):
        if task[0] == 2:
            raise RuntimeError("disk full")
        return real(task)

    monkeypatch.setattr(synth_dataset, "_render_and_save", fail_on_third)
    with pytest.raises(RuntimeError):
        synth_dataset.generate(tmp_path, 4, seed=2, workers=1, progress=False)
    assert not (tmp_path / "labels.csv").exists() and not (tmp_path / "factors.csv").exists()

    monkeypatch.setattr(synth_dataset, "_render_and_save", real)
    synth_dataset.generate(tmp_path, 2, seed=2, workers=1, progress=False)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["tuber_00000.jpg", "tuber_00001.jpg"]
    assert len(pd.read_csv(tmp_path / "labels.csv")) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_images=0), "n_images"),
        (dict(n_images=2.5), "n_images"),
        (dict(good_fraction=0.0), "good_fraction"),
        (dict(good_fraction=1.0), "good_fraction"),
        (dict(workers=0), "workers"),
        (dict(seed=-1), "seed"),
        (dict(jpeg_quality=0), "jpeg_quality"),
        (dict(jpeg_quality=101), "jpeg_quality"),
    ],
)
def test_generate_rejects_bad_arguments(tmp_path, kwargs, match):
    args = dict(n_images=2, seed=0, workers=1, progress=False) | kwargs
    n = args.pop("n_images")
    with pytest.raises(ValueError, match=match):
        synth_dataset.generate(tmp_path / "out", n, **args)
    assert not (tmp_path / "out").exists()  # nothing is written before validation passes


def test_contact_sheet_rejects_a_folder_without_labels(tmp_path):
    with pytest.raises(ValueError, match="labels.csv"):
        synth_dataset.contact_sheet(tmp_path, tmp_path / "sheet.png")


def test_the_geometry_simulator_holds_defects_and_tone_and_draws_the_rest_as_the_full_one(tmp_path):
    """`data.simulator: geometry` (the settings' vocabulary and the simulator's agree): no defect, one skin
    tone, every tuber good; position, size and brightness drawn exactly as the full simulator draws them."""
    from tubervae.config import SIMULATORS

    assert SIMULATORS == tuple(synth_factors.SIMULATORS)
    geometry = synth_dataset.generate(
        tmp_path / "g", 6, seed=3, workers=1, progress=False, fixed=synth_factors.SIMULATORS["geometry"]
    )
    full = synth_dataset.generate(tmp_path / "f", 6, seed=3, workers=1, progress=False)
    assert (geometry[["spot_area", "greening", "rot"]] == 0).all().all() and (geometry.tone == 0.5).all()
    assert (geometry.label == "good").all()
    for name in ("x", "y", "size", "elongation", "brightness"):
        np.testing.assert_array_equal(geometry[name], full[name])
