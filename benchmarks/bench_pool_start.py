"""Starting the training pool's workers: 'forkserver' (the pool's) against 'spawn', on one core.

A worker is ready once `tubervae.runs.pool` (and with it torch, MLflow and the training code) is
imported. Under 'spawn' every worker imports it, and so does every replacement after a worker
dies; under 'forkserver' the server imports it once and forks ready workers. The script starts a
pool of `--workers` processes and waits until each has answered one job, then does so again
`--restarts` times (a search's later pools, a dead worker's replacements), for each start method
in a fresh process pinned to one core, so that wall time is the CPU time a busy machine pays.
It prints the CPU model, the seconds of the first start and of the later ones, and the ratios.

    .venv/bin/python benchmarks/bench_pool_start.py [--workers 2] [--restarts 3]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from _machine import cpu_model  # benchmarks/, the script's folder

POOL = "tubervae.runs.pool"


def start_times(method: str, workers: int, restarts: int) -> list[float]:
    """Seconds until `workers` fresh workers of `method` have each imported the pool and answered a job."""
    import multiprocessing

    context = multiprocessing.get_context(method)
    if method == "forkserver":  # as the training pool sets it
        context.set_forkserver_preload(["__main__", POOL])
    times = []
    for _ in range(1 + restarts):
        start = time.perf_counter()
        executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=importlib.import_module,
            initargs=(POOL,),
        )
        for future in [executor.submit(os.getpid) for _ in range(4 * workers)]:
            future.result()
        times.append(time.perf_counter() - start)
        executor.shutdown()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--method", help=argparse.SUPPRESS)  # one measurement, in the pinned child
    args = parser.parse_args()
    if args.method:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(json.dumps(start_times(args.method, args.workers, args.restarts)))
        return

    print(f"CPU: {cpu_model()}; {args.workers} workers, one core")
    results = {}
    for method in ("spawn", "forkserver"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--method",
                method,
                "--workers",
                str(args.workers),
                "--restarts",
                str(args.restarts),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
        first, later = results[method][0], results[method][1:]
        print(f"{method:>10}: first start {first:5.2f} s, later starts {', '.join(f'{t:.2f}' for t in later)} s")
    spawn, fork = results["spawn"], results["forkserver"]
    later_ratio = sum(spawn[1:]) / sum(fork[1:]) if len(spawn) > 1 else float("nan")  # as many starts each
    print(f"forkserver against spawn: first start {spawn[0] / fork[0]:.2f}x, later starts {later_ratio:.1f}x faster")


if __name__ == "__main__":
    main()
