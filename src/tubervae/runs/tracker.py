"""Every MLflow call of the project lives here: runs, the artifact layout, the registry.

Tracking defaults to `sqlite:///<project>/mlflow.db` with artifacts in `<project>/mlruns`,
so a plain `mlflow ui` started in the project root shows every run. MLFLOW_TRACKING_URI
(for example a tracking server shared by several machines) takes precedence.
The explicit `MlflowClient` API is used throughout: no hidden active-run state, so
nested runs, several workers and `mlflow run` (which hands over MLFLOW_RUN_ID) all
behave the same.

Artifact layout of a VAE run (written and read only here):
- `model/model.pt`: the weights (a state dict, read with `weights_only=True`);
- `model/config.json`: what rebuilds the network and where it came from (`VAE_CONFIG_KEYS`);
- `latents.npz`: `mu`, `logvar` and `kl` of the UDR probe images;
- the logged MLflow model `vae` (a pyfunc `VaeModel` with its signature and an input example,
  linked to the run with its params and final metrics): what the register stage registers.
  The raw weights above stay beside it: the stages and tests read them without loading a model.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from PIL import Image

from tubervae.models.nets import VAE

log = logging.getLogger(__name__)
EXPERIMENT = "tubervae"
CHAMPION = "champion"  # the registry alias of the promoted version of each registered model
WEIGHTS, VAE_CONFIG, LATENTS = "model/model.pt", "model/config.json", "latents.npz"
VAE_CONFIG_KEYS = ("image_size", "latent_dim", "family", "beta", "c_max", "seed", "data_version")
VAE_MODEL = "vae"  # the name of the logged MLflow model on each training run
PARENT_TAG = "mlflow.parentRunId"
OWNER_PID_TAG = "owner_pid"  # the process whose death ends a run: a pool worker's search, else its own pid
FIGURE_DPI = 120  # as `plots.save_figure` writes the report PNGs
# A model-training experiment, not a GenAI one, with this description on top of its page. (Which view
# MLflow 3's UI opens on is the browser's choice, not the experiment's: `make ui` prints the link.)
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": "VAE training runs (nested under their Optuna trial and study), the udr, register, "
    "classify and evaluate stages. Sort by `udr`; the registry holds `tubervae-vae` and `tuber-quality`.",
}
# The names MLflow makes up for a run started without one (`mlflow run`): 'bold-fox-123'.
GENERATED_RUN_NAME = re.compile(r"^[a-z]+-[a-z]+-\d+$")
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


def tracking_uri(root: str | Path = ".") -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def _point_mlflow_at(uri: str) -> None:
    """Set MLflow's process-wide tracking and registry URIs, leaving the environment as it was.

    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI (and MLFLOW_REGISTRY_URI): left
    there, a later Tracker of another project root would read it as the user's choice and log into
    the first root's database, and child processes would inherit it. MLflow's own helpers read the
    process-wide value before the environment, so restoring the environment loses nothing.
    """
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _from_mlflow_run(run) -> bool:
    """Whether `mlflow run` started this run (it records the project's entry point)."""
    return "mlflow.project.entryPoint" in run.data.tags


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:///")


class Tracker:
    """A handle on the project's experiment: runs, metrics, artifacts, the registry."""

    def __init__(
        self,
        root: str | Path = ".",
        experiment: str = EXPERIMENT,
        *,
        experiment_id: str | None = None,
        owner_pid: int | None = None,
    ):
        """`owner_pid`: the process whose death ends this one's runs too (a training pool's search);
        its runs carry it, so that a rerun marks them KILLED at once, not only once this process is gone."""
        self.root = Path(root).resolve()
        self.owner_pid = owner_pid
        self.uri = tracking_uri(self.root)
        _point_mlflow_at(self.uri)  # for model logging and the registry helpers
        # Creating a fresh sqlite database (schema migrations, the experiment) from several
        # processes at once races: serialise the first contact.
        with _file_lock(self.root / ".mlflow.lock") if is_local_store(self.uri) else nullcontext():
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.client.search_experiments(max_results=1)  # opens the store: creates or migrates it
            self.experiment_id = experiment_id or self._experiment(experiment)
        self._last_step: dict[str, int] = {}  # per run: the step of the latest metrics logged through here

    def _experiment(self, name: str) -> str:
        """The experiment `name`, created on first use and tagged as model training (`EXPERIMENT_TAGS`)."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            location = (self.root / "mlruns").as_uri() if is_local_store(self.uri) else None
            experiment_id = self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        else:
            experiment_id = found.experiment_id
            self._warn_if_artifacts_elsewhere(found.artifact_location)
            for key, value in EXPERIMENT_TAGS.items():  # experiments made before the tags existed
                if key not in found.tags:
                    self.client.set_experiment_tag(experiment_id, key, value)
        return experiment_id

    def _warn_if_artifacts_elsewhere(self, location: str) -> None:
        """A project copied with `cp -r` keeps its store's absolute artifact location: say so, since the
        copy's models, figures and latents would land in the original's mlruns/."""
        if not is_local_store(self.uri) or not location.startswith("file:"):
            return
        folder = Path(urllib.parse.unquote(urllib.parse.urlparse(location).path))
        if folder.resolve() != (self.root / "mlruns").resolve():
            log.warning(
                "the tracking store %s keeps its artifacts in %s, outside this project (a copied mlflow.db?): "
                "this project's runs write there. For a store of its own, move mlflow.db away before the next "
                "stage (a new one is made with %s)",
                self.uri,
                folder,
                self.root / "mlruns",
            )

    @classmethod
    def open(cls, root: str | Path = ".", run_id: str | None = None) -> Tracker:
        """The project's tracker; with `run_id` (an `mlflow run` hands one over), that run's experiment."""
        if run_id is None:
            return cls(root)
        experiment_id = MlflowClient(tracking_uri=tracking_uri(root)).get_run(run_id).info.experiment_id
        return cls(root, experiment_id=experiment_id)

    def get_run(self, run_id: str, origin: str = ""):
        """The run (params, tags, metrics); a RuntimeError saying where it came from when the store lacks it."""
        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            where = f" ({origin})" if origin else ""
            raise RuntimeError(
                f"run {run_id}{where} is not in the tracking store {self.uri}: rerun the stage "
                f"that made it against this store ({exc.message})"
            ) from None

    # runs ------------------------------------------------------------------------
    def create_run(self, name: str, *, parent_id: str | None = None, tags: dict | None = None) -> str:
        tags = {**(tags or {}), **self._process_tags()}
        if parent_id:
            tags[PARENT_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    @contextmanager
    def run(
        self,
        name: str,
        *,
        run_id: str | None = None,
        parent_id: str | None = None,
        tags: dict | None = None,
        keep_open: bool = False,
        killed_by: tuple[type[BaseException], ...] = (),
        system_metrics: bool = False,
    ) -> Iterator[str]:
        """Open a run (or reopen `run_id`); its status follows how the block ends.

        Ending well: FINISHED, or still RUNNING with `keep_open` (a segment of a search that the next
        reopens; a process that dies meanwhile leaves it to `mark_stale_runs_killed`). An interrupt or an
        exception of `killed_by` (a pruned trial: stopped on purpose, not failed): KILLED. Anything else:
        FAILED, with the error as a tag. With `system_metrics`, MLflow's monitor logs CPU, memory, disk,
        network (and GPU) use as `system/*` metrics every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
        seconds (10 by default) while the block runs. A run that `mlflow run` opened under a made-up
        name is renamed `name`.
        """
        if run_id is None:
            run_id = self.create_run(name, parent_id=parent_id, tags=tags)
        else:
            held = self.get_run(run_id)
            renamed = name if GENERATED_RUN_NAME.match(held.info.run_name or "") and _from_mlflow_run(held) else None
            self.client.update_run(run_id, status="RUNNING", name=renamed)
            self.set_tags(run_id, {**self._process_tags(), **(tags or {})})
        monitor = None
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=self.uri)
            monitor.start()
        try:
            try:
                yield run_id
            finally:
                if monitor is not None:
                    monitor.finish()  # its last samples land before the run ends
        except (KeyboardInterrupt, *killed_by):
            self.end_run(run_id, "KILLED")
            raise
        except BaseException as exc:
            self.end_run(run_id, "FAILED", {"error": f"{type(exc).__name__}: {exc}"[:4000]})
            raise
        else:
            if not keep_open:
                self.end_run(run_id, "FINISHED")

    def end_run(self, run_id: str, status: str, tags: dict | None = None) -> None:
        """End a run with `status` (FINISHED, FAILED or KILLED), after setting `tags`."""
        if tags:
            self.set_tags(run_id, tags)
        self.client.set_terminated(run_id, status=status)

    def status(self, run_id: str) -> str:
        return self.get_run(run_id).info.status

    def _process_tags(self) -> dict:
        """Which process holds a run: what `mark_stale_runs_killed` checks."""
        pid = os.getpid()
        # Always set, so a run reopened by another process never keeps a former holder's owner.
        owner = pid if self.owner_pid is None else self.owner_pid
        return {"host": socket.gethostname(), "pid": str(pid), OWNER_PID_TAG: str(owner)}

    def mark_stale_runs_killed(self, orphan_grace: float = 10.0) -> list[str]:
        """Runs left RUNNING by a dead process on this host are marked KILLED.

        A run whose owner died (a search killed under its training pool) is stale even while its
        worker lives on: the worker exits within about a second of its owner, so it is given up to
        `orphan_grace` seconds to go first, and its run never stays RUNNING behind a quick rerun.
        """
        host = socket.gethostname()
        stale = []
        runs = self.client.search_runs(
            [self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000
        )
        for run in runs:
            tags = run.data.tags
            if tags.get("host") != host or not tags.get("pid", "").isdigit():
                continue
            pid, owner = int(tags["pid"]), tags.get(OWNER_PID_TAG, "")
            orphaned = owner.isdigit() and not process_alive(int(owner))
            if orphaned:
                _wait_for_exit(pid, orphan_grace)
            if orphaned or not process_alive(pid):
                self.client.set_terminated(run.info.run_id, status="KILLED")
                stale.append(run.info.run_id)
        if stale:
            log.warning("marked %d run(s) left RUNNING by a killed process as KILLED", len(stale))
        return stale

    # logging ---------------------------------------------------------------------
    def log_params(self, run_id: str, params: dict) -> None:
        """Log params; keys the run already holds (`mlflow run` logs its -P values first, e.g. beta '4'
        where the stage logs 4.0) are skipped when they mean the same value, and a real conflict is
        a ValueError that names both values. MlflowClient.log_batch splits the entries into batches
        within the server's limits itself."""
        held = self.client.get_run(run_id).data.params
        entries = []
        for key, value in params.items():
            text = _param_value(value)
            if key in held:
                if not _same_param(held[key], text):
                    raise ValueError(f"param {key!r}: run {run_id} already holds {held[key]!r}, cannot log {text!r}")
                continue
            entries.append(Param(key, text))
        if entries:
            self.client.log_batch(run_id, params=entries)

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        """Log the finite values among `metrics` at `step` (None, NaN and inf are left out).

        Nested dicts (a stage's metrics file) become names grouped by '/', e.g. `any_rule/roc_auc`,
        which the MLflow UI shows as one group per prefix.
        """
        now = int(time.time() * 1000)
        entries = [
            Metric(k, float(v), now, step)
            for k, v in _flat(metrics).items()
            if v is not None and math.isfinite(float(v))
        ]
        if entries:
            self.client.log_batch(run_id, metrics=entries)
        self._last_step[run_id] = max(step, self._last_step.get(run_id, step))

    def set_tags(self, run_id: str, tags: dict) -> None:
        entries = [RunTag(k, str(v)) for k, v in tags.items()]
        if entries:
            self.client.log_batch(run_id, tags=entries)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def log_figure(self, run_id: str, fig, name: str) -> None:
        """A matplotlib figure as the PNG artifact `name` (a run-relative path); the figure is closed."""
        try:
            self.client.log_figure(run_id, fig, name, save_kwargs={"dpi": FIGURE_DPI})
        finally:
            _close_figure(fig)

    def log_image_at_step(self, run_id: str, fig, key: str, step: int, artifact_file: str | None = None) -> None:
        """A matplotlib figure as the image `key` at `step`, so the UI's image slider walks through the
        steps; with `artifact_file` also as that static PNG (rendered once). The figure is closed.

        MlflowClient.log_image takes arrays or PIL images, so the figure is rendered to an RGB image first.
        """
        try:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
        finally:
            _close_figure(fig)
        buffer.seek(0)
        with Image.open(buffer) as image:
            rgb = image.convert("RGB")
        self.client.log_image(run_id, rgb, key=key, step=int(step))
        if artifact_file:
            self.client.log_image(run_id, rgb, artifact_file=artifact_file)

    def log_dataset(self, run_id: str, processed_dir: str | Path, context: str = "training") -> None:
        """data/processed as the run's `mlflow.data` dataset input: its folder, its data version as digest,
        the image arrays' shape as schema. Only the description is logged; DVC versions the arrays.
        A run that already has this input (a resumed or reopened run) keeps its one entry."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.types.schema import Schema, TensorSpec

        folder = Path(processed_dir).resolve()
        meta = json.loads((folder / "meta.json").read_text())
        for held in self.client.get_run(run_id).inputs.dataset_inputs:
            same_context = any(t.key == MLFLOW_DATASET_CONTEXT and t.value == context for t in held.tags)
            if held.dataset.digest == meta["data_version"] and same_context:
                return
        size = int(meta["image_size"])
        schema = Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3), "images")])
        dataset = MetaDataset(
            LocalArtifactDatasetSource(str(folder)), name=folder.name, digest=meta["data_version"], schema=schema
        )
        # mlflow.log_input needs the fluent active run, whose end would close this still-open run: the
        # client logs the entity that mlflow.log_input builds the same way.
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        self.client.log_inputs(run_id, datasets=[entry])

    def download(self, run_id: str, artifact: str, dst: str | Path) -> Path:
        return Path(self.client.download_artifacts(run_id, artifact, str(dst)))

    # the artifact layout of a VAE run ------------------------------------------------
    def log_vae(
        self,
        run_id: str,
        model: VAE,
        config: dict,
        latents: dict,
        *,
        processed_dir: str | Path | None = None,
        example_images: np.ndarray | None = None,
        step: int | None = None,
    ) -> str | None:
        """Weights, their config, the probe latents and the logged MLflow model (module docstring).

        The model needs the preprocessing's crop fraction, which lives in `processed_dir`/meta.json
        (default: the project's data/processed, used only if it holds the model's data version); the
        processed data is logged as the run's dataset input at the same time. Without it the model is
        left out with a warning, and the register stage logs it on the run when it registers it.
        `example_images` (uint8 n×s×s×3; default a grey square) give the input example; `step` links
        the run's metrics of that step to the model (default the last step this tracker logged).
        Returns the logged model's id, or None.
        """
        missing = set(VAE_CONFIG_KEYS) - set(config)
        if missing:
            raise ValueError(f"the VAE config lacks {sorted(missing)}")
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(Path(tmp) / LATENTS, **latents)
            self.log_artifact(run_id, Path(tmp) / LATENTS)
            folder = Path(tmp) / Path(WEIGHTS).parent
            folder.mkdir()
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(tmp) / WEIGHTS)
            (Path(tmp) / VAE_CONFIG).write_text(json.dumps(config, indent=2))
            self.log_artifacts(run_id, folder, str(Path(WEIGHTS).parent))
            processed = self._processed_dir_of(config["data_version"], processed_dir)
            if processed is None:
                log.warning(
                    "run %s: no data/processed of data version %s, so no crop fraction: the VAE is logged as "
                    "weights only until the register stage logs its MLflow model",
                    run_id,
                    config["data_version"],
                )
                return None
            self.log_dataset(run_id, processed)
            crop = json.loads((processed / "meta.json").read_text())["crop_fraction"]
            return self.log_vae_model(
                run_id, Path(tmp) / WEIGHTS, {**config, "crop_fraction": crop}, example_images=example_images, step=step
            )

    def _processed_dir_of(self, data_version: str, processed_dir: str | Path | None) -> Path | None:
        """`processed_dir` (or the project's data/processed) if its meta.json is of `data_version`."""
        folder = Path(processed_dir) if processed_dir is not None else self.root / "data" / "processed"
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return folder if meta.get("data_version") == data_version else None

    def log_vae_model(
        self,
        run_id: str,
        weights: str | Path,
        config: dict,
        *,
        example_images: np.ndarray | None = None,
        step: int | None = None,
    ) -> str:
        """Log the VAE of `run_id` as its MLflow model `vae` (a pyfunc `VaeModel`); returns the model id.

        `config` holds `VAE_CONFIG_KEYS` and `crop_fraction`, which the served model's preprocessing needs.
        """
        from tubervae.runs.serving import VaeModel, photo_example, vae_signature

        with tempfile.TemporaryDirectory() as tmp:
            config_path = Path(tmp) / "vae_config.json"
            config_path.write_text(json.dumps(config, indent=2))
            return self.log_pyfunc(
                run_id,
                VaeModel(),
                {"weights": str(weights), "config": str(config_path)},
                name=VAE_MODEL,
                signature=vae_signature(int(config["latent_dim"])),
                input_example=photo_example(example_images, int(config["image_size"])),
                step=self._last_step.get(run_id, 0) if step is None else step,
            )

    def logged_model_id(self, run_id: str, name: str = VAE_MODEL) -> str | None:
        """The id of the MLflow model `name` logged on `run_id` (the latest, if several), or None."""
        run = self.get_run(run_id)
        found = self.client.search_logged_models(
            [run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
            order_by=[{"field_name": "creation_timestamp", "ascending": False}],
            max_results=1,
        )
        return found[0].model_id if found else None

    def ensure_vae_model(self, run_id: str, crop_fraction: float) -> str:
        """The id of the run's logged VAE model; one is logged from the run's weights if the run has none
        (a run trained before models were logged, or without its data/processed at hand)."""
        model_id = self.logged_model_id(run_id)
        if model_id is not None:
            return model_id
        with tempfile.TemporaryDirectory() as tmp:
            weights, config = self.vae_files(run_id, tmp)
            log.info("run %s has no logged model %r: logging it from its weights", run_id, VAE_MODEL)
            return self.log_vae_model(run_id, weights, {**config, "crop_fraction": crop_fraction})

    def load_vae(self, run_id: str) -> tuple[VAE, dict]:
        """The VAE of a training run (on the CPU, in eval mode) and its config."""
        with tempfile.TemporaryDirectory() as tmp:
            config = json.loads(self.download(run_id, VAE_CONFIG, tmp).read_text())
            return load_vae_files(self.download(run_id, WEIGHTS, tmp), config), config

    def vae_files(self, run_id: str, dst: str | Path) -> tuple[Path, dict]:
        """Download a run's weights into `dst`; returns their path and the config."""
        config = json.loads(self.download(run_id, VAE_CONFIG, dst).read_text())
        return self.download(run_id, WEIGHTS, dst), config

    def latents(self, run_id: str) -> dict[str, np.ndarray]:
        """`mu`, `logvar` and `kl` of the probe images that the run's model encoded."""
        with tempfile.TemporaryDirectory() as tmp:
            with np.load(self.download(run_id, LATENTS, tmp), allow_pickle=False) as data:
                return {k: data[k] for k in data.files}

    # registry --------------------------------------------------------------------
    def log_pyfunc(
        self,
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

        MLflow links the model to the run: it takes the run's params, and the run's metrics of
        `step` become the model's metrics. The package travels with the model (`code_paths`), so
        `mlflow models serve` needs no install of tubervae.
        """
        import mlflow.pyfunc

        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=python_model,
                artifacts=artifacts,
                code_paths=[str(Path(__file__).resolve().parents[1])],
                pip_requirements=PIP_REQUIREMENTS,
                signature=signature,
                input_example=input_example,
                step=step,
            )
        return info.model_id

    def register_model(self, name: str, model_id: str, *, tags: dict | None = None):
        """A new version of registered model `name` from the logged model `model_id`, tagged `tags`.

        `mlflow.register_model` records the model as the version's source and its training run as the
        version's run, and lists the version on the logged model's page (its `mlflow.modelVersions` tag).
        """
        version = mlflow.register_model(f"models:/{model_id}", name, tags={k: str(v) for k, v in (tags or {}).items()})
        return self.client.get_model_version(name, version.version)

    def versions_of(self, name: str, model_id: str) -> list:
        """The versions of registered model `name` made from the logged model `model_id`, oldest first."""
        try:
            versions = self.client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            return []
        source = f"models:/{model_id}"
        return sorted((v for v in versions if v.source == source), key=lambda v: int(v.version))

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def version_by_alias(self, name: str, alias: str = CHAMPION):
        """The model version behind `name@alias`, or None when the model or alias does not exist."""
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def load_registered(self, name: str, alias: str = CHAMPION):
        """The pyfunc model behind `name@alias`, loaded from this tracker's registry."""
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(f"models:/{name}@{alias}")

    # queries ---------------------------------------------------------------------
    def finished_vae_runs(self) -> list:
        """Finished VAE runs of the project's experiment and of the tracker's own one.

        `mlflow run . -e udr` opens its run in the Default experiment unless told otherwise;
        the models still live in the project's experiment, so both are searched.
        """
        experiments = [self.experiment_id]
        project = self.client.get_experiment_by_name(EXPERIMENT)
        if project is not None and project.experiment_id not in experiments:
            experiments.append(project.experiment_id)
        return self.finished_runs("tags.kind = 'vae'", experiment_ids=experiments)

    def finished_runs(self, filter_string: str = "", experiment_ids: list[str] | None = None) -> list:
        query = "attributes.status = 'FINISHED'" + (f" and {filter_string}" if filter_string else "")
        out, token = [], None
        while True:
            page = self.client.search_runs(
                experiment_ids or [self.experiment_id], filter_string=query, max_results=1000, page_token=token
            )
            out.extend(page)
            token = page.token
            if not token:
                return out


def _flat(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}/")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _param_value(value) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _same_param(held: str, text: str) -> bool:
    """'4' and '4.0' are the same parameter value; 'beta_vae' only equals itself."""
    if held == text:
        return True
    try:
        return float(held) == float(text)
    except ValueError:
        return False


def _wait_for_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs; a zombie (dead, not yet reaped) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # no /proc (not Linux): the signal test above is all there is
    return "\nState:\tZ" not in status


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _close_figure(fig) -> None:
    """Release a matplotlib figure, from pyplot too if a caller created it there."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()


def load_vae_files(weights: str | Path, config: dict) -> VAE:
    """Rebuild a VAE from its weights file and config (the layout above); CPU, eval mode."""
    model = VAE(image_size=int(config["image_size"]), latent_dim=int(config["latent_dim"]))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()
