"""Convolutional VAE of the thesis (table 4.1) and its cost in FLOPs.

At 64×64 the networks are exactly the thesis's:

* encoder: conv 4×4/2 ×48 → ×48 → ×96 → ×96 (ReLU each) → dense 256 (ReLU)
  → dense d (mean) and dense d (log-variance);
* decoder: dense 256 (ReLU) → dense 4·4·64 (ReLU) → deconv 4×4/2 ×96 → ×48
  → ×48 (ReLU each) → deconv 4×4/2 ×channels (logits).

Every stride-2 layer uses padding 1, so it halves (conv) or doubles (deconv)
the spatial size exactly.

Other image sizes keep the 4×4 innermost map, so the dense layers never change
size. ``image_size`` must be a power of two ≥ 16 and the networks use
``n = log2(image_size / 4)`` stride-2 layers each:

* encoder filters are the last ``n`` of ``[48, 48, 96, 96]`` (extra 48s in
  front when ``n > 4``);
* decoder deconv filters are the first ``n - 1`` of ``[96, 48, 48]`` (extra
  48s at the end when ``n > 4``), then ``channels``.

So 16×16 → encoder [96, 96], decoder [96, 3]; 32×32 → encoder [48, 96, 96],
decoder [96, 48, 3]; 128×128 → encoder [48, 48, 48, 96, 96], decoder
[96, 48, 48, 48, 3].

The modules accept NCHW tensors in either memory format; converting the model
and the batch with ``memory_format=torch.channels_last`` is faster on CPUs
with oneDNN (benchmarks/bench_train.py) and gives the same numbers.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import NamedTuple

import torch
from torch import nn

from tubervae.checks import check_int

__all__ = [
    "Decoder",
    "Encoder",
    "VAE",
    "VAEOutput",
    "flops_per_image",
    "layer_filters",
    "load_vae_files",
    "reparameterize",
]

_KERNEL = 4
_STRIDE = 2
_PADDING = 1
_INNER_SIZE = 4
_DENSE_UNITS = 256
_DECODER_SEED_CHANNELS = 64
_ENCODER_BASE = (48, 48, 96, 96)
_DECODER_BASE = (96, 48, 48)
_EXTRA_FILTERS = 48


class VAEOutput(NamedTuple):
    """One forward pass: decoder logits, posterior parameters and the sample."""

    logits: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


def _check_image_size(image_size: object) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, Integral):
        raise TypeError(
            f"image_size must be an int power of two >= 16, got {image_size!r} ({type(image_size).__name__})"
        )
    size = int(image_size)
    if size < 16 or size & (size - 1):
        raise ValueError(f"image_size must be a power of two >= 16 (16, 32, 64, 128, ...), got {size}")
    return size


def layer_filters(image_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Filters of the encoder convs and decoder deconvs for ``image_size``.

    The decoder tuple omits its last layer, whose width is the image's channel
    count. Kept public so that the FLOP count and reports describe the same
    networks that :class:`VAE` builds.
    """
    size = _check_image_size(image_size)
    n = int(math.log2(size // _INNER_SIZE))
    extra = max(0, n - len(_ENCODER_BASE))
    encoder = (_EXTRA_FILTERS,) * extra + _ENCODER_BASE[len(_ENCODER_BASE) - min(n, 4) :]
    decoder = _DECODER_BASE[: min(n - 1, 3)] + (_EXTRA_FILTERS,) * extra
    return encoder, decoder


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Draw z = μ + ε·σ with ε from ``torch.randn_like``, so the global torch
    seed (set by the training loop) makes runs repeatable."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class Encoder(nn.Module):
    """Maps images ``(B, channels, S, S)`` to posterior means and log-variances ``(B, d)``."""

    def __init__(self, image_size: int = 64, latent_dim: int = 10, channels: int = 3):
        super().__init__()
        self.image_size = _check_image_size(image_size)
        self.latent_dim = check_int("latent_dim", latent_dim, 1)
        self.channels = check_int("channels", channels, 1)
        filters, _ = layer_filters(self.image_size)
        layers: list[nn.Module] = []
        in_ch = self.channels
        for out_ch in filters:
            layers += [nn.Conv2d(in_ch, out_ch, _KERNEL, _STRIDE, _PADDING), nn.ReLU()]
            in_ch = out_ch
        self.convs = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Linear(in_ch * _INNER_SIZE * _INNER_SIZE, _DENSE_UNITS), nn.ReLU())
        self.mean = nn.Linear(_DENSE_UNITS, self.latent_dim)
        self.logvar = nn.Linear(_DENSE_UNITS, self.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expected = (self.channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}"
            )
        # flatten(1) reads the logical (C, H, W) order, whatever the memory format.
        h = self.dense(self.convs(x).flatten(1))
        return self.mean(h), self.logvar(h)


class Decoder(nn.Module):
    """Maps latents ``(B, d)`` to per-pixel Bernoulli logits ``(B, channels, S, S)``."""

    def __init__(self, image_size: int = 64, latent_dim: int = 10, channels: int = 3):
        super().__init__()
        self.image_size = _check_image_size(image_size)
        self.latent_dim = check_int("latent_dim", latent_dim, 1)
        self.channels = check_int("channels", channels, 1)
        _, filters = layer_filters(self.image_size)
        self.dense = nn.Sequential(
            nn.Linear(self.latent_dim, _DENSE_UNITS),
            nn.ReLU(),
            nn.Linear(_DENSE_UNITS, _DECODER_SEED_CHANNELS * _INNER_SIZE * _INNER_SIZE),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        in_ch = _DECODER_SEED_CHANNELS
        for out_ch in filters:
            layers += [
                nn.ConvTranspose2d(in_ch, out_ch, _KERNEL, _STRIDE, _PADDING),
                nn.ReLU(),
            ]
            in_ch = out_ch
        layers.append(nn.ConvTranspose2d(in_ch, self.channels, _KERNEL, _STRIDE, _PADDING))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (batch, {self.latent_dim}), got {tuple(z.shape)}")
        h = self.dense(z).view(-1, _DECODER_SEED_CHANNELS, _INNER_SIZE, _INNER_SIZE)
        return self.deconvs(h)


class VAE(nn.Module):
    """Gaussian-encoder VAE with Bernoulli-logit decoder; losses live in ``losses.py``."""

    def __init__(self, image_size: int = 64, latent_dim: int = 10, channels: int = 3):
        super().__init__()
        self.encoder = Encoder(image_size, latent_dim, channels)
        self.decoder = Decoder(image_size, latent_dim, channels)
        self.image_size = self.encoder.image_size
        self.latent_dim = self.encoder.latent_dim
        self.channels = self.encoder.channels

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``(mu, logvar)``, each ``(B, d)``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel logits ``(B, channels, S, S)``; apply a sigmoid for images."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar)
        return VAEOutput(self.decode(z), mu, logvar, z)


class GuideHead(nn.Module):
    """A guided family's one-component logistic head: logit(bad) = w · μ_c + b on one latent component's
    posterior mean. Starts at w = 1, b = 0 without drawing randomness, so adding it to a training run
    leaves that run's random draws, and with a zero loss weight its weights, unchanged."""

    def __init__(self, component: int = 0):
        super().__init__()
        if isinstance(component, bool) or not isinstance(component, int) or component < 0:
            raise ValueError(f"component must be a latent index >= 0, got {component!r}")
        self.component = component
        self.weight = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, mu: torch.Tensor) -> torch.Tensor:
        if mu.dim() != 2 or mu.shape[1] <= self.component:
            raise ValueError(f"mu must have shape (batch, d) with d > {self.component}, got {tuple(mu.shape)}")
        return self.weight * mu[:, self.component] + self.bias


def load_vae_files(weights, config: dict) -> VAE:
    """Rebuild a VAE from its weights file (a plain state dict) and its config; on the CPU, in eval mode.

    Only tensors are read (`weights_only=True`): a weights file cannot run code.
    """
    model = VAE(image_size=int(config["image_size"]), latent_dim=int(config["latent_dim"]))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def _forward_macs(image_size: int, latent_dim: int, channels: int) -> list[int]:
    """Multiply-adds of each weight layer, in forward order (biases ignored)."""
    enc_filters, dec_filters = layer_filters(image_size)
    k2 = _KERNEL * _KERNEL
    macs: list[int] = []
    size, in_ch = image_size, channels
    for out_ch in enc_filters:
        size //= _STRIDE
        macs.append(size * size * out_ch * in_ch * k2)
        in_ch = out_ch
    flat = in_ch * _INNER_SIZE * _INNER_SIZE
    macs += [flat * _DENSE_UNITS, 2 * _DENSE_UNITS * latent_dim]
    seed = _DECODER_SEED_CHANNELS * _INNER_SIZE * _INNER_SIZE
    macs += [latent_dim * _DENSE_UNITS, _DENSE_UNITS * seed]
    size, in_ch = _INNER_SIZE, _DECODER_SEED_CHANNELS
    for out_ch in (*dec_filters, channels):
        # A transposed conv scatters every input pixel into k×k outputs per channel pair.
        macs.append(size * size * in_ch * out_ch * k2)
        size *= _STRIDE
        in_ch = out_ch
    return macs


def flops_per_image(image_size: int, latent_dim: int, channels: int = 3) -> int:
    """FLOPs of one training step (forward + backward) per image.

    Convention: one multiply-add = 2 FLOPs; only conv, deconv and dense
    weights count (biases, activations, sampling and the loss are noise).
    The forward pass costs F; the backward pass costs 2F (a gradient for the
    weights and one for the layer's input) minus the input gradient of the
    first conv, which nobody needs. So the total is 3F − (first layer's
    forward FLOPs), about 221 MFLOP at 64×64 with d = 10; the plain ``3F``
    rule would give 225.8 MFLOP. Used to turn measured images/s into
    GFLOP/s and to size runs.
    """
    size = _check_image_size(image_size)
    d = check_int("latent_dim", latent_dim, 1)
    c = check_int("channels", channels, 1)
    macs = _forward_macs(size, d, c)
    forward = 2 * sum(macs)
    return 3 * forward - 2 * macs[0]
