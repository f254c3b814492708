"""The bookkeeping both training loops share as their steps run.

Where a call stops (`segment_end`), what a step closes (`boundary`: a logging window, a
checkpoint, a snapshot), the running means of the loss terms over a window (`RunningMeans`), and
the checks that stop a run whose loss terms or weights stopped being finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tubervae.config import TrainConfig
from tubervae.training.setting import Setting

__all__ = [
    "Boundary",
    "NonFiniteLossError",
    "RunningMeans",
    "boundary",
    "check_finite_terms",
    "check_finite_weights",
    "segment_end",
    "snapshot_first",
]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def segment_end(cfg: TrainConfig, stop_at: int | None, *, resumable: bool) -> int:
    """The step a training call stops at: `cfg.steps`, or `stop_at` for a segment that a later call resumes.

    A segment that ends early is only worth training when the next one can resume it, from a checkpoint.
    """
    if stop_at is None:
        return cfg.steps
    if isinstance(stop_at, bool) or not isinstance(stop_at, int) or not 1 <= stop_at <= cfg.steps:
        raise ValueError(f"stop_at must be a step in 1..{cfg.steps} (train.steps), got {stop_at!r}")
    if stop_at < cfg.steps and not resumable:
        raise ValueError(
            f"stop_at {stop_at} ends a segment before train.steps {cfg.steps}, and only a checkpoint lets the next "
            "segment resume there: pass a checkpoint_path (for fused training, one for every job)"
        )
    return stop_at


@dataclass(frozen=True)
class Boundary:
    """What a training step closes: a logging window, a checkpoint, a figure snapshot."""

    log: bool
    checkpoint: bool
    snapshot: bool

    @property
    def window(self) -> bool:
        """The running means are read (and checked) whenever a log or a checkpoint falls."""
        return self.log or self.checkpoint


def boundary(step: int, end: int, cfg: TrainConfig) -> Boundary:
    """What step `step` (just taken) closes, in a segment that stops at `end`.

    A segment's end logs its partial window and checkpoints, so that training in segments logs and
    saves what one go would; the last step draws no snapshot, because the finished run draws its own.
    """
    return Boundary(
        log=step % cfg.log_every == 0 or step == end,
        checkpoint=step % cfg.checkpoint_every == 0 or step == end,
        snapshot=bool(cfg.snapshot_every) and step % cfg.snapshot_every == 0 and step < cfg.steps,
    )


def snapshot_first(step: int, cfg: TrainConfig) -> bool:
    """Whether a run starting at `step` first draws its untrained model (step 0), so that the UI's image
    slider shows what training changed; a resumed run drew it when it started."""
    return step == 0 and bool(cfg.snapshot_every)


class RunningMeans:
    """The loss terms summed step by step since the last window closed, read as their means.

    A step's terms are a loss object's dict: scalar terms and ``kl_per_component`` (length d), each
    with a leading axis of G models when the loss was vmapped over a fused batch. The window's
    names are the scalar terms' in order, then ``kl/z0`` .. ``kl/z{d-1}``; its means hold one row
    per model (or one row) in float32, summed on the device so that no step waits for the host.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._sums: torch.Tensor | None = None
        self.count = 0  # the steps in the open window

    def add(self, terms: dict) -> None:
        """Add one step's terms to the open window."""
        kl = terms["kl_per_component"].detach().float()
        scalars = [k for k in terms if k != "kl_per_component"]
        lead = kl.shape[:-1]  # () for one model, (G,) for a fused batch
        values = [torch.as_tensor(terms[k], device=kl.device).detach().float().reshape(lead) for k in scalars]
        row = torch.cat([torch.stack(values, -1), kl], -1)
        self.names = scalars + [f"kl/z{j}" for j in range(kl.shape[-1])]
        self._sums = row if self._sums is None else self._sums + row
        self.count += 1

    def close(self, step: int) -> tuple[np.ndarray, int]:
        """The means over the open window, which step `step` ends (one row per model, in `names`' order),
        and the window's first step; the next `add` opens a new window."""
        means, first = (self._sums / self.count).cpu().numpy(), step - self.count + 1
        self._sums, self.count = None, 0
        return means, first


def check_finite_weights(model: torch.nn.Module, setting: Setting, seed: int, step: int) -> None:
    """Refuse weights spoilt by a non-finite gradient (a finite loss can hide one): such weights must never
    replace the last good checkpoint."""
    if not bool(torch.stack([torch.isfinite(w).all() for w in model.parameters()]).all()):
        raise NonFiniteLossError(
            f"{setting.family} {setting.label} seed {seed}: non-finite weights after step {step} "
            f"(a non-finite gradient); the last good checkpoint is kept. Try a lower train.lr or a smaller β"
        )


def check_finite_terms(names: list[str], means: np.ndarray, setting: Setting, seed: int, first: int, last: int) -> None:
    """Stop on loss terms (means over steps `first`..`last`) that became NaN or infinite."""
    if not np.isfinite(means).all():
        bad = [n for n, v in zip(names, means) if not math.isfinite(v)]
        raise NonFiniteLossError(
            f"{setting.family} {setting.label} seed {seed}: non-finite {bad} between steps "
            f"{first} and {last}; the last good checkpoint is kept. Try a lower train.lr or a smaller β"
        )
