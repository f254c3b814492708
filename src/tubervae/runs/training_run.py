"""One VAE training run tracked in MLflow: what each seed of an Optuna trial is, and `tubervae train`.

Logs to MLflow what the thesis watches (§2.3.1–2.3.2): loss terms and the KL of every
component over training, latent traversals, per-component distributions and
reconstructions (images of the untrained model at step 0, every `snapshot_every` steps and at the
end, which the UI's image slider walks through; the final ones also as PNG artifacts), the probe latents that
UDR compares, and the weights (layout: `tubervae.runs.vae_artifacts`). Its MLflow params are the few a
user compares runs by (`run_params`); its whole configuration is the file `training_config.json`.

A run may train in segments (`stop_at`), so that a search can judge a setting part-way and
stop it: each segment reopens the seed's one MLflow run, which stays RUNNING between segments
(never FINISHED, so no half-trained run is ever reused as a finished one) and keeps one
continuous metric history; the last segment finishes it as a one-go run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from tubervae import plots
from tubervae.config import GUIDED_COMPONENT, TrainConfig, base_family
from tubervae.data.processed import guide_mask, load_meta, load_split
from tubervae.evaluation.udr import informative_mask
from tubervae.models.encoding import as_input, images_to_tensor
from tubervae.runs import registry, vae_artifacts
from tubervae.runs.progress import StepCallback, StepEvent
from tubervae.runs.tracker import Tracker
from tubervae.training.checkpoints import checkpoint_identity
from tubervae.training.device import resolve_precision, select_device
from tubervae.training.fused import FusedJob, train_fused
from tubervae.training.loop import train_model
from tubervae.training.running import NonFiniteLossError
from tubervae.training.setting import Outcome, Setting

log = logging.getLogger(__name__)
TRAVERSAL_OFFSETS = np.linspace(-2.0, 2.0, 9)  # thesis §2.3.1: z_i − 2 … z_i + 2
# The training curves' names in MLflow. The run page groups charts by the prefix before the last '/', in
# alphabetical order, the unprefixed ones last: `curves/loss`, `curves/rec`, `curves/kl` (and the family's
# terms) open the page, the KL per component (`curves/kl/z0`, ...) follows, the one-point scores (`udr`,
# `n_active`, `test_rec`, `mig`, ...) close it, where the runs list shows them as columns.
CURVES = "curves/"


def curve_names(metrics: dict) -> dict:
    """A logged step's metrics (`loss`, `rec`, `kl`, `kl/z0`, ...) as the run's curves: `curves/loss`, ..."""
    return {f"{CURVES}{key}": value for key, value in metrics.items()}


@dataclasses.dataclass(frozen=True)
class TrainingData:
    train: np.ndarray
    probe: np.ndarray
    test: np.ndarray
    data_version: str
    processed_dir: Path | None = None  # where the arrays came from: each run's dataset input
    # The labelled split's guide rows (preprocess.guide_fraction): the only labels a guided family's head sees.
    guide_images: np.ndarray | None = None
    guide_labels: np.ndarray | None = None  # 1 = bad


def load_training_data(processed_dir: str | Path = "data/processed") -> TrainingData:
    meta = load_meta(processed_dir)
    labelled = load_split("labelled", processed_dir)
    guide = guide_mask(labelled)
    return TrainingData(
        train=load_split("train", processed_dir)["images"],
        probe=load_split("udr_probe", processed_dir)["images"],
        test=load_split("test", processed_dir)["images"],
        data_version=meta["data_version"],
        processed_dir=Path(processed_dir),
        guide_images=labelled["images"][guide],
        guide_labels=(labelled["labels"][guide] == 1).astype(np.int8),
    )


def run_key(setting: Setting, seed: int, cfg: TrainConfig, data: TrainingData) -> str:
    """A name for 'this exact training': same key ⇒ same weights, so a finished run can be reused."""
    identity = checkpoint_identity(setting, seed, cfg, data.data_version, data.train.shape[1])
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def find_finished_run(tracker: Tracker, key: str) -> str | None:
    runs = tracker.finished_runs(f"tags.run_key = '{key}'")
    return runs[0].info.run_id if runs else None


def checkpoint_file(
    checkpoint_dir: str | Path, setting: Setting, seed: int, cfg: TrainConfig, data: TrainingData
) -> Path:
    """Where the seed's checkpoint lives: named by its run key, so any run of the same training resumes it."""
    return Path(checkpoint_dir) / f"{run_key(setting, seed, cfg, data)}.pt"


@torch.no_grad()
def figures(
    model, images: np.ndarray, *, kl_threshold: float, kl: np.ndarray | None = None, guided: int | None = None
) -> dict:
    """Traversal of the first probe image, its per-component distributions, reconstructions.

    `guided`: the component a guided family's head reads, named in the traversal (its row shows what the
    model thinks makes a tuber bad)."""
    device = next(model.parameters()).device
    model.eval()
    x = as_input(images_to_tensor(images[:8], device))
    mu, logvar = model.encode(x)
    codes = plots.traversal_latents(mu[0].cpu().numpy(), TRAVERSAL_OFFSETS)  # (d, m, d)
    d, m = codes.shape[:2]
    decoded = torch.sigmoid(model.decode(torch.from_numpy(codes.reshape(d * m, d)).float().to(device)))
    traversal = decoded.permute(0, 2, 3, 1).reshape(d, m, *decoded.shape[2:], 3).cpu().numpy()
    recon = torch.sigmoid(model.decode(mu)).permute(0, 2, 3, 1).cpu().numpy()
    return {
        "traversal.png": plots.traversal_figure(traversal, kl=kl, values=TRAVERSAL_OFFSETS, guided=guided),
        "distributions.png": plots.distribution_figure(
            mu[0].cpu().numpy(), logvar[0].cpu().numpy(), kl=kl, kl_threshold=kl_threshold
        ),
        "reconstructions.png": plots.reconstruction_figure(images[:8], recon, n=min(8, len(images))),
    }


def run_tracked(
    tracker: Tracker,
    setting: Setting,
    seed: int,
    cfg: TrainConfig,
    data: TrainingData,
    *,
    kl_threshold: float,
    parent_id: str | None = None,
    run_id: str | None = None,
    checkpoint_dir: str | Path = "checkpoints",
    progress: bool = True,
    stop_at: int | None = None,
    on_step: StepCallback | None = None,
) -> dict:
    """Train (or resume) one seed as an MLflow run; returns its run id and final metrics.

    `kl_threshold` (params `udr.kl_threshold`) decides which components count as
    informative for the run's `n_active` metric and its pictures. With `stop_at` below
    `cfg.steps` only that segment trains: the run (`run_id` when it continues one) stays
    RUNNING, and the result holds the step reached and the probe latents there
    (`latents`: mu, kl), which the search scores. `on_step` hears of every logged step (the search's
    progress lines).
    """
    key = run_key(setting, seed, cfg, data)
    checkpoint_path = checkpoint_file(checkpoint_dir, setting, seed, cfg, data)
    final = stop_at is None or stop_at >= cfg.steps
    with _seed_run(tracker, setting, seed, cfg, data, key, run_id=run_id, parent_id=parent_id, final=final) as rid:

        def on_log(metrics: dict, step: int) -> None:
            tracker.log_metrics(rid, curve_names(metrics), step)
            if on_step is not None:
                on_step(StepEvent(parent_id, seed, step, cfg.steps, float(metrics.get("loss", float("nan")))))

        def on_snapshot(model, step: int) -> None:
            _log_snapshot(tracker, rid, model, step, data, kl_threshold, guided_component(setting))

        try:
            outcome: Outcome = train_model(
                setting,
                seed,
                cfg,
                train_images=data.train,
                probe_images=data.probe,
                test_images=data.test,
                guide_images=data.guide_images if setting.guided else None,
                guide_labels=data.guide_labels if setting.guided else None,
                data_version=data.data_version,
                checkpoint_path=checkpoint_path,
                on_log=on_log,
                on_snapshot=on_snapshot if cfg.figures else None,
                progress=progress,
                stop_at=None if final else stop_at,
            )
        except NonFiniteLossError as exc:
            tracker.set_tags(rid, {"failure": "non-finite loss"})
            log.error("%s", exc)
            raise
        if not final:
            return {"run_id": rid, **_log_progress(tracker, rid, outcome, kl_threshold)}
        metrics = _log_outcome(tracker, rid, outcome, setting, seed, cfg, data, kl_threshold)
    # The model is in MLflow and its run FINISHED: the resume point has served its purpose.
    if not cfg.keep_checkpoints:
        checkpoint_path.unlink(missing_ok=True)
    return {"run_id": rid, **metrics}


def run_tracked_fused(
    tracker: Tracker,
    setting: Setting,
    seeds: list[int],
    cfg: TrainConfig,
    data: TrainingData,
    *,
    kl_threshold: float,
    parent_id: str | None = None,
    checkpoint_dir: str | Path = "checkpoints",
    stop_at: int | None = None,
    run_ids: list[str | None] | None = None,
    on_step: StepCallback | None = None,
) -> list[dict]:
    """`run_tracked` for several seeds of one setting trained as one fused model (`tubervae.training.fused`).

    Each seed keeps its own MLflow run, checkpoint, metrics and artifacts, exactly as `run_tracked`
    writes them; a failure marks every seed's run FAILED and their checkpoints stay for the resume.
    `stop_at` and `run_ids` (one per seed, None for a new run) are `run_tracked`'s `stop_at` and `run_id`.
    """
    keys = [run_key(setting, seed, cfg, data) for seed in seeds]
    paths = [checkpoint_file(checkpoint_dir, setting, seed, cfg, data) for seed in seeds]
    final = stop_at is None or stop_at >= cfg.steps
    run_ids = run_ids or [None] * len(seeds)
    with contextlib.ExitStack() as stack:
        rids = [
            stack.enter_context(
                _seed_run(tracker, setting, seed, cfg, data, key, run_id=rid, parent_id=parent_id, final=final)
            )
            for seed, key, rid in zip(seeds, keys, run_ids)
        ]
        try:
            outcomes = train_fused(
                [FusedJob(setting, seed, path) for seed, path in zip(seeds, paths)],
                cfg,
                train_images=data.train,
                probe_images=data.probe,
                test_images=data.test,
                data_version=data.data_version,
                on_log=lambda i, metrics, step: _log_fused(
                    tracker, rids[i], metrics, step, StepEvent(parent_id, seeds[i], step, cfg.steps, 0.0), on_step
                ),
                on_snapshot=(
                    (lambda i, model, step: _log_snapshot(tracker, rids[i], model, step, data, kl_threshold))
                    if cfg.figures
                    else None
                ),
                stop_at=None if final else stop_at,
            )
        except NonFiniteLossError as exc:
            for rid in rids:
                tracker.set_tags(rid, {"failure": "non-finite loss"})
            log.error("%s", exc)
            raise
        if not final:
            return [
                {"run_id": rid, **_log_progress(tracker, rid, out, kl_threshold)} for rid, out in zip(rids, outcomes)
            ]
        results = [
            {"run_id": rid, **_log_outcome(tracker, rid, outcome, setting, seed, cfg, data, kl_threshold)}
            for rid, outcome, seed in zip(rids, outcomes, seeds)
        ]
    if not cfg.keep_checkpoints:
        for path in paths:
            path.unlink(missing_ok=True)
    return results


@contextlib.contextmanager
def _seed_run(tracker, setting, seed, cfg, data, key, *, run_id=None, parent_id=None, final=True):
    """The MLflow run of one seed, with its tags, its few params and its whole training configuration
    (`vae_artifacts.TRAINING_CONFIG`); left RUNNING after a segment that is not `final`."""
    tags = {"family": setting.family, "setting": setting.label, "seed": seed, "run_key": key, "kind": "vae"}
    name = f"s{seed} {setting.family} {setting.label}"  # the seed first: the runs list cuts long names short
    with tracker.run(
        name, run_id=run_id, parent_id=parent_id, tags=tags, keep_open=not final, system_metrics=True
    ) as rid:
        tracker.log_params(rid, run_params(setting, seed, cfg))
        vae_artifacts.log_training_config(tracker, rid, training_config(setting, seed, cfg, data))
        if data.processed_dir is not None:  # from the start, so a run in training, pruned or failed shows its data
            tracker.log_dataset(rid, data.processed_dir)
        yield rid


def run_params(setting: Setting, seed: int, cfg: TrainConfig) -> dict:
    """A seed run's MLflow params: only what a user compares runs by. The UI prints every param of a run
    above each of its image charts, so the rest of the configuration is in `training_config`'s file."""
    return {
        "family": setting.family,
        "beta": setting.beta,
        **({"c_max": setting.c_max} if base_family(setting.family) == "cbeta_vae" else {}),
        **({"guide_weight": setting.guide_weight} if setting.guided else {}),
        "seed": seed,
        "steps": cfg.steps,
    }


def training_config(setting: Setting, seed: int, cfg: TrainConfig, data: TrainingData) -> dict:
    """A seed run's whole configuration (its `vae_artifacts.TRAINING_CONFIG`): the setting, seed and data,
    every `train` setting as given (`TrainConfig(**{f: config[f] ...})` rebuilds `cfg`) and the precision the
    forward pass ran in (`precision_used`)."""
    return {
        "family": setting.family,
        "beta": setting.beta,
        "beta_norm": setting.normalised_beta(cfg.latent_dim, int(data.train.shape[1])),
        "c_max": setting.c_max,
        **guide_params(setting, data),
        "seed": seed,
        "image_size": int(data.train.shape[1]),
        "n_train": len(data.train),
        "data_version": data.data_version,
        **dataclasses.asdict(cfg),
        "precision_used": resolve_precision(cfg.precision, select_device(cfg.device)),
    }


def _log_fused(tracker, rid, metrics, step, event: StepEvent, on_step: StepCallback | None) -> None:
    """One fused seed's logged metrics, and its progress line (`event` with the loss filled in)."""
    tracker.log_metrics(rid, curve_names(metrics), step)
    if on_step is not None:
        on_step(dataclasses.replace(event, loss=float(metrics.get("loss", float("nan")))))


def guided_component(setting: Setting) -> int | None:
    """The component a guided setting's head reads; None for an unguided one."""
    return GUIDED_COMPONENT if setting.guided else None


def guide_params(setting: Setting, data: TrainingData) -> dict:
    """A guided run's parameters: λ, the guided component (what udr leaves out of UDR) and the guide labels' count."""
    if not setting.guided:
        return {}
    n_guide = 0 if data.guide_labels is None else len(data.guide_labels)
    return {"guide_weight": setting.guide_weight, "guided_component": GUIDED_COMPONENT, "n_guide": n_guide}


def _log_snapshot(tracker, rid, model, step, data, kl_threshold, guided=None) -> None:
    """The figures part-way, as images at their step (the UI's image slider; the final ones end it)."""
    for fname, fig in figures(model, data.probe, kl_threshold=kl_threshold, guided=guided).items():
        tracker.log_image_at_step(rid, fig, Path(fname).stem, step)


def _log_progress(tracker, rid, outcome: Outcome, kl_threshold) -> dict:
    """A segment's end: `n_active` and `test_rec` in the run's history at its step; the probe latents for the search."""
    kl = outcome.latents["kl"]
    metrics = {"n_active": int(informative_mask(kl, kl_threshold).sum()), "test_rec": outcome.metrics["test_rec"]}
    tracker.log_metrics(rid, metrics, outcome.step)
    return {**metrics, "step": outcome.step, "latents": {"mu": outcome.latents["mu"], "kl": kl}}


def _log_outcome(tracker, rid, outcome: Outcome, setting, seed, cfg, data, kl_threshold) -> dict:
    """A finished seed's metrics, pictures, weights and probe latents; returns its final metrics."""
    kl = outcome.latents["kl"]
    metrics = {"n_active": int(informative_mask(kl, kl_threshold).sum()), **outcome.metrics}
    # The model's scores go with the model (on its dataset); the last step's KL per component is the
    # curves' last point, not logged again as one-point charts.
    scores = {k: metrics[k] for k in registry.MODEL_SCORES if k in metrics}
    rest = {k: v for k, v in metrics.items() if k not in scores and not k.startswith("final_kl/")}
    tracker.log_metrics(rid, rest, outcome.step)
    tracker.log_metrics(rid, {f"probe_kl/z{j}": v for j, v in enumerate(kl)}, outcome.step)
    guided = guided_component(setting)
    drawn = figures(outcome.model, data.probe, kl=kl, kl_threshold=kl_threshold, guided=guided) if cfg.figures else {}
    for fname, fig in drawn.items():
        tracker.log_image_at_step(rid, fig, Path(fname).stem, outcome.step, artifact_file=fname)
    config = {
        "image_size": int(data.train.shape[1]),
        "latent_dim": cfg.latent_dim,
        "family": setting.family,
        "beta": setting.beta,
        "c_max": setting.c_max,
        "seed": seed,
        "data_version": data.data_version,
        **({"guide_weight": setting.guide_weight, "guided_component": guided} if setting.guided else {}),
    }
    registry.log_vae(
        tracker, rid, outcome.model, config, outcome.latents, processed_dir=data.processed_dir, scores=scores
    )
    return {**metrics, "kl": kl.tolist()}


def train_command(
    cfg: TrainConfig,
    *,
    family: str,
    beta: float,
    c_max: float,
    seed: int,
    kl_threshold: float,
    guide_weight: float = 0.0,
    root: str | Path = ".",
    processed_dir: str | Path = "data/processed",
    run_id: str | None = None,
) -> dict:
    """`tubervae train`: one tracked run outside any study (the search stage trains its seeds the same way)."""
    setting = Setting(family=family, beta=float(beta), c_max=float(c_max), guide_weight=float(guide_weight))
    data = load_training_data(Path(root) / processed_dir)
    tracker = Tracker.open(root, run_id)
    tracker.mark_stale_runs_killed()
    return run_tracked(
        tracker,
        setting,
        seed,
        cfg,
        data,
        kl_threshold=kl_threshold,
        run_id=run_id,
        checkpoint_dir=Path(root) / "checkpoints",
    )
