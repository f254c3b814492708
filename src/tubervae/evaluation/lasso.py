"""A batched Lasso solver that works from Gram matrices: many small problems in one call.

Why this exists instead of ``sklearn.linear_model.Lasso``: UDR with Lasso similarity
(:mod:`tubervae.evaluation.udr`) fits one Lasso per ordered pair of models, and the
thesis's all-against-all (A2A) comparison of 115 models has 115 * 114 = 13 110 pairs.
Each problem is tiny (d = 10 predictors, n = 1000 images), so scikit-learn spends its
time on per-call overhead and on passes over the n rows. This solver needs only the
``d x d`` Gram matrix ``X'X / n`` and the cross products ``X'Y / n``, so one problem per
predictor model carries every partner's components as targets, and it runs coordinate
descent on every problem of the batch at once with numpy. It then solves each target
exactly on the support that coordinate descent found and keeps that solution once it
passes the Lasso's optimality (KKT) conditions, so its weights agree with a tightly
converged scikit-learn fit to rounding (tests/test_lasso.py checks 1e-9) rather than to
a stopping tolerance.

benchmarks/bench_udr.py measures it, through ``udr_scores``, against a per-pair
scikit-learn ``Lasso`` loop on the 115-model A2A comparison, for speed and for agreement
with a tightly converged scikit-learn fit (its figures: benchmarks/README.md). Should
scikit-learn close that gap, this module can give way to it; the tests against
scikit-learn say what must still hold.

Pure numpy: arrays in, arrays out, no I/O.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from tubervae.checks import check_int, check_real

__all__ = ["KKT_TOL", "kkt_violation", "lasso_gram"]

# Converged enough: every weight's optimality condition holds to KKT_TOL * alpha. At alpha = 0.1 on
# standardised components that is a correlation of 1e-5 with the residual, far below what moves a
# UDR similarity matrix (its entries are read to two decimals).
KKT_TOL = 1e-4


def _cd_sweeps(g: np.ndarray, c: np.ndarray, w: np.ndarray, alpha: float, sweeps: int) -> np.ndarray:
    """Cyclic coordinate descent in place on ``w`` (B, d, T) with the Gram
    matrices ``g`` (B, d, d) and ``c`` (B, d, T); returns each target's largest
    weight change during the last sweep, shape (B, T)."""
    d = g.shape[-1]
    diag = np.diagonal(g, axis1=-2, axis2=-1)
    usable = diag > 0
    inv_diag = np.where(usable, 1.0 / np.where(usable, diag, 1.0), 0.0)
    last_step = np.zeros(c.shape[:1] + c.shape[2:])
    for _ in range(sweeps):
        last_step[:] = 0.0
        for j in range(d):
            old = w[:, j, :].copy()
            # z = c_j - sum_{k != j} G_jk w_k: the correlation of feature j with
            # the residual that leaves out feature j's own contribution.
            z = c[:, j, :] - np.matmul(g[:, j : j + 1, :], w)[:, 0, :] + diag[:, j, None] * old
            new = np.sign(z) * np.maximum(np.abs(z) - alpha, 0.0) * inv_diag[:, j, None]
            w[:, j, :] = new
            np.maximum(last_step, np.abs(new - old), out=last_step)
    return last_step


def kkt_violation(gram: np.ndarray, cross: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """How far weights ``w`` (..., d, t) are from the Lasso's optimality (KKT) conditions, per target (..., t).

    With the residual correlations ``r = cross - gram @ w``, a weight off zero needs
    ``r_j = alpha * sign(w_j)`` and a zero weight ``|r_j| <= alpha``; the largest miss is returned
    (0 at the optimum, in the units of ``cross``).
    """
    r = cross - np.matmul(gram, w)
    on = np.abs(r - alpha * np.sign(w))
    off = np.maximum(np.abs(r) - alpha, 0.0)
    return np.max(np.where(w != 0, on, off), axis=-2)


def _polish(
    g: np.ndarray, c: np.ndarray, w: np.ndarray, alpha: float, chunk_entries: int = 2_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Lasso solutions on the supports and signs that ``w`` suggests.

    On the support S with signs s the optimum solves G_SS w_S = c_S - alpha s_S.
    A candidate is accepted only when it satisfies the Lasso's optimality
    (KKT) conditions: its signs are s, and |c_j - (G w)_j| <= alpha off S.
    Returns the candidates (B, d, T) and the accepted mask (B, T).
    """
    b, d, t = c.shape
    sign = np.sign(w)
    exact = np.zeros_like(w)
    ok = np.zeros((b, t), dtype=bool)
    eye = np.eye(d, dtype=bool)
    step = max(1, chunk_entries // max(1, t * d * d))
    slack = alpha * 1e-9 + 1e-12
    for lo in range(0, b, step):
        hi = min(b, lo + step)
        on = w[lo:hi] != 0
        signs = sign[lo:hi]
        # Nearly collinear predictors leave coordinate descent with weight on both of a pair where
        # the optimum has one: a weight whose exact solution changes sign leaves the support, and
        # the smaller support is solved again (an active-set step), at most d times.
        for _ in range(d):
            s_t = on.transpose(0, 2, 1)  # (b', T, d)
            both = s_t[..., :, None] & s_t[..., None, :]
            system = np.where(both, g[lo:hi, None], eye)  # identity off the support
            rhs = np.where(s_t, c[lo:hi].transpose(0, 2, 1) - alpha * signs.transpose(0, 2, 1), 0.0)
            try:
                cand = np.linalg.solve(system, rhs[..., None])[..., 0].transpose(0, 2, 1)
            except np.linalg.LinAlgError:
                cand = None  # a singular support: leave these targets to coordinate descent
                break
            flipped = on & (np.sign(cand) != signs)
            if not flipped.any():
                break
            on = on & ~flipped
        if cand is None:
            continue
        grad = c[lo:hi] - np.matmul(g[lo:hi], cand)
        signs_hold = np.all(~on | (np.sign(cand) == signs), axis=1)
        off_ok = np.all(on | (np.abs(grad) <= alpha + slack), axis=1)
        exact[lo:hi] = cand
        ok[lo:hi] = signs_hold & off_ok & np.all(np.isfinite(cand), axis=1)
    return exact, ok


def lasso_gram(
    gram: Any,
    cross: Any,
    alpha: float,
    *,
    tol: float = 1e-10,
    max_iter: int = 10_000,
    kkt_tol: float = KKT_TOL,
) -> np.ndarray:
    """Lasso weights from the Gram matrices, for many targets at once.

    Minimises ``(1/(2n))||y - X w||^2 + alpha ||w||_1`` for every target column
    (the objective of ``sklearn.linear_model.Lasso``), given only
    ``gram = X'X / n`` with shape ``(..., d, d)`` and ``cross = X'Y / n`` with
    shape ``(..., d, t)``; returns ``w`` with shape ``(..., d, t)``. Leading
    dimensions are independent problems, so one call solves every pair of an
    all-against-all comparison.

    Cyclic coordinate descent finds each target's support and signs; the
    weights are then solved exactly on that support and kept once they pass
    the optimality (KKT) check, which makes them exact to rounding rather than
    to a stopping tolerance. Targets whose support has not settled continue
    with coordinate descent, on a shrinking working set, until they pass or no
    weight moves more than ``tol`` in a sweep. A predictor with zero variance
    (``gram[j, j] == 0``) gets weight 0. Nearly collinear predictors (a Gram
    eigenvalue near 0) make coordinate descent slow; a target still running
    after ``max_iter`` sweeps keeps its last weights. It is converged enough when
    its optimality conditions hold to ``kkt_tol * alpha`` (``kkt_violation``);
    otherwise a ``RuntimeWarning`` says how far off the worst target is.
    """
    g = np.asarray(gram, dtype=float)
    c = np.asarray(cross, dtype=float)
    alpha = check_real("alpha", alpha, 0.0, strict=True)
    tol = check_real("tol", tol, 0.0, strict=True)
    max_iter = check_int("max_iter", max_iter, 1)
    kkt_tol = check_real("kkt_tol", kkt_tol, 0.0)
    if g.ndim < 2 or g.shape[-1] != g.shape[-2]:
        raise ValueError(f"gram must have shape (..., d, d), got {g.shape}")
    if c.ndim != g.ndim or c.shape[:-1] != g.shape[:-1]:
        raise ValueError(f"cross must have shape (..., d, t) matching gram {g.shape}, got {c.shape}")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(c))):
        raise ValueError("gram and cross must be finite")
    lead, d, t = g.shape[:-2], g.shape[-1], c.shape[-1]
    g_all = g.reshape(-1, d, d)
    c_all = c.reshape(-1, d, t)
    result = np.zeros_like(c_all)
    # Working set: rows of problems, padded target columns (index -1 = padding).
    rows = np.arange(g_all.shape[0])
    cols = np.broadcast_to(np.arange(t), (len(rows), t)).copy()
    w = np.zeros_like(c_all)
    done_sweeps = 0
    burst = 4
    while len(rows) and done_sweeps < max_iter:
        sweeps = min(burst, max_iter - done_sweeps)
        valid = cols >= 0
        cw = np.where(valid[:, None, :], c_all[rows[:, None], :, np.maximum(cols, 0)].transpose(0, 2, 1), 0.0)
        gw = g_all[rows]
        step = _cd_sweeps(gw, cw, w, alpha, sweeps)
        done_sweeps += sweeps
        burst = min(2 * burst, 32)
        exact, ok = _polish(gw, cw, w, alpha)
        stalled = step < tol
        finished = (ok | stalled) & valid
        final = np.where(ok[:, None, :], exact, w)
        r_idx, t_idx = np.nonzero(finished)
        result[rows[r_idx], :, cols[r_idx, t_idx]] = final[r_idx, :, t_idx]
        remaining = valid & ~finished
        if done_sweeps >= max_iter and remaining.any():
            r_idx, t_idx = np.nonzero(remaining)
            result[rows[r_idx], :, cols[r_idx, t_idx]] = w[r_idx, :, t_idx]
            violation = kkt_violation(gw, cw, w, alpha)[remaining] / alpha
            if np.any(violation > kkt_tol):
                warnings.warn(
                    f"lasso_gram: {int(np.sum(violation > kkt_tol))} targets did not converge in "
                    f"max_iter={max_iter} sweeps: their optimality conditions are off by up to "
                    f"{float(violation.max()):.3g} x alpha (kkt_tol={kkt_tol:g})",
                    RuntimeWarning,
                    stacklevel=2,
                )
            break
        # Shrink the working set to the problems and targets still running,
        # keeping their current weights as the warm start.
        keep_rows = np.flatnonzero(remaining.any(axis=1))
        counts = remaining[keep_rows].sum(axis=1)
        width = int(counts.max()) if len(keep_rows) else 0
        new_cols = np.full((len(keep_rows), width), -1)
        new_w = np.zeros((len(keep_rows), d, width))
        for k, r in enumerate(keep_rows):
            live = np.flatnonzero(remaining[r])
            new_cols[k, : len(live)] = cols[r, live]
            new_w[k, :, : len(live)] = w[r][:, live]
        rows, cols, w = rows[keep_rows], new_cols, new_w
    return result.reshape(*lead, d, t)
