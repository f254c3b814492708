"""Throughput of preprocessing (decode, centre crop, resize), against its 1-minute target.

The thesis-size set (8498 photos) should preprocess in under a minute on the project's
2-core machine (≥ 142 photos/s). Simulates N photos once, then times the stage's
loader with 1 and 2 workers, and a plain full-resolution decode + crop + resize as the
baseline (no reduced-scale JPEG decoding, one process).

    .venv/bin/python benchmarks/bench_preprocess.py [--n 600] [--image-size 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tubervae.config import PreprocessConfig
from tubervae.data import synth_dataset
from tubervae.data.images import centre_square
from tubervae.stages.preprocess import read_photos

THESIS_SIZE = 8498
TARGET_S = 60.0


def plain(paths, cfg: PreprocessConfig) -> np.ndarray:
    out = []
    for path in paths:
        with Image.open(path) as img:
            square = centre_square(img.convert("RGB"), cfg.crop_fraction)
            out.append(np.asarray(square.resize((cfg.image_size, cfg.image_size), Image.Resampling.BOX)))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    cfg = PreprocessConfig(image_size=args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        frame = synth_dataset.generate(tmp, args.n, seed=0, progress=False)
        paths = [Path(tmp) / f for f in frame["file"]]
        start = time.perf_counter()
        reference = plain(paths, cfg)
        base = args.n / (time.perf_counter() - start)
        print(f"plain decode+crop+resize, 1 process: {base:6.1f} photos/s")
        for workers in (1, 2):
            start = time.perf_counter()
            ours = read_photos(paths, cfg, workers)
            rate = args.n / (time.perf_counter() - start)
            projected = THESIS_SIZE / rate
            print(
                f"tubervae preprocess, workers={workers}: {rate:6.1f} photos/s ({rate / base:.2f}x plain); "
                f"{THESIS_SIZE} photos in {projected:5.1f} s "
                f"({'meets' if projected < TARGET_S else 'misses'} the {TARGET_S:.0f} s target)"
            )
        diff = np.abs(ours.astype(int) - reference.astype(int))
        print(
            f"reduced-scale decoding vs full decode: mean |difference| {diff.mean():.2f} grey levels, max {diff.max()}"
        )


if __name__ == "__main__":
    main()
