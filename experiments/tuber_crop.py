"""A processed folder re-cut around the tuber instead of the photo's centre (an experiment).

The pipeline crops the photo's centre; here each photo's crop is centred on its tuber (the
centroid of the pixels brighter than an Otsu threshold of a 4× reduced grey image: the belt is
darker than the tuber) with a side of `crop_fraction` of the shorter side, so the tuber fills more
of the image and the defects get more pixels. Writes a folder that `experiments/defect_probe.py`
reads; the splits, labels and factors are the source folder's.

    python experiments/tuber_crop.py data/processed /tmp/tuber32 --image-size 32 --crop-fraction 0.45
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from tubervae.data.processed import SPLITS, load_meta, load_split, save_meta, save_split


def otsu_threshold(grey: np.ndarray) -> int:
    hist = np.bincount(grey.astype(np.uint8).ravel(), minlength=256).astype(float)
    p = hist / hist.sum()
    omega, mu = np.cumsum(p), np.cumsum(p * np.arange(256))
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return int(np.argmax(between))


def tuber_centre(img: Image.Image, reduce: int = 4) -> tuple[float, float]:
    grey = np.asarray(img.reduce(reduce).convert("L"), dtype=np.float32)
    ys, xs = np.nonzero(grey > otsu_threshold(grey))
    return (xs.mean() + 0.5) * reduce, (ys.mean() + 0.5) * reduce


def tuber_crop(path: Path, crop_fraction: float, image_size: int) -> np.ndarray:
    with Image.open(path) as opened:
        img = opened.convert("RGB")
    w, h = img.size
    side = round(min(w, h) * crop_fraction)
    cx, cy = tuber_centre(img)
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    square = img.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((image_size, image_size), Image.Resampling.BOX), np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a processed folder (data/processed)")
    parser.add_argument("target", type=Path)
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="the raw folder the photos' paths start at")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--crop-fraction", type=float, default=0.45)
    args = parser.parse_args()
    args.target.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        split = load_split(name, args.source)
        split["images"] = np.stack(
            [tuber_crop(args.raw / f, args.crop_fraction, args.image_size) for f in split["files"]]
        )
        save_split(args.target, name, split)
    meta = load_meta(args.source)
    meta.update(image_size=args.image_size, data_version=f"{meta['data_version']}-tuber{args.crop_fraction}")
    save_meta(args.target, meta)


if __name__ == "__main__":
    main()
