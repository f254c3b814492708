"""Ingestion of a folder of real photos, with corrupt and odd files made here."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tubervae.config import DataConfig
from tubervae.data.images import inspect_image, load_model_input
from tubervae.stages.raw import IngestError, import_folder


def photo(size=(640, 480), mode="RGB", value=120):
    if mode == "I;16":
        return Image.fromarray(np.full(size[::-1], 40000, np.uint16))
    return Image.new(mode, size, value if mode in ("L", "1", "P") else (value,) * len(mode))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    (root / "misc").mkdir()
    photo().save(root / "good" / "ok.jpg")
    photo(mode="RGBA").save(root / "good" / "alpha.png")
    photo(mode="CMYK").save(root / "bad" / "cmyk.jpg")
    photo(size=(800, 600)).save(root / "bad" / "big.jpg")
    photo(size=(480, 640)).save(root / "bad" / "portrait.png")
    photo(mode="L").save(root / "bad" / "gray.png")
    photo(mode="I;16").save(root / "bad" / "deep.png")
    photo(size=(40, 30)).save(root / "bad" / "tiny.png")
    (root / "bad" / "notes.jpg").write_text("this is not a jpeg")
    full = (root / "good" / "ok.jpg").read_bytes()
    (root / "good" / "cut.jpg").write_bytes(full[: len(full) // 2])
    photo(value=200).save(root / "misc" / "unlabelled.jpg")
    photo().save(root / "top.jpg")
    return root


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_file_gets_a_documented_decision(folder, tmp_path):
    before = snapshot(folder)
    out = tmp_path / "raw"
    cfg = DataConfig(source=str(folder), workers=1, max_rejected_fraction=0.9)
    report = import_folder(cfg, out, tmp_path / "ingest.csv").set_index("source")
    status = report["status"].to_dict()
    assert status["good/ok.jpg"] == "accepted"
    assert status["good/alpha.png"] == "converted" and "RGBA" in report.loc["good/alpha.png", "reason"]
    assert status["bad/cmyk.jpg"] == "converted"
    assert status["bad/big.jpg"] == "converted" and "resized from 800x600" in report.loc["bad/big.jpg", "reason"]
    assert status["bad/portrait.png"] == "converted"
    for name, reason in [
        ("bad/gray.png", "colour mode L"),
        ("bad/deep.png", "colour mode I"),
        ("bad/tiny.png", "too small"),
        ("bad/notes.jpg", "not an image"),
        ("good/cut.jpg", "truncated"),
    ]:
        assert status[name] == "rejected", name
        assert reason in report.loc[name, "reason"], (name, report.loc[name, "reason"])
    labels = pd.read_csv(out / "labels.csv", keep_default_na=False)
    assert len(labels) == 7
    assert dict(zip(labels.source, labels.label))["misc/unlabelled.jpg"] == ""
    assert dict(zip(labels.source, labels.label))["top.jpg"] == ""
    assert dict(zip(labels.source, labels.label))["bad/cmyk.jpg"] == "bad"
    for f in labels.file:  # every stored photo is RGB 640×480
        with Image.open(out / f) as img:
            assert img.mode == "RGB" and img.size == (640, 480)
    assert (tmp_path / "ingest.csv").exists()
    assert snapshot(folder) == before  # the user's files are untouched


def test_too_many_rejections_fail_with_the_report_written(folder, tmp_path):
    cfg = DataConfig(source=str(folder), workers=1, max_rejected_fraction=0.2)
    with pytest.raises(IngestError, match="rejected, above data.max_rejected_fraction"):
        import_folder(cfg, tmp_path / "raw", tmp_path / "ingest.csv")
    assert len(pd.read_csv(tmp_path / "ingest.csv")) == 12


def test_nothing_usable_and_missing_folder(tmp_path):
    root = tmp_path / "junk"
    root.mkdir()
    (root / "a.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(IngestError, match="none of the 1 files is usable"):
        import_folder(DataConfig(source=str(root), workers=1), tmp_path / "raw", tmp_path / "ingest.csv")
    with pytest.raises(IngestError, match="neither 'synthetic' nor an existing folder"):
        import_folder(DataConfig(source=str(tmp_path / "nope"), workers=1), tmp_path / "raw2", tmp_path / "i.csv")


def test_wrong_size_reject_rule(tmp_path):
    path = tmp_path / "big.jpg"
    photo(size=(800, 600)).save(path)
    result = inspect_image(path, wrong_size="reject")
    assert result.status == "rejected" and "wrong size: 800x600" in result.reason


def test_model_input_crops_the_centre_and_resizes():
    array = np.zeros((480, 640, 3), np.uint8)
    array[240 - 96 : 240 + 96, 320 - 96 : 320 + 96] = 255  # a white square of side 192 at the centre
    out = load_model_input(array, crop_fraction=0.4, image_size=16)  # the crop is exactly that square
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert out.min() == 255
    wide = load_model_input(array, crop_fraction=0.8, image_size=16)  # square is half of a 384 crop
    assert wide[0, 0, 0] == 0 and wide[8, 8, 0] == 255
    assert abs(wide.mean() / 255 - 0.25) < 0.02
    with pytest.raises(ValueError, match="H×W×3"):
        load_model_input(np.zeros((4, 4)), crop_fraction=0.5, image_size=16)
