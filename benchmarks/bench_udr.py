"""Speed of the batched UDR against the straightforward per-pair loop.

Scores the thesis's all-against-all (A2A) case: 115 models, 1000 probe
images, d = 10, so 115 * 114 = 13 110 ordered pairs, with Spearman and with
Lasso similarity. The baseline does what disentanglement_lib's udr.py does:
standardise, zero uninformative components, then per pair one
``scipy.stats.spearmanr`` call per component pair, or one
``sklearn.linear_model.Lasso`` fit (all targets of the pair in one call). The
full baseline takes minutes, so by default it runs on a random subset of pairs
and its time is extrapolated per pair; ``--full`` runs every pair. Both sides
run in the same process, and their matrices and pair scores are compared.

The Lasso side is what justifies tubervae.evaluation.lasso (``lasso_gram``,
the batched Gram-matrix solver that ``udr_scores`` calls) existing beside
scikit-learn: should the per-pair ``Lasso`` loop catch up on this case, the
solver can go (the figures so far: benchmarks/README.md).

    .venv/bin/python benchmarks/bench_udr.py [--baseline-pairs 200] [--full]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

from tubervae.config import INFORMATIVE_KL
from tubervae.evaluation.udr import pair_similarities, udr_scores

KL_THRESHOLD = INFORMATIVE_KL


def synthetic_models(rng: np.random.Generator, m: int, n: int, d: int, k: int):
    """Latent means of m models that all saw the same k factors of n images.

    Each model keeps a random number of informative components, each a mostly
    one-to-one but slightly mixed, sign-flipped copy of a factor plus noise;
    the rest sit at the prior (tiny variance, KL below the threshold).
    """
    factors = rng.normal(size=(n, k))
    reps, kls = [], []
    for _ in range(m):
        n_inf = int(rng.integers(3, d + 1))
        chosen = rng.choice(k, size=n_inf, replace=n_inf > k)
        mixing = 0.25 * rng.normal(size=(k, n_inf))
        mixing[chosen, np.arange(n_inf)] += rng.choice([-1.0, 1.0], size=n_inf)
        rep = np.empty((n, d))
        rep[:, :n_inf] = factors @ mixing + 0.3 * rng.normal(size=(n, n_inf))
        rep[:, n_inf:] = 0.01 * rng.normal(size=(n, d - n_inf))
        kl = np.concatenate([rng.uniform(0.5, 3.0, n_inf), rng.uniform(0.0, 0.009, d - n_inf)])
        order = rng.permutation(d)
        reps.append(rep[:, order])
        kls.append(kl[order])
    return reps, kls


def reference_aggregate(r: np.ndarray) -> float:
    """disentanglement_lib's relative strength on the filtered matrix."""
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = np.nan_to_num(r.max(axis=0) ** 2 / r.sum(axis=0), nan=0.0)
        rows = np.nan_to_num(r.max(axis=1) ** 2 / r.sum(axis=1), nan=0.0)
    return float((cols.mean() + rows.mean()) / 2)


def prepared(reps, kls):
    out = []
    for rep, kl in zip(reps, kls):
        z = StandardScaler().fit_transform(rep) * (kl > KL_THRESHOLD)
        out.append(z)
    return out


def baseline_spearman(za, zb):
    d_a, d_b = za.shape[1], zb.shape[1]
    r = np.zeros((d_a, d_b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zeroed columns: constant-input warning
        for a in range(d_a):
            for b in range(d_b):
                r[a, b] = abs(spearmanr(za[:, a], zb[:, b])[0])
    return r


def baseline_lasso(za, zb, alpha, tol=1e-4, max_iter=1000):
    model = Lasso(alpha=alpha, tol=tol, max_iter=max_iter).fit(za, zb)
    return np.abs(model.coef_.T)  # R[a, b]: weight of a predicting b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=115)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--d", type=int, default=10)
    parser.add_argument("--factors", type=int, default=6)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--baseline-pairs", type=int, default=200)
    parser.add_argument("--full", action="store_true", help="run the baseline on every pair")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    reps, kls = synthetic_models(rng, args.models, args.n, args.d, args.factors)
    masks = [kl > KL_THRESHOLD for kl in kls]
    all_pairs = [(i, j) for i in range(args.models) for j in range(args.models) if i != j]
    if args.full or args.baseline_pairs >= len(all_pairs):
        subset = all_pairs
    else:
        pick = rng.choice(len(all_pairs), size=args.baseline_pairs, replace=False)
        subset = [all_pairs[k] for k in sorted(pick)]
    n_inf = [int(m.sum()) for m in masks]
    print(
        f"{args.models} models, n={args.n}, d={args.d}, {len(all_pairs)} ordered pairs; "
        f"informative components per model {min(n_inf)}..{max(n_inf)} "
        f"(mean {np.mean(n_inf):.1f})"
    )
    extrapolated = len(subset) < len(all_pairs)
    if extrapolated:
        print(
            f"baseline timed on {len(subset)} random pairs and extrapolated per pair "
            f"to {len(all_pairs)} (use --full for the whole loop)"
        )
    z = prepared(reps, kls)

    for similarity in ("spearman", "lasso"):
        t0 = time.perf_counter()
        result = udr_scores(
            reps,
            kls,
            similarity=similarity,
            aggregate="reference",
            kl_threshold=KL_THRESHOLD,
            lasso_alpha=args.alpha,
        )
        fast_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        if similarity == "spearman":
            base_r = [baseline_spearman(z[i], z[j]) for i, j in subset]
        else:
            base_r = [baseline_lasso(z[i], z[j], args.alpha) for i, j in subset]
        base_s = time.perf_counter() - t0
        base_total = base_s / len(subset) * len(all_pairs)

        fast_r = pair_similarities(
            reps,
            kls,
            subset,
            similarity=similarity,
            kl_threshold=KL_THRESHOLD,
            lasso_alpha=args.alpha,
        )
        r_diff = 0.0
        score_diff = 0.0
        for k, (i, j) in enumerate(subset):
            keep = np.ix_(masks[i], masks[j])
            r_diff = max(r_diff, float(np.max(np.abs(fast_r[k][keep] - base_r[k][keep]))))
            base_score = reference_aggregate(base_r[k][keep])
            score_diff = max(score_diff, abs(result.pair_scores[i, j] - base_score))

        label = "extrapolated" if extrapolated else "measured"
        print(f"\n[{similarity}]")
        print(f"  batched A2A udr_scores : {fast_s:8.2f} s for {len(all_pairs)} pairs")
        print(
            f"  baseline loop          : {base_s:8.2f} s for {len(subset)} pairs "
            f"-> {base_total:8.1f} s for {len(all_pairs)} pairs ({label})"
        )
        print(f"  speed-up               : {base_total / fast_s:8.1f}x")
        print(f"  max |R_fast - R_base|  : {r_diff:.2e}  (informative entries)")
        print(f"  max |UDR_ij fast-base| : {score_diff:.2e}")
        if similarity == "lasso":
            exact = [baseline_lasso(z[i], z[j], args.alpha, tol=1e-12, max_iter=100_000) for i, j in subset]
            tight = max(
                float(np.max(np.abs(fast_r[k][np.ix_(masks[i], masks[j])] - exact[k][np.ix_(masks[i], masks[j])])))
                for k, (i, j) in enumerate(subset)
            )
            print(
                f"  max |w_fast - w_sklearn(tol=1e-12)| : {tight:.2e} "
                "(the comparison above uses sklearn's default tol=1e-4)"
            )


if __name__ == "__main__":
    main()
