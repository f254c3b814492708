"""One VAE on a processed folder, then how well each factor is encoded: best |Spearman ρ| per factor.

Trains one setting with `train_model` on `<dir>/train.npz` (the preprocess stage's output) and
prints, for every ground-truth factor of the test split, the largest |Spearman ρ| between the
factor and one latent component (and which), the number of informative components, and the
cross-validated R² of a ridge regression of each defect on all components (is the defect in the
code at all, even if spread over components?). The rows of docs/results/grading-profiles.md.

    python experiments/defect_probe.py data/processed --family beta_vae --beta 1 --steps 2000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_score

from tubervae import classify as clf
from tubervae.config import INFORMATIVE_KL, TrainConfig
from tubervae.data.processed import load_meta, load_split
from tubervae.models.encoding import encode
from tubervae.training.loop import train_model
from tubervae.training.setting import Setting

DEFECTS = ("spot_area", "greening", "rot")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a processed folder (data/processed)")
    parser.add_argument("--family", default="beta_vae")
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--c-max", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--rec-kind", default="bernoulli")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--grade", action="store_true", help="also grade: rules and learners on the labelled split")
    args = parser.parse_args()
    train, test, probe = (load_split(name, args.dir) for name in ("train", "test", "udr_probe"))
    names = list(load_meta(args.dir)["factor_names"])
    cfg = TrainConfig(
        steps=args.steps,
        latent_dim=args.latent_dim,
        rec_kind=args.rec_kind,
        batch_size=args.batch,
        lr=args.lr,
        snapshot_every=0,
        checkpoint_every=args.steps,
        log_every=max(1, args.steps // 4),
        threads=args.threads,
        device="cpu",
    )
    start = time.perf_counter()
    out = train_model(
        Setting(args.family, args.beta, args.c_max),
        args.seed,
        cfg,
        train_images=train["images"],
        probe_images=probe["images"],
        test_images=test["images"][:200],
        progress=False,
    )
    seconds = time.perf_counter() - start
    mu, _ = encode(out.model, test["images"])
    factors = test["factors"]
    rho = {}
    for i, name in enumerate(names):
        values = np.nan_to_num([abs(spearmanr(factors[:, i], mu[:, j]).statistic) for j in range(mu.shape[1])])
        rho[name] = (round(float(values.max()), 3), int(values.argmax()))
    linear = {
        name: round(float(cross_val_score(RidgeCV(), mu, factors[:, names.index(name)], cv=5, scoring="r2").mean()), 3)
        for name in DEFECTS
    }
    result = {
        "args": vars(args),
        "seconds": round(seconds, 1),
        "n_active": int((out.latents["kl"] > INFORMATIVE_KL).sum()),
        "rho": rho,
        "linear_r2": linear,
    }
    if args.grade:
        result["test_balanced_accuracy"] = grade(out, args.dir)
    print(json.dumps(result))


def balanced_accuracy(predicted_bad: np.ndarray, bad: np.ndarray) -> float:
    return round(float((predicted_bad[bad].mean() + (~predicted_bad[~bad]).mean()) / 2), 3)


def grade(out, folder: str) -> dict:
    """Test balanced accuracy of the rules and learners fitted on the labelled split (as the classify stage does)."""
    labelled, test = load_split("labelled", folder), load_split("test", folder)
    known = test["labels"] >= 0
    y_lab, y_test = labelled["labels"] == 1, test["labels"][known] == 1
    (z_lab, _), (z_test, _) = encode(out.model, labelled["images"]), encode(out.model, test["images"][known])
    informative = [int(j) for j in np.flatnonzero(out.latents["kl"] > INFORMATIVE_KL)] or None
    fitted = {
        "threshold": clf.fit_threshold_rule(z_lab, y_lab),
        "any_rule": clf.fit_any_of_rule(z_lab, y_lab, components=informative),
        "logistic": clf.fit_logistic(z_lab, y_lab, components=informative, random_state=0),
        "gradient_boosting": clf.fit_gradient_boosting(z_lab, y_lab, components=informative, random_state=0),
    }
    scores = {name: balanced_accuracy(model.predict(z_test), y_test) for name, model in fitted.items()}
    cnn = clf.fit_pixel_cnn(labelled["images"], y_lab, random_state=0, steps=300)
    scores["pixel_cnn"] = balanced_accuracy(cnn.predict(test["images"][known]), y_test)
    scores["any_rule_cuts"] = fitted["any_rule"].describe()
    return scores


if __name__ == "__main__":
    main()
