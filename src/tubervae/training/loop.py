"""The VAE training loop: one setting, one seed, read top to bottom.

Knows nothing of Optuna or MLflow: progress, pictures and metrics leave through the
`on_log` and `on_snapshot` callbacks. What makes a run reproducible and resumable:
the seed fixes the initial weights, the batch order (its own generator) and the
sampling noise (the global torch generator); a checkpoint (`checkpoints`) holds the weights,
the optimiser and both generator states, so a killed run resumes to the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tubervae.config import GUIDED_COMPONENT, TrainConfig
from tubervae.models.encoding import as_input, images_to_tensor, probe_latents, reconstruction_error
from tubervae.models.nets import VAE, GuideHead, VAEOutput
from tubervae.training.checkpoints import checkpoint_identity, load_checkpoint, save_checkpoint
from tubervae.training.device import autocast_bfloat16, compiled, new_optimiser, select_device
from tubervae.training.running import (
    NonFiniteLossError,
    RunningMeans,
    boundary,
    check_finite_terms,
    check_finite_weights,
    segment_end,
    snapshot_first,
)
from tubervae.training.setting import Outcome, Setting

__all__ = ["GuideBatches", "train_model"]

log = logging.getLogger(__name__)


@dataclass
class GuideBatches:
    """A guided run's head and the guide-labelled photos it draws a batch of at every step, on its own generator."""

    head: GuideHead
    images: torch.Tensor  # uint8 N×3×S×S on the device
    bad: torch.Tensor  # float 0/1, 1 = bad
    rng: torch.Generator

    @classmethod
    def of(
        cls, setting: Setting, seed: int, images: np.ndarray | None, labels: np.ndarray | None, device: torch.device
    ) -> GuideBatches | None:
        """The guide draws of a guided `setting` (None for an unguided one, whatever photos are passed)."""
        if not setting.guided:
            return None
        if images is None or labels is None or len(images) == 0:
            raise ValueError(
                f"{setting.family} needs guide_images and guide_labels: the labelled split's guide photos "
                "(preprocess.guide_fraction > 0), got none"
            )
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or not np.isin(labels, (0, 1)).all():
            raise ValueError(
                f"guide_labels must be one 0 (good) or 1 (bad) per guide image ({len(images)}), got {labels!r}"
            )
        if labels.min() == labels.max():
            log.warning(
                "%s: every guide photo is %s, so the head has nothing to tell apart and component %d follows no defect",
                setting.family,
                "bad" if labels[0] else "good",
                GUIDED_COMPONENT,
            )
        return cls(
            head=GuideHead(GUIDED_COMPONENT).to(device),
            images=images_to_tensor(images, device),
            bad=torch.as_tensor(labels, dtype=torch.float32, device=device),
            rng=torch.Generator().manual_seed(seed),
        )

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` guide photos (with replacement) as model input, and their labels."""
        idx = torch.randint(len(self.images), (n,), generator=self.rng).to(self.images.device)
        return as_input(self.images[idx]), self.bad[idx]

    def state(self) -> dict:
        return {"head": self.head.state_dict(), "rng": self.rng.get_state()}

    def restore(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.rng.set_state(state["rng"])


def train_model(
    setting: Setting,
    seed: int,
    cfg: TrainConfig,
    *,
    train_images: np.ndarray,
    probe_images: np.ndarray,
    test_images: np.ndarray,
    guide_images: np.ndarray | None = None,
    guide_labels: np.ndarray | None = None,
    data_version: str = "",
    checkpoint_path: str | Path | None = None,
    on_log: Callable[[dict, int], None] | None = None,
    on_snapshot: Callable[[VAE, int], None] | None = None,
    progress: bool = True,
    stop_at: int | None = None,
    make_optimiser: Callable[..., torch.optim.Optimizer] = new_optimiser,
) -> Outcome:
    """Train one VAE; resume from `checkpoint_path` when it holds a matching checkpoint.

    A guided family also needs `guide_images` and `guide_labels` (1 = bad): the photos its head may
    see, the labelled split's guide rows and nothing else. Each step then draws a guide batch beside
    the usual one, from a generator of its own, so that the unguided draws stay the family's.

    `stop_at` trains only up to that step (a segment, so a search can judge the run early): the
    checkpoint is written there, the next call resumes exactly there, and training in segments gives
    bitwise the weights of one go. The outcome is the model at the step reached, which is the
    checkpoint's step when a resumed run already stands past `stop_at`.
    """
    end = segment_end(cfg, stop_at, resumable=bool(checkpoint_path))
    device = select_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    image_size = train_images.shape[1]
    if train_images.shape[1] != train_images.shape[2]:
        raise ValueError(f"training images must be square, got {train_images.shape[1:3]}")

    def fresh() -> tuple[VAE, torch.optim.Optimizer, torch.Generator, GuideBatches | None]:
        """The run's state at step 0: everything the seed decides (a guided family's head and guide draws too)."""
        torch.manual_seed(seed)
        net = VAE(image_size=image_size, latent_dim=cfg.latent_dim).to(device, memory_format=torch.channels_last)
        guides = GuideBatches.of(setting, seed, guide_images, guide_labels, device)
        trained = list(net.parameters()) + (list(guides.head.parameters()) if guides else [])
        return net, make_optimiser(trained, cfg, device), torch.Generator().manual_seed(seed), guides

    model, optimiser, batches, guide = fresh()
    data = images_to_tensor(train_images, device)
    loss_fn = setting.loss(cfg, dataset_size=len(train_images))

    identity = checkpoint_identity(setting, seed, cfg, data_version, image_size)
    path = Path(checkpoint_path) if checkpoint_path else None
    step = 0
    state = load_checkpoint(path, identity, model, cfg.steps) if path else None
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            batches.set_state(state["batch_rng"])
            torch.set_rng_state(state["torch_rng"])
            if device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"])
            if guide is not None:
                guide.restore(state["guide"])
            step = state["step"]
            log.info("resuming %s seed %d from step %d", setting.label, seed, step)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            # Sound on the outside, unusable inside (e.g. a forged optimiser state): start over, once;
            # the first checkpoint of the new run replaces it.
            log.warning("ignoring checkpoint %s: it cannot be restored (%s)", path, str(exc).splitlines()[0][:200])
            model, optimiser, batches, guide = fresh()

    def checkpoint() -> None:
        if path is None:
            return
        try:
            check_finite_weights(model, setting, seed, step)
        except NonFiniteLossError:
            bar.close()
            raise
        save_checkpoint(
            path,
            {
                "identity": identity,
                "step": step,
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "batch_rng": batches.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                "guide": guide.state() if guide is not None else None,
            },
        )

    running = RunningMeans()
    last = {}
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        desc=f"{setting.family} {setting.label} s{seed}",
        unit="step",
        disable=not progress,
        leave=False,
    )
    low_precision = autocast_bfloat16(cfg.precision, device, model)
    if on_snapshot and snapshot_first(step, cfg):  # draws without drawing randomness: the weights stay the same
        on_snapshot(model, 0)
    model.train()
    forward = compiled(model) if cfg.compile else model
    while step < end:
        idx = torch.randint(len(data), (cfg.batch_size,), generator=batches).to(device)
        x = as_input(data[idx])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low_precision):
            out = forward(x)
        if low_precision:  # the losses (sums over thousands of pixels) stay in float32
            out = VAEOutput(*(t.float() for t in out))
        guided = {}
        if guide is not None:  # a guide-labelled batch: the head reads its component's posterior mean
            x_guide, bad = guide.draw(cfg.batch_size)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low_precision):
                mu_guide, _ = model.encode(x_guide)
            guided = {"guide_logits": guide.head(mu_guide.float()), "guide_labels": bad}
        terms = loss_fn(x, out, step, **guided)
        optimiser.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimiser.step()
        step += 1
        running.add(terms)

        closes = boundary(step, end, cfg)
        if closes.window:
            means, first = running.close(step)
            try:
                check_finite_terms(running.names, means, setting, seed, first, step)
            except NonFiniteLossError:
                bar.close()
                raise
            last = dict(zip(running.names, (float(v) for v in means)))
            if closes.log:
                if on_log:
                    on_log(last, step)
                bar.set_postfix({k: f"{last[k]:.3g}" for k in terms if k != "kl_per_component"}, refresh=False)
            if closes.checkpoint:
                checkpoint()
        if on_snapshot and closes.snapshot:
            on_snapshot(model, step)
            model.train()
        bar.update(1)
    bar.close()

    latents = probe_latents(model, probe_images, device)
    metrics = {
        "test_rec": reconstruction_error(model, test_images, device, cfg.rec_kind),
        **{f"final_{k}": v for k, v in last.items()},
    }
    if guide is not None:  # logit(bad) = weight · z0 + bias: its sign says which way along z0 a tuber turns bad
        metrics.update(
            guide_head_weight=float(guide.head.weight.detach()), guide_head_bias=float(guide.head.bias.detach())
        )
    return Outcome(model=model, step=step, latents=latents, metrics=metrics)
