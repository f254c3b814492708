"""One β-VAE with a training schedule the pipeline does not offer, and how well it encodes each factor.

The rows of docs/results/grading-profiles.md on latent size, loss weighting and schedules. The
network and the KL per component are the project's; the loop is written out here so that each
variation is one flag:

- `--warmup F --cosine`: learning rate rising linearly over the first F of the steps, then
  following a half cosine down to 0;
- `--kl-warmup F`: the KL term's weight rising from 0 to β over the first F of the steps;
- `--tuber-weight W`: the reconstruction error of the tuber's pixels (warm-coloured ones: red
  above blue by more than 0.08, which the blue-grey belt never is) counted W times;
- `--every N`: the best |Spearman ρ| per factor read every N steps, not only at the end.

Prints one JSON line per read-out: the step, the informative components and, per factor, the
best |ρ| over components with that component's index.

    python experiments/defect_schedules.py data/processed --beta 1 --every 250
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from tubervae.config import INFORMATIVE_KL
from tubervae.data.processed import load_meta, load_split
from tubervae.evaluation.matching import best_components
from tubervae.models.losses import kl_per_component
from tubervae.models.nets import VAE

FACTORS = ("x", "y", "size", "elongation", "tone", "brightness", "spot_area", "greening", "rot")


def learning_rate(base: float, fraction: float, warmup: float, cosine: bool) -> float:
    """The rate at `fraction` of training: linear warm-up over `warmup`, then a half cosine when asked."""
    rate = base * (min(1.0, fraction / warmup) if warmup > 0 else 1.0)
    return rate * 0.5 * (1 + math.cos(math.pi * fraction)) if cosine else rate


def tuber_mask(x: torch.Tensor) -> torch.Tensor:
    """1 on warm-coloured pixels (the tuber), 0 on the blue-grey belt; N×1×H×W."""
    return ((x[:, 0] - x[:, 2]) > 0.08).to(x.dtype).unsqueeze(1)


def best_rho(factors: np.ndarray, names: list[str], mu: np.ndarray) -> dict[str, tuple[float, int]]:
    """Per factor, the largest |Spearman ρ| with one component, and that component (every component competes)."""
    component, rho = best_components(mu, factors[:, [names.index(name) for name in FACTORS]])
    return {name: (round(float(r), 3), int(c)) for name, c, r in zip(FACTORS, component, rho)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a processed folder (data/processed)")
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=float, default=0.0, help="share of the steps the learning rate warms up over")
    parser.add_argument("--cosine", action="store_true", help="cosine decay of the learning rate to 0")
    parser.add_argument("--kl-warmup", type=float, default=0.0, help="share of the steps the KL weight rises over")
    parser.add_argument("--tuber-weight", type=float, default=1.0, help="weight of the tuber's pixels' error")
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--every", type=int, default=0, help="read the factors every N steps (0: at the end only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = torch.from_numpy(load_split("train", args.dir)["images"]).permute(0, 3, 1, 2).float() / 255
    test = load_split("test", args.dir)
    test_x = torch.from_numpy(test["images"]).permute(0, 3, 1, 2).float() / 255
    names = list(load_meta(args.dir)["factor_names"])
    net = VAE(image_size=train.shape[-1], latent_dim=args.latent_dim)
    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    batches = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()

    def read_out(step: int) -> None:
        net.eval()
        with torch.no_grad():
            out = net(test_x)
            kl = kl_per_component(out.mu, out.logvar).mean(0).numpy()
        net.train()
        row = {
            "args": vars(args),
            "step": step,
            "seconds": round(time.perf_counter() - start),
            "n_active": int((kl > INFORMATIVE_KL).sum()),
            "rho": best_rho(test["factors"], names, out.mu.numpy()),
        }
        print(json.dumps(row), flush=True)

    for step in range(1, args.steps + 1):
        fraction = (step - 1) / args.steps
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(args.lr, fraction, args.warmup, args.cosine)
        x = train[torch.randint(len(train), (args.batch,), generator=batches)]
        out = net(x)
        error = F.binary_cross_entropy_with_logits(out.logits, x, reduction="none")
        if args.tuber_weight != 1.0:
            error = error * (1 + (args.tuber_weight - 1) * tuber_mask(x))
        kl_weight = min(1.0, fraction / args.kl_warmup) if args.kl_warmup > 0 else 1.0
        loss = error.sum((1, 2, 3)).mean() + args.beta * kl_weight * kl_per_component(out.mu, out.logvar).mean(0).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step == args.steps or (args.every and step % args.every == 0):
            read_out(step)


if __name__ == "__main__":
    main()
