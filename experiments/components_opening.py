"""How many components are informative after N training steps? One setting, one seed, several N.

A pruner judges a trial part-way on the seeds' UDR and informative components, so what a setting
looks like at ⅛, ¼ or ½ of training decides whether it goes on. This trains the setting
separately to each step count (same seed, constant learning rate, so a shorter run is the start
of a longer one) and prints, for each, the number of components whose KL on the probe images
exceeds the informative cut-off, and the three largest KLs.

    python experiments/components_opening.py data/processed --family beta_tcvae --beta 6 --steps 75 150 300 600 1200
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from tubervae.config import INFORMATIVE_KL, TrainConfig
from tubervae.data.processed import load_split
from tubervae.training.loop import train_model
from tubervae.training.setting import Setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a processed folder (data/processed)")
    parser.add_argument("--family", default="beta_tcvae")
    parser.add_argument("--beta", type=float, default=6.0)
    parser.add_argument("--c-max", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, nargs="+", default=[75, 150, 300, 600, 1200])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.family == "cbeta_vae":
        parser.error("Cβ-VAE's capacity rises over train.steps, so a shorter run is not the start of a longer one")
    train, probe, test = (load_split(name, args.dir) for name in ("train", "udr_probe", "test"))
    for steps in args.steps:
        cfg = TrainConfig(
            steps=steps, snapshot_every=0, checkpoint_every=steps, log_every=steps, threads=args.threads, device="cpu"
        )
        out = train_model(
            Setting(args.family, args.beta, args.c_max),
            args.seed,
            cfg,
            train_images=train["images"],
            probe_images=probe["images"],
            test_images=test["images"][:100],
            progress=False,
        )
        kl = np.sort(np.asarray(out.latents["kl"], dtype=float))[::-1]
        print(
            json.dumps(
                {
                    "family": args.family,
                    "beta": args.beta,
                    "seed": args.seed,
                    "steps": steps,
                    "informative": int((kl > INFORMATIVE_KL).sum()),
                    "largest_kl": [round(float(v), 3) for v in kl[:3]],
                }
            )
        )


if __name__ == "__main__":
    main()
