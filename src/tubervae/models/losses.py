"""Objectives of the three VAE families the thesis compares.

Reduction, shared by every term: the reconstruction error is summed over
pixels and channels of each image, the KL over latent components, and both
are then averaged over the batch. The thesis's hyperparameters (β ≈ 1–20 for
β-VAE and β-TCVAE, β ≈ 700–2100 for Cβ-VAE) only mean what they meant there
under this reduction; a per-pixel mean would silently rescale β.

Every family function is pure: ``(x, out, step, **hyperparameters)`` →
dict of tensors with at least

* ``loss``: the scalar to minimise;
* ``rec``: reconstruction error per image (batch mean);
* ``kl``: analytic KL(q(z|x) ‖ N(0, I)), summed over components, batch mean;
* ``kl_per_component``: length-d, batch mean (to find informative components);

plus the family's own terms (``capacity``; ``mi``, ``tc``, ``dwkl``).
"""

from __future__ import annotations

import inspect
import math
from numbers import Integral, Real
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from tubervae.models.nets import VAEOutput

__all__ = [
    "ESTIMATORS",
    "FAMILIES",
    "REC_KINDS",
    "beta_tcvae_loss",
    "beta_vae_loss",
    "capacity",
    "cbeta_vae_loss",
    "family_hyperparameters",
    "family_loss",
    "kl_per_component",
    "log_density_gaussian",
    "log_importance_weights",
    "reconstruction_loss",
    "validate_hyperparameters",
]

FAMILIES = ("beta_vae", "cbeta_vae", "beta_tcvae")
REC_KINDS = ("bernoulli", "gaussian")
ESTIMATORS = ("stratified", "weighted")

_LOG_2PI = math.log(2.0 * math.pi)


# --- validation helpers -----------------------------------------------------


def _check_real(name: str, value: object, *, minimum: float, strict: bool) -> float:
    bound = f"> {minimum}" if strict else f">= {minimum}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(
            f"{name} must be a finite number {bound}, got {value!r} ({type(value).__name__})"
        )
    v = float(value)
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(
            f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value  # type: ignore[return-value]


def _check_output(x: torch.Tensor, out: VAEOutput) -> None:
    mu, logvar, z, logits = out.mu, out.logvar, out.z, out.logits
    if mu.dim() != 2:
        raise ValueError(f"out.mu must have shape (batch, d), got {tuple(mu.shape)}")
    if logvar.shape != mu.shape or z.shape != mu.shape:
        raise ValueError(
            f"out.mu, out.logvar and out.z must share one shape (batch, d), got "
            f"{tuple(mu.shape)}, {tuple(logvar.shape)} and {tuple(z.shape)}"
        )
    if x.shape != logits.shape:
        raise ValueError(
            f"x and out.logits must have the same shape, got {tuple(x.shape)} and "
            f"{tuple(logits.shape)}"
        )
    if x.shape[0] != mu.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} images but out.mu has {mu.shape[0]} rows; they must match"
        )


# --- building blocks ---------------------------------------------------------


def kl_per_component(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_j, σ_j²) ‖ N(0, 1)) = ½(μ² + σ² − log σ² − 1), elementwise, shape of ``mu``."""
    if mu.shape != logvar.shape:
        raise ValueError(
            f"mu and logvar must have the same shape, got {tuple(mu.shape)} and "
            f"{tuple(logvar.shape)}"
        )
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


def reconstruction_loss(
    x: torch.Tensor, logits: torch.Tensor, kind: str = "bernoulli"
) -> torch.Tensor:
    """Reconstruction error summed over each image, averaged over the batch.

    ``"bernoulli"``: binary cross-entropy of the logits against ``x`` in [0, 1]
    (the thesis's default decoder). ``"gaussian"``: squared error between
    ``sigmoid(logits)`` and ``x``, i.e. a unit-variance Gaussian up to
    constants. The range of ``x`` is not checked, to avoid a device sync per
    step.
    """
    _check_choice("kind", kind, REC_KINDS)
    if x.shape != logits.shape:
        raise ValueError(
            f"x and logits must have the same shape, got {tuple(x.shape)} and "
            f"{tuple(logits.shape)}"
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(
            f"x must be a non-empty batch (batch, ...), got shape {tuple(x.shape)}"
        )
    batch = x.shape[0]
    if kind == "bernoulli":
        total = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    else:
        total = (torch.sigmoid(logits) - x).pow(2).sum()
    return total / batch


def capacity(step: int, c_max: float, anneal_steps: int) -> float:
    """Cβ-VAE target KL in nats: 0 at step 0, rising linearly to ``c_max`` at
    ``anneal_steps`` and constant afterwards (``anneal_steps = 0``: always ``c_max``)."""
    s = _check_int("step", step, 0)
    c = _check_real("c_max", c_max, minimum=0.0, strict=False)
    n = _check_int("anneal_steps", anneal_steps, 0)
    if n == 0 or s >= n:
        return c
    return c * s / n


def log_density_gaussian(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor | float
) -> torch.Tensor:
    """log N(z; μ, exp(logvar)), elementwise with broadcasting."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def log_importance_weights(
    batch_size: int,
    dataset_size: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Log weights of minibatch-stratified sampling (Chen et al. 2018, app. C.1).

    Row ``i`` estimates q(z_i) = Σ_j w_ij q(z_i | x_j) for the sample z_i drawn
    from the posterior of batch element ``i`` (the paper's n*). The paper
    splits the N data points into M = batch_size − 1 strata of N/M points,
    one of which holds n*, and takes one point from each stratum:

    * ``w_ii = 1/N`` — n* itself (the diagonal);
    * ``w_i,i+1 = (N − M)/(N·M)`` — the point drawn from n*'s own stratum,
      which stands for its N/M − 1 other members; placed at the next batch
      element, cyclically, so every column also holds each weight once;
    * every other entry ``1/M`` — one point per remaining stratum.

    Each row sums to 1/N + (M − 1)/M + (N − M)/(NM) = 1, so identical
    posteriors give the exact q(z).
    """
    b = _check_int("batch_size", batch_size, 2)
    n = _check_int("dataset_size", dataset_size, 1)
    if n < b:
        raise ValueError(
            f"dataset_size must be >= batch_size ({b}) since the batch is drawn from "
            f"the dataset, got {n}"
        )
    m = b - 1
    weights = torch.full((b, b), 1.0 / m, dtype=torch.float64)
    index = torch.arange(b)
    weights[index, index] = 1.0 / n
    weights[index, (index + 1) % b] = (n - m) / (n * m)
    return weights.log().to(dtype=dtype, device=device)


def _aggregate_log_densities(
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    dataset_size: int,
    estimator: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch estimates of log q(z_i) and Σ_j log q(z_ij), each ``(B,)``."""
    b = z.shape[0]
    # pair[i, k, j] = log q(z_ij | x_k): sample i scored under every posterior k.
    pair = log_density_gaussian(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))
    if estimator == "stratified":
        log_w = log_importance_weights(b, dataset_size, dtype=z.dtype, device=z.device)
        log_qz = torch.logsumexp(log_w + pair.sum(2), dim=1)
        log_qz_marginals = torch.logsumexp(log_w.unsqueeze(2) + pair, dim=1).sum(1)
    else:
        # Minibatch-weighted sampling: every weight is 1/(N·B).
        shift = math.log(dataset_size * b)
        log_qz = torch.logsumexp(pair.sum(2), dim=1) - shift
        log_qz_marginals = (torch.logsumexp(pair, dim=1) - shift).sum(1)
    return log_qz, log_qz_marginals


def _common_terms(
    x: torch.Tensor, out: VAEOutput, step: object, rec_kind: str
) -> dict[str, torch.Tensor]:
    _check_output(x, out)
    _check_int("step", step, 0)
    kl_pc = kl_per_component(out.mu, out.logvar).mean(0)
    return {
        "rec": reconstruction_loss(x, out.logits, rec_kind),
        "kl": kl_pc.sum(),
        "kl_per_component": kl_pc,
    }


# --- families ------------------------------------------------------------------


def beta_vae_loss(
    x: torch.Tensor,
    out: VAEOutput,
    step: int,
    *,
    beta: float,
    rec_kind: str = "bernoulli",
) -> dict[str, torch.Tensor]:
    """β-VAE (Higgins et al. 2017): rec + β·KL; β = 1 is the plain VAE."""
    b = _check_real("beta", beta, minimum=0.0, strict=True)
    _check_choice("rec_kind", rec_kind, REC_KINDS)
    terms = _common_terms(x, out, step, rec_kind)
    terms["loss"] = terms["rec"] + b * terms["kl"]
    return terms


def cbeta_vae_loss(
    x: torch.Tensor,
    out: VAEOutput,
    step: int,
    *,
    beta: float,
    c_max: float,
    anneal_steps: int,
    rec_kind: str = "bernoulli",
) -> dict[str, torch.Tensor]:
    """Capacity-annealed β-VAE (Burgess et al. 2018): rec + β·|KL − C(step)|.

    A large β pins the batch-mean KL to the growing target C, which opens
    latent components one at a time.
    """
    b = _check_real("beta", beta, minimum=0.0, strict=True)
    _check_choice("rec_kind", rec_kind, REC_KINDS)
    c = capacity(_check_int("step", step, 0), c_max, anneal_steps)
    terms = _common_terms(x, out, step, rec_kind)
    terms["capacity"] = torch.tensor(c, dtype=terms["kl"].dtype, device=terms["kl"].device)
    terms["loss"] = terms["rec"] + b * (terms["kl"] - c).abs()
    return terms


def beta_tcvae_loss(
    x: torch.Tensor,
    out: VAEOutput,
    step: int,
    *,
    beta: float,
    dataset_size: int,
    estimator: str = "stratified",
    rec_kind: str = "bernoulli",
) -> dict[str, torch.Tensor]:
    """β-TCVAE (Chen et al. 2018): rec + MI + β·TC + dimension-wise KL.

    The three terms split the sampled KL, log q(z|x) − log p(z), through the
    aggregate posterior q(z), estimated on the minibatch with stratified
    (default; unbiased for q(z) under the paper's stratified draw) or
    weighted sampling (its log q(z) sits roughly log B to log N too low, a
    near-constant shift of the reported MI, TC and dimension-wise KL). ``dataset_size`` is the
    number of training images the batches come from. Their sum equals the
    one-sample KL estimate, so β = 1 recovers the VAE objective in expectation.
    """
    b = _check_real("beta", beta, minimum=0.0, strict=True)
    n = _check_int("dataset_size", dataset_size, 1)
    _check_choice("estimator", estimator, ESTIMATORS)
    _check_choice("rec_kind", rec_kind, REC_KINDS)
    terms = _common_terms(x, out, step, rec_kind)
    batch = x.shape[0]
    if n < batch:
        raise ValueError(
            f"dataset_size must be >= the batch size ({batch}), got {dataset_size!r}"
        )
    if estimator == "stratified" and batch < 2:
        raise ValueError(
            f"estimator 'stratified' needs a batch of at least 2 images, got {batch}"
        )
    z, mu, logvar = out.z, out.mu, out.logvar
    log_qz_x = log_density_gaussian(z, mu, logvar).sum(1)
    log_pz = log_density_gaussian(z, torch.zeros_like(z), 0.0).sum(1)
    log_qz, log_qz_marginals = _aggregate_log_densities(z, mu, logvar, n, estimator)
    terms["mi"] = (log_qz_x - log_qz).mean()
    terms["tc"] = (log_qz - log_qz_marginals).mean()
    terms["dwkl"] = (log_qz_marginals - log_pz).mean()
    terms["loss"] = terms["rec"] + terms["mi"] + b * terms["tc"] + terms["dwkl"]
    return terms


# --- dispatch ------------------------------------------------------------------

_FAMILY_FUNCTIONS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "beta_vae": beta_vae_loss,
    "cbeta_vae": cbeta_vae_loss,
    "beta_tcvae": beta_tcvae_loss,
}


def family_hyperparameters(family: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) hyperparameter names of ``family``, read from its
    loss function's keyword-only arguments so they cannot drift apart."""
    _check_choice("family", family, FAMILIES)
    params = inspect.signature(_FAMILY_FUNCTIONS[family]).parameters.values()
    keyword = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    required = tuple(p.name for p in keyword if p.default is inspect.Parameter.empty)
    optional = tuple(p.name for p in keyword if p.default is not inspect.Parameter.empty)
    return required, optional


_VALUE_CHECKS: dict[str, Callable[[object], object]] = {
    "beta": lambda v: _check_real("beta", v, minimum=0.0, strict=True),
    "c_max": lambda v: _check_real("c_max", v, minimum=0.0, strict=False),
    "anneal_steps": lambda v: _check_int("anneal_steps", v, 0),
    "dataset_size": lambda v: _check_int("dataset_size", v, 1),
    "estimator": lambda v: _check_choice("estimator", v, ESTIMATORS),
    "rec_kind": lambda v: _check_choice("rec_kind", v, REC_KINDS),
}


def validate_hyperparameters(family: str, hyperparameters: Mapping[str, object]) -> None:
    """Reject an unknown family, unknown or missing keys and bad values.

    Needs no tensors, so configuration code can fail before training starts.
    """
    required, optional = family_hyperparameters(family)
    allowed = required + optional
    for key in hyperparameters:
        if key not in allowed:
            raise ValueError(
                f"unknown hyperparameter {key!r} for family {family!r}; allowed: {allowed}"
            )
    missing = [key for key in required if key not in hyperparameters]
    if missing:
        raise ValueError(
            f"family {family!r} needs hyperparameter(s) {tuple(missing)}; "
            f"got {tuple(hyperparameters)}"
        )
    for key, value in hyperparameters.items():
        _VALUE_CHECKS[key](value)


def family_loss(
    family: str, x: torch.Tensor, out: VAEOutput, step: int, **hyperparameters: object
) -> dict[str, torch.Tensor]:
    """Loss terms of ``family`` (one of :data:`FAMILIES`); see the family functions."""
    validate_hyperparameters(family, hyperparameters)
    return _FAMILY_FUNCTIONS[family](x, out, step, **hyperparameters)
