"""Which memory layout, precision and compilation make fused training's convolutions fastest.

Fused training (`tubervae.training.fused`) runs G models' convolutions as grouped convolutions, and on an
H100 most of a fused step is the grouped convolutions' backward pass. This script times one
forward and backward pass of G stacked thesis VAEs (encoder, reparameterisation, decoder, the
Bernoulli loss and the KL; no optimiser) in each variant and prints model-steps per second with
the ratio against the layout fused training uses today (channels_last, bfloat16, eager) measured
in the same run:

- layout: the batch in channels_last (NHWC) or contiguous (NCHW) memory;
- precision: bfloat16 autocast or float32 (TF32 convolutions, PyTorch's default on CUDA);
- compile: eager, or the vmapped encoder and decoder through `torch.compile` in `--compile-mode`
  (PyTorch's modes: `max-autotune` searches kernels; `reduce-overhead` replays the step as CUDA
  graphs). A compiled variant also prints its compile time: its first three steps, against an eager
  variant's.

`--only compiled` (or eager) runs those variants alone, beside the eager channels_last bfloat16
baseline that every ratio is against.

    python benchmarks/bench_gpu_layout.py [--models 25,115] [--iters 10] [--no-compile]
        [--compile-mode default] [--only all]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from _machine import cpu_model  # benchmarks/, the script's folder
from tubervae.models.nets import VAE


def stacked(n: int, image_size: int, device: torch.device):
    nets = [VAE(image_size=image_size, latent_dim=10).to(device) for _ in range(n)]
    params, _ = stack_module_state(nets)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    base = copy.deepcopy(nets[0]).to("meta")
    encode = vmap(lambda p, x: functional_call(base.encoder, p, (x,)))
    decode = vmap(lambda p, z: functional_call(base.decoder, p, (z,)))
    enc = {k.removeprefix("encoder."): v for k, v in params.items() if k.startswith("encoder.")}
    dec = {k.removeprefix("decoder."): v for k, v in params.items() if k.startswith("decoder.")}
    return params, enc, dec, encode, decode


def step_fn(n, batch, image_size, layout, bf16, compiled, device, mode="default"):
    params, enc, dec, encode, decode = stacked(n, image_size, device)
    if compiled:
        encode, decode = torch.compile(encode, mode=mode), torch.compile(decode, mode=mode)
    pixels = torch.rand(n * batch, 3, image_size, image_size, device=device)

    def step():
        x = pixels.contiguous(memory_format=layout).view(n, batch, 3, image_size, image_size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            mu, logvar = encode(enc, x)
        mu, logvar = mu.float(), logvar.float()
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = decode(dec, z)
        rec = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="sum")
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum()
        for p in params.values():
            p.grad = None
        (rec + kl).backward()

    return step


def rate(n, args, layout, bf16, compiled, device) -> tuple[float, float]:
    """Model-steps per second, and the seconds of the first three (warm-up) steps: compiling, when compiled."""
    step = step_fn(n, args.batch, args.image_size, layout, bf16, compiled, device, args.compile_mode)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(3):
        step()
    sync()
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    return n * args.iters / (time.perf_counter() - start), warm_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="25,115")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile's mode for the compiled variants (reduce-overhead: CUDA graphs)",
    )
    parser.add_argument(
        "--only", default="all", choices=["all", "eager", "compiled"], help="which variants beside the baseline"
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a smoke test; the question is a GPU's)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    variants = [
        ("channels_last", torch.channels_last, True, False),
        ("contiguous", torch.contiguous_format, True, False),
        ("channels_last fp32", torch.channels_last, False, False),
        ("contiguous fp32", torch.contiguous_format, False, False),
    ]
    if not args.no_compile:
        variants += [
            ("channels_last compiled", torch.channels_last, True, True),
            ("contiguous compiled", torch.contiguous_format, True, True),
        ]
    if args.only == "compiled":
        variants = variants[:1] + [v for v in variants if v[3]]
    elif args.only == "eager":
        variants = [v for v in variants if not v[3]]
    print(f"compile mode: {args.compile_mode}", flush=True)
    print(
        "models  variant                    model-steps/s (fwd+bwd)  vs channels_last bf16 eager  first 3 steps",
        flush=True,
    )
    for n in (int(v) for v in args.models.split(",")):
        baseline = None
        for name, layout, bf16, compiled in variants:
            try:
                r, warm_up = rate(n, args, layout, bf16, compiled, device)
            except Exception as exc:  # a variant that fails is reported, the others still run
                print(f"{n:6d}  {name:26s} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                continue
            baseline = baseline or r
            print(f"{n:6d}  {name:26s} {r:12.1f}  {r / baseline:8.2f}×  {warm_up:10.1f} s", flush=True)


if __name__ == "__main__":
    main()
