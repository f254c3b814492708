"""The evaluate stage's scoring: models one after another, or several at once in processes.

Each model's MIG, DCI, SAP and FactorVAE score (`evaluation.supervised.evaluate_all`, the default
profile's `gbt_fast` DCI) on 10 000 photos of simulator-like factors, for `--models` random
representations: one process whose DCI fits its factors with 2 jobs (the stage before
`evaluate.workers`), against `score_model` in 2 processes of 1 job each (the stage now). Prints
the CPU model, seconds for each and the ratio, and checks that the scores are the same.

    python benchmarks/bench_evaluate.py [--models 4] [--points 10000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from joblib import Parallel, delayed

from _machine import cpu_model  # benchmarks/, the script's folder
from tubervae.config import EvaluateConfig
from tubervae.evaluation.supervised import evaluate_all
from tubervae.stages.evaluate import score_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--points", type=int, default=10000)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}")
    rng = np.random.default_rng(0)
    n = args.points
    # Discrete and continuous factors, like the simulator's: a 3-valued and a 2-valued one among 9.
    factors = np.column_stack([rng.integers(0, 3, n), rng.random((n, 6)), rng.integers(0, 2, n), rng.random(n)])
    names = [f"f{i}" for i in range(factors.shape[1])]
    codes = [factors[:, :5] @ rng.random((5, 10)) + rng.normal(size=(n, 10)) for _ in range(args.models)]
    cfg = EvaluateConfig(dci_method="gbt_fast")
    informative = np.ones(10, bool)

    start = time.perf_counter()
    serial = [
        evaluate_all(mu, factors, names, random_state=cfg.seed, dci_method=cfg.dci_method, n_jobs=2)["dci_d"]
        for mu in codes
    ]
    one_process = time.perf_counter() - start
    start = time.perf_counter()
    scored = Parallel(n_jobs=2)(delayed(score_model)(mu, factors, names, [], informative, cfg) for mu in codes)
    two_processes = time.perf_counter() - start
    same = np.allclose(serial, [s["scores"]["dci_d"] for s in scored])
    print(f"{args.models} models, {n} photos, DCI gbt_fast:")
    print(f"  one process, DCI with 2 jobs: {one_process:.1f} s")
    print(f"  two 1-job processes:          {two_processes:.1f} s")
    print(f"  ratio: {one_process / two_processes:.2f}x; the same DCI: {same}")


if __name__ == "__main__":
    main()
