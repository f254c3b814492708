"""A trained VAE read on photos: uint8 images in, encoder means, reconstructions and ELBOs out.

What every caller that holds a model does with it (the training loops after their last step, the
search's objective, register, classify, evaluate and the served model), apart from the training
loop itself. Images are uint8 N×H×W×3 arrays; the networks see N×3×H×W values in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from tubervae.models.losses import kl_per_component, reconstruction_loss
from tubervae.models.nets import VAE

__all__ = [
    "as_input",
    "encode",
    "heldout_elbo",
    "images_to_tensor",
    "probe_latents",
    "reconstruction_error",
]


def images_to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N×H×W×3 → uint8 N×3×H×W in channels_last layout (no copy of the pixels on the CPU)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 N×H×W×3, got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)


def as_input(batch: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → values in [0, 1] of the default dtype (float32 unless a test asks for float64)."""
    return batch.contiguous(memory_format=torch.channels_last).to(torch.get_default_dtype()).div_(255.0)


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
