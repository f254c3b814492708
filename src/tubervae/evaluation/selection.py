"""Judging a model-selection rule against a supervised score: regret, ModelCentrality, Spearman.

A *rule* scores every model of a pool (UDR, the held-out ELBO, MIG from a few labelled photos, ...)
and picks the model it scores highest. Its *regret* on a pool is the best supervised score there
(MIG) minus the score of the model it picks. The pool of one family is a grid of settings × seeds;
how much of a rule's record is luck of the seeds is measured by resampling the seeds of every
setting with replacement (a bootstrap over seeds, :func:`seed_resamples`).

Conventions shared by every function:

* ``scores`` and ``quality`` are length-``m`` vectors, one entry per model; higher is better for
  both. A NaN score is never preferred to a number (it ranks below every score); a NaN quality is
  an error (the supervised score is the yardstick);
* ``groups`` gives each model its setting (any hashable label); a resample keeps every setting and
  redraws its seeds, so a setting of three seeds is three draws from its own three models;
* ties are broken by expectation, not by order: a rule whose top score is shared by k models
  picks each with probability 1/k, so its regret is the mean over them;
* the rules' scores are computed once, on all the models; a resample changes which models are
  there to be picked and which is best, not the scores.

Everything here is pure numpy/scipy: arrays in, arrays and numbers out.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from tubervae.checks import check_int, check_random_state, check_real

__all__ = [
    "BootstrapFigure",
    "bootstrap_regret",
    "bootstrap_spearman",
    "model_centrality",
    "pick_regret",
    "pool_centrality",
    "random_regret",
    "seed_resamples",
    "setting_medians",
    "setting_regret",
    "symmetric_similarity",
]


@dataclass(frozen=True)
class BootstrapFigure:
    """A figure on all the models (``value``), its mean over the resamples and a percentile interval."""

    value: float
    mean: float
    low: float
    high: float
    n_boot: int


# --------------------------------------------------------------------------- validation


def _vector(name: str, values: Any, m: int | None = None, *, allow_nan: bool = True) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector (one entry per model), got shape {arr.shape}")
    if m is not None and arr.size != m:
        raise ValueError(f"{name} must have one entry per model ({m}), got {arr.size}")
    if np.any(np.isinf(arr)):
        raise ValueError(f"{name} must be finite (or NaN), got an infinite value")
    if not allow_nan and np.any(np.isnan(arr)):
        raise ValueError(f"{name} must not contain NaN: it is the yardstick every pick is measured by")
    return arr


def _members(members: Any, m: int) -> np.ndarray:
    if members is None:
        return np.arange(m)
    idx = np.asarray(members)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"members must be a non-empty 1-D vector of model indices, got {members!r}")
    if np.any(idx < 0) or np.any(idx >= m):
        raise ValueError(f"members must index models 0..{m - 1}, got {idx.tolist()}")
    return idx


def _labels(groups: Sequence[Hashable], m: int) -> np.ndarray:
    """Each model's setting as an integer 0..g-1 (in order of first appearance)."""
    labels = list(groups)
    if len(labels) != m:
        raise ValueError(f"groups must give one setting per model: {m} models but {len(labels)} labels")
    codes: dict[Hashable, int] = {}
    out = np.empty(m, dtype=np.int64)
    for i, label in enumerate(labels):
        try:
            out[i] = codes.setdefault(label, len(codes))
        except TypeError:
            raise TypeError(f"groups[{i}] must be hashable (e.g. a string or tuple), got {label!r}") from None
    return out


def _summary(value: float, draws: np.ndarray, n_boot: int, level: float) -> BootstrapFigure:
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return BootstrapFigure(value, float("nan"), float("nan"), float("nan"), n_boot)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return BootstrapFigure(float(value), float(finite.mean()), float(low), float(high), n_boot)


# --------------------------------------------------------------------------- picks and regret


def pick_regret(scores: Any, quality: Any, members: Any = None) -> float:
    """Best ``quality`` among ``members`` minus the quality of the model the rule picks there.

    The rule picks the member of highest score; a top score shared by several members picks each
    with equal probability, so the regret is the best quality minus their mean quality. NaN scores
    rank below every number; if every member's score is NaN the pick is a random one
    (:func:`random_regret`). ``members`` (default: every model) may repeat a model, as a
    bootstrap resample does.
    """
    q = _vector("quality", quality, allow_nan=False)
    s = _vector("scores", scores, q.size)
    idx = _members(members, q.size)
    best = q[idx].max()
    ss = s[idx]
    if np.all(np.isnan(ss)):
        return float(best - q[idx].mean())
    top = np.nanmax(ss)
    chosen = idx[ss == top]
    return float(best - q[chosen].mean())


def random_regret(quality: Any, members: Any = None) -> float:
    """The expected regret of a uniformly random pick: best quality minus the mean quality."""
    q = _vector("quality", quality, allow_nan=False)
    idx = _members(members, q.size)
    return float(q[idx].max() - q[idx].mean())


def setting_medians(values: Any, groups: Sequence[Hashable], members: Any = None) -> np.ndarray:
    """The median of ``values`` over each setting's members, settings in order of first appearance.

    NaN values are left out of a median (all NaN: NaN); a setting without members in ``members``
    gets NaN.
    """
    v = _vector("values", values)
    codes = _labels(groups, v.size)
    idx = _members(members, v.size)
    out = np.full(codes.max() + 1, np.nan)
    for g in range(out.size):
        chosen = v[idx[codes[idx] == g]]
        chosen = chosen[~np.isnan(chosen)]
        if chosen.size:
            out[g] = np.median(chosen)
    return out


def setting_regret(scores: Any, quality: Any, groups: Sequence[Hashable], members: Any = None) -> float:
    """Regret at the level a search works at: the settings ranked by their median score.

    Best median quality over the settings minus the median quality of the setting of highest
    median score (ties: the mean over the tied settings), medians over each setting's members.
    """
    q = setting_medians(_vector("quality", quality, allow_nan=False), groups, members)
    s = setting_medians(scores, groups, members)
    present = ~np.isnan(q)
    return pick_regret(s[present], q[present])


def seed_resamples(groups: Sequence[Hashable], n_boot: int, random_state: Any = 0) -> np.ndarray:
    """``n_boot`` resamples of the models, each setting's seeds drawn with replacement.

    Returns an ``(n_boot, m)`` integer array: row b lists model indices, setting by setting, as
    many of each setting as it has models, drawn from that setting's models with replacement.
    """
    n_boot = check_int("n_boot", n_boot, 1)
    labels = list(groups)
    codes = _labels(labels, len(labels))
    rng = check_random_state(random_state)
    blocks = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    draws = [rng.choice(block, size=(n_boot, block.size), replace=True) for block in blocks]
    return np.concatenate(draws, axis=1)


def bootstrap_regret(
    scores: Any,
    quality: Any,
    groups: Sequence[Hashable],
    *,
    level: str = "model",
    n_boot: int = 1000,
    random_state: Any = 0,
    interval: float = 0.95,
) -> BootstrapFigure:
    """A rule's regret on all the models and over ``n_boot`` resamples of every setting's seeds.

    ``level="model"``: the rule picks a model (:func:`pick_regret`); ``"setting"``: a setting, by
    median score, judged by median quality (:func:`setting_regret`). ``scores=None`` is the random
    pick (:func:`random_regret`; at the setting level, a random setting).
    """
    if level not in ("model", "setting"):
        raise ValueError(f"level must be 'model' or 'setting', got {level!r}")
    interval = check_real("interval", interval, 0.0, strict=True, maximum=1.0)
    q = _vector("quality", quality, allow_nan=False)
    s = np.full(q.size, np.nan) if scores is None else _vector("scores", scores, q.size)
    _labels(groups, q.size)

    def one(members: np.ndarray | None) -> float:
        if level == "model":
            return pick_regret(s, q, members)
        return setting_regret(s, q, groups, members)

    draws = np.array([one(row) for row in seed_resamples(groups, n_boot, random_state)])
    return _summary(one(None), draws, n_boot, interval)


# --------------------------------------------------------------------------- ModelCentrality


def symmetric_similarity(pair_scores: Any) -> np.ndarray:
    """``(S + Sᵀ) / 2`` of a pairwise score matrix, NaN on the diagonal.

    UDR's pair score with the Lasso is not symmetric (model i predicting j differs from j
    predicting i); the medoid needs one similarity per pair. Where only one direction is known
    (the other NaN) that one is used.
    """
    s = np.asarray(pair_scores, dtype=float)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 2:
        raise ValueError(f"pair_scores must be a square (m, m) matrix with m >= 2, got shape {s.shape}")
    if np.any(np.isinf(s)):
        raise ValueError("pair_scores must be finite (or NaN), got an infinite value")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pair compared neither way: NaN, said above
        out = np.nanmean(np.stack([s, s.T]), axis=0)
    np.fill_diagonal(out, np.nan)
    return out


def model_centrality(pair_scores: Any) -> np.ndarray:
    """ModelCentrality (Lin et al., ICML 2020): each model's mean similarity to the rest of the pool.

    The pool's medoid (the model of least total distance to the others, distance = 1 − similarity)
    is the model of highest centrality, so picking the highest score picks the medoid. The
    similarity of a pair is :func:`symmetric_similarity` of ``pair_scores`` (e.g.
    ``udr_scores(..., groups=None).pair_scores``: the same pairwise similarity UDR uses); pairs
    never compared (NaN both ways) are left out of a model's mean.
    """
    sim = symmetric_similarity(pair_scores)
    counts = np.sum(~np.isnan(sim), axis=1)
    totals = np.nansum(sim, axis=1)
    return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def pool_centrality(pair_scores: Any, pools: Sequence[Hashable]) -> np.ndarray:
    """:func:`model_centrality` of each model within its own pool: the models of one pool label (a family)
    are compared with each other only; a model alone in its pool is NaN.

    ``pair_scores`` is the (m, m) pairwise score matrix of all the models (e.g. all-against-all UDR's
    ``pair_scores``); the other pools' entries are ignored, so one matrix serves every family.
    """
    s = np.asarray(pair_scores, dtype=float)
    labels = list(pools)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"pair_scores must be a square (m, m) matrix, got shape {s.shape}")
    if len(labels) != s.shape[0]:
        raise ValueError(f"pools must give each of the {s.shape[0]} models a pool, got {len(labels)} labels")
    out = np.full(s.shape[0], np.nan)
    for pool in dict.fromkeys(labels):
        idx = np.flatnonzero([label == pool for label in labels])
        if idx.size > 1:
            out[idx] = model_centrality(s[np.ix_(idx, idx)])
    return out


# --------------------------------------------------------------------------- Spearman


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    ok = ~(np.isnan(x) | np.isnan(y))
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def bootstrap_spearman(
    x: Any,
    y: Any,
    groups: Sequence[Hashable],
    *,
    level: str = "model",
    n_boot: int = 1000,
    random_state: Any = 0,
    interval: float = 0.95,
) -> BootstrapFigure:
    """Spearman's ρ of ``x`` and ``y`` with a percentile bootstrap interval over seeds.

    ``level="model"``: over the models (a resample repeats models, ties and all); ``"setting"``:
    over the settings' medians (of the resampled seeds). Models with a NaN in either are left out;
    a resample where either side is constant (or fewer than 3 points remain) has no ρ and is left
    out of the interval.
    """
    if level not in ("model", "setting"):
        raise ValueError(f"level must be 'model' or 'setting', got {level!r}")
    interval = check_real("interval", interval, 0.0, strict=True, maximum=1.0)
    xv = _vector("x", x)
    yv = _vector("y", y, xv.size)
    _labels(groups, xv.size)

    def one(members: np.ndarray | None) -> float:
        if level == "model":
            idx = np.arange(xv.size) if members is None else members
            return _rho(xv[idx], yv[idx])
        return _rho(setting_medians(xv, groups, members), setting_medians(yv, groups, members))

    draws = np.array([one(row) for row in seed_resamples(groups, n_boot, random_state)])
    return _summary(one(None), draws, n_boot, interval)
