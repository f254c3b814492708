"""Training throughput: the project's training loop against a plain PyTorch NCHW loop.

Both train the thesis architecture (table 4.1) with the β-VAE loss, Adam, batch 64, on
random 64×64 images, in this one process. Prints images/s, the ratio, and the share
of the machine's float32 peak (measured here with a large matmul) at 221 MFLOP per
image per step. The project's loop runs Adam as one fused kernel (`training.device.new_optimiser`);
it is also timed with PyTorch's per-tensor Adam, the ratio being what the fused kernel buys.
`--threads 1` times a step as each worker of the training pool runs it.

    python benchmarks/bench_train.py [--image-size 64] [--batch 64] [--steps 60] [--family beta_vae]
                                     [--threads 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _machine import cpu_model  # benchmarks/, the script's folder
from tubervae.config import FAMILIES, TrainConfig
from tubervae.models.nets import VAE, flops_per_image
from tubervae.training.device import new_optimiser
from tubervae.training.loop import train_model
from tubervae.training.setting import Setting


def per_tensor_adam(params, cfg, device):
    """PyTorch's default Adam (per tensor, not fused): `train_model`'s `make_optimiser` for the comparison."""
    return new_optimiser(params, cfg, device, fused=False)


def plain_loop(images: np.ndarray, steps: int, batch: int, loss_fn) -> float:
    """The straightforward loop: default NCHW layout, float conversion of each batch."""
    torch.manual_seed(0)
    model = VAE(image_size=images.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    gen = torch.Generator().manual_seed(0)

    def step(i):
        idx = torch.randint(len(data), (batch,), generator=gen)
        x = data[idx].float() / 255.0
        loss = loss_fn(x, model(x), i)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(5):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * batch / (time.perf_counter() - start)


def project_loop(
    images: np.ndarray,
    steps: int,
    batch: int,
    family: str,
    precision: str = "float32",
    make_optimiser=new_optimiser,
) -> float:
    """`tubervae.training.loop.train_model` as every run uses it (logging every 50 steps, no checkpoint)."""
    cfg = TrainConfig(
        steps=5,
        batch_size=batch,
        lr=1e-4,
        log_every=50,
        checkpoint_every=10**9,
        snapshot_every=0,
        device="cpu",
        precision=precision,
    )
    setting = Setting(family=family, beta=4.0, c_max=10.0)
    probe = images[:8]
    options = dict(train_images=images, probe_images=probe, test_images=probe, progress=False)
    train_model(setting, 0, cfg, make_optimiser=make_optimiser, **options)
    cfg = TrainConfig(**{**cfg.__dict__, "steps": steps})
    start = time.perf_counter()
    train_model(setting, 0, cfg, make_optimiser=make_optimiser, **options)
    elapsed = time.perf_counter() - start
    return steps * batch / elapsed


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--family", default="beta_vae", choices=FAMILIES)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2048, args.image_size, args.image_size, 3), dtype=np.uint8)
    loss_fn = Setting(args.family, 4.0, 10.0).loss(TrainConfig(steps=args.steps), len(images))
    print(
        f"cpu: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.image_size}x{args.image_size}, batch {args.batch}, {args.family}, {args.steps} timed steps"
    )
    baseline = plain_loop(images, args.steps, args.batch, loss_fn)
    ours = project_loop(images, args.steps, args.batch, args.family)
    ours_per_tensor = project_loop(images, args.steps, args.batch, args.family, make_optimiser=per_tensor_adam)
    again = project_loop(images, args.steps, args.batch, args.family)  # the noise between two runs
    ours_bf16 = project_loop(images, args.steps, args.batch, args.family, precision="bfloat16")
    peak = matmul_peak()
    flops = flops_per_image(args.image_size, 10)
    print(f"plain NCHW loop     : {baseline:8.1f} images/s")
    print(f"tubervae train loop : {ours:8.1f} images/s   ({ours / baseline:.2f}x the plain loop), again {again:.1f}")
    print(
        f"  per-tensor Adam   : {ours_per_tensor:8.1f} images/s   "
        f"(the fused Adam: {(ours + again) / 2 / ours_per_tensor:.2f}x this)"
    )
    print(f"  precision bfloat16: {ours_bf16:8.1f} images/s   ({ours_bf16 / baseline:.2f}x the plain loop)")
    print(
        f"float32 matmul peak : {peak / 1e9:8.1f} GFLOP/s; the training step uses {flops / 1e6:.0f} MFLOP/image "
        f"-> {ours * flops / 1e9:.1f} GFLOP/s = {ours * flops / peak:.0%} of peak"
    )


if __name__ == "__main__":
    main()
