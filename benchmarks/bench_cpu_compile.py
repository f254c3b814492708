"""Does `torch.compile` speed up the default profile's training step on this CPU?

Times one VAE's training step (forward, the β-VAE loss, backward, Adam) at the default profile's
size (32×32, batch 32) on one torch thread, as each training worker runs it, eager and compiled
(inductor), and prints steps per second, the ratio against eager in the same run, and the
compilation's one-off cost. A model of the default profile trains 2000 steps, so the compile
cost is set against that. With `--processes 2` that many copies run side by side, one per core,
as the training pool's workers do, and their summed rates are compared: a speed-up measured on
an otherwise idle machine need not survive every core being busy.

    python benchmarks/bench_cpu_compile.py [--steps 200] [--threads 1] [--image-size 32] [--batch 32]
                                           [--processes 1]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import torch

from _machine import cpu_model  # benchmarks/, the script's folder
from tubervae.config import TrainConfig
from tubervae.models.nets import VAE
from tubervae.training.setting import Setting


def make_step(model, loss_fn, adam, x):
    def step(i: int):
        out = model(x)
        terms = loss_fn(x, out, i)
        adam.zero_grad(set_to_none=True)
        terms["loss"].backward()
        adam.step()

    return step


def rate(compiled: bool, args) -> tuple[float, float]:
    torch.manual_seed(0)
    net = VAE(image_size=args.image_size, latent_dim=10).to(memory_format=torch.channels_last)
    model = torch.compile(net) if compiled else net
    loss_fn = Setting("beta_vae", 4.0).loss(TrainConfig(steps=2000, batch_size=args.batch), 2000)
    adam = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(args.batch, 3, args.image_size, args.image_size).contiguous(memory_format=torch.channels_last)
    step = make_step(model, loss_fn, adam, x)
    start = time.perf_counter()
    for i in range(3):
        step(i)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    return args.steps / (time.perf_counter() - start), warm


def _measure(args, compiled: bool, barrier, results) -> None:
    torch.set_num_threads(args.threads)
    if compiled:  # compile first, then start the clock together, so only the steps overlap
        rate(True, argparse.Namespace(**{**vars(args), "steps": 3}))
    barrier.wait()
    results.put(rate(compiled, args)[0])


def side_by_side(args, compiled: bool) -> list[float]:
    """Steps/s of each of `args.processes` processes training at once."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(args.processes), ctx.Queue()
    procs = [ctx.Process(target=_measure, args=(args, compiled, barrier, results)) for _ in range(args.processes)]
    for proc in procs:
        proc.start()
    rates = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--processes", type=int, default=1, help="copies side by side (e.g. one per core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"cpu: {cpu_model()}; torch {torch.__version__}; {args.threads} thread(s); "
        f"{args.image_size}×{args.image_size}, batch {args.batch}",
        flush=True,
    )
    if args.processes > 1:
        print(f"{args.processes} processes side by side", flush=True)
        eager = side_by_side(args, False)
        print(f"eager     {sum(eager):7.2f} steps/s in all  ({' + '.join(f'{r:.2f}' for r in eager)})", flush=True)
        fast = side_by_side(args, True)
        print(
            f"compiled  {sum(fast):7.2f} steps/s in all  ({' + '.join(f'{r:.2f}' for r in fast)}), "
            f"{sum(fast) / sum(eager):.2f}× eager side by side",
            flush=True,
        )
        return
    eager, eager_warm = rate(False, args)
    print(f"eager     {eager:7.2f} steps/s  (first 3 steps {eager_warm:.1f} s)", flush=True)
    again, _ = rate(False, args)
    print(f"eager     {again:7.2f} steps/s  (again: the noise between two eager runs)", flush=True)
    try:
        compiled, compile_s = rate(True, args)
    except Exception as exc:  # report, do not hide, a compile that fails on this machine
        print(f"compiled  failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return
    base = (eager + again) / 2
    print(
        f"compiled  {compiled:7.2f} steps/s  {compiled / base:.2f}× eager; compiling (first 3 steps) {compile_s:.1f} s",
        flush=True,
    )
    print(f"a 2000-step model: eager {2000 / base:.0f} s, compiled {2000 / compiled + compile_s:.0f} s", flush=True)


if __name__ == "__main__":
    main()
