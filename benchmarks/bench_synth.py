"""Throughput of the tuber photo simulator, against its 2-minute target.

The thesis-size set (8498 photos) should simulate in under 2 minutes on the
project's 2-core machine, i.e. at least 71 images/s with 2 workers. This runs
`generate` on the same images with each worker count (1 is the baseline), then
splits one core's time per image into drawing and JPEG encoding.

    .venv/bin/python benchmarks/bench_synth.py [--n 300] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import numpy as np
from PIL import Image

from tubervae.data import synth_dataset, synth_factors, synth_render

THESIS_SIZE = 8498
TARGET_S = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="images per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    synth_render.warm_caches()  # built once per process in real runs too; kept out of the timing
    rates = {}
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            synth_dataset.generate(tmp, args.n, seed=0, workers=workers, progress=False)
            elapsed = time.perf_counter() - start
        rates[workers] = args.n / elapsed
        projected = THESIS_SIZE / rates[workers]
        verdict = "meets" if projected < TARGET_S else "misses"
        print(
            f"workers={workers}: {rates[workers]:6.1f} images/s, {1e3 / rates[workers]:5.1f} ms/image; "
            f"{THESIS_SIZE} images in {projected:5.1f} s ({verdict} the {TARGET_S:.0f} s target)"
        )
    base = args.workers[0]
    for workers in args.workers[1:]:
        print(f"speed-up workers={workers} vs workers={base}: {rates[workers] / rates[base]:.2f}x")

    rng = np.random.default_rng(0)
    rows = synth_factors.sample_factors(min(args.n, 100), rng).to_dict("records")
    start = time.perf_counter()
    images = [synth_render.render_tuber(row, rng) for row in rows]
    draw = (time.perf_counter() - start) / len(rows)
    start = time.perf_counter()
    for image in images:
        Image.fromarray(image).save(io.BytesIO(), format="JPEG", quality=90)
    encode = (time.perf_counter() - start) / len(rows)
    print(f"one core, per image: draw {draw * 1e3:.1f} ms, JPEG encode {encode * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
