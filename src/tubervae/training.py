"""The VAE training loop: one setting, one seed, read top to bottom.

Knows nothing of Optuna or MLflow: progress, pictures and metrics leave through the
`on_log` and `on_snapshot` callbacks. What makes a run reproducible and resumable:
the seed fixes the initial weights, the batch order (its own generator) and the
sampling noise (the global torch generator); a checkpoint holds the weights, the
optimiser and both generator states, so a killed run resumes to the same weights.
Checkpoints are plain data (tensors, numbers, strings) read with
`torch.load(weights_only=True)`: loading one never runs code, and one that is damaged,
forged or of other settings is reported and ignored, so training restarts cleanly.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pickle
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tubervae.checks import check_choice, check_real
from tubervae.config import FAMILIES, GUIDED_COMPONENT, TrainConfig, base_family, is_guided
from tubervae.io import atomic_path
from tubervae.models.losses import VAELoss, kl_per_component, make_loss, reconstruction_loss
from tubervae.models.nets import VAE, GuideHead, VAEOutput

log = logging.getLogger(__name__)
_CHECKPOINT_KEYS = {"identity", "step", "model", "optimiser", "batch_rng", "torch_rng", "cuda_rng"}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class Setting:
    """One hyperparameter setting of one family (thesis: the 23 rows of tables 4.11–4.14)."""

    family: str
    beta: float
    c_max: float = 0.0
    guide_weight: float = 0.0  # λ of a guided family's head (0 for the others)

    def __post_init__(self) -> None:
        check_choice("family", self.family, FAMILIES)
        check_real("beta", self.beta, 0.0, strict=True)
        check_real("c_max", self.c_max, 0.0)
        check_real("guide_weight", self.guide_weight, 0.0)
        if self.guide_weight and not self.guided:
            raise ValueError(
                f"guide_weight {self.guide_weight!r} needs a guided family (guided_<family>), got {self.family!r}"
            )

    @property
    def guided(self) -> bool:
        """Whether a logistic head ties component `GUIDED_COMPONENT` to the labels."""
        return is_guided(self.family)

    @property
    def label(self) -> str:
        """The thesis's column 'param': β for β-VAE/β-TCVAE, β_C for Cβ-VAE; a guided family adds _λ."""
        if base_family(self.family) == "cbeta_vae":
            label = f"{self.beta:.4g}_{self.c_max:.3g}"
        else:
            label = f"{self.beta:.3g}"
        return f"{label}_{self.guide_weight:.3g}" if self.guided else label

    def normalised_beta(self, latent_dim: int, image_size: int, channels: int = 3) -> float:
        """β·d/N (Higgins et al. 2017): comparable across image sizes, since the summed reconstruction
        term grows with the N = channels·size² input values while the KL grows with the d components."""
        return normalised_beta(self.beta, latent_dim, image_size, channels)

    def loss(self, cfg: TrainConfig, dataset_size: int) -> VAELoss:
        """The family's objective with this setting's hyperparameters bound (and validated) once."""
        hp = {"beta": self.beta, "rec_kind": cfg.rec_kind}
        if base_family(self.family) == "cbeta_vae":
            hp.update(c_max=self.c_max, anneal_steps=max(1, round(cfg.anneal_fraction * cfg.steps)))
        elif base_family(self.family) == "beta_tcvae":
            hp.update(dataset_size=dataset_size, estimator=cfg.tc_estimator)
        if self.guided:
            hp.update(guide_weight=self.guide_weight)
        return make_loss(self.family, **hp)


def normalised_beta(beta: float, latent_dim: int, image_size: int, channels: int = 3) -> float:
    """β·d/N with N = channels·image_size² input values: the thesis's β = 4 at 64×64 equals β = 1 at 32×32."""
    return float(beta) * latent_dim / (channels * image_size * image_size)


@dataclass
class Outcome:
    """What a finished run hands back."""

    model: VAE
    step: int
    latents: dict  # mu, logvar, kl of the UDR probe images
    metrics: dict  # test_rec, final loss terms


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


def weight_identity(cfg: TrainConfig) -> dict:
    """The settings that decide a model's weights, with `precision` as it runs on this machine."""
    identity = cfg.weight_identity()
    identity["precision"] = resolve_precision(cfg.precision, select_device(cfg.device))
    if torch.get_default_dtype() != torch.float32:  # models built in float64 run in it (autocast_bfloat16)
        identity["precision"] = str(torch.get_default_dtype()).removeprefix("torch.")
    return identity


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


def images_to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N×H×W×3 → uint8 N×3×H×W in channels_last layout (no copy of the pixels on the CPU)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 N×H×W×3, got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)


def as_input(batch: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → values in [0, 1] of the default dtype (float32 unless a test asks for float64)."""
    return batch.contiguous(memory_format=torch.channels_last).to(torch.get_default_dtype()).div_(255.0)


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


@torch.no_grad()
def encode(
    model: VAE, images: np.ndarray, device: torch.device | None = None, batch_size: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """Encoder means and log-variances of uint8 images (on the model's device by default)."""
    device = device or next(model.parameters()).device
    model.eval()
    mus, logvars = [np.zeros((0, model.latent_dim), np.float32)], [np.zeros((0, model.latent_dim), np.float32)]
    for start in range(0, len(images), batch_size):
        x = as_input(images_to_tensor(images[start : start + batch_size], device))
        mu, logvar = model.encode(x)
        mus.append(mu.float().cpu().numpy())
        logvars.append(logvar.float().cpu().numpy())
    return np.concatenate(mus), np.concatenate(logvars)


@torch.no_grad()
def reconstruction_error(
    model: VAE, images: np.ndarray, device: torch.device, rec_kind: str, batch_size: int = 500
) -> float:
    """Mean per-image reconstruction loss (summed over pixels) from the encoder means; NaN for no images."""
    if len(images) == 0:
        return float("nan")
    model.eval()
    total = 0.0
    for start in range(0, len(images), batch_size):
        x = as_input(images_to_tensor(images[start : start + batch_size], device))
        mu, _ = model.encode(x)
        total += float(reconstruction_loss(x, model.decode(mu), kind=rec_kind)) * len(x)
    return total / len(images)


@torch.no_grad()
def heldout_elbo(model: VAE, images: np.ndarray, rec_kind: str, *, seed: int = 0, batch_size: int = 500) -> float:
    """Mean per-image ELBO (nats, higher is better) of uint8 images the model did not train on.

    One posterior sample per image, drawn from a generator seeded with `seed` (so a model's value
    is reproducible): −(reconstruction loss of the decoded sample, summed over pixels, + the KL of
    the posterior to the prior, summed over components). NaN for no images.
    """
    if len(images) == 0:
        return float("nan")
    model.eval()
    device = next(model.parameters()).device
    noise = torch.Generator(device="cpu").manual_seed(seed)
    total = 0.0
    for start in range(0, len(images), batch_size):
        x = as_input(images_to_tensor(images[start : start + batch_size], device))
        mu, logvar = (t.float() for t in model.encode(x))
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=noise).to(device)
        rec = float(reconstruction_loss(x, model.decode(z).float(), kind=rec_kind)) * len(x)
        total -= rec + float(kl_per_component(mu, logvar).sum())
    return total / len(images)


def probe_latents(model: VAE, probe: np.ndarray, device: torch.device | None = None) -> dict:
    """Means, log-variances and the mean KL per component of the probe images (what UDR compares)."""
    mu, logvar = encode(model, probe, device)
    kl = kl_per_component(torch.from_numpy(mu), torch.from_numpy(logvar)).mean(0).numpy()
    return {"mu": mu, "logvar": logvar, "kl": kl}


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

    names, sums, count = None, None, 0
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
        count += 1

        scalars = [k for k in terms if k != "kl_per_component"]
        row = torch.cat(
            [
                torch.stack([torch.as_tensor(terms[k], device=device).detach().float().reshape(()) for k in scalars]),
                terms["kl_per_component"].detach().float(),
            ]
        )
        if names is None:
            names = scalars + [f"kl/z{j}" for j in range(cfg.latent_dim)]
        sums = row if sums is None else sums + row

        closes = boundary(step, end, cfg)
        if closes.window:
            means = (sums / count).cpu().numpy()
            try:
                check_finite_terms(names, means, setting, seed, step - count + 1, step)
            except NonFiniteLossError:
                bar.close()
                raise
            last = dict(zip(names, (float(v) for v in means)))
            if closes.log:
                if on_log:
                    on_log(last, step)
                bar.set_postfix({k: f"{last[k]:.3g}" for k in scalars}, refresh=False)
            sums, count = None, 0
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
