"""Where disentanglement appears: per-factor MIG against training steps, per family.

Trains one setting per family side by side (`tubervae.training.fused`) on freshly simulated photos and, at
log-spaced steps, encodes a held-out set simulated from another seed and scores each scored factor
that varies in the data by MIG two ways: the published MIG over all latent components, and the same
estimator over the informative components only (mean KL on the held-out set > `INFORMATIVE_KL`, the
cut-off UDR uses). Collapsed components keep means that vary a little and follow a factor weakly;
the published MIG bins each component over its own range, so such leftovers can close the gap of a
component that carries the factor well. With a single informative component the second-best term
is 0 and its MIG is its normalised mutual information.

Each row (one model at one step) goes to the `--out` CSV as soon as it is measured, so a stopped run
keeps what it had. `captured_*` counts the factors with MIG >= 0.2. `--reduced` draws the photos
from the `geometry` simulator (`data.simulator`): the skin tone at 0.5 and no defects, which
leaves x, y, size, elongation, brightness (and the unscored rotation) varying.

    python experiments/disentanglement_curve.py --reduced --image-size 32 --steps 20000 \\
        --out experiments/runs/curve-reduced-32.csv

`--folder DIR` takes the photos from a photo folder with a factors.csv instead (docs/your-photos.md;
e.g. one written by experiments/outside_photos.py), imported by the project's raw and preprocess
stages (`udr_validity.import_photo_folder`, cached beside `--out` in `import-<folder>-<size>/`, centre
crop 1 by default): its train split trains, and its test split's photos with measured factors are the
held-out set, scored on the factors.csv columns that vary.

    python experiments/disentanglement_curve.py --folder experiments/runs/idsprites --image-size 64 \\
        --steps 20000 --out experiments/runs/curve-idsprites-64.csv

Cβ-VAE's capacity C rises linearly over `anneal_fraction` of `--steps` (the project's schedule), so
at an early step its models stand at a fraction of `c_max`. One thread by default (`--threads`).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from udr_validity import folder_splits, import_photo_folder

from tubervae.config import INFORMATIVE_KL, TrainConfig
from tubervae.data import synth_dataset, synth_factors
from tubervae.evaluation.mig import mig
from tubervae.models.encoding import encode
from tubervae.training.device import resolve_precision, select_device
from tubervae.training.fused import FusedJob, train_fused
from tubervae.training.setting import Setting

LOG_STEPS = "250,500,1000,2000,5000,10000,20000,50000"
CAPTURED = 0.2  # a factor counts as captured at MIG >= this


def parse_models(spec: str) -> list[Setting]:
    """'beta_vae:4,cbeta_vae:700:12' -> settings (Cβ-VAE: family:β:c_max)."""
    settings = []
    for item in spec.split(","):
        family, *values = item.strip().split(":")
        if family == "cbeta_vae":
            if len(values) != 2:
                raise SystemExit(f"a Cβ-VAE model is cbeta_vae:BETA:C_MAX, got {item!r}")
            settings.append(Setting(family, float(values[0]), float(values[1])))
        else:
            if len(values) != 1:
                raise SystemExit(f"a model is FAMILY:BETA, got {item!r}")
            settings.append(Setting(family, float(values[0])))
    return settings


def per_factor_mig(mu: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-factor MIG of codes `mu` against factors `truth`; NaN for every factor when no code is given."""
    if mu.shape[1] == 0:
        return np.full(truth.shape[1], np.nan)
    return mig(mu, truth)["mig_per_factor"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="beta_vae:4,beta_tcvae:4,cbeta_vae:700:12")
    parser.add_argument("--steps", type=int, default=50000, help="training steps; the last measurement")
    parser.add_argument("--at", default=LOG_STEPS, help="steps to measure at (those below --steps are kept)")
    parser.add_argument("--image-size", type=int, default=32, choices=(16, 32, 64))
    parser.add_argument(
        "--crop-fraction",
        type=float,
        default=None,
        help="centre crop: the default profile's 0.6 for the simulator, 1 (the whole photo) for --folder",
    )
    parser.add_argument("--batch", type=int, default=32, help="the default profile's train.batch_size")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-train", type=int, default=10000, help="simulated training photos")
    parser.add_argument("--n-test", type=int, default=4000, help="held-out photos, simulated from another seed")
    parser.add_argument("--data-seed", type=int, default=0, help="training photos' seed; held-out: this + 1")
    parser.add_argument("--seed", type=int, default=7, help="the models' seed")
    parser.add_argument("--reduced", action="store_true", help="the geometry simulator: no defects, one skin tone")
    parser.add_argument(
        "--folder",
        default="",
        help="a photo folder with factors.csv instead of the simulator (--n-train, --n-test unused)",
    )
    parser.add_argument("--params", default="params.yaml", help="--folder: the split's settings (test fraction, seed)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="experiments/runs/disentanglement-curve.csv")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    settings = parse_models(args.models)
    at = sorted({int(s) for s in args.at.split(",") if 0 < int(s) < args.steps})
    snapshot_every = math.gcd(*at) if at else 0
    start = time.perf_counter()
    if args.folder:
        data_name = Path(args.folder).resolve().name
        processed = Path(args.out).parent / f"import-{data_name}-{args.image_size}"
        import_photo_folder(
            args.folder,
            processed,
            params_path=args.params,
            image_size=args.image_size,
            crop_fraction=1.0 if args.crop_fraction is None else args.crop_fraction,
            probe_size=2,  # the curve encodes no UDR probe
            seed=args.data_seed,
        )
        split = folder_splits(processed / "data" / "processed")
        train, test, truth, names = split["train"], split["eval"], split["truth"], split["names"]
        print(f"{len(train)} training and {len(test)} held-out photos of {args.folder}", flush=True)
    else:
        data_name = "reduced" if args.reduced else "default"
        fixed = synth_factors.SIMULATORS["geometry" if args.reduced else "full"]
        crop = 0.6 if args.crop_fraction is None else args.crop_fraction
        simulate = dict(crop_fraction=crop, image_size=args.image_size, workers=1, progress=False)
        train, _ = synth_dataset.model_inputs(args.n_train, seed=args.data_seed, fixed=fixed, **simulate)
        test, factors = synth_dataset.model_inputs(args.n_test, seed=args.data_seed + 1, fixed=fixed, **simulate)
        names = [f for f in synth_factors.SCORED_FACTORS if np.ptp(factors[f].to_numpy()) > 0]
        truth = factors[names].to_numpy(dtype=np.float64)
        print(f"{len(train) + len(test)} photos simulated in {time.perf_counter() - start:.0f} s", flush=True)

    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        log_every=args.steps,
        checkpoint_every=args.steps,
        snapshot_every=snapshot_every,
        precision=args.precision,
        threads=args.threads,
    )
    device = select_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    jobs = [FusedJob(setting, seed=args.seed) for setting in settings]
    print(
        f"{data_name} photos {args.image_size}x{args.image_size}, {len(jobs)} models fused, batch {args.batch}, "
        f"lr {args.lr:g}, {precision} on {device}, {args.threads} thread(s); factors scored: {', '.join(names)}",
        flush=True,
    )

    fields = [
        "data",
        "image_size",
        "family",
        "beta",
        "c_max",
        "seed",
        "step",
        "train_s",
        "steps_per_s",
        "n_informative",
        "captured_all",
        "captured_informative",
        "mig_all",
        "mig_informative",
        *[f"mig_all_{f}" for f in names],
        *[f"mig_inf_{f}" for f in names],
        "kl_total",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.exists() or out.stat().st_size == 0
    handle = out.open("a", newline="")
    writer = csv.DictWriter(handle, fieldnames=fields)
    if new_file:
        writer.writeheader()
        handle.flush()
    print(
        "step    model                 inf  cap(all/inf)  "
        + "  ".join(f"{f[:10]:>10}" for f in names)
        + "   (MIG over informative / over all)",
        flush=True,
    )

    clock = {"train_start": time.perf_counter(), "eval_s": 0.0}

    def measure(i: int, model, step: int) -> None:
        began = time.perf_counter()
        train_s = began - clock["train_start"] - clock["eval_s"]
        mu, logvar = encode(model, test)
        kl = (0.5 * (mu**2 + np.exp(logvar) - logvar - 1)).mean(0)
        informative = kl > INFORMATIVE_KL
        mig_all = per_factor_mig(mu, truth)
        mig_inf = per_factor_mig(mu[:, informative], truth)
        setting = jobs[i].setting
        row = {
            "data": data_name,
            "image_size": args.image_size,
            "family": setting.family,
            "beta": f"{setting.beta:g}",
            "c_max": f"{setting.c_max:g}",
            "seed": args.seed,
            "step": step,
            "train_s": f"{train_s:.1f}",
            "steps_per_s": f"{step / train_s:.2f}",
            "n_informative": int(informative.sum()),
            "captured_all": int(np.sum(mig_all >= CAPTURED)),
            "captured_informative": int(np.sum(mig_inf >= CAPTURED)),
            "mig_all": f"{np.mean(mig_all):.4f}",
            "mig_informative": f"{np.mean(mig_inf):.4f}",
            **{f"mig_all_{f}": f"{v:.4f}" for f, v in zip(names, mig_all)},
            **{f"mig_inf_{f}": f"{v:.4f}" for f, v in zip(names, mig_inf)},
            "kl_total": f"{kl.sum():.3f}",
        }
        writer.writerow(row)
        handle.flush()
        os.fsync(handle.fileno())
        label = f"{setting.family} {setting.label}"
        cells = "  ".join(f"{a:4.2f}/{b:4.2f}" for a, b in zip(mig_inf, mig_all))
        captured = f"{row['captured_all']:3d}/{row['captured_informative']:<3d}"
        print(f"{step:6d}  {label:20s}  {row['n_informative']:3d}  {captured}       {cells}", flush=True)
        model.train()
        clock["eval_s"] += time.perf_counter() - began

    def on_snapshot(i: int, model, step: int) -> None:
        if step in at:
            measure(i, model, step)

    outcomes = train_fused(
        jobs, cfg, train_images=train, probe_images=test[:200], test_images=test[:200], on_snapshot=on_snapshot
    )
    for i, outcome in enumerate(outcomes):
        measure(i, outcome.model, outcome.step)
    handle.close()
    print(f"total {time.perf_counter() - start:.0f} s; rows in {out}", flush=True)


if __name__ == "__main__":
    main()
