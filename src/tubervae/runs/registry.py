"""Logged MLflow models and the Model Registry: what can be served, and which version is the champion.

Each VAE training run logs its network as the MLflow model `vae` (a pyfunc `serving.VaeModel`, with a
signature and an input example, linked to the run's params and final metrics) beside its plain files
(`runs.vae_artifacts`); the register stage registers it as `tubervae-vae`, the classify stage logs and
registers `tuber-quality`.

No model holds a pickled object or a copy of the package: each is logged from code (MLflow's "models
from code": `vae_model_code.py` or `quality_model_code.py`, which build the model from the installed
tubervae) beside plain files (torch weights, JSON). The SHA-256 of every file of a logged model is
recorded on it when it is logged (`model_files.DIGESTS_TAG`), checked again when it is registered and
copied onto the version; `load_registered` and `verified_copy` check a local copy of the version's
files against them before any of its code runs, and load from that same copy.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import weakref
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from tubervae.models.nets import VAE
from tubervae.runs import vae_model_code
from tubervae.runs.model_files import (
    DIGESTS_TAG,
    ModelFilesError,
    check_files,
    file_digests,
    manifest,
    no_compiled_caches,
    parse_manifest,
)
from tubervae.runs.serving import InputLimits, photo_example, vae_signature
from tubervae.runs.tracker import Tracker
from tubervae.runs.vae_artifacts import vae_files, write_vae_files
from tubervae.training.setting import Setting

log = logging.getLogger(__name__)
CHAMPION = "champion"  # the registry alias of the promoted version of each registered model
CHALLENGER = "challenger"  # the alias of the latest version that the promotion gate refused
VAE_MODEL = "vae"  # what every training run's logged model is called: `vae-<family>-<setting>-s<seed>`, or just this
MODEL_SCORES = ("test_rec", "n_active")  # a logged VAE's metrics on its dataset (data/processed)
CHAMPION_TAG = "champion"  # on the logged model behind `<registered model>@champion`: its registered name
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
    model_code: str | Path,
    artifacts: dict,
    *,
    name: str = "model",
    signature=None,
    input_example=None,
    step: int = 0,
) -> str:
    """Log a pyfunc model named `name` on `run_id` from the Python file `model_code`; returns its model id.

    `model_code` calls `mlflow.models.set_model` with the model (MLflow's "models from code"), so no
    pickled object is logged; it imports the installed tubervae, of which no copy is logged. The
    SHA-256 of every file the store then holds for the model is recorded on it (`DIGESTS_TAG`).
    MLflow links the model to the run: it takes the run's params, and the run's metrics of `step`
    become the model's metrics.
    """
    with mlflow.start_run(run_id=run_id, log_system_metrics=False), no_compiled_caches():
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(model_code),
            artifacts=artifacts,
            pip_requirements=PIP_REQUIREMENTS,
            signature=signature,
            input_example=input_example,
            step=step,
        )
    with tempfile.TemporaryDirectory() as tmp:
        folder = _download(tracker, tracker.client.get_logged_model(info.model_id).artifact_location, tmp)
        tracker.client.set_logged_model_tags(info.model_id, {DIGESTS_TAG: manifest(file_digests(folder))})
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
    scores: dict | None = None,
) -> str | None:
    """A training run's VAE: its files (`vae_artifacts`) and its logged MLflow model `vae`.

    The model needs the preprocessing's crop fraction, which lives in `processed_dir`/meta.json
    (default: the project's data/processed, used only if it holds the model's data version); the
    processed data is logged as the run's dataset input at the same time. Without it the model is
    left out with a warning, and the register stage logs it on the run when it registers it.
    `example_images` (uint8 n×s×s×3; default a grey square) give the input example; `step` links
    the run's metrics of that step to the model (default the last step this tracker logged). `scores`
    (`MODEL_SCORES`: the test split's reconstruction error, the probe split's active components) are logged
    on the run at that step, as the model's metrics on its dataset where there is a model (its page then
    lists data/processed under "Datasets used"). Returns the logged model's id, or None.
    """
    scores = scores or {}
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
            tracker.log_metrics(run_id, scores, tracker.last_step(run_id) if step is None else step)
            return None
        tracker.log_dataset(run_id, processed)
        crop = json.loads((processed / "meta.json").read_text())["crop_fraction"]
        model_id = log_vae_model(
            tracker, run_id, weights, {**config, "crop_fraction": crop}, example_images=example_images, step=step
        )
        tracker.log_model_scores(
            run_id, model_id, processed, scores, tracker.last_step(run_id) if step is None else step
        )
        return model_id


def _processed_dir_of(root: Path, data_version: str, processed_dir: str | Path | None) -> Path | None:
    """`processed_dir` (or the project's data/processed) if its meta.json is of `data_version`."""
    folder = Path(processed_dir) if processed_dir is not None else Path(root) / "data" / "processed"
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return folder if meta.get("data_version") == data_version else None


def vae_model_name(config: dict) -> str:
    """A training run's logged model named as the run is, for the experiment's Models tab: family, setting
    (`Setting.label`), seed, e.g. `vae-beta_vae-2,61-s0` beside the run `s0 beta_vae 2.61`. MLflow allows
    no '.' in a logged model's name, so the decimal point is a comma."""
    setting = Setting(
        family=config["family"],
        beta=float(config["beta"]),
        c_max=float(config.get("c_max", 0.0)),
        guide_weight=float(config.get("guide_weight", 0.0)),
    )
    return f"{VAE_MODEL}-{setting.family}-{setting.label.replace('.', ',')}-s{int(config['seed'])}"


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
            vae_model_code.CODE,
            {"weights": str(weights), "config": str(config_path)},
            name=vae_model_name(config),
            signature=vae_signature(int(config["latent_dim"])),
            input_example=photo_example(example_images, int(config["image_size"])),
            step=tracker.last_step(run_id) if step is None else step,
        )


def logged_model_id(tracker: Tracker, run_id: str) -> str | None:
    """The id of the VAE model logged on training run `run_id` (the latest, if several), or None.

    Models logged before they carried descriptive names are called just `vae`; both are found. Models
    logged without file digests (pickled ones, from before models were logged from code) are not.
    """
    run = tracker.get_run(run_id)
    found = tracker.client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
    )
    vaes = [m for m in found if m.name == VAE_MODEL or m.name.startswith(f"{VAE_MODEL}-")]
    vaes = [m for m in vaes if DIGESTS_TAG in m.tags]
    return vaes[0].model_id if vaes else None


def ensure_vae_model(tracker: Tracker, run_id: str, crop_fraction: float) -> str:
    """The id of the run's logged VAE model; one is logged from the run's weights if the run has none
    (a run trained before models were logged, or without its data/processed at hand) or only one
    without file digests (logged pickled, before models were logged from code)."""
    model_id = logged_model_id(tracker, run_id)
    if model_id is not None:
        return model_id
    with tempfile.TemporaryDirectory() as tmp:
        weights, config = vae_files(tracker, run_id, tmp)
        log.info("run %s has no logged model %r: logging it from its weights", run_id, VAE_MODEL)
        return log_vae_model(tracker, run_id, weights, {**config, "crop_fraction": crop_fraction})


# the registry ----------------------------------------------------------------------
def register_model(tracker: Tracker, name: str, model_id: str, *, tags: dict | None = None):
    """A new version of registered model `name` from the logged model `model_id`, tagged `tags` and
    with the model's file digests (`DIGESTS_TAG`).

    The model's files in the store are checked against the digests recorded when it was logged first:
    a model changed since is refused (ModelFilesError), and so is one logged without digests.
    `mlflow.register_model` records the model as the version's source and its training run as the
    version's run, and lists the version on the logged model's page (its `mlflow.modelVersions` tag).
    """
    with tempfile.TemporaryDirectory() as tmp:
        recorded = file_digests(verified_logged_copy(tracker, model_id, tmp))
    tags = {**{k: str(v) for k, v in (tags or {}).items()}, DIGESTS_TAG: manifest(recorded)}
    version = mlflow.register_model(f"models:/{model_id}", name, tags=tags)
    return tracker.client.get_model_version(name, version.version)


def has_digests(version) -> bool:
    """Whether a model version carries its files' digests (every version registered since they are recorded)."""
    return DIGESTS_TAG in (version.tags or {})


def versions_of(tracker: Tracker, name: str, model_id: str) -> list:
    """The versions of registered model `name` made from the logged model `model_id` that carry file digests,
    oldest first."""
    try:
        versions = tracker.client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    source = f"models:/{model_id}"
    return sorted((v for v in versions if v.source == source and has_digests(v)), key=lambda v: int(v.version))


def set_alias(tracker: Tracker, name: str, alias: str, version: str | int) -> None:
    tracker.client.set_registered_model_alias(name, alias, str(version))


def describe_version(tracker: Tracker, name: str, version: str | int, description: str, tags: dict) -> None:
    """A version's model card: `description` (Markdown) on its page, `tags` (values as strings) beside it."""
    tracker.client.update_model_version(name, str(version), description=description)
    for key, value in tags.items():
        tracker.client.set_model_version_tag(name, str(version), key, str(value))


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


# MLflow writes this file (the version's name and number, as YAML) into a model folder of a local store
# whenever a version is read by name; nothing reads it. It is left out of the digests and of every copy.
REGISTERED_MODEL_META = "registered_model_meta"


def _download(tracker: Tracker, artifact_uri: str, dst: str | Path) -> Path:
    """The files at `artifact_uri` as the store holds them, copied into the local folder `dst`
    (less MLflow's `REGISTERED_MODEL_META`)."""
    folder = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=tracker.uri)
    )
    (folder / REGISTERED_MODEL_META).unlink(missing_ok=True)
    return folder


def verified_copy(tracker: Tracker, version, dst: str | Path) -> Path:
    """A local copy of model version `version`'s files in `dst`, checked against the version's digests.

    Raises ModelFilesError, in one line naming the version and the file, when a file was changed, added or
    removed since the model was logged, or when the version carries no digests (registered before they
    were recorded: register it again). Nothing of the model has run then; load from the returned folder,
    never from the store again, so that what was checked is what loads.
    """
    what = f"{version.name} version {version.version}"
    if not has_digests(version):
        raise ModelFilesError(
            f"{what} carries no file digests (registered before tubervae recorded them), so it is not loaded: "
            "register it again, `dvc repro --force register` for the VAE or `dvc repro --force classify` for "
            "the classifier"
        )
    recorded = parse_manifest(version.tags[DIGESTS_TAG], what)
    folder = _download(tracker, tracker.client.get_model_version_download_uri(version.name, version.version), dst)
    check_files(folder, recorded, what)
    return folder


def verified_logged_copy(tracker: Tracker, model_id: str, dst: str | Path) -> Path:
    """A local copy of the logged model `model_id`'s files in `dst`, checked against the digests recorded on
    it when it was logged (ModelFilesError otherwise, also when it carries none): load from this copy."""
    logged = tracker.client.get_logged_model(model_id)
    what = f"logged model {logged.name} ({model_id})"
    recorded = parse_manifest(logged.tags.get(DIGESTS_TAG), what)
    folder = _download(tracker, logged.artifact_location, dst)
    check_files(folder, recorded, what)
    return folder


def load_registered(tracker: Tracker, name: str, alias: str = CHAMPION):
    """The pyfunc model behind `name@alias`, loaded as `load_version` loads it."""
    version = version_by_alias(tracker, name, alias)
    if version is None:
        raise RuntimeError(f"no model {name}@{alias} in the registry at {tracker.uri}: run the register stage first")
    return load_version(tracker, version)


def load_version(tracker: Tracker, version):
    """The pyfunc model of model version `version`, loaded from a local copy of its files checked against
    their digests first (`verified_copy`; ModelFilesError when they differ); the copy goes with the model."""
    return _load_checked(lambda folder: verified_copy(tracker, version, folder))


def _load_checked(checked_copy):
    """The pyfunc model in the folder `checked_copy(private temporary folder)` returns once it has checked the
    files there; the folder is removed when the model is (or at once, if the check or the load fails)."""
    folder = Path(tempfile.mkdtemp(prefix="tubervae-model-"))
    try:
        model = mlflow.pyfunc.load_model(str(checked_copy(folder)))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(model, shutil.rmtree, folder, ignore_errors=True)
    return model


def evaluate_classifier(
    tracker: Tracker, run_id: str, model_id: str, data, *, targets: str, predictions: str, labels: list[str]
) -> dict:
    """MLflow's own classifier evaluation of the logged model `model_id` on `data` (photos and `targets`), logged
    on `run_id` and linked to the model, so that its figures and confusion matrix show on the model's page.

    The model answers several columns, and MLflow's classifier evaluator takes a model's whole answer as its
    verdicts, so the loaded model is evaluated through a function that returns its column `predictions`, linked
    by `model_id`. A pyfunc has no `predict_proba`, so MLflow draws no ROC or precision-recall curve: its figures
    are those of the verdicts. The photos go in batches of the served model's request limit. The last of `labels`
    is the positive class. Returns MLflow's metrics.
    """
    model = _load_checked(lambda folder: verified_logged_copy(tracker, model_id, folder))
    batch = InputLimits.from_env().max_images  # as many photos at a time as one request may hold

    def verdicts(photos):
        parts = [model.predict(photos.iloc[i : i + batch])[predictions] for i in range(0, len(photos), batch)]
        return pd.concat(parts, ignore_index=True)

    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        result = mlflow.models.evaluate(
            verdicts,
            data,
            targets=targets,
            model_type="classifier",
            evaluator_config={"pos_label": labels[-1], "label_list": list(labels), "log_model_explainability": False},
            model_id=model_id,
        )
    return {k: float(v) for k, v in result.metrics.items()}
