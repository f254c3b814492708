"""Which latent component follows which known factor: the grader's question.

UDR cannot see lost factors, and the supervised scores average over all of them; a
grader needs to know whether *the defects* have a component of their own. These
functions answer that from a representation and the true factors alone.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def factor_correlations(codes, factors) -> np.ndarray:
    """|Spearman ρ| of every component (rows) with every factor (columns), shape (d, k).

    A constant component or factor correlates with nothing: its entries are 0, never NaN.
    """
    codes, factors = np.asarray(codes, float), np.asarray(factors, float)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors) or len(codes) < 2:
        raise ValueError(
            f"codes and factors must be (n, d) and (n, k) with the same n ≥ 2, got {codes.shape} and {factors.shape}"
        )
    if not (np.isfinite(codes).all() and np.isfinite(factors).all()):
        raise ValueError("codes and factors must be finite")
    a, b = _standard_ranks(codes), _standard_ranks(factors)
    return np.abs(a.T @ b / len(codes))


def best_components(codes, factors, informative=None) -> tuple[np.ndarray, np.ndarray]:
    """For each factor, the component with the largest |Spearman ρ| and that |ρ|.

    Only `informative` components (a boolean mask, all by default) compete; without any,
    every factor gets component -1 and |ρ| 0.
    """
    rho = factor_correlations(codes, factors)
    mask = np.ones(rho.shape[0], bool) if informative is None else np.asarray(informative, bool)
    if mask.shape != (rho.shape[0],):
        raise ValueError(f"informative must be a mask of the {rho.shape[0]} components, got shape {mask.shape}")
    if not mask.any():
        return np.full(rho.shape[1], -1), np.zeros(rho.shape[1])
    masked = np.where(mask[:, None], rho, -1.0)
    best = masked.argmax(axis=0)
    return best, rho[best, np.arange(rho.shape[1])]


def _standard_ranks(values: np.ndarray) -> np.ndarray:
    ranks = rankdata(values, axis=0)
    centred = ranks - ranks.mean(axis=0)
    scale = np.sqrt((centred**2).mean(axis=0))
    return np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)
