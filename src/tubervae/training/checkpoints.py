"""A training run's checkpoint: what it must match, written atomically, read as plain data.

A checkpoint holds the weights, the optimiser and the generators' states (and a guided run's head),
so a killed run resumes to the same weights. It is plain data (tensors, numbers, strings) read with
`torch.load(weights_only=True)`: loading one never runs code, and one that is damaged, forged or of
other settings is reported and ignored, so training restarts cleanly. Both loops write the same
format, so a run resumes fused from a separate checkpoint and the other way round.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import asdict
from pathlib import Path

import torch

from tubervae.config import TrainConfig
from tubervae.io import atomic_path
from tubervae.training.device import resolve_precision, select_device
from tubervae.training.setting import Setting

__all__ = ["checkpoint_identity", "load_checkpoint", "save_checkpoint", "weight_identity"]

log = logging.getLogger(__name__)
_CHECKPOINT_KEYS = {"identity", "step", "model", "optimiser", "batch_rng", "torch_rng", "cuda_rng"}


def weight_identity(cfg: TrainConfig) -> dict:
    """The settings that decide a model's weights, with `precision` as it runs on this machine."""
    identity = cfg.weight_identity()
    identity["precision"] = resolve_precision(cfg.precision, select_device(cfg.device))
    if torch.get_default_dtype() != torch.float32:  # models built in float64 run in it (autocast_bfloat16)
        identity["precision"] = str(torch.get_default_dtype()).removeprefix("torch.")
    return identity


def checkpoint_identity(setting: Setting, seed: int, cfg: TrainConfig, data_version: str, image_size: int) -> dict:
    """What must match for a checkpoint to be resumed (everything that changes the weights)."""
    fields = asdict(setting)
    if not setting.guided:  # unguided runs keep the identity (and run keys) they had before guided families
        del fields["guide_weight"]
    return {
        "setting": fields,
        "seed": seed,
        "train": weight_identity(cfg),
        "data_version": data_version,
        "image_size": image_size,
    }


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a kill mid-write leaves the previous checkpoint intact."""
    with atomic_path(path, mode=0o600) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, identity: dict, model: torch.nn.Module, total_steps: int) -> dict | None:
    """The checkpoint at `path` when it is sound and belongs to `identity`, else None (with a warning).

    Sound means: readable as plain data, every expected entry present, a step within the
    run, and weights whose names and shapes fit `model`. Anything else is ignored, never fatal.
    """
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message advises turning the guard off: not repeated here
        log.warning(
            "ignoring checkpoint %s: it holds more than plain tensors and numbers (objects whose loading could "
            "run code), so it was not loaded; training starts from step 0 and replaces it",
            path,
        )
        return None
    except Exception as exc:  # damaged or truncated
        log.warning("ignoring unreadable checkpoint %s: damaged or truncated (%s)", path, type(exc).__name__)
        return None
    problem = _checkpoint_problem(state, identity, model, total_steps)
    if problem:
        log.warning("ignoring checkpoint %s: %s", path, problem)
        return None
    return state


def _checkpoint_problem(state, identity: dict, model: torch.nn.Module, total_steps: int) -> str:
    if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= set(state):
        return "not a training checkpoint"
    if state["identity"] != identity:
        return "it belongs to other settings or data"
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 < step <= total_steps:
        return f"step {step!r} is outside 1..{total_steps}"
    expected = {k: v.shape for k, v in model.state_dict().items()}
    weights = state["model"]
    if not isinstance(weights, dict) or {k: getattr(v, "shape", None) for k, v in weights.items()} != expected:
        return "its weights do not fit the network"
    return ""
