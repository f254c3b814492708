"""experiments/outside_photos.py: a photo folder the raw stage imports, with its factors and labels.

Writing the folder is tested from hand-made images without the `idsprites` library (the `experiments`
extra, which CI does not install); with it, a tiny folder is drawn and imported end to end.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tubervae.config import parse_params
from tubervae.data.factors import read_factor_table
from tubervae.stages import raw as raw_stage

PROJECT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("outside_photos", PROJECT / "experiments" / "outside_photos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


photos = load_script()


def hand_made(n: int, size: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    factors = photos.draw_factors(n, n_shapes=3, n_colours=4, rng=rng)
    return images, factors


def test_write_folder_puts_labelled_photos_in_good_and_bad_and_names_every_photo_in_factors_csv(tmp_path):
    images, factors = hand_made(5)
    labels = np.array(["", "good", "bad", "", "good"], dtype=object)
    out = tmp_path / "shapes"
    table = photos.write_folder(out, images, factors, labels)
    assert list(table["file"]) == ["00000.png", "good/00001.png", "bad/00002.png", "00003.png", "good/00004.png"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(table["file"])
    for name, image in zip(table["file"], images):
        assert np.array_equal(np.asarray(Image.open(out / name)), image)  # PNG: lossless
    read = read_factor_table(out / "factors.csv")  # the raw stage's reader accepts it as it is
    assert list(read.columns) == ["file", "x", "y", "scale", "orientation", "hue", "shape"]
    assert np.allclose(read[list(photos.FACTOR_COLUMNS)].to_numpy(), factors.to_numpy(), rtol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name != "shapes"]  # no partial folder left beside it


def test_write_folder_refuses_small_photos_a_full_folder_and_unknown_labels(tmp_path):
    images, factors = hand_made(2)
    with pytest.raises(ValueError, match="at least 64 px"):
        photos.write_folder(tmp_path / "a", images[:, :32, :32], factors, np.array(["", ""], dtype=object))
    with pytest.raises(ValueError, match="'', 'good' or 'bad'"):
        photos.write_folder(tmp_path / "a", images, factors, np.array(["", "ugly"], dtype=object))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not an empty folder"):
        photos.write_folder(tmp_path / "full", images, factors, np.array(["", ""], dtype=object))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_labels_come_from_the_scale_alone_for_the_labelled_share():
    scale = np.linspace(0.5, 1.0, 300)
    labels = photos.label_by_scale(scale, 0.1, np.random.default_rng(3))
    labelled = labels != ""
    assert labelled.sum() == 30
    assert np.array_equal(labels[labelled] == "bad", scale[labelled] > photos.BAD_SCALE)
    assert photos.BAD_SCALE == pytest.approx(0.5 + 2 / 3 * 0.5)
    again = photos.label_by_scale(scale, 0.1, np.random.default_rng(3))
    assert np.array_equal(labels, again)
    with pytest.raises(ValueError, match="--labelled"):
        photos.label_by_scale(scale, 1.5, np.random.default_rng(0))


def test_factors_are_drawn_in_the_library_ranges_and_repeat_for_a_seed():
    a = photos.draw_factors(500, n_shapes=3, n_colours=4, rng=np.random.default_rng(1))
    b = photos.draw_factors(500, n_shapes=3, n_colours=4, rng=np.random.default_rng(1))
    pd.testing.assert_frame_equal(a, b)
    assert set(a["shape"]) == {0.0, 1.0, 2.0}
    assert set(a["hue"]) == {0.0, 0.25, 0.5, 0.75}
    assert a["scale"].between(0.5, 1.0).all() and a[["x", "y"]].stack().between(0, 1).all()


def test_help_needs_no_idsprites(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "idsprites", None)  # `import idsprites` fails, as where the extra is missing
    monkeypatch.setattr(sys, "argv", ["outside_photos.py", "--help"])
    with pytest.raises(SystemExit) as stop:
        load_script().main()
    assert stop.value.code == 0 and "idsprites" in capsys.readouterr().out


@pytest.mark.slow  # imports idsprites and compiles its numba kernel: seconds
def test_forty_drawn_photos_import_with_their_factors_and_labels(tmp_path, monkeypatch):
    pytest.importorskip("idsprites")
    out = tmp_path / "shapes"
    args = ["outside_photos.py", "--out", str(out), "--n", "40", "--labelled", "0.5", "--seed", "4"]
    monkeypatch.setattr(sys, "argv", args)
    photos.main()
    table = pd.read_csv(out / "factors.csv")
    assert len(table) == 40 and sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(
        table["file"]
    )
    first = np.asarray(Image.open(out / table["file"][0]))
    assert first.shape == (64, 64, 3) and len(np.unique(first.reshape(-1, 3), axis=0)) > 2  # a shape on the canvas

    monkeypatch.setattr(sys, "argv", [*args[:2], str(tmp_path / "again"), *args[3:]])
    photos.main()
    for name in table["file"]:  # the same seed draws the same photos
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()

    project = tmp_path / "project"
    raw_stage.run(parse_params({"data": {"source": str(out), "workers": 1}}), root=project)
    imported = pd.read_csv(project / "data" / "raw" / "labels.csv", keep_default_na=False)
    factors = pd.read_csv(project / "data" / "raw" / "factors.csv")
    assert len(imported) == 40 and len(factors) == 40  # every photo kept, every one measured
    merged = imported.merge(factors, on="file")
    assert sorted(merged["source"]) == sorted(table["file"])
    labelled = merged[merged["label"] != ""]
    assert len(labelled) == 20
    assert (labelled["source"].str.split("/").str[0] == labelled["label"]).all()
    assert np.array_equal(labelled["label"] == "bad", labelled["scale"] > photos.BAD_SCALE)
