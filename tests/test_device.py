"""The device choice (tubervae.training.device): the precision `auto` resolves to, and the fused Adam."""

from __future__ import annotations

import pytest
import torch

import tubervae.training.device as device_module
from conftest import tiny_cfg
from tubervae.config import TrainConfig
from tubervae.models.nets import VAE
from tubervae.training.checkpoints import weight_identity

pytestmark = pytest.mark.usefixtures("isolated_training")  # each test tracks into its own folder


def test_precision_auto_is_bfloat16_only_where_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "native_bfloat16_cpu", lambda: False)
    assert device_module.resolve_precision("auto", cpu) == "float32"
    assert device_module.resolve_precision("bfloat16", cpu) == "bfloat16"  # asked for: emulated, but obeyed
    # a model trained under 'auto' here is the float32 model: the same checkpoint and run identity
    auto, explicit = tiny_cfg(precision="auto"), tiny_cfg(precision="float32")
    assert weight_identity(auto) == weight_identity(explicit)
    monkeypatch.setattr(device_module, "native_bfloat16_cpu", lambda: True)
    assert device_module.resolve_precision("auto", cpu) == "bfloat16"
    assert device_module.resolve_precision("float32", cpu) == "float32"
    assert weight_identity(auto)["precision"] == "bfloat16"


def test_the_fused_adam_updates_as_pytorchs_per_tensor_adam_does():
    """The training loop's one-kernel Adam is the thesis's Adam: 10 steps of a VAE in float64 land
    within rounding of PyTorch's per-tensor loop, and it is the fused kernel that runs on a CPU."""
    cfg = TrainConfig(lr=1e-3, adam_beta1=0.8, adam_beta2=0.99, adam_eps=1e-6)
    cpu = torch.device("cpu")
    nets = []
    for fused in (True, False):
        torch.manual_seed(0)
        net = VAE(image_size=16, latent_dim=4).double()
        start = [p.detach().clone() for p in net.parameters()]
        if fused:
            adam = device_module.new_optimiser(net.parameters(), cfg, cpu)
            assert adam.param_groups[0]["fused"]
        else:
            adam = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.8, 0.99), eps=1e-6)
        gen = torch.Generator().manual_seed(1)
        for _ in range(10):
            x = torch.rand(8, 3, 16, 16, generator=gen, dtype=torch.float64)
            out = net(x)
            loss = ((torch.sigmoid(out.logits) - x) ** 2).sum() + out.mu.square().sum()
            adam.zero_grad()
            loss.backward()
            adam.step()
        nets.append(net)
    moved = max((p - q).abs().max().item() for p, q in zip(nets[0].parameters(), start))
    gap = max((p - q).abs().max().item() for p, q in zip(nets[0].parameters(), nets[1].parameters()))
    assert moved > 1e-3 and gap < 1e-12
