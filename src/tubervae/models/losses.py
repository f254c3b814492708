"""Objectives of the three VAE families the thesis compares.

Reduction, shared by every term: the reconstruction error is summed over
pixels and channels of each image, the KL over latent components, and both
are then averaged over the batch. The thesis's hyperparameters (β ≈ 1–20 for
β-VAE and β-TCVAE, β ≈ 700–2100 for Cβ-VAE) only mean what they meant there
under this reduction; a per-pixel mean would silently rescale β.

Each family is a loss object (after disentanglement_lib's ``BetaVAE`` /
``BetaTCVAE``): its hyperparameters are checked once, when it is built, and
``loss(x, out, step)`` then only checks the tensors' shapes. Build one with its
class or with ``make_loss(family, **hyperparameters)``. A call returns a dict of
tensors with at least

* ``loss``: the scalar to minimise;
* ``rec``: reconstruction error per image (batch mean);
* ``kl``: analytic KL(q(z|x) ‖ N(0, I)), summed over components, batch mean;
* ``kl_per_component``: length-d, batch mean (to find informative components);

plus the family's own terms (``capacity``; ``mi``, ``tc``, ``dwkl``).

A guided family (``guided_beta_vae``, ``guided_beta_tcvae``; after Guided-VAE, Ding et al.
2020, and CCVAE, Joy et al. 2021) is its base family's loss on every training photo plus
``guide_weight`` · the binary cross-entropy of a one-component logistic head
(:class:`~tubervae.models.nets.GuideHead`) on latent component ``GUIDED_COMPONENT``'s
posterior mean, on a batch of guide-labelled photos: ``loss(x, out, step,
guide_logits=..., guide_labels=...)`` adds the term ``guide_bce``. With ``guide_weight``
0 its gradients are the base family's exactly.
"""

from __future__ import annotations

import abc
import inspect
import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from tubervae.checks import check_choice, check_int, check_real
from tubervae.config import FAMILIES, GUIDED_COMPONENT, REC_KINDS, TC_ESTIMATORS, normalised_beta
from tubervae.models.nets import VAEOutput

__all__ = [
    "FAMILIES",
    "LOSSES",
    "REC_KINDS",
    "TC_ESTIMATORS",
    "BetaTCVAE",
    "BetaVAE",
    "CapacityBetaVAE",
    "GUIDED_COMPONENT",
    "GuidedBetaTCVAE",
    "GuidedBetaVAE",
    "GuidedLoss",
    "VAELoss",
    "capacity",
    "kl_per_component",
    "log_density_gaussian",
    "log_importance_weights",
    "make_loss",
    "normalised_beta",
    "reconstruction_loss",
]

_LOG_2PI = math.log(2.0 * math.pi)


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
        raise ValueError(f"x and out.logits must have the same shape, got {tuple(x.shape)} and {tuple(logits.shape)}")
    if x.shape[0] != mu.shape[0]:
        raise ValueError(f"x has {x.shape[0]} images but out.mu has {mu.shape[0]} rows; they must match")


# --- building blocks ---------------------------------------------------------


def kl_per_component(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_j, σ_j²) ‖ N(0, 1)) = ½(μ² + σ² − log σ² − 1), elementwise, shape of ``mu``."""
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


def reconstruction_loss(x: torch.Tensor, logits: torch.Tensor, kind: str = "bernoulli") -> torch.Tensor:
    """Reconstruction error summed over each image, averaged over the batch.

    ``"bernoulli"``: binary cross-entropy of the logits against ``x`` in [0, 1]
    (the thesis's default decoder). ``"gaussian"``: squared error between
    ``sigmoid(logits)`` and ``x``, i.e. a unit-variance Gaussian up to
    constants. The range of ``x`` is not checked, to avoid a device sync per
    step.
    """
    return _reconstruction_loss(x, logits, check_choice("kind", kind, REC_KINDS))


def _reconstruction_loss(x: torch.Tensor, logits: torch.Tensor, kind: str) -> torch.Tensor:
    """:func:`reconstruction_loss` for a ``kind`` already checked."""
    if x.shape != logits.shape:
        raise ValueError(f"x and logits must have the same shape, got {tuple(x.shape)} and {tuple(logits.shape)}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (batch, ...), got shape {tuple(x.shape)}")
    batch = x.shape[0]
    if kind == "bernoulli":
        total = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    else:
        total = (torch.sigmoid(logits) - x).pow(2).sum()
    return total / batch


def capacity(step: int, c_max: float, anneal_steps: int) -> float:
    """Cβ-VAE target KL in nats: 0 at step 0, rising linearly to ``c_max`` at
    ``anneal_steps`` and constant afterwards (``anneal_steps = 0``: always ``c_max``)."""
    s = check_int("step", step, 0)
    c = check_real("c_max", c_max, 0.0)
    n = check_int("anneal_steps", anneal_steps, 0)
    return _capacity(s, c, n)


def _capacity(step: int, c_max: float, anneal_steps: int) -> float:
    """:func:`capacity` for arguments already checked."""
    if anneal_steps == 0 or step >= anneal_steps:
        return c_max
    return c_max * step / anneal_steps


def log_density_gaussian(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor | float) -> torch.Tensor:
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
    b = check_int("batch_size", batch_size, 2)
    n = check_int("dataset_size", dataset_size, 1)
    if n < b:
        raise ValueError(f"dataset_size must be >= batch_size ({b}) since the batch is drawn from the dataset, got {n}")
    return _log_importance_weights(b, n).to(dtype=dtype, device=device)


def _log_importance_weights(batch_size: int, dataset_size: int) -> torch.Tensor:
    """:func:`log_importance_weights` for sizes already checked, float64 on the CPU."""
    b, n = batch_size, dataset_size
    m = b - 1
    weights = torch.full((b, b), 1.0 / m, dtype=torch.float64)
    index = torch.arange(b)
    weights[index, index] = 1.0 / n
    weights[index, (index + 1) % b] = (n - m) / (n * m)
    return weights.log()


# --- families ------------------------------------------------------------------


class VAELoss(abc.ABC):
    """Objective of one VAE family with its hyperparameters bound and checked once.

    ``loss(x, out, step)`` returns the terms listed in the module docstring.
    Subclasses name their ``family`` and add their own terms and ``loss`` in
    :meth:`_add_family_terms`; every constructor argument is a hyperparameter,
    readable as an attribute of the same name.
    """

    family: ClassVar[str]
    guided: ClassVar[bool] = False  # a guided family's loss also takes the head's logits on a guide batch

    def __init__(self, rec_kind: str = "bernoulli"):
        self._rec_kind = check_choice("rec_kind", rec_kind, REC_KINDS)

    @property
    def rec_kind(self) -> str:
        """Decoder likelihood of the reconstruction term, one of :data:`REC_KINDS`."""
        return self._rec_kind

    @classmethod
    def hyperparameter_names(cls) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(required, optional) hyperparameter names, read from the constructor so they cannot drift apart."""
        params = inspect.signature(cls).parameters.values()
        required = tuple(p.name for p in params if p.default is inspect.Parameter.empty)
        optional = tuple(p.name for p in params if p.default is not inspect.Parameter.empty)
        return required, optional

    @property
    def hyperparameters(self) -> dict[str, object]:
        """The bound hyperparameters, in constructor order (a fresh dict: ``make_loss(family, **h)`` rebuilds it)."""
        required, optional = self.hyperparameter_names()
        return {name: getattr(self, name) for name in required + optional}

    def __call__(self, x: torch.Tensor, out: VAEOutput, step: int) -> dict[str, torch.Tensor]:
        _check_output(x, out)
        step = check_int("step", step, 0)
        kl_pc = kl_per_component(out.mu, out.logvar).mean(0)
        terms = {
            "rec": _reconstruction_loss(x, out.logits, self._rec_kind),
            "kl": kl_pc.sum(),
            "kl_per_component": kl_pc,
        }
        self._add_family_terms(terms, x, out, step)
        return terms

    @abc.abstractmethod
    def _add_family_terms(self, terms: dict[str, torch.Tensor], x: torch.Tensor, out: VAEOutput, step: int) -> None:
        """Add the family's own terms and ``loss`` to ``terms`` (which holds rec, kl, kl_per_component)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{type(self).__name__}({args})"


class BetaVAE(VAELoss):
    """β-VAE (Higgins et al. 2017): rec + β·KL; β = 1 is the plain VAE."""

    family = "beta_vae"

    def __init__(self, beta: float, rec_kind: str = "bernoulli"):
        super().__init__(rec_kind)
        self._beta = check_real("beta", beta, 0.0, strict=True)

    @property
    def beta(self) -> float:
        return self._beta

    def _add_family_terms(self, terms, x, out, step):
        terms["loss"] = terms["rec"] + self._beta * terms["kl"]


class CapacityBetaVAE(VAELoss):
    """Capacity-annealed β-VAE (Burgess et al. 2018): rec + β·|KL − C(step)|.

    A large β pins the batch-mean KL to the growing target C (see
    :func:`capacity`), which opens latent components one at a time.
    """

    family = "cbeta_vae"

    def __init__(self, beta: float, c_max: float, anneal_steps: int, rec_kind: str = "bernoulli"):
        super().__init__(rec_kind)
        self._beta = check_real("beta", beta, 0.0, strict=True)
        self._c_max = check_real("c_max", c_max, 0.0)
        self._anneal_steps = check_int("anneal_steps", anneal_steps, 0)

    @property
    def beta(self) -> float:
        return self._beta

    @property
    def c_max(self) -> float:
        return self._c_max

    @property
    def anneal_steps(self) -> int:
        return self._anneal_steps

    def _add_family_terms(self, terms, x, out, step):
        c = _capacity(step, self._c_max, self._anneal_steps)
        # new_full fills on the device: no host-to-device copy (and sync) per step.
        terms["capacity"] = terms["kl"].new_full((), c)
        terms["loss"] = terms["rec"] + self._beta * (terms["kl"] - c).abs()


class BetaTCVAE(VAELoss):
    """β-TCVAE (Chen et al. 2018): rec + MI + β·TC + dimension-wise KL.

    The three terms split the sampled KL, log q(z|x) − log p(z), through the
    aggregate posterior q(z), estimated on the minibatch with stratified
    (default; unbiased for q(z) under the paper's stratified draw) or
    weighted sampling (its log q(z) sits roughly log B to log N too low, a
    near-constant shift of the reported MI, TC and dimension-wise KL). ``dataset_size`` is the
    number of training images the batches come from; each batch must be no larger. Their sum
    equals the one-sample KL estimate, so β = 1 recovers the VAE objective in expectation.
    """

    family = "beta_tcvae"

    def __init__(self, beta: float, dataset_size: int, estimator: str = "stratified", rec_kind: str = "bernoulli"):
        super().__init__(rec_kind)
        self._beta = check_real("beta", beta, 0.0, strict=True)
        self._dataset_size = check_int("dataset_size", dataset_size, 1)
        self._estimator = check_choice("estimator", estimator, TC_ESTIMATORS)
        # The stratified log weights of the last (batch, dtype, device), kept on the device so that a
        # step does not rebuild them on the CPU and copy them over (a device sync).
        self._weights_key: tuple | None = None
        self._weights: torch.Tensor | None = None

    @property
    def beta(self) -> float:
        return self._beta

    @property
    def dataset_size(self) -> int:
        return self._dataset_size

    @property
    def estimator(self) -> str:
        return self._estimator

    def _add_family_terms(self, terms, x, out, step):
        batch = x.shape[0]
        if self._dataset_size < batch:
            raise ValueError(f"dataset_size must be >= the batch size ({batch}), got {self._dataset_size!r}")
        if self._estimator == "stratified" and batch < 2:
            raise ValueError(f"estimator 'stratified' needs a batch of at least 2 images, got {batch}")
        z, mu, logvar = out.z, out.mu, out.logvar
        log_qz_x = log_density_gaussian(z, mu, logvar).sum(1)
        zeros = torch.zeros_like(z)
        log_pz = log_density_gaussian(z, zeros, zeros).sum(1)
        log_qz, log_qz_marginals = self._aggregate_log_densities(z, mu, logvar)
        terms["mi"] = (log_qz_x - log_qz).mean()
        terms["tc"] = (log_qz - log_qz_marginals).mean()
        terms["dwkl"] = (log_qz_marginals - log_pz).mean()
        terms["loss"] = terms["rec"] + terms["mi"] + self._beta * terms["tc"] + terms["dwkl"]

    def _aggregate_log_densities(
        self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Minibatch estimates of log q(z_i) and Σ_j log q(z_ij), each ``(B,)``."""
        b = z.shape[0]
        # pair[i, k, j] = log q(z_ij | x_k): sample i scored under every posterior k.
        pair = log_density_gaussian(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))
        if self._estimator == "stratified":
            log_w = self._log_weights(b, z.dtype, z.device)
            log_qz = torch.logsumexp(log_w + pair.sum(2), dim=1)
            log_qz_marginals = torch.logsumexp(log_w.unsqueeze(2) + pair, dim=1).sum(1)
        else:
            # Minibatch-weighted sampling: every weight is 1/(N·B).
            shift = math.log(self._dataset_size * b)
            log_qz = torch.logsumexp(pair.sum(2), dim=1) - shift
            log_qz_marginals = (torch.logsumexp(pair, dim=1) - shift).sum(1)
        return log_qz, log_qz_marginals

    def _log_weights(self, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (batch, dtype, device)
        if self._weights_key != key:
            self._weights = _log_importance_weights(batch, self._dataset_size).to(dtype=dtype, device=device)
            self._weights_key = key
        return self._weights


class GuidedLoss:
    """Mixin of a guided family: the base family's terms plus ``guide_weight`` · BCE of the head's logits
    on a guide-labelled batch (``guide_labels``: 1 = bad). Listed before the base class, whose
    constructor it leaves alone; the subclass binds ``guide_weight`` with :meth:`_bind_guide_weight`."""

    guided: ClassVar[bool] = True
    _guide_weight: float

    def _bind_guide_weight(self, guide_weight: float) -> None:
        self._guide_weight = check_real("guide_weight", guide_weight, 0.0)

    @property
    def guide_weight(self) -> float:
        """λ, the weight of the head's cross-entropy."""
        return self._guide_weight

    def __call__(
        self,
        x: torch.Tensor,
        out: VAEOutput,
        step: int,
        *,
        guide_logits: torch.Tensor | None = None,
        guide_labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if guide_logits is None or guide_labels is None:
            raise ValueError(
                f"{self.family} needs guide_logits and guide_labels (a guide-labelled batch) at every step"
            )
        if guide_logits.dim() != 1 or guide_logits.shape != guide_labels.shape or guide_logits.shape[0] == 0:
            raise ValueError(
                "guide_logits and guide_labels must be two non-empty vectors of one length, got "
                f"{tuple(guide_logits.shape)} and {tuple(guide_labels.shape)}"
            )
        terms = super().__call__(x, out, step)
        bce = F.binary_cross_entropy_with_logits(guide_logits, guide_labels.to(guide_logits.dtype))
        terms["guide_bce"] = bce
        terms["loss"] = terms["loss"] + self._guide_weight * bce
        return terms


class GuidedBetaVAE(GuidedLoss, BetaVAE):
    """β-VAE with component 0 tied to good/bad by a logistic head: rec + β·KL + λ·BCE."""

    family = "guided_beta_vae"

    def __init__(self, beta: float, guide_weight: float, rec_kind: str = "bernoulli"):
        super().__init__(beta, rec_kind)
        self._bind_guide_weight(guide_weight)


class GuidedBetaTCVAE(GuidedLoss, BetaTCVAE):
    """β-TCVAE with component 0 tied to good/bad by a logistic head: its loss + λ·BCE."""

    family = "guided_beta_tcvae"

    def __init__(
        self,
        beta: float,
        guide_weight: float,
        dataset_size: int,
        estimator: str = "stratified",
        rec_kind: str = "bernoulli",
    ):
        super().__init__(beta, dataset_size, estimator, rec_kind)
        self._bind_guide_weight(guide_weight)


# --- registry --------------------------------------------------------------------

_BY_FAMILY = {cls.family: cls for cls in (BetaVAE, BetaTCVAE, CapacityBetaVAE, GuidedBetaVAE, GuidedBetaTCVAE)}
LOSSES: dict[str, type[VAELoss]] = {family: _BY_FAMILY[family] for family in FAMILIES}


def make_loss(family: str, **hyperparameters: object) -> VAELoss:
    """The loss object of ``family`` (one of :data:`FAMILIES`) with ``hyperparameters`` bound and checked.

    Needs no tensors, so configuration code can fail before training starts.
    """
    cls = LOSSES[check_choice("family", family, FAMILIES)]
    required, optional = cls.hyperparameter_names()
    allowed = required + optional
    unknown = tuple(key for key in hyperparameters if key not in allowed)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for family {family!r}; allowed: {allowed}")
    missing = tuple(key for key in required if key not in hyperparameters)
    if missing:
        raise ValueError(
            f"family {family!r} needs hyperparameter(s) {missing}; allowed: {allowed}, got {tuple(hyperparameters)}"
        )
    return cls(**hyperparameters)
