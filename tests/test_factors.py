"""A user's factors.csv: read, checked and matched to the photos kept (tubervae.data.factors)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from tubervae.data.factors import FactorTableError, factors_for_photos, measured_rows, read_factor_table


def write(tmp_path, text: str):
    path = tmp_path / "factors.csv"
    path.write_text(text)
    return path


def test_names_are_normalised_and_values_read_as_floats(tmp_path):
    table = read_factor_table(write(tmp_path, "file, size,spots\n./good/a.jpg,3,0\nbad\\b.jpg, 4.5 ,1e-2\n"))
    assert table.file.tolist() == ["good/a.jpg", "bad/b.jpg"]
    assert list(table.columns) == ["file", "size", "spots"]
    assert table["size"].dtype == np.float64
    np.testing.assert_array_equal(table[["size", "spots"]], [[3.0, 0.0], [4.5, 0.01]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,size\na.jpg,1\n", "needs a column 'file'"),
        ("file\na.jpg\n", "no factor column besides 'file'"),
        ("file,label\na.jpg,1\n", "['label'] are reserved"),
        ("file,size\na.jpg,1\na.jpg,2\n", "more than once: 'a.jpg'"),
        ("file,size\na.jpg,1\nb.jpg,big\n", "factor 'size' must be numeric, but line 3 (b.jpg) holds 'big'"),
        ("file,size\na.jpg,1\nb.jpg,\n", "factor 'size' has no finite value for 1 photo(s): 'b.jpg'"),
        ("file,size\na.jpg,inf\n", "no finite value for 1 photo(s): 'a.jpg'"),
        ("file,size\n,1\n", "no photo name in column 'file' on line(s) '2'"),
        ("", "not a readable CSV table"),
    ],
)
def test_bad_tables_are_refused_with_what_and_where(tmp_path, text, message):
    with pytest.raises(FactorTableError, match=re.escape(message)):
        read_factor_table(write(tmp_path, text))


def photos(*rows):
    return pd.DataFrame(rows, columns=["file", "source", "read_from"])


def test_each_kept_photo_gets_its_row_in_order_a_link_by_its_target():
    table = pd.DataFrame({"file": ["good/a.jpg", "bad/b.jpg", "bad/rejected.jpg"], "size": [1.0, 2.0, 3.0]})
    kept = photos(
        ("images/photo_00000.jpg", "bad/b.jpg", "bad/b.jpg"),
        ("images/photo_00001.jpg", "good/a.jpg", "good/a.jpg"),
        ("images/photo_00002.jpg", "good/link.jpg", "good/a.jpg"),
    )
    out = factors_for_photos(table, kept, ["good/a.jpg", "bad/b.jpg", "bad/rejected.jpg", "good/link.jpg"])
    assert out.file.tolist() == ["images/photo_00000.jpg", "images/photo_00001.jpg", "images/photo_00002.jpg"]
    assert out["size"].tolist() == [2.0, 1.0, 1.0]


def test_a_kept_photo_without_a_row_is_not_measured_and_gets_no_row():
    table = pd.DataFrame({"file": ["c.jpg", "a.jpg"], "size": [3.0, 1.0], "spots": [0.0, 2.0]})
    kept = photos(*((f"images/photo_{i:05d}.jpg", name, name) for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg"])))
    out = factors_for_photos(table, kept, ["a.jpg", "b.jpg", "c.jpg"])
    assert out.file.tolist() == ["images/photo_00000.jpg", "images/photo_00002.jpg"]  # b.jpg: not measured
    np.testing.assert_array_equal(out[["size", "spots"]], [[1.0, 2.0], [3.0, 0.0]])


def test_a_row_without_a_photo_is_refused():
    kept = photos(("images/photo_00000.jpg", "a.jpg", "a.jpg"), ("images/photo_00001.jpg", "b.jpg", "b.jpg"))
    table = pd.DataFrame({"file": ["a.jpg", "b.jpg", "c.jpg"], "size": [1.0, 2.0, 3.0]})
    with pytest.raises(FactorTableError, match=re.escape("1 photo(s) that are not in the folder: 'c.jpg'")):
        factors_for_photos(table, kept, ["a.jpg", "b.jpg"])


def test_a_table_that_measures_none_of_the_kept_photos_is_refused_naming_it(tmp_path):
    kept = photos(("images/photo_00000.jpg", "a.jpg", "a.jpg"), ("images/photo_00001.jpg", "b.jpg", "b.jpg"))
    path = tmp_path / "photos" / "factors.csv"
    only_rejected = pd.DataFrame({"file": ["grey.jpg"], "size": [1.0]})  # in the folder, rejected on import
    with pytest.raises(FactorTableError) as info:
        factors_for_photos(only_rejected, kept, ["a.jpg", "b.jpg", "grey.jpg"], path)
    assert str(info.value) == (
        f"{path} measures none of the 2 photo(s) kept: its 1 row(s) name only entries not kept on import "
        "('grey.jpg'); give the factors of at least one kept photo, or remove the file"
    )
    header_only = read_factor_table(write(tmp_path, "file,size\n"))
    with pytest.raises(
        FactorTableError, match=re.escape("factors.csv measures none of the 2 photo(s) kept: it has no row")
    ):
        factors_for_photos(header_only, kept, ["a.jpg", "b.jpg"])


def test_measured_rows_are_those_with_every_factor_finite():
    factors = np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, np.nan], [0.0, -1.0], [np.inf, 1.0]], np.float32)
    np.testing.assert_array_equal(measured_rows(factors), [True, False, False, True, False])
    assert measured_rows(np.arange(6).reshape(3, 2)).all()
    assert measured_rows(np.empty((0, 3))).shape == (0,)
    with pytest.raises(
        ValueError, match=re.escape("factors must be a 2-D numeric array (n, k), got float64 of shape (3,)")
    ):
        measured_rows(np.ones(3))
    with pytest.raises(ValueError, match="factors must be a 2-D numeric array"):
        measured_rows(np.array([["a", "b"]]))
