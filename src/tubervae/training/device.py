"""Where a training step runs and how fast: the device, the precision, compiling, the fused Adam.

None of these choices changes what a step computes beyond rounding; `train.device`,
`train.precision` and `train.compile` name them, and a checkpoint records the precision as it runs
(`checkpoints.weight_identity`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from tubervae.config import TrainConfig
from tubervae.models.nets import VAE

__all__ = [
    "CPU_BF16_ENV",
    "autocast_bfloat16",
    "compiled",
    "native_bfloat16_cpu",
    "new_optimiser",
    "resolve_precision",
    "select_device",
]


def select_device(name: str = "auto") -> torch.device:
    """The device `train.device` names; "auto" takes CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """`train.precision` as it runs: 'auto' is bfloat16 where the hardware computes it natively
    (CUDA GPUs that support it; CPUs with AVX-512 BF16 or AMX), float32 elsewhere. On a CPU without
    native bfloat16, autocast emulates it, slower than float32 (benchmarks/bench_train.py)."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu" and native_bfloat16_cpu():
        return "bfloat16"
    return "float32"


CPU_BF16_ENV = "TUBERVAE_CPU_BF16"


def native_bfloat16_cpu() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX-512 BF16 or AMX), read from /proc/cpuinfo.

    TUBERVAE_CPU_BF16=1 (or 0) overrides the reading, so that either path of `precision: auto` can be
    run on any CPU: bfloat16 is emulated where it is not native, only slower.
    """
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    if override:
        raise ValueError(f"{CPU_BF16_ENV} must be 0 or 1 (or unset to read the CPU), got {override!r}")
    return _cpuinfo_has_bfloat16()


@functools.cache
def _cpuinfo_has_bfloat16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def autocast_bfloat16(precision: str, device: torch.device, model: torch.nn.Module) -> bool:
    """Whether the forward pass runs under bfloat16 autocast: `precision` resolves to bfloat16 and the
    weights are float32. A float64 model (a reference computation) runs in float64 whatever
    `precision` says, since autocast would hand its float64 layers bfloat16 inputs."""
    if resolve_precision(precision, device) != "bfloat16":
        return False
    return next(model.parameters()).dtype == torch.float32


def compiled(model: VAE):
    """`torch.compile` of the network (inductor), sharing its parameters: on a CPU it fuses the many
    small elementwise steps around the convolutions, which can repay the one-off compiling on some
    hosts and not on others (benchmarks/bench_cpu_compile.py), hence `train.compile` stays opt-in.
    The sampling noise stays PyTorch's own (`fallback_random`), so a seed draws what it draws
    uncompiled and a resumed run what it would have."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    return torch.compile(model)


def new_optimiser(params, cfg: TrainConfig, device: torch.device, *, fused: bool | None = None) -> torch.optim.Adam:
    """The thesis's Adam. On a CPU or CUDA device it runs as one fused kernel: a small network's
    per-tensor loop over its parameters is a noticeable share of its step, and the fused kernel
    trains more steps per second (benchmarks/bench_train.py). The update is the same to rounding.
    `fused=False` keeps PyTorch's default loop, the benchmarks' baseline."""
    if fused is None:
        fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(
        params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, fused=fused or None
    )
