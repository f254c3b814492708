"""Model-steps per second of fused training (`tubervae.training.fused`) for 1, 5, 25 and 115 models.

The thesis study trains 115 models (23 settings × 5 seeds) for 300 000 steps each at 64×64,
batch 64. One such model leaves a GPU almost idle; fused, the models of a batch run as grouped
convolutions and batched matmuls. This script prints, on the device it finds:

- model-steps per second for each number of fused models (1 is the one-at-a-time baseline),
  the ratio against it, and the projected hours of the thesis study at that rate;
- a check that fused equals separate on this device: 3 models, 20 steps, float32, the largest
  weight difference against their separately trained twins.

A rate is measured as the difference of two runs of `train_fused` (`--steps` and twice that), so
the set-up (initialisation, probe encoding, the test-set error) cancels out.

`--adam foreach` runs the stacked Adam as PyTorch's default (its multi-tensor loop on CUDA) instead
of one fused kernel (`training.device.new_optimiser`), and `--layout` the batch in another memory layout
(`train_fused`'s `make_optimiser` and `input_layout`), for the ratio between them in one run. The
fused-equals-separate check always runs the library's defaults.

    python benchmarks/bench_gpu.py [--models 1,5,25,115] [--steps 100] [--precision auto] [--adam fused]
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch

from _machine import cpu_model  # benchmarks/, the script's folder
from tubervae.config import TrainConfig
from tubervae.training.device import new_optimiser, resolve_precision, select_device
from tubervae.training.fused import FusedJob, train_fused
from tubervae.training.loop import train_model
from tubervae.training.setting import Setting

THESIS_MODELS = 115
THESIS_STEPS = 300_000
SEEDS = 5
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def thesis_like_jobs(n: int) -> list[FusedJob]:
    """n models as the thesis's grid lays them out: settings of all three families, 5 seeds each."""
    settings = []
    for k in range(max(1, -(-n // SEEDS))):
        family = ("beta_vae", "beta_tcvae", "cbeta_vae")[k % 3]
        beta = 1.0 + k if family != "cbeta_vae" else 700.0 + 100.0 * k
        settings.append(Setting(family, beta, 10.0 + k % 5 if family == "cbeta_vae" else 0.0))
    return [FusedJob(settings[i // SEEDS], i % SEEDS) for i in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def variant(args) -> dict:
    """`train_fused`'s keyword arguments for the Adam and the layout the command line asks for."""
    options = {}
    if args.adam == "foreach":  # PyTorch's default Adam, multi-tensor on CUDA
        options["make_optimiser"] = functools.partial(new_optimiser, fused=False)
    if args.layout:
        options["input_layout"] = LAYOUTS[args.layout]
    return options


def timed(jobs, cfg, images, device, args) -> float:
    sync(device)
    start = time.perf_counter()
    train_fused(jobs, cfg, train_images=images, probe_images=images[:256], test_images=images[:256], **variant(args))
    sync(device)
    return time.perf_counter() - start


def rate(n: int, args, images, device) -> float:
    jobs = thesis_like_jobs(n)
    short = cfg_for(args, args.steps)
    long = cfg_for(args, 2 * args.steps)
    timed(jobs, short, images, device, args)  # warm-up: kernels chosen, memory pooled
    t_short = timed(jobs, short, images, device, args)
    t_long = timed(jobs, long, images, device, args)
    return n * args.steps / max(t_long - t_short, 1e-9)


def cfg_for(args, steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=args.batch,
        latent_dim=10,
        log_every=max(1, steps // 2),
        checkpoint_every=steps,
        snapshot_every=0,
        precision=args.precision,
        device=args.device,
    )


def fused_equals_separate(args, images, device) -> float:
    """Float64, so that the twins differ by rounding only (float32 convolutions on a GPU round differently per
    algorithm, and Adam turns a rounding-sized gradient difference into a step-sized weight difference)."""
    cfg = TrainConfig(
        steps=20,
        batch_size=args.batch,
        log_every=10,
        checkpoint_every=20,
        snapshot_every=0,
        precision="float32",
        device=args.device,
    )
    torch.set_default_dtype(torch.float64)
    jobs = [
        FusedJob(Setting("beta_vae", 4.0), 0),
        FusedJob(Setting("beta_tcvae", 6.0), 1),
        FusedJob(Setting("cbeta_vae", 900.0, 12.0), 2),
    ]
    probe = images[:64]
    together = train_fused(jobs, cfg, train_images=images, probe_images=probe, test_images=probe)
    worst = 0.0
    for job, out in zip(jobs, together):
        twin = train_model(
            job.setting, job.seed, cfg, train_images=images, probe_images=probe, test_images=probe, progress=False
        )
        for a, b in zip(out.model.state_dict().values(), twin.model.state_dict().values()):
            worst = max(worst, float((a - b).abs().max()))
    torch.set_default_dtype(torch.float32)
    return worst


def profile(n: int, args, images, device) -> None:
    """Where a fused step's time goes: the kernels that take the most device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    jobs, cfg = thesis_like_jobs(n), cfg_for(args, args.steps)
    timed(jobs, cfg, images, device, args)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        seconds = timed(jobs, cfg, images, device, args)
    print(f"profile of {n} models × {args.steps} steps: {seconds:.2f} s wall", flush=True)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="1,5,25,115", help="comma-separated numbers of fused models")
    parser.add_argument("--steps", type=int, default=100, help="steps of the shorter timed run (fewer: set-up noise)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=4000, help="random training photos")
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-check", action="store_true", help="skip the fused-equals-separate check")
    parser.add_argument("--layout", choices=list(LAYOUTS), help="the batch's memory layout (default: fused's)")
    parser.add_argument("--profile", type=int, default=0, help="instead: profile this many fused models")
    parser.add_argument("--adam", choices=["fused", "foreach"], default="fused", help="the optimiser's kernels")
    args = parser.parse_args()
    device = select_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.image_size, args.image_size, 3), np.uint8)
    precision = resolve_precision(args.precision, device)
    print(
        f"device: {device_name(device)}; torch {torch.__version__}; {args.image_size}×{args.image_size}, "
        f"batch {args.batch}, precision {precision}, layout {args.layout or 'fused default'}, Adam {args.adam}",
        flush=True,
    )
    if args.profile:
        profile(args.profile, args, images, device)
        return
    if not args.skip_check:
        print(
            f"fused vs separate, 3 models × 20 steps, float64: largest weight difference "
            f"{fused_equals_separate(args, images, device):.3g}",
            flush=True,
        )
    baseline = None
    print("models  model-steps/s  vs 1 model  thesis study (115 × 300 000 steps)", flush=True)
    for n in (int(v) for v in args.models.split(",")):
        r = rate(n, args, images, device)
        baseline = baseline or r
        hours = THESIS_MODELS * THESIS_STEPS / r / 3600
        print(f"{n:6d}  {r:13.1f}  {r / baseline:9.2f}×  {hours:8.1f} h", flush=True)


if __name__ == "__main__":
    main()
