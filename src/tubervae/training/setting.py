"""One hyperparameter setting of one family, and what a finished training run hands back.

Both loops (`loop.train_model`, `fused.train_fused`) train a `Setting` from a seed and return an
`Outcome`; the search, the pool and the benchmarks name the models they ask for by it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tubervae.checks import check_choice, check_real
from tubervae.config import FAMILIES, TrainConfig, base_family, is_guided
from tubervae.models.losses import VAELoss, make_loss, normalised_beta
from tubervae.models.nets import VAE

__all__ = ["Outcome", "Setting"]


@dataclass(frozen=True)
class Setting:
    """One hyperparameter setting of one family (thesis: the 23 rows of tables 4.11–4.14)."""

    family: str
    beta: float
    c_max: float = 0.0
    guide_weight: float = 0.0  # λ of a guided family's head (0 for the others)

    def __post_init__(self) -> None:
        check_choice("family", self.family, FAMILIES)
        check_real("beta", self.beta, 0.0, strict=True)
        check_real("c_max", self.c_max, 0.0)
        check_real("guide_weight", self.guide_weight, 0.0)
        if self.guide_weight and not self.guided:
            raise ValueError(
                f"guide_weight {self.guide_weight!r} needs a guided family (guided_<family>), got {self.family!r}"
            )

    @property
    def guided(self) -> bool:
        """Whether a logistic head ties component `GUIDED_COMPONENT` to the labels."""
        return is_guided(self.family)

    @property
    def label(self) -> str:
        """The thesis's column 'param': β for β-VAE/β-TCVAE, β_C for Cβ-VAE; a guided family adds _λ."""
        if base_family(self.family) == "cbeta_vae":
            label = f"{self.beta:.4g}_{self.c_max:.3g}"
        else:
            label = f"{self.beta:.3g}"
        return f"{label}_{self.guide_weight:.3g}" if self.guided else label

    def normalised_beta(self, latent_dim: int, image_size: int, channels: int = 3) -> float:
        """β·d/N (Higgins et al. 2017): comparable across image sizes, since the summed reconstruction
        term grows with the N = channels·size² input values while the KL grows with the d components."""
        return normalised_beta(self.beta, latent_dim, image_size, channels)

    def loss(self, cfg: TrainConfig, dataset_size: int) -> VAELoss:
        """The family's objective with this setting's hyperparameters bound (and validated) once."""
        hp = {"beta": self.beta, "rec_kind": cfg.rec_kind}
        if base_family(self.family) == "cbeta_vae":
            hp.update(c_max=self.c_max, anneal_steps=max(1, round(cfg.anneal_fraction * cfg.steps)))
        elif base_family(self.family) == "beta_tcvae":
            hp.update(dataset_size=dataset_size, estimator=cfg.tc_estimator)
        if self.guided:
            hp.update(guide_weight=self.guide_weight)
        return make_loss(self.family, **hp)


@dataclass
class Outcome:
    """What a finished run hands back."""

    model: VAE
    step: int
    latents: dict  # mu, logvar, kl of the UDR probe images
    metrics: dict  # test_rec, final loss terms
