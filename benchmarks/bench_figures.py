"""Figure drawing: a training run's image grids as one mosaic against one subplot per image.

Every training run draws a latent traversal (10 components × 9 offsets) and a reconstruction
figure at each snapshot and at its end, and renders each to a 120-dpi PNG for MLflow. This
times both figures as `plots` draws them (one mosaic on one axes, labelled by its ticks) and as
a plain matplotlib grid of one subplot per image with the same labels, alternating, in this one
process. Prints the CPU model, seconds per figure pair and the ratio.

    python benchmarks/bench_figures.py [--repeats 5] [--components 10] [--offsets 9] [--size 32]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from _machine import cpu_model  # benchmarks/, the script's folder
from tubervae import plots

DPI = 120


def subplot_grid(rows: list[np.ndarray], titles=None, row_labels=None) -> Figure:
    """The baseline: one subplot per image, column titles over the first row, row labels as y labels."""
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    fig = Figure(figsize=(n_cols * 1.1 + 0.6, n_rows * 1.1 + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    spec = fig.add_gridspec(n_rows, n_cols)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = fig.add_subplot(spec[r, c])
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if titles is not None and r == 0:
                ax.set_title(titles[c], fontsize=8)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=8, rotation=0, ha="right", va="center")
    return fig


def render(fig: Figure) -> None:
    fig.savefig(io.BytesIO(), format="png", dpi=DPI)
    fig.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--offsets", type=int, default=9)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}")
    rng = np.random.default_rng(0)
    d, m, s = args.components, args.offsets, args.size
    traversal = rng.random((d, m, s, s, 3)).astype(np.float32)
    originals = rng.random((8, s, s, 3)).astype(np.float32)
    kl = rng.random(d)
    offsets = np.linspace(-2.0, 2.0, m)
    labels = [f"z{i}  KL={k:.2f}" for i, k in enumerate(kl)]
    titles = [f"{v:+.2g}" for v in offsets]

    def mosaic() -> None:
        render(plots.traversal_figure(traversal, kl=kl, values=offsets))
        render(plots.reconstruction_figure(originals, originals))

    def subplots() -> None:
        render(subplot_grid(list(traversal), titles=titles, row_labels=labels))
        render(subplot_grid([originals, originals], row_labels=["original", "reconstruction"]))

    mosaic(), subplots()  # warm-up: fonts, caches
    times = {"mosaic": [], "subplots": []}
    for _ in range(args.repeats):
        for name, draw in (("subplots", subplots), ("mosaic", mosaic)):
            start = time.perf_counter()
            draw()
            times[name].append(time.perf_counter() - start)
    base, new = np.median(times["subplots"]), np.median(times["mosaic"])
    print(f"traversal {d}x{m} of {s}x{s} + reconstructions of 8, PNG at {DPI} dpi, median of {args.repeats}:")
    print(f"  one subplot per image: {base:.3f} s")
    print(f"  one mosaic (plots):    {new:.3f} s")
    print(f"  ratio: {base / new:.2f}x")


if __name__ == "__main__":
    main()
