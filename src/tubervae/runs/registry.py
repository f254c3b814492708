"""Logged MLflow models and the Model Registry: what can be served, and which version is the champion.

Each VAE training run logs its network as the MLflow model `vae` (a pyfunc `serving.VaeModel`, with a
signature and an input example, linked to the run's params and final metrics) beside its plain files
(`runs.vae_artifacts`); the register stage registers it as `tubervae-vae`, the classify stage logs and
registers `tuber-quality`. The package travels with each model (`code_paths`), so `mlflow models serve`
needs no install of tubervae.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException

from tubervae.models.nets import VAE
from tubervae.runs.serving import VaeModel, photo_example, vae_signature
from tubervae.runs.tracker import Tracker
from tubervae.runs.vae_artifacts import vae_files, write_vae_files

log = logging.getLogger(__name__)
CHAMPION = "champion"  # the registry alias of the promoted version of each registered model
VAE_MODEL = "vae"  # what every training run's logged model is called: `vae-<family>-beta<β>-seed<s>`, or just this
CHAMPION_TAG = "champion"  # on the logged model behind `<registered model>@champion`: its registered name
PACKAGE = Path(__file__).resolve().parents[1]
PIP_REQUIREMENTS = [
    "torch==2.14.1",
    "mlflow==3.17.2",
    "numpy==2.4.6",
    "pandas==3.1.1",
    "pillow==13.0.0",
    "scikit-learn==1.9.1",
    "scipy==1.17.1",
    "pyyaml==6.0.4",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
]


# logged models ---------------------------------------------------------------------
def log_pyfunc(
    tracker: Tracker,
    run_id: str,
    python_model,
    artifacts: dict,
    *,
    name: str = "model",
    signature=None,
    input_example=None,
    step: int = 0,
) -> str:
    """Log a pyfunc model named `name` on `run_id`; returns its model id.

    MLflow links the model to the run: it takes the run's params, and the run's metrics of `step`
    become the model's metrics.
    """
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model,
            artifacts=artifacts,
            code_paths=[str(PACKAGE)],
            pip_requirements=PIP_REQUIREMENTS,
            signature=signature,
            input_example=input_example,
            step=step,
        )
    return info.model_id


def log_vae(
    tracker: Tracker,
    run_id: str,
    model: VAE,
    config: dict,
    latents: dict,
    *,
    processed_dir: str | Path | None = None,
    example_images: np.ndarray | None = None,
    step: int | None = None,
) -> str | None:
    """A training run's VAE: its files (`vae_artifacts`) and its logged MLflow model `vae`.

    The model needs the preprocessing's crop fraction, which lives in `processed_dir`/meta.json
    (default: the project's data/processed, used only if it holds the model's data version); the
    processed data is logged as the run's dataset input at the same time. Without it the model is
    left out with a warning, and the register stage logs it on the run when it registers it.
    `example_images` (uint8 n×s×s×3; default a grey square) give the input example; `step` links
    the run's metrics of that step to the model (default the last step this tracker logged).
    Returns the logged model's id, or None.
    """
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_vae_files(tracker, run_id, model, config, latents, Path(tmp))
        processed = _processed_dir_of(tracker.root, config["data_version"], processed_dir)
        if processed is None:
            log.warning(
                "run %s: no data/processed of data version %s, so no crop fraction: the VAE is logged as "
                "weights only until the register stage logs its MLflow model",
                run_id,
                config["data_version"],
            )
            return None
        tracker.log_dataset(run_id, processed)
        crop = json.loads((processed / "meta.json").read_text())["crop_fraction"]
        return log_vae_model(
            tracker, run_id, weights, {**config, "crop_fraction": crop}, example_images=example_images, step=step
        )


def _processed_dir_of(root: Path, data_version: str, processed_dir: str | Path | None) -> Path | None:
    """`processed_dir` (or the project's data/processed) if its meta.json is of `data_version`."""
    folder = Path(processed_dir) if processed_dir is not None else Path(root) / "data" / "processed"
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return folder if meta.get("data_version") == data_version else None


def vae_model_name(config: dict) -> str:
    """A training run's logged model named for what it is, as the experiment's Models tab lists it:
    `vae-beta_tcvae-beta2_23-seed2` (MLflow allows no '.' in the name, so decimals take '_')."""

    def number(value) -> str:
        return f"{float(value):.4g}".replace(".", "_")

    capacity = f"-cmax{number(config['c_max'])}" if config["family"] == "cbeta_vae" else ""
    guide = f"-guide{number(config['guide_weight'])}" if "guide_weight" in config else ""
    return f"{VAE_MODEL}-{config['family']}-beta{number(config['beta'])}{capacity}{guide}-seed{int(config['seed'])}"


def log_vae_model(
    tracker: Tracker,
    run_id: str,
    weights: str | Path,
    config: dict,
    *,
    example_images: np.ndarray | None = None,
    step: int | None = None,
) -> str:
    """Log the VAE of `run_id` as its MLflow model `vae` (a pyfunc `VaeModel`); returns the model id.

    `config` holds `vae_artifacts.VAE_CONFIG_KEYS` and `crop_fraction`, which the served model's
    preprocessing needs.
    """
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "vae_config.json"
        config_path.write_text(json.dumps(config, indent=2))
        return log_pyfunc(
            tracker,
            run_id,
            VaeModel(),
            {"weights": str(weights), "config": str(config_path)},
            name=vae_model_name(config),
            signature=vae_signature(int(config["latent_dim"])),
            input_example=photo_example(example_images, int(config["image_size"])),
            step=tracker.last_step(run_id) if step is None else step,
        )


def logged_model_id(tracker: Tracker, run_id: str) -> str | None:
    """The id of the VAE model logged on training run `run_id` (the latest, if several), or None.

    Models logged before they carried descriptive names are called just `vae`; both are found.
    """
    run = tracker.get_run(run_id)
    found = tracker.client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
    )
    vaes = [m for m in found if m.name == VAE_MODEL or m.name.startswith(f"{VAE_MODEL}-")]
    return vaes[0].model_id if vaes else None


def ensure_vae_model(tracker: Tracker, run_id: str, crop_fraction: float) -> str:
    """The id of the run's logged VAE model; one is logged from the run's weights if the run has none
    (a run trained before models were logged, or without its data/processed at hand)."""
    model_id = logged_model_id(tracker, run_id)
    if model_id is not None:
        return model_id
    with tempfile.TemporaryDirectory() as tmp:
        weights, config = vae_files(tracker, run_id, tmp)
        log.info("run %s has no logged model %r: logging it from its weights", run_id, VAE_MODEL)
        return log_vae_model(tracker, run_id, weights, {**config, "crop_fraction": crop_fraction})


# the registry ----------------------------------------------------------------------
def register_model(tracker: Tracker, name: str, model_id: str, *, tags: dict | None = None):
    """A new version of registered model `name` from the logged model `model_id`, tagged `tags`.

    `mlflow.register_model` records the model as the version's source and its training run as the
    version's run, and lists the version on the logged model's page (its `mlflow.modelVersions` tag).
    """
    version = mlflow.register_model(f"models:/{model_id}", name, tags={k: str(v) for k, v in (tags or {}).items()})
    return tracker.client.get_model_version(name, version.version)


def versions_of(tracker: Tracker, name: str, model_id: str) -> list:
    """The versions of registered model `name` made from the logged model `model_id`, oldest first."""
    try:
        versions = tracker.client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    source = f"models:/{model_id}"
    return sorted((v for v in versions if v.source == source), key=lambda v: int(v.version))


def set_alias(tracker: Tracker, name: str, alias: str, version: str | int) -> None:
    tracker.client.set_registered_model_alias(name, alias, str(version))


def mark_champion(tracker: Tracker, name: str, model_id: str) -> None:
    """Tag the logged model behind `name@champion` (`champion: name`), and only it, so that the experiment's
    Models tab shows which of its many models is served."""
    marked = f"tags.{CHAMPION_TAG} = '{name}'"
    for model in tracker.client.search_logged_models([tracker.experiment_id], filter_string=marked):
        if model.model_id != model_id:
            tracker.client.delete_logged_model_tag(model.model_id, CHAMPION_TAG)
    tracker.client.set_logged_model_tags(model_id, {CHAMPION_TAG: name})


def version_by_alias(tracker: Tracker, name: str, alias: str = CHAMPION):
    """The model version behind `name@alias`, or None when the model or alias does not exist."""
    try:
        return tracker.client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def load_registered(tracker: Tracker, name: str, alias: str = CHAMPION):
    """The pyfunc model behind `name@alias`, loaded from the tracker's registry."""
    return mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
