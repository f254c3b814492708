"""A photo folder of procedural shapes that this project did not make, for the UDR trial and the curve.

The photos are drawn by the `idsprites` library (Infinite dSprites, by Sebastian Dziadzio; the
`experiments` extra pins it: `pip install -e '.[experiments]'`): `--shapes` random shapes (3, as
dSprites has) that the library generates from `--seed`, each photo one of them in one of `--colours`
colours (hues evenly spaced around the colour wheel, full saturation) on the library's dark grey
background, at a scale, an orientation and a position drawn uniformly over the library's ranges
(scale 0.5 to 1, orientation 0 to 2π, x and y 0 to 1). The library marks the right half of each
shape in black, so its orientation shows on a symmetric shape too. `InfiniteDSprites.draw` renders
every photo; this script only draws the factors and writes the folder.

What it writes is a photo folder as the raw stage reads one (docs/your-photos.md):

- `--n` RGB PNG photos of `--size` × `--size` pixels (at least 64: smaller photos are refused on
  import), numbered `00000.png`, `00001.png`, …;
- a labelled share (`--labelled`, 0.1) in `good/` and `bad/`, labelled by one factor alone:
  **bad = scale in the top third of its range (above 0.833)**, good otherwise, so the job score
  (`register.select: job`) measures whether a model keeps the scale apart; the other photos lie at
  the top, unlabelled;
- `factors.csv`: every photo's factors, named by its path in the folder (`good/00017.png`):
  `x`, `y` (position, 0 to 1), `scale`, `orientation` (radians), `hue` (0 to 1) and `shape` (its
  index).

The same `--seed` and settings write the same photos. Then, for example:

    python experiments/outside_photos.py --out experiments/runs/idsprites
    python experiments/udr_validity.py --folder experiments/runs/idsprites --image-size 64
"""

from __future__ import annotations

import argparse
import colorsys
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tubervae.data.images import MIN_SIDE

SCALE_RANGE = (0.5, 1.0)  # the library's default range
BAD_SCALE = SCALE_RANGE[0] + 2 / 3 * (SCALE_RANGE[1] - SCALE_RANGE[0])  # bad: scale in the top third
FACTOR_COLUMNS = ("x", "y", "scale", "orientation", "hue", "shape")
LABELS = ("", "good", "bad")


def draw_factors(n: int, *, n_shapes: int, n_colours: int, rng: np.random.Generator) -> pd.DataFrame:
    """Every photo's factors (the columns of `FACTOR_COLUMNS`), drawn independently and uniformly."""
    return pd.DataFrame(
        {
            "x": rng.uniform(0.0, 1.0, n),
            "y": rng.uniform(0.0, 1.0, n),
            "scale": rng.uniform(*SCALE_RANGE, n),
            "orientation": rng.uniform(0.0, 2 * math.pi, n),
            "hue": rng.integers(0, n_colours, n) / n_colours,
            "shape": rng.integers(0, n_shapes, n).astype(np.float64),
        },
        columns=list(FACTOR_COLUMNS),
    )


def label_by_scale(scale: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """'good', 'bad' or '' (unlabelled) per photo: `fraction` of the photos (rounded), drawn with `rng`,
    are labelled, bad when their scale is above `BAD_SCALE` (the top third of the range)."""
    scale = np.asarray(scale, dtype=np.float64)
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction (--labelled) must be in [0, 1], got {fraction!r}")
    labels = np.full(scale.size, "", dtype=object)
    chosen = rng.choice(scale.size, size=int(round(fraction * scale.size)), replace=False)
    labels[chosen] = np.where(scale[chosen] > BAD_SCALE, "bad", "good")
    return labels


def photo_names(labels: np.ndarray) -> list[str]:
    """Each photo's path in the folder: `NNNNN.png` at the top, or under `good/` or `bad/` when labelled."""
    width = max(5, len(str(len(labels) - 1)))
    return [f"{label}/{i:0{width}d}.png" if label else f"{i:0{width}d}.png" for i, label in enumerate(labels)]


def write_folder(out: str | Path, images: np.ndarray, factors: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Write the photo folder `out`: one PNG per image, labelled ones under good/ or bad/, and factors.csv.

    `images` is uint8 (n, s, s, 3), `factors` one row per photo (numeric columns), `labels` '', 'good' or
    'bad' per photo. The folder is written beside `out` and renamed into place when whole, so a stopped
    run leaves no half folder there; an `out` that exists and is not empty is refused. Returns the table
    written as factors.csv (its `file` column first).
    """
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=object)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (n, s, s, 3), got {images.dtype} of shape {images.shape}")
    if min(images.shape[1:3]) < MIN_SIDE:
        raise ValueError(f"images must be at least {MIN_SIDE} px a side (the raw stage refuses smaller photos)")
    if len(factors) != len(images) or len(labels) != len(images):
        raise ValueError(
            f"{len(images)} images need as many factor rows and labels, got {len(factors)} and {len(labels)}"
        )
    unknown = sorted({str(v) for v in labels} - set(LABELS))
    if unknown:
        raise ValueError(f"labels must be '', 'good' or 'bad', got {unknown}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder: name a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    names = photo_names(labels)
    table = pd.concat([pd.DataFrame({"file": names}), factors.reset_index(drop=True)], axis=1)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for sub in ("good", "bad"):
            (partial / sub).mkdir()
        for name, image in zip(names, images):
            Image.fromarray(image, "RGB").save(partial / name)
        table.to_csv(partial / "factors.csv", index=False, float_format="%.6g")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return table


def draw_photos(factors: pd.DataFrame, *, size: int, n_shapes: int, n_colours: int, seed: int) -> np.ndarray:
    """The photos of `factors` drawn by idsprites at `size` px: uint8 (n, size, size, 3).

    The shapes are the library's random shapes, generated from `seed` (the library draws them from
    NumPy's global generator, which is seeded for them and restored after)."""
    from idsprites import Factors, InfiniteDSprites  # the experiments extra; --help works without it

    sprites = InfiniteDSprites(img_size=size)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        shapes = [sprites.generate_shape() for _ in range(n_shapes)]
    finally:
        np.random.set_state(state)
    colours = [np.array(colorsys.hsv_to_rgb(k / n_colours, 1.0, 1.0)) for k in range(n_colours)]
    images = np.empty((len(factors), size, size, 3), dtype=np.uint8)
    for i, row in enumerate(factors.itertuples(index=False)):
        drawn = sprites.draw(
            Factors(
                shape=shapes[int(row.shape)],
                color=colours[int(round(row.hue * n_colours))],
                shape_id=int(row.shape),
                scale=row.scale,
                orientation=row.orientation,
                position_x=row.x,
                position_y=row.y,
            ),
            channels_first=False,
        )
        images[i] = np.rint(drawn * 255.0).astype(np.uint8)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="experiments/runs/idsprites", help="the photo folder to write (new)")
    parser.add_argument("--n", type=int, default=10000, help="photos")
    parser.add_argument("--size", type=int, default=64, help=f"photo side in pixels (at least {MIN_SIDE})")
    parser.add_argument("--seed", type=int, default=0, help="the shapes' and the factors' seed")
    parser.add_argument("--shapes", type=int, default=3, help="random shapes generated from the seed")
    parser.add_argument("--colours", type=int, default=4, help="colours, hues evenly spaced")
    parser.add_argument("--labelled", type=float, default=0.1, help="share of photos in good/ and bad/")
    args = parser.parse_args()
    for name, value, low in (("--n", args.n, 1), ("--size", args.size, MIN_SIDE), ("--shapes", args.shapes, 1)):
        if value < low:
            parser.error(f"{name} must be at least {low}, got {value}")
    if args.colours < 1:
        parser.error(f"--colours must be at least 1, got {args.colours}")
    if args.seed < 0:
        parser.error(f"--seed must be 0 or more, got {args.seed}")
    if not 0 <= args.labelled <= 1:
        parser.error(f"--labelled must be in [0, 1], got {args.labelled}")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--out {out} exists and is not an empty folder: name a new one")

    began = time.perf_counter()
    factors = draw_factors(args.n, n_shapes=args.shapes, n_colours=args.colours, rng=np.random.default_rng(args.seed))
    labels = label_by_scale(factors["scale"].to_numpy(), args.labelled, np.random.default_rng([args.seed, 1]))
    images = draw_photos(factors, size=args.size, n_shapes=args.shapes, n_colours=args.colours, seed=args.seed)
    drawn = time.perf_counter() - began
    write_folder(out, images, factors, labels)
    counts = {k: int((labels == k).sum()) for k in ("good", "bad")}
    print(
        f"{args.n} photos of {args.size}x{args.size} in {out} ({counts['good']} good, {counts['bad']} bad, "
        f"{args.n - sum(counts.values())} unlabelled): drawn in {drawn:.1f} s, written in "
        f"{time.perf_counter() - began - drawn:.1f} s"
    )


if __name__ == "__main__":
    main()
