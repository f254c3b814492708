"""The guided one-cut rule against the pixel CNN, on the same labels: test balanced accuracy per label count.

For each label count n (a class-stratified draw from the labelled split; all of it at its size) and
each seed, trains a guided β-VAE (`train_model`, the params file's train section, one thread) whose
head sees only the draw's guide share (`preprocess.guide_fraction`, drawn as preprocess draws it),
then places the thesis's rule, one cut on the guided component, on the draw's other labels (the
holdout) and scores it on the test split. Beside it, on the same n labels and the same test split:
the pixel CNN, the cut placed on all n labels (the guide ones included, which overstates it), and
the guided component's test ROC AUC (the best any cut on it could do). The model is retrained per
label count: guidance at n labels sees only those.

    nice -n 10 python experiments/guided_grader.py data/processed --sizes 200 --seeds 0 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from tubervae import classify as clf
from tubervae.config import GUIDED_COMPONENT, load_params
from tubervae.data.processed import load_split
from tubervae.data.splits import guide_mask
from tubervae.models.encoding import encode
from tubervae.training.device import resolve_precision, select_device
from tubervae.training.loop import train_model
from tubervae.training.setting import Setting


def draw_labels(bad: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a class-stratified draw of n labelled rows (n/2 per class; all rows when n is their count)."""
    if n >= len(bad):
        return np.arange(len(bad))
    rng = np.random.default_rng(seed)
    return np.sort(
        np.concatenate([rng.choice(np.flatnonzero(bad == cls), n // 2, replace=False) for cls in (False, True)])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a processed folder (data/processed)")
    parser.add_argument("--params", default="params.yaml", help="settings file whose train section is used")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200], help="label counts (default: 200)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--beta", type=float, default=2.61)
    parser.add_argument("--guide-weight", type=float, default=300.0, help="λ of the head (default 300)")
    parser.add_argument("--guide-fraction", type=float, help="default: the params file's preprocess.guide_fraction")
    parser.add_argument("--steps", type=int, help="default: the params file's train.steps")
    parser.add_argument("--cnn-steps", type=int, help="default: the params file's classify.cnn_steps")
    parser.add_argument("--out", help="append one JSON line per (labels, seed) to this file")
    args = parser.parse_args()

    params = load_params(args.params)
    cfg = dataclasses.replace(
        params.train, threads=1, device="cpu", snapshot_every=0, figures=False, steps=args.steps or params.train.steps
    )
    fraction = params.preprocess.guide_fraction if args.guide_fraction is None else args.guide_fraction
    cnn_steps = args.cnn_steps or params.classify.cnn_steps
    torch.set_num_threads(1)
    train, test, probe, labelled = (load_split(s, args.dir) for s in ("train", "test", "udr_probe", "labelled"))
    known = labelled["labels"] >= 0
    x_lab, bad_lab = labelled["images"][known], labelled["labels"][known] == 1
    test_known = test["labels"] >= 0
    x_test, bad_test = test["images"][test_known], test["labels"][test_known] == 1
    setting = Setting("guided_beta_vae", args.beta, guide_weight=args.guide_weight)
    precision = resolve_precision(cfg.precision, select_device(cfg.device))
    print(
        f"{setting.family} β {args.beta} λ {args.guide_weight}, {cfg.steps} steps, precision {precision}, "
        f"guide fraction {fraction}; {len(train['images'])} training photos, {len(bad_test)} test photos"
    )
    print(
        "| labels | seed | guide | holdout | rule test BA | cut on all n: test BA | z0 test AUC "
        "| pixel CNN test BA | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for seed in args.seeds:
            rows = draw_labels(bad_lab, n, seed)
            x_n, bad_n = x_lab[rows], bad_lab[rows]
            guide = guide_mask(bad_n.astype(np.int8), fraction=fraction, seed=params.preprocess.seed)
            start = time.perf_counter()
            outcome = train_model(
                setting,
                seed,
                cfg,
                train_images=train["images"],
                probe_images=probe["images"][:64],
                test_images=test["images"][:64],
                guide_images=x_n[guide],
                guide_labels=bad_n[guide].astype(np.int8),
                progress=False,
            )
            seconds = time.perf_counter() - start
            z_n, _ = encode(outcome.model, x_n)
            z_test, _ = encode(outcome.model, x_test)
            component = [GUIDED_COMPONENT]
            holdout = clf.validation_rows(guide, True)
            rule = clf.fit_threshold_rule(z_n[holdout], bad_n[holdout], components=component)
            overfit = clf.fit_threshold_rule(z_n, bad_n, components=component)
            scores = {
                "rule": clf.binary_metrics(bad_test, rule.predict(z_test), rule.decision_function(z_test)),
                "cut_on_all_n": clf.binary_metrics(
                    bad_test, overfit.predict(z_test), overfit.decision_function(z_test)
                ),
            }
            cnn = clf.fit_pixel_cnn(x_n, bad_n, random_state=seed, steps=cnn_steps)
            scores["pixel_cnn"] = clf.binary_metrics(bad_test, cnn.predict(x_test), cnn.decision_function(x_test))
            result = {
                "labels": int(n),
                "seed": seed,
                "n_guide": int(guide.sum()),
                "n_holdout": int(holdout.sum()),
                "beta": args.beta,
                "guide_weight": args.guide_weight,
                "steps": cfg.steps,
                "precision": precision,
                "rule": rule.as_dict(),
                "train_seconds": round(seconds, 1),
                **{f"{k}_test_balanced_accuracy": v["balanced_accuracy"] for k, v in scores.items()},
                "z0_test_roc_auc": scores["rule"]["roc_auc"],
            }
            print(
                f"| {n} | {seed} | {result['n_guide']} | {result['n_holdout']} | "
                f"{result['rule_test_balanced_accuracy']:.3f} | {result['cut_on_all_n_test_balanced_accuracy']:.3f} | "
                f"{max(result['z0_test_roc_auc'], 1 - result['z0_test_roc_auc']):.3f} | "
                f"{result['pixel_cnn_test_balanced_accuracy']:.3f} | {seconds:.0f} |",
                flush=True,
            )
            if args.out:
                with Path(args.out).open("a") as fh:
                    fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
