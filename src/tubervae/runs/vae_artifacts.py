"""The files of a VAE training run in MLflow, written and read only here.

- `model/model.pt`: the weights (a state dict, read with `weights_only=True`);
- `model/config.json`: what rebuilds the network and where it came from (`VAE_CONFIG_KEYS`);
- `latents.npz`: `mu`, `logvar` and `kl` of the UDR probe images;
- `training_config.json`: the whole training configuration (`TRAINING_CONFIG`), written when the run
  starts. The run's params are only the few a user compares runs by (`training_run.run_params`), since the
  MLflow UI prints every param above each of the run's image charts.

The logged MLflow model `vae` that serves the same weights is `runs.registry`'s: the stages that
only read latents or weights (udr, evaluate) need nothing of the served models, and the udr stage,
which reads latents alone, imports no torch (the functions that write or load weights import it).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tubervae.runs.tracker import Tracker

if TYPE_CHECKING:
    from tubervae.models.nets import VAE

WEIGHTS, VAE_CONFIG, LATENTS = "model/model.pt", "model/config.json", "latents.npz"
TRAINING_CONFIG = "training_config.json"
VAE_CONFIG_KEYS = ("image_size", "latent_dim", "family", "beta", "c_max", "seed", "data_version")


def write_vae_files(tracker: Tracker, run_id: str, model: VAE, config: dict, latents: dict, folder: Path) -> Path:
    """Log the weights, their config and the probe latents on `run_id`, written through `folder`.

    Returns the weights file in `folder`, which a logged model can take as its artifact.
    """
    missing = set(VAE_CONFIG_KEYS) - set(config)
    if missing:
        raise ValueError(f"the VAE config lacks {sorted(missing)}")
    import torch  # here: the stages that only read latents (udr) start without it

    folder = Path(folder)
    np.savez(folder / LATENTS, **latents)
    tracker.log_artifact(run_id, folder / LATENTS)
    weights_folder = folder / Path(WEIGHTS).parent
    weights_folder.mkdir(exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / WEIGHTS)
    (folder / VAE_CONFIG).write_text(json.dumps(config, indent=2))
    tracker.log_artifacts(run_id, weights_folder, str(Path(WEIGHTS).parent))
    return folder / WEIGHTS


def load_vae(tracker: Tracker, run_id: str) -> tuple[VAE, dict]:
    """The VAE of a training run (on the CPU, in eval mode) and its config."""
    from tubervae.models.nets import load_vae_files

    with tempfile.TemporaryDirectory() as tmp:
        weights, config = vae_files(tracker, run_id, tmp)
        return load_vae_files(weights, config), config


def vae_files(tracker: Tracker, run_id: str, dst: str | Path) -> tuple[Path, dict]:
    """Download a run's weights into `dst`; returns their path and the config."""
    config = json.loads(tracker.download(run_id, VAE_CONFIG, dst).read_text())
    return tracker.download(run_id, WEIGHTS, dst), config


def latents(tracker: Tracker, run_id: str) -> dict[str, np.ndarray]:
    """`mu`, `logvar` and `kl` of the probe images that the run's model encoded."""
    with tempfile.TemporaryDirectory() as tmp:
        with np.load(tracker.download(run_id, LATENTS, tmp), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def log_training_config(tracker: Tracker, run_id: str, config: dict) -> None:
    """Log a run's whole training configuration as `TRAINING_CONFIG`.

    A run that already holds one (a search reopening its seed's run for the next segment, a run handed
    over to `tubervae train` again) keeps it when it is the same; another is a ValueError naming the values
    that differ, so a run never holds a model trained with settings other than its config says.
    """
    config = json.loads(json.dumps(config))  # as it will read back: tuples as lists
    held = tracker.read_json(run_id, TRAINING_CONFIG)
    if held is None:
        tracker.log_json(run_id, config, TRAINING_CONFIG)
        return
    differ = sorted(k for k in set(held) | set(config) if held.get(k) != config.get(k))
    if differ:
        shown = ", ".join(f"{k} {held.get(k)!r} (now {config.get(k)!r})" for k in differ)
        raise ValueError(f"run {run_id} was trained with other settings: its {TRAINING_CONFIG} holds {shown}")


def read_training_config(tracker: Tracker, run) -> dict:
    """A training run's whole configuration: its `TRAINING_CONFIG` over its params.

    `run` is an MLflow run (`Tracker.get_run`). Runs logged before the config file existed hold
    every setting as a param, as strings: cast what you read (`float(config["beta"])`).
    """
    held = tracker.read_json(run.info.run_id, TRAINING_CONFIG) or {}
    return {**run.data.params, **held}
