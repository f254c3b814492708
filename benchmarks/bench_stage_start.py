"""A stage's process as `tubervae` runs it (its libraries frozen out of the garbage collector's walks) against
the same process where `gc.freeze` does nothing.

torch, MLflow and scikit-learn leave a few million objects that live as long as a stage's process. The
collector's full passes during the stage walk all of them, and so do the several the interpreter makes on
its way out. The `tubervae` command imports its stage's module, calls `gc.freeze()`, runs the stage and
calls it again before it returns. The script builds a tiny project (simulated photos, `tubervae raw` and
`preprocess`), then times `tubervae train` (20 steps: torch, MLflow, a logged model and its figures) both
ways, alternating, `--repeats` times each, every run a fresh process pinned to one core, so that wall time
is the CPU time a busy machine pays. Prints the CPU model, the median seconds of each way, and the ratio.

    .venv/bin/python benchmarks/bench_stage_start.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _machine import cpu_model  # benchmarks/, the script's folder

PROJECT = Path(__file__).resolve().parents[1]
TINY = {
    "data": {"n_images": 120, "workers": 1},
    "preprocess": {"image_size": 16, "probe_size": 20, "labelled_per_class": 10},
    "train": {
        "steps": 20,
        "batch_size": 8,
        "latent_dim": 3,
        "checkpoint_every": 10,
        "log_every": 10,
        "snapshot_every": 0,
        "workers": 1,
        "device": "cpu",
    },
}
COMMAND = "import sys; from tubervae.cli import main; sys.exit(main(sys.argv[1:]))"
UNFROZEN = "import gc; gc.freeze = lambda: None; " + COMMAND


def tubervae(code: str, root: Path, *args: str) -> float:
    """Seconds of one `tubervae --root ROOT ARGS` process started as `python -c CODE`, pinned to one core."""
    core = min(os.sched_getaffinity(0))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code, "--root", str(root), *args],
        env=env,
        check=True,
        capture_output=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    return time.perf_counter() - start


def tiny_project(root: Path) -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("raw", "preprocess"):
        tubervae(COMMAND, root, stage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stage-start-") as folder:
        root = Path(folder)
        tiny_project(root)
        times: dict[str, list[float]] = {"frozen": [], "unfrozen": []}
        for seed in range(args.repeats):
            for name, code in (("frozen", COMMAND), ("unfrozen", UNFROZEN)):
                train = ["train", "--family", "beta_vae", "--beta", "1", "--seed", str(seed)]
                times[name].append(tubervae(code, root, *train))
    frozen, unfrozen = statistics.median(times["frozen"]), statistics.median(times["unfrozen"])
    print(f"CPU: {cpu_model()}; `tubervae train`, 20 steps at 16x16, one core, {args.repeats} runs each way")
    for name, values in times.items():
        print(f"  {name:9s} median {statistics.median(values):5.2f} s (min {min(values):5.2f}, max {max(values):5.2f})")
    print(f"  unfrozen / frozen: {unfrozen / frozen:.2f}x")


if __name__ == "__main__":
    main()
