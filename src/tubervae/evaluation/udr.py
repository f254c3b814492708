"""Unsupervised Disentanglement Ranking (UDR; Duan et al., ICLR 2020).

Kept whole: similarity, pair scores and their aggregation run as one batched computation
(`_prepare`, `_batched_similarities`) that every public function shares; split, the
private batch structures would cross module borders.

Two models trained with different seeds that both disentangle should find the
same factors, each in one component, up to permutation and sign. UDR scores a
pair of models by how one-to-one the similarity matrix ``R`` between their
informative latent components is, and scores a model by the median over its
partners of the pairs in which the partner's representation predicts the model's
(as disentanglement_lib's ``compute_udr_sklearn`` does; it matters for the Lasso
similarity, which is not symmetric).

Everything here is pure numpy/scipy: arrays in, arrays out, no I/O. All pairs
of a comparison are computed in one batch (ranks once per model, one Gram
matrix per predictor model, all Lasso targets solved at once), which is what
makes the all-against-all (A2A) comparison of the thesis's 115 models cheap.

Conventions shared by every function:

* a representation is an ``(n, d)`` array of encoder means; every model of a
  comparison must have encoded the same ``n`` images;
* a KL vector is a length-``d`` array, the KL of each component to the prior;
  a component is *informative* when its KL exceeds ``kl_threshold``;
* representations are standardised per column (zero mean, unit population
  variance, as scikit-learn's ``StandardScaler``); a constant column becomes all
  zeros, never NaN;
* before a pair is compared, non-informative components are zeroed (as in
  disentanglement_lib), so they neither predict nor are predicted in the Lasso.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tubervae.checks import check_array, check_choice, check_int, check_real
from tubervae.config import AGGREGATES, INFORMATIVE_KL, SIMILARITIES, UdrConfig

# The Lasso similarity is solved by a batched Gram-matrix solver rather than scikit-learn's
# Lasso, one pair at a time: see tubervae.evaluation.lasso for why (and benchmarks/bench_udr.py).
from tubervae.evaluation.lasso import lasso_gram

# Relative spread below which a column counts as constant: rounding in the
# mean leaves ~1e-16 relative noise that must not be blown up to unit variance.
_CONSTANT_RTOL = 1e-12
# Rows of the all-models Gram matrix computed per matrix product (see
# _batched_similarities).
_GRAM_CHUNK_ROWS = 512


# --------------------------------------------------------------------------
# validation (plain argument checks come from tubervae.checks; these know
# about representations and KL vectors)


def _as_kl(name: str, kl: Any, d: int) -> np.ndarray:
    arr = np.asarray(kl, dtype=float)
    if arr.ndim != 1 or arr.shape[0] != d:
        raise ValueError(f"{name} must be a length-{d} vector (one KL per component), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_same_n(shapes: Sequence[tuple[int, ...]], what: str) -> None:
    ns = sorted({s[0] for s in shapes})
    if len(ns) > 1:
        raise ValueError(f"all {what} must encode the same images (same number of rows n), got n values {ns}")


# --------------------------------------------------------------------------
# building blocks


def informative_mask(kl: Any, kl_threshold: float = INFORMATIVE_KL) -> np.ndarray:
    """Boolean mask of the components whose KL exceeds the threshold.

    Components at the prior (KL ~ 0) carry no information about the image; UDR
    ignores them, so a model is judged only on what it actually encodes.
    """
    threshold = check_real("kl_threshold", kl_threshold)
    arr = np.asarray(kl, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"kl must be a 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("kl contains NaN or infinite values")
    return arr > threshold


def standardise(rep: Any) -> np.ndarray:
    """Zero mean, unit (population) variance per column; constant columns -> 0.

    Standardising makes Lasso weights comparable across components (the
    thesis's alpha = 0.1 assumes unit variance); mapping constant columns to
    zeros keeps dead components from producing NaN downstream.
    """
    arr = np.asarray(rep, dtype=float)
    if arr.ndim < 2:
        raise ValueError(f"rep must be at least 2-D (n, d), got shape {arr.shape}")
    return _standardise_axis0(arr)


def _standardise_axis0(arr: np.ndarray) -> np.ndarray:
    mean = arr.mean(axis=0)
    centred = arr - mean
    std = np.sqrt(np.mean(centred**2, axis=0))
    scale = np.maximum(np.abs(mean), np.max(np.abs(arr), axis=0))
    constant = std <= _CONSTANT_RTOL * scale
    safe = np.where(constant, 1.0, std)
    out = centred / safe
    out[..., constant] = 0.0
    return out


def _standardised_ranks(arr: np.ndarray) -> np.ndarray:
    """Average ranks per column (ties shared), standardised.

    Spearman's rho is Pearson's r of these ranks, so one matrix product of
    standardised ranks gives every component pair's rho at once.
    """
    from scipy.stats import rankdata  # here: scipy.stats costs a search about half a second to import

    return _standardise_axis0(rankdata(arr, axis=0, method="average"))


def similarity_matrix(
    rep_a: Any,
    rep_b: Any,
    method: str,
    *,
    lasso_alpha: float = 0.1,
) -> np.ndarray:
    """The ``(d_a, d_b)`` similarity matrix R between two representations.

    ``"spearman"``: ``R[a, b] = |Spearman rho|`` of component ``a`` of
    ``rep_a`` and component ``b`` of ``rep_b``. ``"lasso"``: ``R[a, b]`` is the
    absolute weight of component ``a`` when all of ``rep_a`` predicts component
    ``b`` of ``rep_b`` with an L1 penalty ``lasso_alpha`` (both standardised).
    Uses every component; :func:`udr_pair` first zeroes the uninformative ones.
    """
    a = check_array("rep_a", rep_a, min_rows=2)
    b = check_array("rep_b", rep_b, min_rows=2)
    _check_same_n([a.shape, b.shape], "representations")
    method = check_choice("method", method, SIMILARITIES)
    alpha = check_real("lasso_alpha", lasso_alpha, 0.0, strict=True)
    if method == "spearman":
        za, zb = _standardised_ranks(a), _standardised_ranks(b)
        return np.abs(za.T @ zb) / a.shape[0]
    za, zb = _standardise_axis0(a), _standardise_axis0(b)
    n = a.shape[0]
    return np.abs(lasso_gram(za.T @ za / n, za.T @ zb / n, alpha))


# --------------------------------------------------------------------------
# aggregation


def _aggregate_batch(r: np.ndarray, rows: np.ndarray, cols: np.ndarray, aggregate: str) -> np.ndarray:
    """UDR of a stack of similarity matrices ``r`` (..., d_a, d_b)."""
    r = np.where(rows[..., :, None] & cols[..., None, :], np.abs(r), 0.0)
    d_a = rows.sum(axis=-1)
    d_b = cols.sum(axis=-1)

    def ratio(axis: int, keep: np.ndarray) -> np.ndarray:
        # best match squared over total similarity: 1 for a one-to-one match,
        # lower when a component is spread over several; 0/0 counts as 0.
        peak = r.max(axis=axis, initial=0.0)
        total = r.sum(axis=axis)
        safe = np.where(total > 0, total, 1.0)
        return np.where(keep & (total > 0), peak**2 / safe, 0.0).sum(axis=-1)

    col_terms = ratio(-2, cols)
    row_terms = ratio(-1, rows)
    empty = (d_a == 0) | (d_b == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if aggregate == "paper":
            score = (col_terms + row_terms) / (d_a + d_b)
        else:
            score = 0.5 * (col_terms / d_b + row_terms / d_a)
    return np.where(empty, 0.0, score)


def aggregate_udr(
    r: Any,
    informative_a: Any,
    informative_b: Any,
    aggregate: str = "paper",
) -> float:
    """UDR of one similarity matrix, restricted to the informative components.

    ``aggregate="paper"`` is the thesis's formula, a sum of both directions'
    ``max^2 / sum`` terms divided by ``d_a + d_b``; ``"reference"`` is
    disentanglement_lib's mean of the two directions' averages. They coincide
    when ``d_a == d_b``. A 0/0 term counts as 0, and a side without informative
    components gives 0.
    """
    arr = np.asarray(r, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"r must be a 2-D (d_a, d_b) matrix, got shape {arr.shape}")
    if np.any(np.isnan(arr)):
        raise ValueError("r contains NaN; pass uninformative entries via the masks")
    rows = np.asarray(informative_a)
    cols = np.asarray(informative_b)
    if rows.dtype != bool or rows.shape != (arr.shape[0],):
        raise ValueError(
            f"informative_a must be a boolean vector of length {arr.shape[0]}, "
            f"got dtype {rows.dtype} shape {rows.shape}"
        )
    if cols.dtype != bool or cols.shape != (arr.shape[1],):
        raise ValueError(
            f"informative_b must be a boolean vector of length {arr.shape[1]}, "
            f"got dtype {cols.dtype} shape {cols.shape}"
        )
    aggregate = check_choice("aggregate", aggregate, AGGREGATES)
    return float(_aggregate_batch(arr, rows, cols, aggregate))


# --------------------------------------------------------------------------
# the batched engine


@dataclass(frozen=True)
class _Prepared:
    z: np.ndarray  # (M, n, d_max): standardised (ranks for Spearman), uninformative zeroed
    masks: np.ndarray  # (M, d_max) informative components; padding is False


def _prepare(reps: Sequence[np.ndarray], masks: Sequence[np.ndarray], similarity: str) -> _Prepared:
    m = len(reps)
    n = reps[0].shape[0]
    dims = np.array([r.shape[1] for r in reps])
    d_max = int(dims.max())
    stacked = np.zeros((n, m, d_max))  # padding columns are constant -> zero
    padded_masks = np.zeros((m, d_max), dtype=bool)
    for i, (rep, mask) in enumerate(zip(reps, masks)):
        stacked[:, i, : rep.shape[1]] = rep
        padded_masks[i, : rep.shape[1]] = mask
    flat = stacked.reshape(n, m * d_max)
    flat = _standardised_ranks(flat) if similarity == "spearman" else _standardise_axis0(flat)
    z = flat.reshape(n, m, d_max) * padded_masks[None]
    return _Prepared(z=np.ascontiguousarray(z.transpose(1, 0, 2)), masks=padded_masks)


def _batched_similarities(prep: _Prepared, partners: np.ndarray, similarity: str, lasso_alpha: float) -> np.ndarray:
    """R for every (model, partner) pair: shape (M, P_max, d_max, d_max).

    ``partners`` is (M, P_max) with -1 for padding; padded slots give zeros.
    """
    m, n, d = prep.z.shape
    p_max = partners.shape[1]
    flat = prep.z.transpose(1, 0, 2).reshape(n, m * d)
    rows_of = np.ascontiguousarray(flat.T)
    valid = partners >= 0
    safe_partners = np.where(valid, partners, 0)
    cross = np.empty((m, p_max, d, d))
    gram = np.empty((m, d, d))
    # Row-blocks of the full Gram matrix of all models, a few hundred rows at a
    # time: BLAS is slow on products only d = 10 rows tall, and the whole
    # (M d)^2 matrix would grow quadratically with the number of models.
    per_chunk = max(1, _GRAM_CHUNK_ROWS // d)
    for lo in range(0, m, per_chunk):
        hi = min(m, lo + per_chunk)
        block = (rows_of[lo * d : hi * d] @ flat / n).reshape(hi - lo, d, m, d)
        local = np.arange(hi - lo)
        gram[lo:hi] = block[local, :, np.arange(lo, hi), :]
        cross[lo:hi] = block[local[:, None], :, safe_partners[lo:hi], :]
    cross *= valid[:, :, None, None]
    if similarity == "spearman":
        return np.abs(cross)
    targets = cross.transpose(0, 2, 1, 3).reshape(m, d, p_max * d)
    weights = lasso_gram(gram, targets, lasso_alpha)
    return np.ascontiguousarray(np.abs(weights).reshape(m, d, p_max, d).transpose(0, 2, 1, 3))


def _validate_models(
    representations: Any,
    kl_divergences: Any,
    names: tuple[Sequence[str], Sequence[str]] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if isinstance(representations, np.ndarray) and representations.ndim == 3:
        reps_in = list(representations)
    elif isinstance(representations, (list, tuple)):
        reps_in = list(representations)
    else:
        raise TypeError(
            "representations must be a list of (n, d) arrays or an (M, n, d) array, "
            f"got {type(representations).__name__}"
        )
    if len(reps_in) == 0:
        raise ValueError("representations is empty: need at least one model")
    if isinstance(kl_divergences, np.ndarray) and kl_divergences.ndim == 2:
        kls_in = list(kl_divergences)
    elif isinstance(kl_divergences, (list, tuple)):
        kls_in = list(kl_divergences)
    else:
        raise TypeError(
            f"kl_divergences must be a list of length-d vectors or an (M, d) array, got {type(kl_divergences).__name__}"
        )
    if len(kls_in) != len(reps_in):
        raise ValueError(
            f"kl_divergences must have one vector per model: {len(reps_in)} "
            f"representations but {len(kls_in)} KL vectors"
        )
    if names is None:
        names = (
            [f"representations[{i}]" for i in range(len(reps_in))],
            [f"kl_divergences[{i}]" for i in range(len(reps_in))],
        )
    reps = [check_array(name, r, min_rows=2) for name, r in zip(names[0], reps_in)]
    _check_same_n([r.shape for r in reps], "models' representations")
    kls = [_as_kl(name, k, r.shape[1]) for name, k, r in zip(names[1], kls_in, reps)]
    return reps, kls


# --------------------------------------------------------------------------
# public UDR


def udr_pair(
    rep_a: Any,
    rep_b: Any,
    kl_a: Any,
    kl_b: Any,
    *,
    similarity: str = "lasso",
    aggregate: str = "paper",
    kl_threshold: float = INFORMATIVE_KL,
    lasso_alpha: float = 0.1,
) -> float:
    """UDR_ab of model a (the predictor in the Lasso) against model b.

    Only informative components take part. Permuting or sign-flipping the
    components of either model leaves the score unchanged. A model without
    informative components scores 0 (with a warning) instead of failing, so a
    collapsed model cannot break a ranking.
    """
    similarity = check_choice("similarity", similarity, SIMILARITIES)
    aggregate = check_choice("aggregate", aggregate, AGGREGATES)
    threshold = check_real("kl_threshold", kl_threshold)
    alpha = check_real("lasso_alpha", lasso_alpha, 0.0, strict=True)
    reps, kls = _validate_models([rep_a, rep_b], [kl_a, kl_b], (("rep_a", "rep_b"), ("kl_a", "kl_b")))
    masks = [k > threshold for k in kls]
    for name, mask in zip(("a", "b"), masks):
        if not mask.any():
            warnings.warn(
                f"model {name} has no informative component (KL > {threshold:g}); its UDR is 0",
                RuntimeWarning,
                stacklevel=2,
            )
    if not (masks[0].any() and masks[1].any()):
        return 0.0
    prep = _prepare(reps, masks, similarity)
    r = _batched_similarities(prep, np.array([[1], [-1]]), similarity, alpha)[0, 0]
    return float(_aggregate_batch(r, prep.masks[0], prep.masks[1], aggregate))


def pair_similarities(
    representations: Any,
    kl_divergences: Any,
    pairs: Any,
    *,
    similarity: str = "lasso",
    kl_threshold: float = INFORMATIVE_KL,
    lasso_alpha: float = 0.1,
) -> np.ndarray:
    """The matrices R that UDR scores, for a list of ``(i, j)`` model pairs.

    Returns ``(len(pairs), d_max, d_max)``; entry ``[k, a, b]`` compares
    component ``a`` of model ``pairs[k][0]`` with component ``b`` of model
    ``pairs[k][1]``. Entries of uninformative (or, for narrower models,
    missing) components are NaN, so heat maps show them blank. All pairs are
    computed in one batch by the same code as :func:`udr_scores`.
    """
    similarity = check_choice("similarity", similarity, SIMILARITIES)
    threshold = check_real("kl_threshold", kl_threshold)
    alpha = check_real("lasso_alpha", lasso_alpha, 0.0, strict=True)
    reps, kls = _validate_models(representations, kl_divergences)
    m = len(reps)
    pair_arr = np.asarray(pairs)
    if pair_arr.size == 0:
        pair_arr = pair_arr.reshape(0, 2)
    if pair_arr.ndim != 2 or pair_arr.shape[1] != 2 or not np.issubdtype(pair_arr.dtype, np.integer):
        raise ValueError(f"pairs must be a list of (i, j) integer pairs, got {pairs!r}")
    if np.any(pair_arr < 0) or np.any(pair_arr >= m):
        raise ValueError(f"pairs must index models 0..{m - 1}, got {pair_arr.tolist()}")
    masks = [k > threshold for k in kls]
    prep = _prepare(reps, masks, similarity)
    d_max = prep.masks.shape[1]
    out = np.full((len(pair_arr), d_max, d_max), np.nan)
    if len(pair_arr) == 0:
        return out
    # Lay the pairs out per predictor model so each model's Gram matrix is shared.
    slots: list[list[int]] = [[] for _ in range(m)]
    where: list[tuple[int, int]] = []
    for i, j in pair_arr.tolist():
        where.append((i, len(slots[i])))
        slots[i].append(j)
    partners = np.full((m, max(len(s) for s in slots)), -1)
    for i, s in enumerate(slots):
        partners[i, : len(s)] = s
    r = _batched_similarities(prep, partners, similarity, alpha)
    for k, ((i, slot), (_, j)) in enumerate(zip(where, pair_arr.tolist())):
        keep = prep.masks[i][:, None] & prep.masks[j][None, :]
        out[k] = np.where(keep, r[i, slot], np.nan)
    return out


def masked_similarity(
    rep_a: Any,
    rep_b: Any,
    kl_a: Any,
    kl_b: Any,
    *,
    similarity: str = "lasso",
    kl_threshold: float = INFORMATIVE_KL,
    lasso_alpha: float = 0.1,
) -> np.ndarray:
    """The ``(d_a, d_b)`` matrix R that :func:`udr_pair` scores, NaN where
    either component is uninformative, ready for a heat map with blank rows
    and columns (figures 4.15 and 4.17 of the thesis)."""
    _validate_models([rep_a, rep_b], [kl_a, kl_b], (("rep_a", "rep_b"), ("kl_a", "kl_b")))
    r = pair_similarities(
        [rep_a, rep_b],
        [kl_a, kl_b],
        [(0, 1)],
        similarity=similarity,
        kl_threshold=kl_threshold,
        lasso_alpha=lasso_alpha,
    )[0]
    return r[: np.shape(rep_a)[1], : np.shape(rep_b)[1]]


@dataclass(frozen=True)
class UDRResult:
    """UDR of a set of models.

    ``pair_scores[i, j]`` is UDR_ij with model i's representation as the Lasso
    predictor of model j's, NaN where the pair was not compared (including the
    diagonal). ``scores[i]`` is the median of ``pair_scores[j, i]`` over model
    i's partners j: how well the partners' representations explain model i's,
    as disentanglement_lib's ``compute_udr_sklearn`` scores a model (the median
    of column i); NaN when it has none. ``partners[i]`` lists the partner indices.
    """

    scores: np.ndarray
    pair_scores: np.ndarray
    n_informative: np.ndarray
    partners: tuple[tuple[int, ...], ...]
    settings: dict[str, Any] = field(default_factory=dict)


def _choose_partners(
    groups: Sequence[Hashable] | None,
    m: int,
    n_partners: int | None,
    rng: np.random.Generator,
) -> list[list[int]]:
    if groups is None:
        labels: list[Hashable] = [0] * m
    else:
        labels = list(groups)
        if len(labels) != m:
            raise ValueError(f"groups must have one label per model: {m} models but {len(labels)} labels")
    members: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        try:
            members.setdefault(label, []).append(i)
        except TypeError:
            raise TypeError(f"groups[{i}] must be hashable (e.g. a string or tuple), got {label!r}") from None
    chosen = []
    for i, label in enumerate(labels):
        others = [j for j in members[label] if j != i]
        if n_partners is not None and n_partners < len(others):
            picked = rng.choice(len(others), size=n_partners, replace=False)
            others = sorted(others[k] for k in picked)
        chosen.append(others)
    return chosen


def udr_options(udr: UdrConfig, *, within: bool = True, similarity: str | None = None) -> dict:
    """:func:`udr_scores`'s keyword arguments from the `udr` settings, the same for the search, the udr stage
    and the evaluate stage: within a setting, `udr.n_partners` partners (0: every other seed); all against
    all (`within=False`), every model. `similarity` overrides `udr.similarity` (evaluate measures both)."""
    return {
        "n_partners": (udr.n_partners or None) if within else None,
        "partner_seed": udr.partner_seed,
        "similarity": udr.similarity if similarity is None else similarity,
        "aggregate": udr.aggregate,
        "kl_threshold": udr.kl_threshold,
        "lasso_alpha": udr.lasso_alpha,
    }


def udr_scores(
    representations: Any,
    kl_divergences: Any,
    *,
    groups: Sequence[Hashable] | None = None,
    n_partners: int | None = None,
    partner_seed: int | np.random.Generator = 0,
    similarity: str = "lasso",
    aggregate: str = "paper",
    kl_threshold: float = INFORMATIVE_KL,
    lasso_alpha: float = 0.1,
    excluded: Sequence[Sequence[int]] | None = None,
) -> UDRResult:
    """UDR of every model against partners from its own group.

    ``excluded`` gives per model the components left out, as if uninformative: a guided
    family's guided component, which the labels and not the data's structure decide, so that
    UDR ranks such models over their unsupervised components alone.

    ``groups`` gives each model a label (e.g. ``(family, setting)``), and a
    model's partners are the other models with the same label: the thesis's
    within-family UDR. ``groups=None`` puts all models in one group, so
    everybody is a partner of everybody: the all-against-all (A2A) UDR that
    exposes the herd effect. ``n_partners`` (P) draws that many partners per
    model with ``partner_seed`` (all of the group when None or when the group
    is smaller). All models must have encoded the same n images.
    """
    similarity = check_choice("similarity", similarity, SIMILARITIES)
    aggregate = check_choice("aggregate", aggregate, AGGREGATES)
    threshold = check_real("kl_threshold", kl_threshold)
    alpha = check_real("lasso_alpha", lasso_alpha, 0.0, strict=True)
    if n_partners is not None:
        n_partners = check_int("n_partners (None for all)", n_partners, 1)
    if isinstance(partner_seed, np.random.Generator):
        rng = partner_seed
    elif isinstance(partner_seed, (int, np.integer)) and not isinstance(partner_seed, bool):
        rng = np.random.default_rng(int(partner_seed))
    else:
        raise TypeError(f"partner_seed must be an int or numpy Generator, got {partner_seed!r}")
    reps, kls = _validate_models(representations, kl_divergences)
    m = len(reps)
    masks = [k > threshold for k in kls]
    if excluded is not None:
        if len(excluded) != m:
            raise ValueError(f"excluded must list components for each of the {m} models, got {len(excluded)} entries")
        for i, components in enumerate(excluded):
            for c in components:
                if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < masks[i].size:
                    raise ValueError(
                        f"excluded[{i}] holds {c!r}, not a component of model {i} (0..{masks[i].size - 1})"
                    )
                masks[i][c] = False
    n_informative = np.array([int(mask.sum()) for mask in masks])
    partner_lists = _choose_partners(groups, m, n_partners, rng)

    silent = [i for i in range(m) if n_informative[i] == 0]
    if silent:
        warnings.warn(
            f"models {silent} have no informative component (KL > {threshold:g}); their pair scores are 0",
            RuntimeWarning,
            stacklevel=2,
        )
    lonely = [i for i in range(m) if not partner_lists[i]]
    if lonely:
        warnings.warn(
            f"models {lonely} have no partner in their group; their UDR is NaN",
            RuntimeWarning,
            stacklevel=2,
        )

    # Model i is scored on the pairs (j -> i): each partner j predicts model i. Batch them by
    # predictor: predictor j's targets are the models that have j as a partner.
    targets_of: list[list[int]] = [[] for _ in range(m)]
    for i, plist in enumerate(partner_lists):
        for j in plist:
            targets_of[j].append(i)
    pair_scores = np.full((m, m), np.nan)
    t_max = max(len(t) for t in targets_of)
    if t_max > 0:
        targets = np.full((m, t_max), -1)
        for j, tlist in enumerate(targets_of):
            targets[j, : len(tlist)] = tlist
        prep = _prepare(reps, masks, similarity)
        r = _batched_similarities(prep, targets, similarity, alpha)
        valid = targets >= 0
        rows = np.broadcast_to(prep.masks[:, None, :], (m, t_max, prep.masks.shape[1]))
        cols = prep.masks[np.where(valid, targets, 0)]
        scores = _aggregate_batch(r, rows, cols, aggregate)
        predictor = np.broadcast_to(np.arange(m)[:, None], targets.shape)
        pair_scores[predictor[valid], targets[valid]] = scores[valid]

    model_scores = np.array(
        [np.median(pair_scores[plist, i]) if plist else np.nan for i, plist in enumerate(partner_lists)]
    )
    settings = {
        "similarity": similarity,
        "aggregate": aggregate,
        "kl_threshold": threshold,
        "lasso_alpha": alpha,
        "n_partners": None if n_partners is None else int(n_partners),
        "partner_seed": partner_seed if isinstance(partner_seed, (int, np.integer)) else "generator",
        "grouping": "all" if groups is None else "groups",
        "n_models": m,
        "n_images": reps[0].shape[0],
    }
    return UDRResult(
        scores=model_scores,
        pair_scores=pair_scores,
        n_informative=n_informative,
        partners=tuple(tuple(p) for p in partner_lists),
        settings=settings,
    )


# --------------------------------------------------------------------------
# herd effect


@dataclass(frozen=True)
class RankShift:
    """Ranks (1 = best) of each model under two UDR variants and the change.

    ``shift = rank_a2a - rank_within``: positive means the model falls in the
    all-against-all ranking, the signature of the herd effect. NaN scores get
    NaN ranks; tied scores share the best rank.
    """

    rank_within: np.ndarray
    rank_a2a: np.ndarray
    shift: np.ndarray


def _competition_rank(scores: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    ranks = np.full(scores.shape, np.nan)
    ok = ~np.isnan(scores)
    ranks[ok] = rankdata(-scores[ok], method="min")
    return ranks


def rank_shift(scores_within: Any, scores_a2a: Any) -> RankShift:
    """Compare each model's rank within its family with its rank in A2A."""
    within = np.asarray(scores_within, dtype=float)
    a2a = np.asarray(scores_a2a, dtype=float)
    if within.ndim != 1 or a2a.ndim != 1 or within.shape != a2a.shape:
        raise ValueError(
            "scores_within and scores_a2a must be 1-D vectors of the same length, "
            f"got shapes {within.shape} and {a2a.shape}"
        )
    if np.any(np.isinf(within)) or np.any(np.isinf(a2a)):
        raise ValueError("scores must be finite or NaN, got infinite values")
    r_within = _competition_rank(within)
    r_a2a = _competition_rank(a2a)
    return RankShift(rank_within=r_within, rank_a2a=r_a2a, shift=r_a2a - r_within)
