"""Many VAEs trained as one fused model: what feeds a GPU with a whole batch of seeds and trials.

A thesis-sized VAE is far too small to fill a GPU, so `train_fused` stacks the parameters of G
networks (``torch.func.stack_module_state``) and runs them with ``torch.func.vmap``: every
convolution becomes one grouped convolution and every dense layer one batched matmul, so a step of
G models costs a few dozen kernel launches instead of G times as many.

Each fused model is its separately trained twin (`loop.train_model`), step for step:
the same initial weights (the seed, drawn the same way), the same batches (its own generator), the
same sampling noise (a generator in the state the twin's global generator would be in), the same
loss (its own setting; models that share a setting share one vmapped loss call) and the same Adam
update (elementwise, hence unchanged by stacking). In float64 on the CPU the weights agree to
rounding; in float32 or bfloat16 on a GPU, to the summation order of the kernels.

Per-model checkpoints are the twin's, in the twin's format, so a fused run resumes from separate
checkpoints and the other way round. Models whose checkpoints stand at different steps are trained
in groups, one group per starting step.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from tubervae.config import TrainConfig
from tubervae.models.encoding import as_input, images_to_tensor, probe_latents, reconstruction_error
from tubervae.models.nets import VAE, VAEOutput
from tubervae.training.checkpoints import checkpoint_identity, load_checkpoint, save_checkpoint
from tubervae.training.device import autocast_bfloat16, new_optimiser, select_device
from tubervae.training.running import (
    RunningMeans,
    boundary,
    check_finite_terms,
    check_finite_weights,
    segment_end,
    snapshot_first,
)
from tubervae.training.setting import Outcome, Setting

log = logging.getLogger(__name__)

__all__ = ["FusedJob", "train_fused"]


@dataclass(frozen=True)
class FusedJob:
    """One model of a fused batch: its setting, its seed and where its checkpoint lives."""

    setting: Setting
    seed: int
    checkpoint_path: str | Path | None = None


@dataclass(eq=False)  # members are told apart by identity
class _Member:
    """A model's own state while it trains fused: what the twin keeps in its process."""

    job: FusedJob
    net: VAE  # holds the weights between fused segments and at the end
    adam_state: dict  # the twin's optimiser state_dict
    batches: torch.Generator  # the batch order
    noise: torch.Generator  # the sampling noise
    cpu_rng: torch.Tensor  # the twin's global CPU generator state (for its checkpoint)
    identity: dict
    step: int
    last: dict = field(default_factory=dict)  # the loss terms at the last logged step


# `(params, cfg, device) -> optimiser`, as `device.new_optimiser`.
OptimiserFactory = Callable[[object, TrainConfig, torch.device], torch.optim.Optimizer]


def _fresh_member(
    job: FusedJob,
    cfg: TrainConfig,
    image_size: int,
    device: torch.device,
    identity: dict,
    make_optimiser: OptimiserFactory,
) -> _Member:
    """The twin's state at step 0, drawn exactly as `train_model` draws it."""
    torch.manual_seed(job.seed)
    net = VAE(image_size=image_size, latent_dim=cfg.latent_dim).to(device, memory_format=torch.channels_last)
    adam = make_optimiser(net.parameters(), cfg, device)
    cpu_rng = torch.get_rng_state()
    noise = torch.Generator(device=device)
    if device.type == "cpu":
        noise.set_state(cpu_rng)  # the twin's randn_like draws from the global CPU generator after the init
    else:
        noise.manual_seed(job.seed)  # ... or from the device's generator, which the (CPU) init leaves untouched
    return _Member(
        job=job,
        net=net,
        adam_state=adam.state_dict(),
        batches=torch.Generator().manual_seed(job.seed),
        noise=noise,
        cpu_rng=cpu_rng,
        identity=identity,
        step=0,
    )


def _restore(member: _Member, cfg: TrainConfig, device: torch.device, make_optimiser: OptimiserFactory) -> None:
    """Continue from the member's checkpoint when it is sound and its own (as `train_model` would)."""
    path = member.job.checkpoint_path
    if not path:
        return
    state = load_checkpoint(Path(path), member.identity, member.net, cfg.steps)
    if state is None:
        return
    net = copy.deepcopy(member.net)
    adam = make_optimiser(net.parameters(), cfg, device)
    try:
        net.load_state_dict(state["model"])
        adam.load_state_dict(state["optimiser"])
        batches = torch.Generator()
        batches.set_state(state["batch_rng"])
        noise = torch.Generator(device=device)
        noise.set_state(state["torch_rng"] if device.type == "cpu" else state["cuda_rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        log.warning("ignoring checkpoint %s: it cannot be restored (%s)", path, str(exc).splitlines()[0][:200])
        return
    member.net, member.adam_state, member.batches, member.noise = net, adam.state_dict(), batches, noise
    member.cpu_rng, member.step = state["torch_rng"], state["step"]
    log.info("resuming %s seed %d from step %d", member.job.setting.label, member.job.seed, member.step)


def _checkpoint(member: _Member, device: torch.device) -> None:
    if not member.job.checkpoint_path:
        return
    check_finite_weights(member.net, member.job.setting, member.job.seed, member.step)
    save_checkpoint(
        Path(member.job.checkpoint_path),
        {
            "identity": member.identity,
            "step": member.step,
            "model": member.net.state_dict(),
            "optimiser": member.adam_state,
            "batch_rng": member.batches.get_state(),
            "torch_rng": member.noise.get_state() if device.type == "cpu" else member.cpu_rng,
            "cuda_rng": member.noise.get_state() if device.type == "cuda" else None,
        },
    )


def _vmapped(net: VAE):
    """Encoder and decoder over stacked parameters by `vmap`: convolutions become grouped convolutions."""
    base = copy.deepcopy(net).to("meta")
    encode = vmap(lambda p, x: functional_call(base.encoder, p, (x,)))
    decode = vmap(lambda p, z: functional_call(base.decoder, p, (z,)))
    return encode, decode


class _Stack:
    """The members' weights and Adam moments as stacked leaf tensors, and their way back."""

    def __init__(self, members: Sequence[_Member], cfg: TrainConfig, make_optimiser: OptimiserFactory):
        nets = [m.net for m in members]
        self.names = [name for name, _ in nets[0].named_parameters()]
        params, _ = stack_module_state(nets)
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.adam = make_optimiser([self.params[k] for k in self.names], cfg, self.params[self.names[0]].device)
        states = [m.adam_state["state"] for m in members]
        if states[0]:  # resumed: stack each parameter's moments and step count
            stacked = {}
            for i in range(len(self.names)):
                per = [s[i] for s in states]
                stacked[i] = {
                    "step": per[0]["step"].clone(),
                    "exp_avg": torch.stack([p["exp_avg"] for p in per]),
                    "exp_avg_sq": torch.stack([p["exp_avg_sq"] for p in per]),
                }
            group = self.adam.state_dict()["param_groups"]
            self.adam.load_state_dict({"state": stacked, "param_groups": group})

    def write_back(self, members: Sequence[_Member]) -> None:
        """Copy each member's slice into its own network and optimiser state (the twin's format)."""
        state = self.adam.state_dict()
        for g, m in enumerate(members):
            with torch.no_grad():
                for name, p in m.net.named_parameters():
                    p.copy_(self.params[name][g])
            m.adam_state = {
                "state": {
                    i: {
                        "step": s["step"].clone(),
                        "exp_avg": s["exp_avg"][g].clone(),
                        "exp_avg_sq": s["exp_avg_sq"][g].clone(),
                    }
                    for i, s in state["state"].items()
                },
                "param_groups": copy.deepcopy(m.adam_state["param_groups"]),
            }


def _loss_groups(members: Sequence[_Member], cfg: TrainConfig, dataset_size: int) -> list[tuple[list[int], object]]:
    """Members that share a setting share one loss object, so its call is vmapped over them."""
    groups: dict[Setting, list[int]] = {}
    for g, m in enumerate(members):
        groups.setdefault(m.job.setting, []).append(g)
    return [(idx, setting.loss(cfg, dataset_size)) for setting, idx in groups.items()]


def _group_terms(loss_fn, x: torch.Tensor, out: VAEOutput, sel: torch.Tensor | None, step: int) -> dict:
    """One setting's loss terms for its members (rows `sel`, or all), each term with a leading member axis."""
    if sel is not None:
        x, out = x.index_select(0, sel), VAEOutput(*(t.index_select(0, sel) for t in out))
    return vmap(lambda xx, o: loss_fn(xx, VAEOutput(*o), step))(x, tuple(out))


def _segment(
    members: list[_Member],
    cfg: TrainConfig,
    data: torch.Tensor,
    device: torch.device,
    on_log: Callable[[int, dict, int], None] | None,
    on_snapshot: Callable[[int, VAE, int], None] | None,
    progress: bool,
    end: int,
    make_optimiser: OptimiserFactory,
    layout: torch.memory_format,
) -> None:
    """Train members that stand at the same step together up to step `end` (checkpointed there)."""
    stack = _Stack(members, cfg, make_optimiser)
    enc = {k.removeprefix("encoder."): v for k, v in stack.params.items() if k.startswith("encoder.")}
    dec = {k.removeprefix("decoder."): v for k, v in stack.params.items() if k.startswith("decoder.")}
    encode, decode = _vmapped(members[0].net)
    groups = [
        (index, None if len(index) == len(members) else torch.tensor(index, device=device), loss_fn)
        for index, loss_fn in _loss_groups(members, cfg, len(data))
    ]
    low_precision = autocast_bfloat16(cfg.precision, device, members[0].net)
    n, b, d = len(members), cfg.batch_size, cfg.latent_dim
    step = members[0].step
    if on_snapshot and snapshot_first(step, cfg):
        stack.write_back(members)
        for g, m in enumerate(members):
            on_snapshot(g, m.net, 0)
    running = [RunningMeans() for _ in groups]
    bar = tqdm(total=cfg.steps, initial=step, desc=f"{n} fused models", unit="step", disable=not progress, leave=False)
    while step < end:
        idx = torch.cat([torch.randint(len(data), (b,), generator=m.batches) for m in members])
        if device.type == "cuda":  # pinned: the copy does not wait for the GPU's queue to drain
            idx = idx.pin_memory().to(device, non_blocking=True)
        else:
            idx = idx.to(device)
        x = as_input(data[idx]).contiguous(memory_format=layout)
        x = x.view(n, b, *data.shape[1:])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low_precision):
            mu, logvar = encode(enc, x)
        mu, logvar = mu.float() if low_precision else mu, logvar.float() if low_precision else logvar
        eps = torch.stack([torch.randn((b, d), generator=m.noise, device=device, dtype=mu.dtype) for m in members])
        z = mu + eps * torch.exp(0.5 * logvar)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low_precision):
            logits = decode(dec, z)
        logits = logits.float() if low_precision else logits
        out = VAEOutput(logits, mu, logvar, z)
        total = 0.0
        for k, (_, sel, loss_fn) in enumerate(groups):
            terms = _group_terms(loss_fn, x, out, sel, step)
            total = total + terms["loss"].sum()
            running[k].add(terms)
        stack.adam.zero_grad(set_to_none=True)
        total.backward()
        stack.adam.step()
        step += 1
        closes = boundary(step, end, cfg)
        if closes.window:
            for (index, _, _), window in zip(groups, running):
                labels = window.names
                means, first = window.close(step)
                for row, g in zip(means, index):
                    m = members[g]
                    m.step = step
                    check_finite_terms(labels, row, m.job.setting, m.job.seed, first, step)
                    m.last = dict(zip(labels, (float(v) for v in row)))
                    if on_log and closes.log:
                        on_log(g, m.last, step)
            if closes.checkpoint:
                stack.write_back(members)
                for m in members:
                    _checkpoint(m, device)
        if on_snapshot and closes.snapshot:
            stack.write_back(members)
            for g, m in enumerate(members):
                on_snapshot(g, m.net, step)
        bar.update(1)
    bar.close()
    stack.write_back(members)
    for m in members:
        m.step = step


def train_fused(
    jobs: Sequence[FusedJob],
    cfg: TrainConfig,
    *,
    train_images: np.ndarray,
    probe_images: np.ndarray,
    test_images: np.ndarray,
    data_version: str = "",
    on_log: Callable[[int, dict, int], None] | None = None,
    on_snapshot: Callable[[int, VAE, int], None] | None = None,
    progress: bool = False,
    stop_at: int | None = None,
    make_optimiser: OptimiserFactory = new_optimiser,
    input_layout: torch.memory_format | None = None,
) -> list[Outcome]:
    """Train every job as one fused model; the outcomes are in the jobs' order.

    `on_log(index, metrics, step)` and `on_snapshot(index, model, step)` receive what
    `train_model`'s callbacks receive, per job. `stop_at` is `train_model`'s: train up to that step,
    checkpoint every model there, and hand back the models as they stand (a model whose checkpoint is
    already past it is not trained).

    `make_optimiser` and `input_layout` change how fast a step runs, not what it computes (to
    rounding), so that a benchmark can time the alternatives (benchmarks/bench_gpu.py):
    `make_optimiser(params, cfg, device)` builds the optimiser, `device.new_optimiser` by default
    (``functools.partial(new_optimiser, fused=False)``: PyTorch's per-tensor Adam; any other must
    keep Adam's state, which is stacked per model); `input_layout` is the batch's memory format,
    None for the one measured fastest on the device (channels_last).
    """
    if not jobs:
        raise ValueError("train_fused needs at least one job")
    guided = sorted({job.setting.family for job in jobs if job.setting.guided})
    if guided:
        raise ValueError(
            f"train_fused does not train guided families ({', '.join(guided)}): their head needs a guide batch per "
            "step; set train.fuse to auto or never, and they train one model each"
        )
    end = segment_end(cfg, stop_at, resumable=all(job.checkpoint_path for job in jobs))
    keys = [(job.setting, job.seed) for job in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("train_fused got the same (setting, seed) twice; each model trains once")
    paths = [str(job.checkpoint_path) for job in jobs if job.checkpoint_path]
    if len(set(paths)) != len(paths):
        raise ValueError("train_fused got two jobs with one checkpoint path; each model needs its own")
    device = select_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if train_images.ndim != 4 or train_images.shape[1] != train_images.shape[2]:
        raise ValueError(f"training images must be square N×S×S×3, got {train_images.shape}")
    image_size = train_images.shape[1]
    members = []
    for job in jobs:
        identity = checkpoint_identity(job.setting, job.seed, cfg, data_version, image_size)
        member = _fresh_member(job, cfg, image_size, device, identity, make_optimiser)
        _restore(member, cfg, device, make_optimiser)
        members.append(member)
    data = images_to_tensor(train_images, device)
    layout = input_layout or torch.channels_last
    for start in sorted({m.step for m in members}):
        group = [m for m in members if m.step == start]
        if start < end:
            where = [i for i, m in enumerate(members) if m.step == start]  # the jobs' indices of the group
            _segment(
                group,
                cfg,
                data,
                device,
                None if on_log is None else (lambda g, metrics, step, w=where: on_log(w[g], metrics, step)),
                None if on_snapshot is None else (lambda g, model, step, w=where: on_snapshot(w[g], model, step)),
                progress,
                end,
                make_optimiser,
                layout,
            )
    outcomes = []
    for m in members:
        metrics = {"test_rec": reconstruction_error(m.net, test_images, device, cfg.rec_kind)}
        metrics.update({f"final_{k}": v for k, v in m.last.items()})
        outcomes.append(
            Outcome(model=m.net, step=m.step, latents=probe_latents(m.net, probe_images, device), metrics=metrics)
        )
    return outcomes
