"""The run lifecycle of the project's MLflow experiment: runs, params, metrics, tags, artifacts.

Kept whole: one class, `Tracker`, is the only door to MLflow for every stage; its run states,
stale-run clean-up and file lock guard the same runs, and read best in one place.

Tracking defaults to `sqlite:///<project>/mlflow.db` with artifacts in `<project>/mlruns`,
so a plain `mlflow ui` started in the project root shows every run. MLFLOW_TRACKING_URI
(for example a tracking server shared by several machines) takes precedence.
The explicit `MlflowClient` API is used throughout: no hidden active-run state, so
nested runs, several workers and `mlflow run` (which hands over MLFLOW_RUN_ID) all
behave the same. A VAE run's files live in `runs.vae_artifacts`; logged models and the
registry in `runs.registry`.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import math
import os
import re
import signal
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from PIL import Image

from tubervae.plots import close

log = logging.getLogger(__name__)
EXPERIMENT = "tubervae"
PARENT_TAG = "mlflow.parentRunId"
OWNER_PID_TAG = "owner_pid"  # the process whose death ends a run: a pool worker's search, else its own pid
FIGURE_DPI = 120  # as `plots.save_figure` writes the report PNGs
# A model-training experiment, not a GenAI one, with this description on top of its page. (Which view
# MLflow 3's UI opens on is the browser's choice, not the experiment's: `make ui` prints the link.)
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": "VAE training runs (nested under their Optuna trial and study), the udr, register, "
    "classify and evaluate stages. To show `udr` and MIG as columns of the runs list: **Columns** (above the "
    "list) → Metrics → tick `udr` and `mig` (`udr_a2a`, `dci_d`, `n_active` beside them if wanted); click a "
    "column's header to sort by it. A run's page opens on its training curves (`curves/`), then the KL per "
    "component, then its scores. The registry holds `tubervae-vae` and `tuber-quality`.",
}
# Descriptions this project once gave its experiment: replaced by today's, where nobody edited them since.
FORMER_NOTES = {
    "VAE training runs (nested under their Optuna trial and study), the udr, register, classify and evaluate "
    "stages. Sort by `udr`; the registry holds `tubervae-vae` and `tuber-quality`.",
}
# The names MLflow makes up for a run started without one (`mlflow run`): 'bold-fox-123'.
GENERATED_RUN_NAME = re.compile(r"^[a-z]+-[a-z]+-\d+$")


def tracking_uri(root: str | Path = ".") -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


class StoreError(RuntimeError):
    """The tracking store cannot be used: not a database, or missing where runs are expected."""


def local_db(uri: str) -> Path | None:
    """The file of a `sqlite:///` store; None for any other kind of store."""
    return Path(uri.removeprefix("sqlite:///")) if is_local_store(uri) else None


def _where(uri: str) -> str:
    """Which setting chose the store, for the advice in an error."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return f"the tracking store {uri} (MLFLOW_TRACKING_URI)"
    return f"the tracking store {uri}"


def explain_mlflow_error(exc: BaseException, root: str | Path = ".") -> str:
    """An MLflow or database error as one line that says what to do (the CLI prints it without a traceback)."""
    uri = tracking_uri(root)
    if isinstance(exc, StoreError):
        return str(exc)
    text = getattr(exc, "message", None) or str(exc)
    first = next((line.strip() for line in str(text).splitlines() if line.strip()), type(exc).__name__)
    names = {c.__name__ for c in type(exc).__mro__}
    if "DatabaseError" in names or "OperationalError" in names or "not a database" in first:
        return _not_a_store(uri, root, first)
    code = getattr(exc, "error_code", "")
    if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in first.lower():
        if "alias" in first.lower() or "registered model" in first.lower():
            return (
                f"{first} in {_where(uri)}: register the champion first (tubervae register, or dvc repro register) "
                "against this store, or point MLFLOW_TRACKING_URI at the store that holds it"
            )
        return (
            f"{first} in {_where(uri)}: point MLFLOW_TRACKING_URI at the store that made it (or unset it for "
            f"{Path(root).resolve() / 'mlflow.db'}), or rerun the stages that made it against this store (dvc repro)"
        )
    return f"MLflow: {first} ({_where(uri)}); rerun with --debug for the traceback"


def _not_a_store(uri: str, root: str | Path, detail: str) -> str:
    return (
        f"{_where(uri)} is not an MLflow database ({detail}): point MLFLOW_TRACKING_URI at an MLflow store "
        f"(sqlite:///path/to/mlflow.db or a tracking server's URL), "
        f"or unset it for {Path(root).resolve() / 'mlflow.db'}"
    )


def open_client(uri: str, root: str | Path = ".", *, create: bool = True) -> MlflowClient:
    """A client of the store at `uri`, opened (created or migrated when `create`); a StoreError in one line
    when the store is not an MLflow database, or is missing and `create` is false (a stage that reads runs
    must not leave a new, empty mlflow.db behind in a store it was pointed at by mistake)."""
    db = local_db(uri)
    if not create and db is not None and not db.exists():
        raise StoreError(
            f"no MLflow store at {db}: run the stages before this one (dvc repro) in this project, or point "
            "MLFLOW_TRACKING_URI at the store that holds their runs"
        )
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)  # opens the store: creates or migrates it
    except Exception as exc:
        if not any(c.__module__.split(".")[0] in ("mlflow", "sqlalchemy") for c in type(exc).__mro__):
            raise
        raise StoreError(explain_mlflow_error(exc, root)) from exc
    return client


# Runs opened by `Tracker.run` in this process and not yet ended: a SIGTERM marks them KILLED.
_OPEN_RUNS: dict[str, MlflowClient] = {}


def _on_sigterm(signum, frame) -> None:
    """A SIGTERM (`timeout`, a scheduler, `kill`): mark this process's open runs KILLED, then die of the signal
    as if no handler were installed (exit status 143). Other threads are not waited for."""
    for run_id, client in list(_OPEN_RUNS.items()):
        try:
            client.set_terminated(run_id, status="KILLED")
        except Exception:  # the store is gone or locked: the next start marks the run KILLED instead
            pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _mark_runs_killed_on_sigterm() -> None:
    """Install `_on_sigterm`, once, where it can be (the main thread), unless someone else handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)


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


def handed_over_run_error(experiment_name: str) -> str:
    """One line: why a run that `mlflow run` opened in experiment `experiment_name` is refused, and the fix."""
    return (
        f"`mlflow run` opened its run in the experiment {experiment_name!r}, not the project's {EXPERIMENT!r}: "
        f"run it again with --experiment-name {EXPERIMENT} (or MLFLOW_EXPERIMENT_NAME={EXPERIMENT})"
    )


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:///")


class Tracker:
    """A handle on the project's experiment: runs, metrics, tags, artifacts, figures."""

    def __init__(
        self,
        root: str | Path = ".",
        experiment: str = EXPERIMENT,
        *,
        experiment_id: str | None = None,
        owner_pid: int | None = None,
        create: bool = True,
    ):
        """`owner_pid`: the process whose death ends this one's runs too (a training pool's search);
        its runs carry it, so that a rerun marks them KILLED at once, not only once this process is gone.
        `create`: false for a stage that reads runs made before it, which refuses a missing local store
        instead of creating an empty one (`open_client`)."""
        self.root = Path(root).resolve()
        self.owner_pid = owner_pid
        self.uri = tracking_uri(self.root)
        _point_mlflow_at(self.uri)  # for model logging and the registry helpers
        # Creating a fresh sqlite database (schema migrations, the experiment) from several
        # processes at once races: serialise the first contact.
        with _file_lock(self.root / ".mlflow.lock") if is_local_store(self.uri) else nullcontext():
            self.client = open_client(self.uri, self.root, create=create)
            self.experiment_id = experiment_id or self._experiment(experiment)
        self._last_step: dict[str, int] = {}  # per run: the step of the latest metrics logged through here
        _mark_runs_killed_on_sigterm()

    def _experiment(self, name: str) -> str:
        """The experiment `name`, created on first use and tagged as model training (`EXPERIMENT_TAGS`)."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            location = (self.root / "mlruns").as_uri() if is_local_store(self.uri) else None
            experiment_id = self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        else:
            experiment_id = found.experiment_id
            self._warn_if_artifacts_elsewhere(found.artifact_location)
            for key, value in EXPERIMENT_TAGS.items():  # experiments made before the tags (or today's) existed
                if key not in found.tags or (key == "mlflow.note.content" and found.tags[key] in FORMER_NOTES):
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
    def open(cls, root: str | Path = ".", run_id: str | None = None, *, create: bool = True) -> Tracker:
        """The project's tracker; a `run_id` (an `mlflow run` hands one over) must be a run of its experiment.

        `mlflow run` opens its run in the Default experiment unless told otherwise, where `make ui`'s
        link never looks: such a run is refused, with the flag that fixes it (`handed_over_run_error`).
        `create`: as for `Tracker`.
        """
        tracker = cls(root, create=create)
        if run_id is not None:
            held = tracker.get_run(run_id, "handed over by `mlflow run`")
            if held.info.experiment_id != tracker.experiment_id:
                raise RuntimeError(handed_over_run_error(tracker.client.get_experiment(held.info.experiment_id).name))
        return tracker

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
    def create_run(
        self, name: str, *, parent_id: str | None = None, tags: dict | None = None, started_at: float | None = None
    ) -> str:
        """A new run; `started_at` (seconds since the epoch) dates its start back to when its work began."""
        tags = {**(tags or {}), **self._process_tags()}
        if parent_id:
            tags[PARENT_TAG] = parent_id
        start = None if started_at is None else int(started_at * 1000)
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags, start_time=start)
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
        started_at: float | None = None,
    ) -> Iterator[str]:
        """Open a run (or reopen `run_id`); its status follows how the block ends.

        Ending well: FINISHED, or still RUNNING with `keep_open` (a segment of a search that the next
        reopens; a process that dies meanwhile leaves it to `mark_stale_runs_killed`). An interrupt or an
        exception of `killed_by` (a pruned trial: stopped on purpose, not failed): KILLED. Anything else:
        FAILED, with the error as a tag. With `system_metrics`, MLflow's monitor logs CPU, memory, disk,
        network (and GPU) use as `system/*` metrics every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
        seconds (10 by default) while the block runs. A run that `mlflow run` opened under a made-up
        name is renamed `name`. A stage that logs its run at the end passes `started_at` (`time.time()` when
        its work began), so that the run's duration is the stage's.
        """
        if run_id is None:
            run_id = self.create_run(name, parent_id=parent_id, tags=tags, started_at=started_at)
        else:
            held = self.get_run(run_id)
            renamed = name if GENERATED_RUN_NAME.match(held.info.run_name or "") and _from_mlflow_run(held) else None
            self.client.update_run(run_id, status="RUNNING", name=renamed)
            self.set_tags(run_id, {**self._process_tags(), **(tags or {})})
        _OPEN_RUNS[run_id] = self.client
        monitor = None
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=self.uri)
            monitor.start()
        try:
            try:
                yield run_id
            finally:
                _OPEN_RUNS.pop(run_id, None)
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
            close(fig)

    def log_image_at_step(self, run_id: str, fig, key: str, step: int, artifact_file: str | None = None) -> None:
        """A matplotlib figure as the image `key` at `step`, so the UI's image slider walks through the
        steps; with `artifact_file` also as that static PNG (rendered once). The figure is closed.

        MlflowClient.log_image takes arrays or PIL images, so the figure is rendered to an RGB image first.
        """
        try:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
        finally:
            close(fig)
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

    def log_model_scores(self, run_id: str, model_id: str, processed_dir: str | Path, scores: dict, step: int) -> None:
        """`scores` at `step` on the run and as metrics of its logged model `model_id` on data/processed
        (name: the folder's, digest: its data version, as `log_dataset` names it): the model's page then
        lists the data under "Datasets used" and the scores beside it."""
        folder = Path(processed_dir).resolve()
        digest = json.loads((folder / "meta.json").read_text())["data_version"]
        now = int(time.time() * 1000)
        entries = [
            Metric(k, float(v), now, step, model_id=model_id, dataset_name=folder.name, dataset_digest=digest)
            for k, v in scores.items()
            if v is not None and math.isfinite(float(v))
        ]
        if entries:
            self.client.log_batch(run_id, metrics=entries)
        self._last_step[run_id] = max(step, self._last_step.get(run_id, step))

    def log_json(self, run_id: str, data: dict, name: str) -> None:
        """`data` as the JSON artifact `name` (a run-relative path), indented to be read in the UI."""
        self.client.log_text(run_id, json.dumps(data, indent=2, sort_keys=True), name)

    def read_json(self, run_id: str, name: str) -> dict | None:
        """The JSON artifact `name` of `run_id`; None when the run holds no such file."""
        folder = str(Path(name).parent) if Path(name).parent != Path(".") else None
        if name not in {f.path for f in self.client.list_artifacts(run_id, folder)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(self.download(run_id, name, tmp).read_text())

    def download(self, run_id: str, artifact: str, dst: str | Path) -> Path:
        return Path(self.client.download_artifacts(run_id, artifact, str(dst)))

    def last_step(self, run_id: str) -> int:
        """The step of the latest metrics logged on `run_id` through this tracker (0 if none)."""
        return self._last_step.get(run_id, 0)

    # queries ---------------------------------------------------------------------
    def finished_vae_runs(self) -> list:
        """Finished VAE runs of the project's experiment and of the tracker's own one."""
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
