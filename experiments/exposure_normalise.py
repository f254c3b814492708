"""A processed folder with the lighting taken out of each photo (an experiment).

Each photo is scaled so that the median grey level of its border ring (two pixels wide: the belt)
equals `--level`, the set's typical belt level; a grading line calibrated on its belt would see
photos like these. Writes a folder that `experiments/defect_probe.py` and
`experiments/defect_ceiling.py` read; the splits, labels and factors are the source folder's.

    python experiments/exposure_normalise.py data/processed /tmp/exposure32
"""

from __future__ import annotations

import argparse

import numpy as np

from tubervae.data.processed import SPLITS, load_meta, load_split, save_meta, save_split

RING = 2  # border pixels read as the belt


def belt_level(images: np.ndarray) -> np.ndarray:
    """Per photo, the median grey level of its border ring."""
    grey = images.astype(np.float32).mean(-1)
    n = len(grey)
    ring = np.concatenate(
        [grey[:, :RING].reshape(n, -1), grey[:, -RING:].reshape(n, -1), grey[:, :, :RING].reshape(n, -1)]
        + [grey[:, :, -RING:].reshape(n, -1)],
        axis=1,
    )
    return np.median(ring, axis=1)


def normalise_exposure(images: np.ndarray, level: float) -> np.ndarray:
    scale = level / np.maximum(belt_level(images), 1.0)
    return np.clip(np.rint(images.astype(np.float32) * scale[:, None, None, None]), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a processed folder (data/processed)")
    parser.add_argument("dest", help="the folder to write")
    parser.add_argument("--level", type=float, default=56.0, help="belt grey level after scaling (0-255)")
    args = parser.parse_args()
    for name in SPLITS:
        split = load_split(name, args.source)
        before = belt_level(split["images"])
        split["images"] = normalise_exposure(split["images"], args.level)
        save_split(args.dest, name, split)
        print(f"{name}: belt level {before.mean():.1f} ± {before.std():.1f} before, {args.level:g} after")
    meta = load_meta(args.source)
    # Other images, so another data version: models trained on the copy never pass for the source's.
    meta["data_version"] = f"{meta['data_version']}-exposure{args.level:g}"
    save_meta(args.dest, meta)


if __name__ == "__main__":
    main()
