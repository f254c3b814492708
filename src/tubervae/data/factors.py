"""Known factors of a user's own photos: the `factors.csv` a photo folder may carry.

A researcher whose photos come with measured factors (size, weight, spot area, lighting...)
puts `factors.csv` at the top of the folder: a column `file` naming each photo by its path
relative to the folder (`good/t001.jpg`, as reports/data/ingest.csv's `source` column shows
it) and one numeric column per factor. It may measure only some of the photos (a grading line
weighs and measures 100 tubers, not 10 000): a photo with a row is *measured*, one without is
not, and every photo still trains the models.

- The raw stage checks the table against the photos it keeps and writes the measured photos'
  rows, and only theirs, beside labels.csv under the imported names (data/raw/factors.csv);
  it logs how many of the kept photos are measured, and ingest.csv says it on factors.csv's line.
- The preprocess stage gives every split's `factors` one row per photo, NaN for a photo that
  is not measured (`measured_rows` finds the others), and counts the measured photos of each
  split in meta.json.
- The evaluate stage scores every model against the factors of the test split's measured photos,
  as it does against the simulator's; with none measured there it skips, and says why.

Everything wrong with the table is refused with what was wrong and where, before any model
sees it: a missing `file` column, no factor column, a reserved column name, duplicate or
unknown photo names, text or missing or infinite values (a row gives every factor), a table
that measures none of the photos kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

FACTORS_FILE = "factors.csv"
RESERVED_COLUMNS = ("label", "source")  # labels.csv's columns, which the factors are merged with
_SHOWN = 5  # examples quoted in an error


class FactorTableError(ValueError):
    """The folder's factors.csv cannot be used as it is."""


def _examples(values: Iterable) -> str:
    values = [str(v) for v in values]
    more = f" and {len(values) - _SHOWN} more" if len(values) > _SHOWN else ""
    return ", ".join(repr(v) for v in values[:_SHOWN]) + more


def _photo_name(name: str) -> str:
    """A relative photo path as ingest.csv writes it: forward slashes, no leading './'."""
    name = str(name).strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def read_factor_table(path: str | Path) -> pd.DataFrame:
    """The table in ``path``: its ``file`` column normalised and its factor columns as float64."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"file": str}, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FactorTableError(f"{path} is not a readable CSV table: {exc}") from exc
    if "file" not in table.columns:
        raise FactorTableError(
            f"{path} needs a column 'file' naming each photo by its path in the folder (e.g. good/t001.jpg); "
            f"its columns are {list(table.columns)}"
        )
    factors = [c for c in table.columns if c != "file"]
    if not factors:
        raise FactorTableError(f"{path} has no factor column besides 'file': add one numeric column per factor")
    reserved = [c for c in factors if c in RESERVED_COLUMNS]
    if reserved:
        raise FactorTableError(
            f"{path}: column names {reserved} are reserved (labels come from the good/ and bad/ folders); rename them"
        )
    if table["file"].isna().any():
        rows = np.flatnonzero(table["file"].isna().to_numpy()) + 2  # the file's line numbers, header first
        raise FactorTableError(f"{path}: no photo name in column 'file' on line(s) {_examples(rows)}")
    table["file"] = table["file"].map(_photo_name)
    duplicated = table["file"][table["file"].duplicated()].unique()
    if len(duplicated):
        raise FactorTableError(f"{path} names these photos more than once: {_examples(duplicated)}")
    for column in factors:
        values = pd.to_numeric(table[column], errors="coerce")
        text = table[column].notna() & values.isna()
        if text.any():
            first = int(np.flatnonzero(text.to_numpy())[0])
            raise FactorTableError(
                f"{path}: factor {column!r} must be numeric, but line {first + 2} "
                f"({table['file'].iloc[first]}) holds {table[column].iloc[first]!r}"
            )
        if values.isna().any() or not np.isfinite(values.to_numpy(float)).all():
            bad = table["file"][values.isna() | ~np.isfinite(values.to_numpy(float))]
            raise FactorTableError(
                f"{path}: factor {column!r} has no finite value for {len(bad)} photo(s): {_examples(bad)}"
            )
        table[column] = values.astype(np.float64)
    return table


def measured_rows(factors: np.ndarray) -> np.ndarray:
    """Which rows of an (n, k) factor array are measured: True where every factor is finite.

    A split's unmeasured photos carry NaN factors (data/processed); select the others with this
    mask wherever factors are scored.
    """
    array = np.asarray(factors)
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"factors must be a 2-D numeric array (n, k), got {array.dtype} of shape {array.shape}")
    return np.isfinite(array).all(axis=1)


def factors_for_photos(
    table: pd.DataFrame,
    photos: pd.DataFrame,
    folder_entries: Iterable[str],
    path: str | Path = FACTORS_FILE,
) -> pd.DataFrame:
    """One row of factors per measured kept photo, in ``photos``' order, under its imported name.

    A kept photo without a row in ``table`` is not measured and gets no row; a table that measures
    none of them is refused (``path``, the table's file, is what the messages name).

    ``photos`` has the imported name (``file``), the path it was found at (``source``) and the path
    its bytes were read from (``read_from``; they differ for a link inside the folder, which may be
    described under either). ``folder_entries`` is every path the folder scan listed: a row naming
    none of them is a typo or another folder's row, and is refused rather than ignored; a row for a
    photo that was rejected on import is simply unused.
    """
    # Compared as `read_factor_table` normalised the table's names (a name reported escaped, `gro\\xdf.jpg`,
    # has a backslash, which the table's names lose like a Windows separator).
    known = {_photo_name(n) for n in (*folder_entries, *photos["source"], *photos["read_from"])}
    unknown = table["file"][~table["file"].isin(known)]
    if len(unknown):
        raise FactorTableError(
            f"{path} names {len(unknown)} photo(s) that are not in the folder: {_examples(unknown)}; "
            "name each photo by its path relative to the folder"
        )
    by_name = table.set_index("file")
    matched = [
        source if source in by_name.index else read_from if read_from in by_name.index else None
        for source, read_from in zip(photos["source"].map(_photo_name), photos["read_from"].map(_photo_name))
    ]
    measured = np.array([name is not None for name in matched], dtype=bool)
    if not measured.any():
        found = (
            f"its {len(table)} row(s) name only entries not kept on import ({_examples(table['file'])})"
            if len(table)
            else "it has no row"
        )
        raise FactorTableError(
            f"{path} measures none of the {len(photos)} photo(s) kept: {found}; "
            "give the factors of at least one kept photo, or remove the file"
        )
    rows = by_name.loc[[name for name in matched if name is not None]].reset_index(drop=True)
    return pd.concat([photos.loc[measured, ["file"]].reset_index(drop=True), rows], axis=1)
