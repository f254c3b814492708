import math

import pytest
import torch
from torch import nn

from tubervae.models.nets import VAE, VAEOutput, flops_per_image, layer_filters


def _layers(module: nn.Module) -> list[tuple]:
    """(kind, in, out, kernel, stride, padding) of every weight layer, in order."""
    rows = []
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            rows.append(("deconv", m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding))
        elif isinstance(m, nn.Conv2d):
            rows.append(("conv", m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding))
        elif isinstance(m, nn.Linear):
            rows.append(("dense", m.in_features, m.out_features))
    return rows


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_output_shapes(size):
    torch.manual_seed(0)
    model = VAE(image_size=size, latent_dim=5)
    out = model(torch.rand(2, 3, size, size))
    assert isinstance(out, VAEOutput)
    assert out.logits.shape == (2, 3, size, size)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (2, 5)


def test_single_channel_images():
    model = VAE(image_size=16, latent_dim=2, channels=1)
    assert model(torch.rand(3, 1, 16, 16)).logits.shape == (3, 1, 16, 16)


def test_layers_at_64_match_thesis_table():
    model = VAE(image_size=64, latent_dim=10)
    k, s, p = (4, 4), (2, 2), (1, 1)
    assert _layers(model.encoder) == [
        ("conv", 3, 48, k, s, p),
        ("conv", 48, 48, k, s, p),
        ("conv", 48, 96, k, s, p),
        ("conv", 96, 96, k, s, p),
        ("dense", 4 * 4 * 96, 256),
        ("dense", 256, 10),  # mean
        ("dense", 256, 10),  # log-variance
    ]
    assert _layers(model.decoder) == [
        ("dense", 10, 256),
        ("dense", 256, 4 * 4 * 64),
        ("deconv", 64, 96, k, s, p),
        ("deconv", 96, 48, k, s, p),
        ("deconv", 48, 48, k, s, p),
        ("deconv", 48, 3, k, s, p),
    ]
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 5 + 5  # 4 convs + dense 256; 2 dense + 3 hidden deconvs


@pytest.mark.parametrize(
    "size, encoder, decoder",
    [
        (16, (96, 96), (96,)),
        (32, (48, 96, 96), (96, 48)),
        (64, (48, 48, 96, 96), (96, 48, 48)),
        (128, (48, 48, 48, 96, 96), (96, 48, 48, 48)),
        (256, (48, 48, 48, 48, 96, 96), (96, 48, 48, 48, 48)),
    ],
)
def test_filters_adapt_to_image_size(size, encoder, decoder):
    assert layer_filters(size) == (encoder, decoder)


def test_channels_last_matches_contiguous():
    torch.manual_seed(1)
    model = VAE(image_size=32, latent_dim=4).eval()
    x = torch.rand(3, 3, 32, 32)
    z = torch.randn(3, 4)
    mu, logvar = model.encode(x)
    logits = model.decode(z)
    mu_cl, logvar_cl = model.encode(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(mu_cl, mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logvar_cl, logvar, rtol=1e-5, atol=1e-5)
    model_cl = model.to(memory_format=torch.channels_last)
    mu_cl2, _ = model_cl.encode(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(mu_cl2, mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model_cl.decode(z), logits, rtol=1e-5, atol=1e-5)


def test_sample_is_mean_plus_scaled_noise_from_global_seed():
    model = VAE(image_size=16, latent_dim=3)
    x = torch.rand(4, 3, 16, 16)
    torch.manual_seed(7)
    out = model(x)
    torch.manual_seed(7)
    eps = torch.randn(4, 3)
    torch.testing.assert_close(out.z, out.mu + eps * torch.exp(out.logvar / 2))
    torch.testing.assert_close(out.logits, model.decode(out.z))


@pytest.mark.parametrize("bad", [0, 8, 24, 48, 100])
def test_bad_image_size_is_rejected_with_clear_message(bad):
    with pytest.raises(ValueError, match=rf"image_size must be a power of two >= 16.*got {bad}"):
        VAE(image_size=bad)
    with pytest.raises(ValueError, match="image_size"):
        flops_per_image(bad, 10)


def test_bad_types_and_latent_dim_are_rejected():
    with pytest.raises(TypeError, match="image_size"):
        VAE(image_size=64.0)
    with pytest.raises(ValueError, match=r"latent_dim must be an int >= 1, got 0"):
        VAE(latent_dim=0)
    with pytest.raises(ValueError, match="latent_dim"):
        flops_per_image(64, -1)


def test_wrong_input_shapes_are_rejected():
    model = VAE(image_size=16, latent_dim=3)
    expected = r"x must have shape \(batch, 3, 16, 16\), got \(2, 3, 32, 32\)"
    with pytest.raises(ValueError, match=expected):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"z must have shape \(batch, 3\), got \(2, 4\)"):
        model.decode(torch.rand(2, 4))


def _counted_forward_macs(model: VAE) -> int:
    """Multiply-adds of one image, read off the built modules with hooks."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):
            kh, kw = module.kernel_size
            total += inputs[0][0].numel() * module.out_channels * kh * kw
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output[0].numel() * module.in_channels * kh * kw
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.rand(1, model.channels, model.image_size, model.image_size))
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("size, d", [(32, 10), (64, 10), (64, 3)])
def test_flops_follow_the_built_network(size, d):
    model = VAE(image_size=size, latent_dim=d)
    first_conv_macs = (size // 2) ** 2 * 48 * 3 * 16
    expected = 3 * 2 * _counted_forward_macs(model) - 2 * first_conv_macs
    assert flops_per_image(size, d) == expected


def test_flops_at_64_near_thesis_figure():
    # Hand count of the table's multiply-adds: (output pixels or input pixels
    # for deconvs) x in x out x 4x4 for the conv layers, in x out for dense.
    encoder = sum(
        [
            32 * 32 * 48 * 3 * 16,
            16 * 16 * 48 * 48 * 16,
            8 * 8 * 96 * 48 * 16,
            4 * 4 * 96 * 96 * 16,
            1536 * 256,
            2 * 256 * 10,
        ]
    )
    decoder = sum(
        [
            10 * 256,
            256 * 1024,
            4 * 4 * 64 * 96 * 16,
            8 * 8 * 96 * 48 * 16,
            16 * 16 * 48 * 48 * 16,
            32 * 32 * 48 * 3 * 16,
        ]
    )
    forward = 2 * (encoder + decoder)
    flops = flops_per_image(64, 10)
    assert flops == 3 * forward - 2 * (32 * 32 * 48 * 3 * 16)
    assert math.isclose(flops, 221e6, rel_tol=0.01)
