"""The small supervised CNN that classifies tubers from pixels, beside the VAE networks.

It is the yardstick for the latent classifiers: if a threshold on one VAE
component cannot beat a few thousand weights trained on the same labels, the
representation adds nothing. Kept deliberately tiny (three stride-2
convolutions, global average pooling, one linear unit) because it is trained on
20-200 labelled images on the CPU. Training lives in ``tubervae.classify``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["pixel_cnn"]


def pixel_cnn() -> nn.Sequential:
    """A fresh network mapping NCHW images in [-0.5, 0.5] to one bad-logit each.

    Input ``(n, 3, h, w)`` with any ``h, w`` (the pooling is global), output
    ``(n, 1)``. Weights come from the global torch RNG, so seed it (or fork it)
    first for reproducible initial weights; the layers are created in a fixed
    order, so one seed always gives the same network.
    """
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 1),
    )
