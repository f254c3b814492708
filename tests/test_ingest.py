"""Ingestion of a folder of real photos, with corrupt and odd files made here."""

import builtins
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import png_16_bit_rgb
from tubervae.config import DataConfig, Params
from tubervae.data.factors import FactorTableError
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
    """Every entry under `root` (links not followed): its type, mtime, and bytes or link target."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if os.path.islink(path):
                content = os.readlink(path)
            elif os.path.isfile(path):  # a regular file (not the fifo)
                content = Path(path).read_bytes()
            else:
                content = None
            state[path] = (info.st_mode, info.st_mtime_ns, content)
    return state


def test_every_file_gets_a_documented_decision(folder, tmp_path):
    before = snapshot(folder)
    out = tmp_path / "raw"
    cfg = DataConfig(source=str(folder), workers=1, max_rejected_fraction=0.9)
    report = import_folder(cfg, out, tmp_path / "ingest.csv").set_index("source")
    status = report["status"].to_dict()
    assert status["good/ok.jpg"] == "accepted"
    assert status["good/alpha.png"] == "converted" and "RGBA" in report.loc["good/alpha.png", "reason"]
    assert status["bad/cmyk.jpg"] == "converted"
    assert status["bad/big.jpg"] == "accepted" and "kept at 800x600" in report.loc["bad/big.jpg", "reason"]
    assert status["bad/portrait.png"] == "accepted"
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
    sizes = {}
    for source, f in zip(labels.source, labels.file):  # every stored photo is RGB, at its own size
        with Image.open(out / f) as img:
            assert img.mode == "RGB"
            sizes[source] = img.size
    assert sizes["good/ok.jpg"] == (640, 480) and sizes["bad/big.jpg"] == (800, 600)
    assert sizes["bad/portrait.png"] == (480, 640)
    assert (tmp_path / "ingest.csv").exists()
    assert snapshot(folder) == before  # the user's files are untouched


def test_too_many_rejections_fail_with_the_report_written_beside(folder, tmp_path):
    cfg = DataConfig(source=str(folder), workers=1, max_rejected_fraction=0.2)
    with pytest.raises(IngestError, match="rejected, above data.max_rejected_fraction") as info:
        import_folder(cfg, tmp_path / "raw", tmp_path / "ingest.csv")
    assert str(tmp_path / "ingest.failed.csv") in str(info.value)
    assert len(pd.read_csv(tmp_path / "ingest.failed.csv")) == 12
    assert not (tmp_path / "ingest.csv").exists()  # the report of the last import that succeeded is kept


def test_nothing_usable_and_missing_folder(tmp_path):
    root = tmp_path / "junk"
    root.mkdir()
    (root / "a.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(IngestError, match="none of the 1 image files is usable"):
        import_folder(DataConfig(source=str(root), workers=1), tmp_path / "raw", tmp_path / "ingest.csv")
    with pytest.raises(IngestError, match="neither 'synthetic' nor an existing folder"):
        import_folder(DataConfig(source=str(tmp_path / "nope"), workers=1), tmp_path / "raw2", tmp_path / "i.csv")


def test_wrong_size_reject_rule(tmp_path):
    path = tmp_path / "big.jpg"
    photo(size=(800, 600)).save(path)
    result = inspect_image(path, wrong_size="reject")
    assert result.status == "rejected" and "wrong size: 800x600" in result.reason


def test_a_square_photo_keeps_its_edges(tmp_path):
    """No 4:3 step: the square crop is taken from the photo as it is, so at crop_fraction 1 a 64×64
    photo reaches the model whole, corners included."""
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(pixels).save(folder / "square.png")
    cfg = DataConfig(source=str(folder), workers=1)
    report = import_folder(cfg, tmp_path / "raw", tmp_path / "ingest.csv").set_index("source")
    assert report.loc["square.png", "status"] == "accepted"
    assert report.loc["square.png", "reason"] == "kept at 64x64"
    stored = tmp_path / "raw" / report.loc["square.png", "file"]
    np.testing.assert_array_equal(load_model_input(stored, crop_fraction=1.0, image_size=64), pixels)
    wide = np.random.default_rng(1).integers(0, 256, (100, 300, 3), dtype=np.uint8)
    centre = load_model_input(wide, crop_fraction=1.0, image_size=100)  # the central 100×100 of 300×100
    np.testing.assert_array_equal(centre, wide[:, 100:200])


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


def bomb_png(path, side=20_000):
    """An all-black 1-bit PNG of side×side pixels: a few tens of KB on disk, 400 Mpx decoded."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.fixture
def messy(folder, tmp_path):
    """The photo folder plus clutter, links of every kind and a decompression bomb."""
    outside = tmp_path / "outside"
    outside.mkdir()
    photo().save(outside / "secret.jpg")  # a good photo: imported if a link out were followed
    (folder / "README.txt").write_text("photos of 2023\n")
    (folder / "good" / "broken.jpg").symlink_to("missing.jpg")
    (folder / "bad" / "loop.jpg").symlink_to("loop.jpg")
    (folder / "bad" / "passwd.jpg").symlink_to("/etc/passwd")
    (folder / "bad" / "secret.jpg").symlink_to(outside / "secret.jpg")
    (folder / "ext").symlink_to(outside, target_is_directory=True)
    (folder / "alias").symlink_to("misc", target_is_directory=True)
    (folder / "good" / "linked.jpg").symlink_to("../misc/unlabelled.jpg")
    os.mkfifo(folder / "misc" / "pipe.fifo.jpg")  # opening it would block the import
    bomb_png(folder / "bad" / "bomb.png")
    return folder


def test_every_entry_gets_a_line_and_no_link_leads_out(messy, tmp_path, monkeypatch):
    before = snapshot(messy)
    opened = []
    real_open = builtins.open

    def recording_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | os.PathLike):
            opened.append((os.path.realpath(file), mode))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    out = tmp_path / "raw"
    cfg = DataConfig(source=str(messy), workers=1, max_rejected_fraction=0.9)
    report = import_folder(cfg, out, tmp_path / "ingest.csv")
    monkeypatch.setattr(builtins, "open", real_open)

    written = pd.read_csv(tmp_path / "ingest.csv", keep_default_na=False)
    assert written.source.tolist() == report.source.tolist()
    assert written.source.is_unique
    expected = {
        "README.txt": ("skipped", "not an image suffix"),
        "good/broken.jpg": ("rejected", "broken link"),
        "bad/loop.jpg": ("rejected", "link loop"),
        "bad/passwd.jpg": ("rejected", "link leads outside the folder"),
        "bad/secret.jpg": ("rejected", "link leads outside the folder"),
        "ext": ("rejected", "link leads outside the folder"),
        "alias": ("skipped", "link to a folder inside the folder"),
        "misc/pipe.fifo.jpg": ("rejected", "not a regular file"),
        "bad/bomb.png": (
            "rejected",
            f"image of 20000×20000 pixels exceeds the limit of {Image.MAX_IMAGE_PIXELS} pixels "
            "(decompression bomb guard)",
        ),
        "good/linked.jpg": ("accepted", ""),
        # the photos of `folder`, decided as before
        "good/ok.jpg": ("accepted", ""),
        "good/alpha.png": ("converted", "converted RGBA to RGB"),
        "good/cut.jpg": ("rejected", "truncated"),
        "bad/cmyk.jpg": ("converted", "converted CMYK to RGB"),
        "bad/big.jpg": ("accepted", "kept at 800x600"),
        "bad/portrait.png": ("accepted", "kept at 480x640"),
        "bad/gray.png": ("rejected", "colour mode L"),
        "bad/deep.png": ("rejected", "colour mode I"),
        "bad/tiny.png": ("rejected", "too small"),
        "bad/notes.jpg": ("rejected", "not an image"),
        "misc/unlabelled.jpg": ("accepted", ""),
        "top.jpg": ("accepted", ""),
    }
    assert set(written.source) == set(expected)  # one line per entry; folders walked, links to folders not
    for row in written.itertuples():
        status, reason = expected[row.source]
        assert row.status == status, (row.source, row.status, row.reason)
        assert reason in row.reason, (row.source, row.reason)

    root = os.path.realpath(messy)
    read = {path for path, mode in opened if "r" in mode and "+" not in mode}
    assert read, "the recorder saw no reads"
    assert all(path.startswith(root + os.sep) for path in read), sorted(read - {p for p in read if root in p})
    assert "/etc/passwd" not in read and str(tmp_path / "outside" / "secret.jpg") not in read

    labels = pd.read_csv(out / "labels.csv", keep_default_na=False).set_index("source")
    assert len(labels) == 8  # the 7 usable photos of `folder`, and the one linked into good/
    assert labels.loc["good/linked.jpg", "label"] == "good"
    assert (out / labels.loc["good/linked.jpg", "file"]).read_bytes() == (
        messy / "misc" / "unlabelled.jpg"
    ).read_bytes()
    assert labels.loc["top.jpg", "label"] == "" and labels.loc["bad/cmyk.jpg", "label"] == "bad"
    for f in labels.file:
        with Image.open(out / f) as img:
            assert img.mode == "RGB" and min(img.size) >= 480
    assert snapshot(messy) == before  # every byte, link and mtime of the user's folder stays


def test_files_without_an_image_suffix_do_not_count_towards_the_rejected_share(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    photo().save(root / "a.jpg")
    photo().save(root / "b.jpg")
    for name in ("README.txt", "Thumbs.db", ".DS_Store", "notes.md"):
        (root / name).write_text("not a photo")
    report = import_folder(
        DataConfig(source=str(root), workers=1, max_rejected_fraction=0.0), tmp_path / "raw", tmp_path / "i.csv"
    )
    assert sorted(report.status) == ["accepted"] * 2 + ["skipped"] * 4
    (root / "c.jpg").write_text("a broken photo")  # 1 of 3 photos rejected
    with pytest.raises(IngestError, match=r"33.3% of the image files were rejected"):
        import_folder(
            DataConfig(source=str(root), workers=1, max_rejected_fraction=0.3), tmp_path / "raw2", tmp_path / "j.csv"
        )


def test_a_folder_without_photos_fails_with_the_report_written_beside(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "README.txt").write_text("nothing here")
    with pytest.raises(IngestError, match="no image files"):
        import_folder(DataConfig(source=str(root), workers=1), tmp_path / "raw", tmp_path / "i.csv")
    assert not (tmp_path / "i.csv").exists()
    written = pd.read_csv(tmp_path / "i.failed.csv", keep_default_na=False)
    assert written.to_dict("records") == [
        {"source": "sub/README.txt", "status": "skipped", "reason": "not an image suffix", "label": "", "file": ""}
    ]


def test_unreadable_files_and_folders_get_a_line(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    (root / "locked").mkdir(parents=True)
    photo().save(root / "locked" / "hidden.jpg")
    photo().save(root / "ok.jpg")
    photo().save(root / "private.jpg")
    locked, private = str(root / "locked"), str(root / "private.jpg")
    real_scandir, real_open = os.scandir, builtins.open

    def scandir(path="."):  # permissions would do, but the tests may run as root
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, str | os.PathLike) and os.fspath(file) == private:
            raise PermissionError(13, "Permission denied", private)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(builtins, "open", guarded_open)
    cfg = DataConfig(source=str(root), workers=1, max_rejected_fraction=0.9)
    report = import_folder(cfg, tmp_path / "raw", tmp_path / "i.csv").set_index("source")
    assert sorted(report.index) == ["locked", "ok.jpg", "private.jpg"]
    assert report.loc["locked", "status"] == "rejected"
    assert report.loc["locked", "reason"] == "unreadable folder: Permission denied"
    assert report.loc["private.jpg", "status"] == "rejected" and "unreadable" in report.loc["private.jpg", "reason"]
    assert report.loc["ok.jpg", "status"] == "accepted"


# ------------------------------------------------------------------ odd names, empty folders, the stage's outputs


def contents(root):
    """Every file under `root` and its bytes (folders' times change when a stage tries and fails)."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


LATIN1_NAME = os.fsdecode(b"Kartoffel_gro\xdf.jpg")  # a Latin-1 byte: not UTF-8, read with a lone surrogate


def test_a_name_that_is_not_utf8_is_reported_escaped_and_imported(tmp_path):
    root = tmp_path / "photos"
    (root / "good").mkdir(parents=True)
    photo().save(root / "good" / LATIN1_NAME, format="JPEG")
    (root / os.fsdecode(b"Notiz_\xe9.jpg")).write_text("not a jpeg")  # rejected like any other file
    photo().save(root / "plain.jpg")
    cfg = DataConfig(source=str(root), workers=1, max_rejected_fraction=0.5)
    report = import_folder(cfg, tmp_path / "raw", tmp_path / "ingest.csv")
    written = pd.read_csv(tmp_path / "ingest.csv", keep_default_na=False, encoding="utf-8").set_index("source")
    assert sorted(written.index) == ["Notiz_\\xe9.jpg", "good/Kartoffel_gro\\xdf.jpg", "plain.jpg"]
    assert written.loc["good/Kartoffel_gro\\xdf.jpg", "status"] == "accepted"
    assert written.loc["good/Kartoffel_gro\\xdf.jpg", "label"] == "good"
    assert written.loc["Notiz_\\xe9.jpg", "status"] == "rejected"
    assert list(report.source) == list(written.index)
    labels = pd.read_csv(tmp_path / "raw" / "labels.csv", keep_default_na=False).set_index("source")
    stored = tmp_path / "raw" / labels.loc["good/Kartoffel_gro\\xdf.jpg", "file"]
    assert stored.read_bytes() == (root / "good" / LATIN1_NAME).read_bytes()


def test_factors_can_name_a_photo_whose_name_is_not_utf8_as_the_report_shows_it(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    photo().save(root / LATIN1_NAME, format="JPEG")
    photo().save(root / "b.jpg")
    (root / "factors.csv").write_text("file,size\nKartoffel_gro\\xdf.jpg,1.5\nb.jpg,2.0\n")
    import_folder(DataConfig(source=str(root), workers=1), tmp_path / "raw", tmp_path / "ingest.csv")
    factors = pd.read_csv(tmp_path / "raw" / "factors.csv")
    assert sorted(factors["size"]) == [1.5, 2.0]


def test_factors_for_a_few_photos_are_imported_for_those_and_counted(tmp_path, caplog):
    root = tmp_path / "photos"
    (root / "good").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "good/c.jpg", "good/d.jpg"):
        photo().save(root / name)
    photo(mode="L").save(root / "grey.png")  # rejected on import: its row is unused
    (root / "factors.csv").write_text("file,size,spots\ngood/c.jpg,1.5,0\ngrey.png,9,9\na.jpg,2.0,3\n")
    with caplog.at_level("INFO", logger="tubervae.stages.raw"):
        report = import_folder(
            DataConfig(source=str(root), workers=1, max_rejected_fraction=0.5),
            tmp_path / "raw",
            tmp_path / "ingest.csv",
        )
    labels = pd.read_csv(tmp_path / "raw" / "labels.csv", keep_default_na=False).set_index("source")
    factors = pd.read_csv(tmp_path / "raw" / "factors.csv")  # the measured photos' rows only
    assert factors.file.tolist() == labels.loc[["a.jpg", "good/c.jpg"], "file"].tolist()
    assert factors[["size", "spots"]].to_numpy().tolist() == [[2.0, 3.0], [1.5, 0.0]]
    reason = "the known factors of 2 of the 4 photos kept (data/raw/factors.csv)"
    assert report.set_index("source").loc["factors.csv", "reason"] == reason
    written = pd.read_csv(tmp_path / "ingest.csv", keep_default_na=False).set_index("source")
    assert written.loc["factors.csv", "reason"] == reason
    assert "factors (size, spots) measured for 2 of the 4 photos kept" in caplog.text


def test_factors_that_measure_no_kept_photo_stop_the_import_naming_the_file(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    photo().save(root / "a.jpg")
    photo(mode="L").save(root / "grey.png")
    (root / "factors.csv").write_text("file,size\ngrey.png,1\n")
    cfg = DataConfig(source=str(root), workers=1, max_rejected_fraction=0.5)
    with pytest.raises(
        FactorTableError, match=re.escape(f"{root / 'factors.csv'} measures none of the 1 photo(s) kept")
    ):
        import_folder(cfg, tmp_path / "raw", tmp_path / "ingest.csv")
    assert not (tmp_path / "ingest.csv").exists()


def test_an_empty_folder_is_one_line_and_leaves_the_previous_import(tmp_path):
    from tubervae.stages import raw

    root = tmp_path / "photos"
    root.mkdir()
    photo().save(root / "a.jpg")
    photo().save(root / "b.jpg")
    project = tmp_path / "project"
    raw.run(Params(data=DataConfig(source=str(root), workers=1)), root=project)
    before = contents(project)
    for name in ("a.jpg", "b.jpg"):
        (root / name).unlink()
    with pytest.raises(IngestError) as info:
        raw.run(Params(data=DataConfig(source=str(root), workers=1)), root=project)
    assert (
        str(info.value) == f"data.source: the folder {root} is empty: put the photos in it (good/ and bad/ for labels)"
    )
    assert contents(project) == before  # neither data/raw nor reports/data/ingest.csv changed


def test_a_failed_import_keeps_the_previous_import_and_report(tmp_path):
    from tubervae.stages import raw

    root = tmp_path / "photos"
    root.mkdir()
    photo().save(root / "a.jpg")
    project = tmp_path / "project"
    raw.run(Params(data=DataConfig(source=str(root), workers=1)), root=project)
    before = contents(project)
    (root / LATIN1_NAME).write_text("a broken photo with an odd name")
    with pytest.raises(IngestError, match="50.0% of the image files were rejected") as info:
        raw.run(Params(data=DataConfig(source=str(root), workers=1, max_rejected_fraction=0.2)), root=project)
    failed = project / "reports" / "data" / "ingest.failed.csv"
    assert str(failed) in str(info.value)
    assert "Kartoffel_gro\\xdf.jpg" in failed.read_text(encoding="utf-8")
    failed.unlink()
    assert contents(project) == before
    raw.run(Params(data=DataConfig(source=str(root), workers=1, max_rejected_fraction=0.5)), root=project)
    assert "Kartoffel_gro\\xdf.jpg" in (project / "reports" / "data" / "ingest.csv").read_text(encoding="utf-8")
    assert not failed.exists()


def test_a_16_bit_colour_photo_is_refused_at_ingestion(photos, tmp_path):
    pixels = np.tile(photos["grid"], (4, 4, 1))  # 64×64: large enough to be imported
    path = tmp_path / "deep.png"
    path.write_bytes(png_16_bit_rgb(pixels))
    with Image.open(path) as img:
        assert img.mode == "RGB"  # what makes it easy to miss
    result = inspect_image(path)
    assert result.status == "rejected" and "more than 8 bits per channel" in result.reason
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    assert inspect_image(tmp_path / "plain.png").status == "accepted"
