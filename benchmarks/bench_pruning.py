"""Pruning hopeless settings: one family's thesis grid searched in full, then with pruners, on the same photos.

The thesis's grid points of a family (params.yaml `search.spaces.<family>.grid`: 9 for β-VAE,
8 for β-TCVAE, 6 for Cβ-VAE) are enqueued as the trials of a study at a reduced profile (16×16
simulated photos by default, a few hundred steps, 3 seeds):

- full grid: `search.pruner: none`, every point trained to the end on every seed;
- each pruner (`median`, `successive_halving`, optionally `hyperband`) and each judging
  schedule (`search.prune_at`, e.g. ¼ and ½ of training): the same points in the same order,
  judged on the seeds' median UDR (and `search.min_active`) at those fractions of `train.steps`.

Each search runs in its own project root (its own MLflow store, so no seed is reused from
another). For each the script prints the best feasible within-family UDR, the training steps
spent (summed over seeds: a pruned trial costs its seeds up to the step it was pruned at), their
share of the full grid's, and whether the best is within 0.05 of the full grid's best. The goal
(issue 12): within 0.05 using at most ⅓ of the grid's steps. Trials run one at a time (a pruner
judges each against the finished ones), their seeds in a pool of `--workers` 1-thread
processes; the per-run pictures are skipped (they cost more than the training at this size, and
no score depends on them).

    .venv/bin/python benchmarks/bench_pruning.py [--family beta_tcvae] [--steps 600] [--seeds 3] [--image-size 16]
        [--schedules 0.25,0.5 0.125,0.25,0.5] [--pruners median successive_halving hyperband]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # benchmarks/, the script's folder
from tubervae.config import parse_params, read_settings_file
from tubervae.stages import preprocess, raw, search

ROOT = Path(__file__).resolve().parents[1]
GOAL_UDR, GOAL_SHARE = 0.05, 1 / 3


def thesis_space(family: str) -> dict:
    """The family's search space as params.yaml gives it, with as many trials as its grid (the thesis's) has points."""
    space = read_settings_file(ROOT / "params.yaml")["search"]["spaces"][family]
    return {**space, "n_trials": len(space["grid"])}


def params(args, pruner: str, prune_at: list[float]) -> dict:
    return {
        "data": {"n_images": args.images},
        "preprocess": {"image_size": args.image_size, "probe_size": min(1000, args.images // 2)},
        "train": {
            "steps": args.steps,
            "snapshot_every": 0,
            "figures": False,  # the runs' pictures would weigh on the steps being compared
            "checkpoint_every": args.steps,
            "log_every": max(1, args.steps // 8),
            "workers": args.workers,
            "threads": 1,
            "device": "cpu",
        },
        "search": {
            "seeds": args.seeds,
            "enqueue_grid": True,
            "parallel_trials": 1,
            "pruner": pruner,
            "prune_at": prune_at or [0.25],
            "prune_startup_trials": args.startup,
            "reduction_factor": args.reduction_factor,
            "spaces": {args.family: thesis_space(args.family)},
        },
    }


def steps_spent(summary: dict, steps: int, seeds: int) -> int:
    """Training steps of the study, summed over seeds: a pruned trial's seeds stopped where it was pruned."""
    spent = 0
    for trial in summary["trials"]:
        if trial["state"] == "COMPLETE":
            spent += steps * seeds
        elif trial["state"] == "PRUNED":
            spent += trial["pruned_at_step"] * seeds
        elif trial["intermediate_udr"]:  # failed part-way: its seeds trained at least to its last report
            spent += trial["intermediate_udr"][-1][0] * seeds
    return spent


def run_search(root: Path, processed: Path, raw_params: dict, family: str) -> tuple[dict, float]:
    root.mkdir()
    start = time.perf_counter()
    summary = search.run(
        parse_params(raw_params),
        family,
        root=root,
        processed_dir=processed,
        reports_dir=root / "reports",
        progress=False,
    )
    return summary, time.perf_counter() - start


def point(hyperparameters: dict) -> str:
    """A grid point as 'β4' or 'β700/C6'."""
    text = f"β{hyperparameters['beta']:g}"
    return f"{text}/C{hyperparameters['c_max']:g}" if "c_max" in hyperparameters else text


def describe(summary: dict) -> str:
    """Each grid point, then its final UDR ('inf': infeasible), or the step it was pruned at and its UDR there."""
    parts = []
    for t in summary["trials"]:
        name = point(t["params"])
        if t["state"] == "COMPLETE":
            parts.append(f"{name}:{t['value']:.3f}{'' if t['feasible'] else 'inf'}")
        elif t["state"] == "PRUNED":
            parts.append(f"{name}:✂{t['pruned_at_step']}({t['intermediate_udr'][-1][1]:.3f})")
        else:
            parts.append(f"{name}:{t['state']}")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="beta_vae", choices=["beta_vae", "beta_tcvae", "cbeta_vae"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--image-size", type=int, default=16, help="preprocess.image_size (32: the default profile's)")
    parser.add_argument("--workers", type=int, default=2, help="train.workers (1: in this process)")
    parser.add_argument("--schedules", nargs="+", default=["0.25,0.5", "0.125,0.25,0.5"], help="search.prune_at")
    parser.add_argument("--startup", type=int, default=1, help="search.prune_startup_trials (median)")
    parser.add_argument("--reduction-factor", type=int, default=2, help="search.reduction_factor (SH, Hyperband)")
    parser.add_argument("--pruners", nargs="+", default=["median", "successive_halving"])
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    print(
        f"{cpu_model()}, {os.cpu_count()} cores; {args.family} grid "
        f"{[point(p) for p in thesis_space(args.family)['grid']]}, "
        f"{args.seeds} seeds × {args.steps} steps at {args.image_size}×{args.image_size}, batch 32, "
        f"{args.workers} worker(s); "
        f"median after {args.startup} complete trial(s), reduction factor {args.reduction_factor}",
        flush=True,
    )
    searches = [("full grid", "none", [])] + [
        (f"{pruner} @ {schedule}", pruner, [float(f) for f in schedule.split(",")])
        for schedule in args.schedules
        for pruner in args.pruners
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = parse_params(params(args, "none", []))
        raw.run(base, out_dir=tmp / "raw", reports_dir=tmp / "reports")
        preprocess.run(base, raw_dir=tmp / "raw", out_dir=tmp / "processed")
        for i, (label, pruner, prune_at) in enumerate(searches):
            summary, seconds = run_search(
                tmp / f"search{i}", tmp / "processed", params(args, pruner, prune_at), args.family
            )
            rows.append((label, summary, seconds, steps_spent(summary, args.steps, args.seeds)))
            print(f"  {label:36s} {describe(summary)}", flush=True)
    _, full, _, full_steps = rows[0]
    header = ("best UDR", "best", "steps", "share", "within 0.05", "wall s")
    print(f"{'search':36s} " + " ".join(f"{h:>{w}s}" for h, w in zip(header, (9, 10, 7, 6, 11, 7))))
    for label, summary, seconds, spent in rows:
        best = summary["best_value"]
        best_point = point(summary["best_params"]) if summary["best_params"] else "none"
        close = best is not None and full["best_value"] is not None and best >= full["best_value"] - GOAL_UDR
        met = close and spent <= GOAL_SHARE * full_steps
        shown = f"{best:9.4f}" if best is not None else f"{'none':>9s}"
        verdict = "" if label == "full grid" else f"  goal {'met' if met else 'missed'}"
        print(
            f"{label:36s} {shown} {best_point:>10s} {spent:7d} {spent / full_steps:6.2f} {str(close):>11s}"
            f" {seconds:7.1f}{verdict}"
        )


if __name__ == "__main__":
    main()
