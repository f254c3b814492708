"""How well the defects are encoded as training goes on: best |Spearman ρ| per defect against steps.

Trains a few settings side by side (`tubervae.training.fused`) on freshly simulated photos and, every
`--every` steps, encodes a held-out set and prints, per model and defect factor (spot_area,
greening, rot), the largest |Spearman ρ| between the factor and one latent component. It answers
"how many steps, at which image size, before a component carries a defect", which decides the
profiles; on a CPU it is slow, on a GPU minutes.

    python experiments/defect_curve.py --steps 8000 --every 2000 --image-size 64 \\
        --models beta_vae:1,beta_vae:4,beta_tcvae:4,beta_tcvae:10
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from tubervae.config import TrainConfig
from tubervae.data import synth_dataset
from tubervae.models.encoding import encode
from tubervae.training.fused import FusedJob, train_fused
from tubervae.training.setting import Setting

DEFECTS = ("spot_area", "greening", "rot")


def best_rho(mu: np.ndarray, factor: np.ndarray) -> tuple[float, int]:
    rhos = np.nan_to_num([abs(spearmanr(factor, mu[:, j]).statistic) for j in range(mu.shape[1])])
    return float(rhos.max()), int(rhos.argmax())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="beta_vae:1,beta_vae:4,beta_tcvae:4,beta_tcvae:10")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--every", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--crop-fraction", type=float, default=0.6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    start = time.perf_counter()
    images, factors = synth_dataset.model_inputs(
        args.n_train + args.n_test,
        seed=7,
        crop_fraction=args.crop_fraction,
        image_size=args.image_size,
        progress=False,
    )
    train, test = images[: args.n_train], images[args.n_train :]
    truth = {d: factors[d].to_numpy()[args.n_train :] for d in DEFECTS}
    print(f"{len(images)} photos simulated in {time.perf_counter() - start:.0f} s", flush=True)
    jobs = []
    for spec in args.models.split(","):
        family, beta = spec.split(":")
        jobs.append(FusedJob(Setting(family, float(beta)), seed=0))
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        log_every=args.every,
        checkpoint_every=args.steps,
        snapshot_every=args.every,
        precision=args.precision,
    )
    print("step  model                 " + "  ".join(f"{d:>14}" for d in DEFECTS) + "  n_active", flush=True)

    def report(i: int, model, step: int) -> None:
        mu, logvar = encode(model, test)
        kl = (0.5 * (mu**2 + np.exp(logvar) - logvar - 1)).mean(0)
        cells = [best_rho(mu, truth[d]) for d in DEFECTS]
        label = f"{jobs[i].setting.family} {jobs[i].setting.beta:g}"
        text = "  ".join(f"{rho:6.3f} (z{j:<2d})   " for rho, j in cells)
        print(f"{step:5d}  {label:20s}  {text}  {int((kl > 0.01).sum())}", flush=True)
        model.train()

    outcomes = train_fused(
        jobs, cfg, train_images=train, probe_images=test[:500], test_images=test[:500], on_snapshot=report
    )
    for i, outcome in enumerate(outcomes):
        report(i, outcome.model, outcome.step)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"total {time.perf_counter() - start:.0f} s on {device}")


if __name__ == "__main__":
    main()
