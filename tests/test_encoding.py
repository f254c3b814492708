"""A trained VAE read on photos (tubervae.models.encoding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tubervae.models.encoding import as_input, encode, heldout_elbo, images_to_tensor, probe_latents
from tubervae.models.losses import kl_per_component
from tubervae.models.nets import VAE

SIZE, LATENT = 16, 4


def photos(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_images_become_nchw_values_in_0_1_and_other_arrays_are_refused():
    images = photos(2)
    x = as_input(images_to_tensor(images, torch.device("cpu")))
    assert x.shape == (2, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert torch.equal(x[1, 2], torch.from_numpy(images[1, :, :, 2]).float() / 255.0)
    with pytest.raises(ValueError, match="uint8 N×H×W×3"):
        images_to_tensor(images.astype(np.float32), torch.device("cpu"))


def test_encode_in_batches_gives_the_encoders_means_and_probe_latents_their_mean_kl():
    torch.manual_seed(0)
    model = VAE(image_size=SIZE, latent_dim=LATENT)
    images = photos(7)
    mu, logvar = encode(model, images, batch_size=3)
    with torch.no_grad():
        want_mu, want_logvar = model.encode(as_input(images_to_tensor(images, torch.device("cpu"))))
    np.testing.assert_allclose(mu, want_mu.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logvar, want_logvar.numpy(), rtol=1e-5, atol=1e-6)
    latents = probe_latents(model, images)
    np.testing.assert_allclose(latents["kl"], kl_per_component(want_mu, want_logvar).mean(0).numpy(), rtol=1e-5)
    assert encode(model, images[:0])[0].shape == (0, LATENT)


def test_heldout_elbo_is_minus_reconstruction_and_kl_of_one_seeded_posterior_sample():
    """By hand: the decoded sample's Bernoulli loss plus the closed-form KL, per image, negated."""
    torch.manual_seed(0)
    model = VAE(image_size=SIZE, latent_dim=LATENT)
    images = photos(5)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=torch.Generator().manual_seed(3))
        rec = torch.nn.functional.binary_cross_entropy_with_logits(model.decode(z), x, reduction="sum") / 5
        kl = 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum() / 5
    value = heldout_elbo(model, images, "bernoulli", seed=3)
    assert value == pytest.approx(-float(rec + kl), rel=1e-5)
    assert heldout_elbo(model, images, "bernoulli", seed=3) == value  # the same sample again
    assert heldout_elbo(model, images, "bernoulli", seed=4) != value
    assert np.isnan(heldout_elbo(model, images[:0], "bernoulli"))
