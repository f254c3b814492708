"""Every figure the project draws, as pure functions of arrays.

Kept whole: its figure builders share one small toolkit (the pyplot-free canvas, the
argument checks, the good/bad colours) and `save_figure` and `close`, which every figure goes
through; one module per figure would repeat that toolkit in each.

Each builder takes arrays (or a DataFrame) and returns a ``matplotlib.figure.Figure``
rendered by the Agg canvas. Figures are created without pyplot, so building many of
them in a long search leaks nothing into global state and needs no display; only
:func:`save_figure` touches the file system. No MLflow, no file reading here: the
tracking and stage modules decide where figures go.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator

from tubervae.config import INFORMATIVE_KL

__all__ = [
    "close",
    "distribution_figure",
    "factor_heatmap",
    "history_figure",
    "image_grid_figure",
    "image_mosaic",
    "importance_heatmap",
    "label_efficiency_figure",
    "message_figure",
    "metric_vs_param_figure",
    "rank_scatter_figure",
    "reconstruction_figure",
    "save_figure",
    "scatter_threshold_figure",
    "similarity_heatmap",
    "table_figure",
    "traversal_figure",
    "traversal_latents",
]

_CELL_INCHES = 1.1
_BAD_COLOUR = "tab:red"
_GOOD_COLOUR = "tab:blue"


# --------------------------------------------------------------------------- helpers


def _new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure on the Agg canvas with constrained (tight) layout."""
    fig = Figure(figsize=(max(width, 2.0), max(height, 1.5)), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _normal_pdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """The normal density N(mean, std²) at x (scipy.stats.norm.pdf without importing scipy.stats in every
    training run that draws its components' distributions)."""
    z = (x - mean) / std
    return np.exp(-0.5 * z * z) / (std * np.sqrt(2.0 * np.pi))


def _vector(name: str, values, length: int | None = None, *, allow_nan: bool = False) -> np.ndarray:
    """A 1-d float array, checked for shape and finiteness."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {values!r}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} must have length {length}, got length {arr.shape[0]}")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        allowed = "finite values or NaN" if allow_nan else "finite values"
        raise ValueError(
            f"{name} must hold {allowed}, got {arr[bad][:3].tolist()} at index {np.flatnonzero(bad)[:3].tolist()}"
        )
    return arr


def _mask(name: str, values, length: int) -> np.ndarray:
    """A boolean vector of a given length (accepts bools or 0/1)."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{name} must be a 1-d boolean array of length {length}, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans (or 0/1), got values {np.unique(arr)[:5].tolist()}")
        arr = arr.astype(bool)
    return arr


def _images(name: str, images, ndim: int) -> np.ndarray:
    """Images as float in [0, 1], last axis RGB; uint8 is scaled by 1/255."""
    arr = np.asarray(images)
    if arr.ndim != ndim or arr.shape[-1] != 3:
        expected = "(n, h, w, 3)" if ndim == 4 else "(d, m, h, w, 3)"
        raise ValueError(f"{name} must have shape {expected}, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    if arr.size and (not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(
            f"{name} as floats must lie in [0, 1], got range [{np.nanmin(arr):.3g}, {np.nanmax(arr):.3g}]"
            + (" with non-finite values" if not np.isfinite(arr).all() else "")
        )
    return arr.astype(np.float32, copy=False)


def _labels(name: str, labels, length: int) -> list[str]:
    if len(labels) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(labels)}")
    return [str(label) for label in labels]


def _annotated_heatmap(ax, values: np.ma.MaskedArray, *, vmin=None, vmax=None, cmap="viridis", aspect="equal"):
    """Heat map with each unmasked value printed in its cell (2 decimals)."""
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect)
    lo, hi = image.norm.vmin, image.norm.vmax
    middle = (lo + hi) / 2.0
    hidden = np.ma.getmaskarray(values)
    for (row, col), value in np.ndenumerate(np.ma.getdata(values)):
        if hidden[row, col]:
            continue
        colour = "black" if value > middle else "white"
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
    return image


# --------------------------------------------------------------------------- images


def traversal_latents(z0, offsets) -> np.ndarray:
    """Latent codes of a traversal: row i, column j is ``z0`` with ``z0[i] += offsets[j]``.

    Shape ``(d, m, d)``; the caller decodes them (thesis §2.3.1 uses offsets from -2 to 2).
    """
    z0 = _vector("z0", z0)
    offsets = _vector("offsets", offsets)
    d, m = z0.shape[0], offsets.shape[0]
    if d == 0 or m == 0:
        raise ValueError(f"z0 and offsets must be non-empty, got lengths {d} and {m}")
    codes = np.broadcast_to(z0, (d, m, d)).copy()
    rows = np.arange(d)
    codes[rows, :, rows] += offsets  # component i of row i moves by each offset
    return codes


def image_mosaic(rows, gap: int = 1, fill: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile rows of RGB images into one array, ``gap`` pixels of ``fill`` between cells.

    Cells take the largest image's height and width; a short row leaves blank cells, a small
    image sits in its cell's top-left corner. Returns the mosaic and each row's and column's
    pixel origin, so labels can be placed on the cells.
    """
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"gap must be a non-negative integer, got {gap!r}")
    if len(rows) == 0 or max(len(row) for row in rows) == 0:
        raise ValueError("rows must hold at least one image, got none")
    cell_h = max(image.shape[0] for row in rows for image in row)
    cell_w = max(image.shape[1] for row in rows for image in row)
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    row_origins = np.arange(n_rows) * (cell_h + gap)
    col_origins = np.arange(n_cols) * (cell_w + gap)
    mosaic = np.full((row_origins[-1] + cell_h, col_origins[-1] + cell_w, 3), fill, dtype=np.float32)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            h, w = image.shape[:2]
            mosaic[row_origins[r] : row_origins[r] + h, col_origins[c] : col_origins[c] + w] = image
    return mosaic, row_origins, col_origins


def image_grid_figure(rows, titles=None, row_labels=None) -> Figure:
    """A grid of RGB images, one row per sequence; rows may differ in length.

    Why not `torchvision.utils.make_grid`: it tiles pixels only, and these grids are read by their
    labels (each traversal row's component and KL, each misclassified photo's scores).
    The grid is one mosaic on one axes, labelled by its ticks: a subplot per image made a run's
    traversal and reconstructions several times slower to draw (benchmarks/bench_figures.py).

    ``rows`` is a sequence of ``(m_r, h, w, 3)`` arrays (uint8 or float in [0, 1]) or one
    ``(r, m, h, w, 3)`` array. ``titles`` is either ``m`` column titles (flat sequence,
    shown over the first row) or one title per image (a sequence of per-row sequences),
    which suits galleries of misclassified images. ``row_labels`` names each row.
    """
    if isinstance(rows, np.ndarray):
        if rows.ndim != 5:
            raise ValueError(f"rows as one array must have shape (r, m, h, w, 3), got shape {rows.shape}")
        rows = list(rows)
    if len(rows) == 0:
        raise ValueError("rows must hold at least one row of images, got none")
    grid = [_images(f"rows[{r}]", row, 4) for r, row in enumerate(rows)]
    n_rows, n_cols = len(grid), max(row.shape[0] for row in grid)
    if n_cols == 0:
        raise ValueError("rows must hold at least one image, got only empty rows")

    per_image = None
    column_titles = None
    if titles is not None:
        if len(titles) > 0 and all(isinstance(t, (Sequence, np.ndarray)) and not isinstance(t, str) for t in titles):
            if len(titles) != n_rows:
                raise ValueError(f"titles per image must have one sequence per row ({n_rows}), got {len(titles)}")
            per_image = [_labels(f"titles[{r}]", t, grid[r].shape[0]) for r, t in enumerate(titles)]
        else:
            column_titles = _labels("titles", titles, n_cols)
    if row_labels is not None:
        row_labels = _labels("row_labels", row_labels, n_rows)

    cell = max(max(image.shape[0], image.shape[1]) for row in grid for image in row)
    # Room between rows for the per-image titles (about a 7-point line in a 1.1-inch cell).
    gap = max(1, round(cell * (0.22 if per_image is not None else 0.04)))
    mosaic, row_origins, col_origins = image_mosaic(grid, gap=gap)
    cell_h = mosaic.shape[0] - row_origins[-1]
    cell_w = mosaic.shape[1] - col_origins[-1]

    label_room = 0.6 if row_labels is not None else 0.0
    fig = _new_figure(n_cols * _CELL_INCHES + label_room, n_rows * _CELL_INCHES + 0.4)
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0)
    if column_titles is not None:
        ax.xaxis.tick_top()
        ax.set_xticks(col_origins + (cell_w - 1) / 2.0, column_titles, fontsize=8)
    else:
        ax.set_xticks([])
    if row_labels is not None:
        ax.set_yticks(row_origins + (cell_h - 1) / 2.0, row_labels, fontsize=8)
    else:
        ax.set_yticks([])
    if per_image is not None:
        ax.set_ylim(mosaic.shape[0] - 0.5, -0.5 - gap)  # the first row's titles inside the axes
        for r, names in enumerate(per_image):
            for c, name in enumerate(names):
                x = col_origins[c] + (cell_w - 1) / 2.0
                ax.text(x, row_origins[r] - 1.0, name, ha="center", va="bottom", fontsize=7, clip_on=False)
    return fig


def traversal_figure(images, kl=None, values=None, guided: int | None = None) -> Figure:
    """Latent traversal (thesis §2.3.1): row i shows component i varied, others fixed.

    ``images`` is ``(d, m, h, w, 3)``; ``kl`` (length d) labels each row so uninformative
    rows are easy to skip; ``values`` (length m) are the offsets shown as column titles,
    by default evenly spaced from -2 to 2. ``guided`` names the row of a guided family's
    component ("guided: good/bad"): what the model thinks makes a tuber bad.
    """
    grid = _images("images", images, 5)
    d, m = grid.shape[:2]
    if d == 0 or m == 0:
        raise ValueError(f"images must hold at least one row and one column, got shape {grid.shape}")
    offsets = np.linspace(-2.0, 2.0, m) if values is None else _vector("values", values, m)
    if kl is None:
        row_labels = [f"z{i}" for i in range(d)]
    else:
        kl = _vector("kl", kl, d)
        row_labels = [f"z{i}  KL={k:.2f}" for i, k in enumerate(kl)]
    if guided is not None:
        if isinstance(guided, bool) or not isinstance(guided, (int, np.integer)) or not 0 <= guided < d:
            raise ValueError(f"guided must be a component index in 0..{d - 1}, got {guided!r}")
        row_labels[guided] = f"{row_labels[guided]}  guided: good/bad"
    titles = [f"{v:+.2g}" for v in offsets]
    return image_grid_figure(list(grid), titles=titles, row_labels=row_labels)


def reconstruction_figure(originals, reconstructions, n: int = 8) -> Figure:
    """The first ``n`` originals over their reconstructions, to judge what a model keeps."""
    originals = _images("originals", originals, 4)
    reconstructions = _images("reconstructions", reconstructions, 4)
    if originals.shape != reconstructions.shape:
        raise ValueError(
            f"originals and reconstructions must have the same shape, got {originals.shape} and {reconstructions.shape}"
        )
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if originals.shape[0] == 0:
        raise ValueError("originals must hold at least one image, got none")
    n = min(int(n), originals.shape[0])
    return image_grid_figure([originals[:n], reconstructions[:n]], row_labels=["original", "reconstruction"])


# --------------------------------------------------------------------------- latents


def distribution_figure(mu, logvar, kl=None, *, kl_threshold: float = INFORMATIVE_KL) -> Figure:
    """Per-component posteriors of one image (thesis §2.3.2) against the N(0, 1) prior.

    Informative components (KL above ``kl_threshold``) are narrow and off-centre, drawn
    solid and named; the rest coincide with the prior and are drawn faint. Without
    ``kl`` (usually the mean over a probe set) the KL of this one image is used.
    """
    mu = _vector("mu", mu)
    d = mu.shape[0]
    if d == 0:
        raise ValueError("mu must hold at least one component, got none")
    logvar = _vector("logvar", logvar, d)
    sigma = np.exp(0.5 * logvar)
    if kl is None:
        kl = 0.5 * (mu**2 + sigma**2 - logvar - 1.0)
    else:
        kl = _vector("kl", kl, d)
    informative = kl > kl_threshold

    lo = min(-4.0, float(np.min(mu - 4.0 * sigma)))
    hi = max(4.0, float(np.max(mu + 4.0 * sigma)))
    # A fine local grid around each mean keeps narrow peaks from being undersampled.
    local = [np.linspace(m - 5.0 * s, m + 5.0 * s, 201) for m, s in zip(mu, sigma)]
    x = np.unique(np.concatenate([np.linspace(lo, hi, 801), *local]))
    x = x[(x >= lo) & (x <= hi)]

    fig = _new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    strong = np.flatnonzero(informative)
    for j, colour in zip(strong, _palette(strong.size)):
        density = _normal_pdf(x, mu[j], sigma[j])
        ax.plot(x, density, lw=1.8, color=colour, zorder=3, label=f"z{j}  KL={kl[j]:.2f}")
    weak = np.flatnonzero(~informative)
    for k, j in enumerate(weak):
        label = f"uninformative ({weak.size})" if k == 0 else None
        ax.plot(x, _normal_pdf(x, mu[j], sigma[j]), lw=1.0, color="grey", alpha=0.35, label=label)
    ax.plot(x, _normal_pdf(x, 0.0, 1.0), "k--", lw=1.2, zorder=2, label="prior N(0, 1)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("latent value")
    ax.set_ylabel("density")
    ax.set_title(f"q(z|x) per component: {int(informative.sum())} of {d} informative")
    ax.legend(fontsize=8, loc="upper right", ncols=2 if d > 8 else 1)
    return fig


def _palette(n: int) -> list:
    """n distinct colours (tab10, then tab20 when more are needed)."""
    name = "tab10" if n <= 10 else "tab20"
    cmap = colormaps[name]
    return [cmap(i % cmap.N) for i in range(n)]


def similarity_heatmap(matrix, informative_a, informative_b, title: str = "") -> Figure:
    """Similarity of the components of two models (thesis fig. 4.15/4.17).

    Rows are components of model A, columns of model B; rows or columns of
    uninformative components are masked (blank), as UDR ignores them.
    """
    values = np.asarray(matrix, dtype=float)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"matrix must be a non-empty 2-d array (d_a, d_b), got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("matrix must hold finite values, got NaN or inf")
    rows = _mask("informative_a", informative_a, values.shape[0])
    cols = _mask("informative_b", informative_b, values.shape[1])
    masked = np.ma.masked_array(values, mask=~rows[:, None] | ~cols[None, :])

    d_a, d_b = values.shape
    fig = _new_figure(0.55 * d_b + 2.2, 0.5 * d_a + 1.2)
    ax = fig.add_subplot()
    image = _annotated_heatmap(ax, masked, vmin=0.0, vmax=max(1.0, float(values.max())))
    ax.set_xticks(range(d_b), [str(b) for b in range(d_b)])
    ax.set_yticks(range(d_a), [str(a) for a in range(d_a)])
    ax.set_xlabel("component of model B")
    ax.set_ylabel("component of model A")
    ax.set_facecolor("white")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="similarity")
    return fig


def importance_heatmap(importance_df: pd.DataFrame) -> Figure:
    """DCI importance matrix: rows are latent components, columns ground-truth factors."""
    if not isinstance(importance_df, pd.DataFrame):
        raise TypeError(f"importance_df must be a pandas DataFrame, got {type(importance_df).__name__}")
    if importance_df.empty:
        raise ValueError(f"importance_df must be non-empty, got shape {importance_df.shape}")
    try:
        values = importance_df.to_numpy(dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"importance_df must hold only numbers, got dtypes {importance_df.dtypes.tolist()}") from exc
    if not np.isfinite(values).all():
        raise ValueError("importance_df must hold finite values, got NaN or inf")

    n_comp, n_fact = values.shape
    fig = _new_figure(0.75 * n_fact + 2.2, 0.4 * n_comp + 1.6)
    ax = fig.add_subplot()
    image = _annotated_heatmap(ax, np.ma.masked_array(values, mask=False), vmin=0.0, cmap="magma", aspect="auto")
    ax.set_xticks(range(n_fact), [str(c) for c in importance_df.columns], rotation=40, ha="right")
    ax.set_yticks(range(n_comp), [str(i) for i in importance_df.index])
    ax.set_xlabel("factor")
    ax.set_ylabel("latent component")
    ax.set_title("DCI importance")
    fig.colorbar(image, ax=ax, shrink=0.8, label="importance")
    return fig


def factor_heatmap(values, row_labels, factor_names, *, title: str, threshold: float | None = None) -> Figure:
    """Models (rows) against factors (columns), e.g. per-factor MIG: which model captured which factor.

    Cells at or above `threshold` are outlined, so the captured factors stand out at a glance.
    """
    matrix = np.ma.masked_invalid(np.asarray(values, dtype=float))
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"values must be a non-empty models × factors matrix, got shape {matrix.shape}")
    rows, cols = (
        _labels("row_labels", row_labels, matrix.shape[0]),
        _labels("factor_names", factor_names, matrix.shape[1]),
    )
    fig = _new_figure(0.75 * len(cols) + 3.5, 0.32 * len(rows) + 1.8)
    ax = fig.add_subplot()
    image = _annotated_heatmap(ax, matrix, vmin=0.0, vmax=max(0.5, float(matrix.max() or 0.0)), aspect="auto")
    if threshold is not None:
        for (row, col), value in np.ndenumerate(np.ma.filled(matrix, -np.inf)):
            if value >= threshold:
                ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right")
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


# --------------------------------------------------------------------------- tables


def _cell_text(value) -> str:
    """Floats with 2 decimals; integers and text unchanged; missing values empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.2f}"
    return str(value)


def table_figure(df: pd.DataFrame, title: str = "") -> Figure:
    """A DataFrame as a PNG table, e.g. the thesis's UDR tables (model type, param, #top, seeds, udr)."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    if df.empty:
        raise ValueError(f"df must have at least one row and one column, got shape {df.shape}")
    cells = [[_cell_text(v) for v in row] for row in df.astype(object).itertuples(index=False)]
    columns = [str(c) for c in df.columns]
    widths = [max([len(columns[j])] + [len(row[j]) for row in cells]) for j in range(len(columns))]

    fig = _new_figure(0.11 * sum(w + 3 for w in widths) + 0.4, 0.3 * (len(cells) + 1) + (0.5 if title else 0.2))
    ax = fig.add_subplot()
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        colLabels=columns,
        colWidths=[w / sum(widths) for w in widths],
        bbox=(0.0, 0.0, 1.0, 1.0),  # fill the axes so the figure size sets the row height
        cellLoc="center",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e6e6e6")
    if title:
        ax.set_title(title)
    return fig


# --------------------------------------------------------------------------- scatter and lines


def scatter_threshold_figure(
    values_2d,
    labels_bad,
    component_names,
    threshold=None,
    threshold_axis: int = 0,
    *,
    other_threshold=None,
    title: str = "labelled images on the relevant components",
) -> Figure:
    """Labelled images on two latent components (thesis fig. 4.23): red bad, blue good.

    ``threshold`` draws the decision boundary on component ``threshold_axis`` (0 = x, 1 = y), and
    ``other_threshold`` a second one on the other axis (a rule of two cuts, one per component).
    """
    values = np.asarray(values_2d, dtype=float)
    if values.ndim != 2 or values.shape[1] != 2:
        raise ValueError(f"values_2d must have shape (n, 2), got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values_2d must hold finite values, got NaN or inf")
    bad = _mask("labels_bad", labels_bad, values.shape[0])
    names = _labels("component_names", component_names, 2)
    if threshold_axis not in (0, 1):
        raise ValueError(f"threshold_axis must be 0 (x) or 1 (y), got {threshold_axis!r}")

    fig = _new_figure(5.5, 4.5)
    ax = fig.add_subplot()
    ax.scatter(*values[~bad].T, s=14, c=_GOOD_COLOUR, alpha=0.7, label=f"good ({int((~bad).sum())})")
    ax.scatter(*values[bad].T, s=14, c=_BAD_COLOUR, alpha=0.7, label=f"bad ({int(bad.sum())})")
    for value, axis, style in ((threshold, threshold_axis, "--"), (other_threshold, 1 - threshold_axis, ":")):
        if value is None:
            continue
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"threshold must be finite, got {value}")
        line = ax.axvline if axis == 0 else ax.axhline
        line(value, color="black", ls=style, lw=1.2, label=f"threshold {names[axis]} = {value:.3g}")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return fig


def _legible_log_ticks(ax, spec: str) -> None:
    """Within a decade a log x axis labels its minor ticks as 2.2×10⁰, 2.4×10⁰ …, which collide:
    plain numbers (format `spec`), slanted, stay legible."""
    plain = FuncFormatter(lambda v, _: format(v, spec))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="both", labelrotation=45, labelsize=8)


def metric_vs_param_figure(
    x, y, *, groups=None, xlabel: str, ylabel: str, logx: bool = False, infeasible=None, secondary=None
) -> Figure:
    """A metric against a hyperparameter, one point per trial (e.g. UDR against beta).

    Why not `optuna.visualization.matplotlib.plot_slice`: it cannot mark infeasible trials nor add
    the normalised-β axis, the two things this figure is read for.

    ``groups`` colours points by family or setting; ``infeasible`` trials are drawn as
    grey crosses so they are seen but not mistaken for candidates. ``secondary`` =
    (label, factor) adds a top axis showing ``x * factor`` (e.g. the normalised β).
    """
    x = _vector("x", x)
    n = x.shape[0]
    y = _vector("y", y, n, allow_nan=True)
    if logx and (x <= 0).any():
        raise ValueError(f"x must be positive when logx is True, got minimum {x.min():.3g}")
    feasible = np.ones(n, dtype=bool) if infeasible is None else ~_mask("infeasible", infeasible, n)
    group_of = (
        np.array(["all"] * n, dtype=object)
        if groups is None
        else np.asarray(_labels("groups", list(groups), n), dtype=object)
    )

    fig = _new_figure(6.0, 4.2)
    ax = fig.add_subplot()
    names = list(dict.fromkeys(group_of))
    for name, colour in zip(names, _palette(len(names))):
        keep = (group_of == name) & feasible
        ax.scatter(x[keep], y[keep], s=22, color=colour, alpha=0.8, label=None if groups is None else str(name))
    if not feasible.all():
        ax.scatter(
            x[~feasible], y[~feasible], s=30, marker="x", color="grey", label=f"infeasible ({int((~feasible).sum())})"
        )
    if logx:
        ax.set_xscale("log")
        _legible_log_ticks(ax, "g")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} against {xlabel}")
    if secondary is not None:
        label, factor = secondary
        factor = float(factor)
        if not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"secondary's factor must be a positive number, got {factor!r}")
        top = ax.secondary_xaxis("top", functions=(lambda v: v * factor, lambda v: v / factor))
        top.set_xlabel(label)
        if logx:
            _legible_log_ticks(top, ".3g")
    if groups is not None or not feasible.all():
        ax.legend(fontsize=8)
    return fig


def history_figure(values, best_so_far: bool = True, *, maximize: bool = True) -> Figure:
    """Objective per trial in order, with the running best (an optimisation history).

    NaN marks a failed, pruned or infeasible trial: it is skipped, not plotted as zero.
    Why not `optuna.visualization.matplotlib.plot_optimization_history`: it needs the study (this
    draws from the search report, so reports rebuild without optuna.db), and its best-so-far line
    would count the trials that `search.min_active` rules out, whose UDR is a real number.
    """
    values = _vector("values", values, allow_nan=True)
    if values.shape[0] == 0:
        raise ValueError("values must hold at least one trial, got none")
    trials = np.arange(values.shape[0])

    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    ok = np.isfinite(values)
    ax.scatter(trials[ok], values[ok], s=18, color="tab:blue", label="trial")
    if best_so_far:
        fill = -np.inf if maximize else np.inf
        running = (np.maximum if maximize else np.minimum).accumulate(np.where(ok, values, fill))
        running = np.where(np.isfinite(running), running, np.nan)  # before the first finite trial
        ax.step(trials, running, where="post", color="tab:red", lw=1.5, label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers, not 0.2, 0.4, …
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.set_title("optimisation history")
    ax.legend(fontsize=8)
    return fig


def label_efficiency_figure(df: pd.DataFrame, *, logx: bool = True) -> Figure:
    """Score against the number of labels per method, mean with a std error bar.

    Label counts are usually geometric (10, 20, 50, ...), hence the log x axis by default.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    required = ["method", "n_labels", "mean", "std"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"df must have columns {required}, missing {missing} (got {list(df.columns)})")
    if df.empty:
        raise ValueError("df must hold at least one row, got none")
    numbers = df[["n_labels", "mean", "std"]].apply(pd.to_numeric, errors="coerce")
    if numbers.isna().any().any():
        raise ValueError("df columns n_labels, mean and std must be numeric and not missing")
    if (numbers["n_labels"] <= 0).any():
        raise ValueError(f"n_labels must be positive, got minimum {numbers['n_labels'].min()}")

    fig = _new_figure(6.0, 4.2)
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(df["method"]))
    for method, colour in zip(methods, _palette(len(methods))):
        part = numbers[df["method"] == method].sort_values("n_labels").to_numpy(dtype=float)
        ax.errorbar(
            part[:, 0], part[:, 1], yerr=part[:, 2], marker="o", ms=4, capsize=3, color=colour, label=str(method)
        )
    if logx:
        ax.set_xscale("log")
    ticks = np.unique(numbers["n_labels"].to_numpy())
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("number of labels")
    ax.set_ylabel("score")
    ax.set_title("label efficiency")
    ax.legend(fontsize=8)
    return fig


def rank_scatter_figure(
    x, y, labels=None, *, xlabel: str, ylabel: str, annotate_top: int = 5, higher_is_better: bool = True
) -> Figure:
    """Two rankings of the same models against each other, Spearman rho in the title.

    Used for within-family against all-against-all UDR (the herd effect) or UDR against a
    supervised metric. The ``annotate_top`` best points by ``y`` are named (lowest y when
    ``higher_is_better`` is False, as for ranks where 1 is best).
    """
    x = _vector("x", x, allow_nan=True)
    n = x.shape[0]
    y = _vector("y", y, n, allow_nan=True)
    if labels is not None:
        labels = _labels("labels", list(labels), n)
    if isinstance(annotate_top, bool) or not isinstance(annotate_top, (int, np.integer)) or annotate_top < 0:
        raise ValueError(f"annotate_top must be a non-negative integer, got {annotate_top!r}")

    ok = np.isfinite(x) & np.isfinite(y)
    rho = np.nan
    if ok.sum() >= 3 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from scipy.stats import spearmanr  # here: every training run draws figures, few draw this one

            rho = float(spearmanr(x[ok], y[ok]).statistic)

    fig = _new_figure(6.5 if labels is not None and annotate_top else 5.5, 4.5)
    ax = fig.add_subplot()
    ax.scatter(x[ok], y[ok], s=22, color="tab:blue", alpha=0.8)
    if labels is not None and annotate_top:
        order = np.flatnonzero(ok)[np.argsort(-y[ok] if higher_is_better else y[ok], kind="stable")]
        # Top points carry a number and the names go in a side legend: long model names
        # printed next to clustered points would overlap.
        top = order[: int(annotate_top)]
        ax.scatter(x[top], y[top], s=40, facecolors="none", edgecolors="tab:red", lw=1.2)
        for k, i in enumerate(top, start=1):
            ax.annotate(str(k), (x[i], y[i]), xytext=(4, 3), textcoords="offset points", fontsize=7, color="tab:red")
        handles = [Line2D([], [], ls="none", marker=f"${k}$", color="tab:red") for k in range(1, top.size + 1)]
        fig.legend(
            handles, [labels[i] for i in top], loc="outside right upper", fontsize=7, title="top", title_fontsize=8
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    rho_text = "n/a" if np.isnan(rho) else f"{rho:.2f}"
    ax.set_title(f"Spearman ρ = {rho_text} (n = {int(ok.sum())})")
    return fig


def message_figure(text: str) -> Figure:
    """A figure that says, in words, why a stage drew nothing (a declared plot must still exist)."""
    fig = _new_figure(6.0, 1.6)
    fig.text(0.5, 0.5, str(text), ha="center", va="center", wrap=True, fontsize=10)
    return fig


# --------------------------------------------------------------------------- output


def save_figure(fig: Figure, path, *, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG at ``path`` atomically, then close it.

    Writing to a temporary file in the same directory and renaming means a reader
    (DVC, MLflow, a browser) never sees a half-written image, even if the process dies.
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            fig.savefig(out, format="png", dpi=dpi)
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; an artifact should be readable
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    finally:
        close(fig)
    return path


def close(fig: Figure) -> None:
    """Release a figure; also drops it from pyplot if a caller created it there."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()
