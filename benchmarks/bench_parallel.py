"""Models per hour of a search: one model at a time against a pool of 1-thread workers.

Small convolutions do not scale across threads, independent models do. This script runs
the same study twice on the same simulated photos, at the default profile's training
settings (32×32, batch 32, the thesis architecture), with fewer steps so it ends in
minutes:

- baseline: `train.workers: 1`, one model at a time with every core's thread (today's default
  before the pool existed);
- pool: `train.workers: 0` (one process per core, one thread each), `search.parallel_trials: 0`
  (as many trials at once as workers).

It prints the CPU model, the wall time and models per hour of each, and the ratio. The
goal for the default study on 2 cores is ≥ 1.35×.

    .venv/bin/python benchmarks/bench_parallel.py [--steps 400] [--trials 2] [--seeds 3] [--compile]

`--compile` adds a third run: the pool with `train.compile: true` (each model's network through
`torch.compile`, which pays off on one thread; benchmarks/bench_cpu_compile.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # benchmarks/, the script's folder
from tubervae.config import parse_params
from tubervae.stages import preprocess, raw, search


def params(args, workers: int, compile_: bool = False) -> dict:
    return {
        "data": {"n_images": args.images},
        "preprocess": {"probe_size": min(1000, args.images // 2)},
        "train": {
            "steps": args.steps,
            "snapshot_every": 0,
            "checkpoint_every": args.steps,
            "workers": workers,
            "compile": compile_,
        },
        "search": {
            "seeds": args.seeds,
            "min_active": 0,
            "parallel_trials": 0,
            "spaces": {"beta_vae": {"n_trials": args.trials, "beta": [0.25, 18.0], "beta_log": True}},
        },
    }


def timed_search(folder: Path, processed: Path, raw_params: dict) -> float:
    folder.mkdir()
    start = time.perf_counter()
    search.run(
        parse_params(raw_params),
        "beta_vae",
        root=folder,
        processed_dir=processed,
        reports_dir=folder / "reports",
        progress=False,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument(
        "--compile", action="store_true", help="also time the pool with train.compile (torch.compile per model)"
    )
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    models = args.trials * args.seeds
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = parse_params(params(args, 1))
        raw.run(base, out_dir=tmp / "raw", reports_dir=tmp / "reports")
        preprocess.run(base, raw_dir=tmp / "raw", out_dir=tmp / "processed")
        cores = os.cpu_count()
        print(
            f"{cpu_model()}, {cores} cores; {models} models ({args.trials} trials × {args.seeds} seeds), "
            f"{args.steps} steps each at 32×32, batch 32"
        )
        one = timed_search(tmp / "one", tmp / "processed", params(args, 1))
        print(
            f"one model at a time ({cores} threads): {one:7.1f} s  {models * 3600 / one:7.1f} models/hour", flush=True
        )
        pool = timed_search(tmp / "pool", tmp / "processed", params(args, 0))
        print(
            f"pool of {cores} 1-thread workers    : {pool:7.1f} s  {models * 3600 / pool:7.1f} models/hour  "
            f"({one / pool:.2f}x)",
            flush=True,
        )
        if args.compile:
            compiled = timed_search(tmp / "compiled", tmp / "processed", params(args, 0, True))
            print(
                f"the pool, train.compile         : {compiled:7.1f} s  {models * 3600 / compiled:7.1f} models/hour  "
                f"({one / compiled:.2f}x)",
                flush=True,
            )


if __name__ == "__main__":
    main()
