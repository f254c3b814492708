"""A user's factors.csv: read, checked and matched to the photos kept (tubervae.data.factors)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from tubervae.data.factors import FactorTableError, factors_for_photos, read_factor_table


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


def test_a_photo_without_a_row_or_a_row_without_a_photo_is_refused():
    kept = photos(("images/photo_00000.jpg", "a.jpg", "a.jpg"), ("images/photo_00001.jpg", "b.jpg", "b.jpg"))
    with pytest.raises(FactorTableError, match=re.escape("no row for 1 of the 2 photos kept: 'b.jpg'")):
        factors_for_photos(pd.DataFrame({"file": ["a.jpg"], "size": [1.0]}), kept, ["a.jpg", "b.jpg"])
    table = pd.DataFrame({"file": ["a.jpg", "b.jpg", "c.jpg"], "size": [1.0, 2.0, 3.0]})
    with pytest.raises(FactorTableError, match=re.escape("1 photo(s) that are not in the folder: 'c.jpg'")):
        factors_for_photos(table, kept, ["a.jpg", "b.jpg"])
