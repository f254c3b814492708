import itertools
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import tubervae.models.losses as losses_module
from tubervae import checks
from tubervae.config import FAMILIES as CONFIG_FAMILIES
from tubervae.models.losses import (
    FAMILIES,
    LOSSES,
    BetaTCVAE,
    BetaVAE,
    CapacityBetaVAE,
    GuidedBetaTCVAE,
    GuidedBetaVAE,
    VAELoss,
    capacity,
    kl_per_component,
    log_density_gaussian,
    log_importance_weights,
    make_loss,
    normalised_beta,
    reconstruction_loss,
)
from tubervae.models.nets import VAE, GuideHead, VAEOutput

LOG4 = math.log(4.0)


def _latent_output(mu, logvar, z, pixels=2):
    """A VAEOutput with zero logits and matching all-½ images: rec = pixels·log 2."""
    b = mu.shape[0]
    return torch.full((b, pixels), 0.5), VAEOutput(torch.zeros(b, pixels), mu, logvar, z)


# --- KL and reconstruction ---------------------------------------------------


def test_kl_per_component_hand_values():
    mu = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    logvar = torch.tensor([[0.0, LOG4, 0.0], [0.0, 0.0, -LOG4]])
    expected = torch.tensor(
        [
            [0.5, 0.5 * (4 - LOG4 - 1), 0.0],
            [0.0, 2.0, 0.5 * (0.25 + LOG4 - 1)],
        ]
    )
    torch.testing.assert_close(kl_per_component(mu, logvar), expected)


def test_kl_per_component_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 4, generator=g) * 2
    logvar = torch.randn(5, 4, generator=g)
    expected = kl_divergence(Normal(mu, torch.exp(logvar / 2)), Normal(0.0, 1.0))
    torch.testing.assert_close(kl_per_component(mu, logvar), expected, rtol=1e-5, atol=1e-6)


def test_kl_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"mu and logvar must have the same shape"):
        kl_per_component(torch.zeros(2, 3), torch.zeros(2, 4))


def test_reconstruction_losses_on_two_pixel_images():
    # Image 1: pixels (1, 0), logits (0, log 3) -> sigmoid (1/2, 3/4).
    # Image 2: pixels (0.5, 1), logits (0, 0)   -> sigmoid (1/2, 1/2).
    x = torch.tensor([[[[1.0, 0.0]]], [[[0.5, 1.0]]]])
    logits = torch.tensor([[[[0.0, math.log(3.0)]]], [[[0.0, 0.0]]]])
    bce_1 = math.log(2) + math.log(4)  # -log(1/2) - log(1 - 3/4)
    bce_2 = math.log(2) + math.log(2)  # -(½log½ + ½log½) - log(1/2)
    sq_1 = 0.25 + 0.5625
    sq_2 = 0.0 + 0.25
    got_b = reconstruction_loss(x, logits, "bernoulli")
    got_g = reconstruction_loss(x, logits, kind="gaussian")
    assert got_b.item() == pytest.approx((bce_1 + bce_2) / 2, rel=1e-6)
    assert got_g.item() == pytest.approx((sq_1 + sq_2) / 2, rel=1e-6)


def test_reconstruction_rejects_bad_kind_and_shapes():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"kind must be one of \('bernoulli', 'gaussian'\), got 'l1'"):
        reconstruction_loss(x, x, kind="l1")
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_loss(x, torch.zeros(2, 5))


# --- capacity ----------------------------------------------------------------


@pytest.mark.parametrize("step, expected", [(0, 0.0), (1, 0.012), (250, 3.0), (500, 6.0), (501, 6.0), (10**6, 6.0)])
def test_capacity_rises_linearly_then_holds(step, expected):
    assert capacity(step, 6.0, 500) == pytest.approx(expected)


def test_capacity_without_annealing_and_bad_values():
    assert capacity(0, 12.0, 0) == 12.0
    with pytest.raises(ValueError, match=r"c_max must be a finite number >= 0.0, got -1"):
        capacity(3, -1, 10)
    with pytest.raises(ValueError, match=r"step must be an int >= 0, got -2"):
        capacity(-2, 1.0, 10)


# --- density and minibatch-stratified weights --------------------------------


def test_log_density_gaussian_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    z, mu, logvar = (torch.randn(3, 4, generator=g) for _ in range(3))
    expected = Normal(mu, torch.exp(logvar / 2)).log_prob(z)
    torch.testing.assert_close(log_density_gaussian(z, mu, logvar), expected)


def test_importance_weights_sit_where_the_paper_puts_them():
    # B = 4 -> M = 3 strata drawn besides n*, N = 10:
    # own posterior 1/N, stratum-mate of n* (N-M)/(NM) = 7/30, others 1/M.
    a, s, o = 1 / 10, 7 / 30, 1 / 3
    expected = torch.tensor(
        [
            [a, s, o, o],
            [o, a, s, o],
            [o, o, a, s],
            [s, o, o, a],
        ],
        dtype=torch.float64,
    )
    w = log_importance_weights(4, 10, dtype=torch.float64).exp()
    torch.testing.assert_close(w, expected)


@pytest.mark.parametrize("batch, dataset", [(2, 2), (2, 50), (5, 5), (64, 8498), (7, 1000)])
def test_importance_weight_rows_sum_to_one(batch, dataset):
    w = log_importance_weights(batch, dataset, dtype=torch.float64).exp()
    torch.testing.assert_close(w.sum(1), torch.ones(batch, dtype=torch.float64))
    torch.testing.assert_close(w.diagonal(), torch.full((batch,), 1 / dataset, dtype=torch.float64))


def test_importance_weights_reject_bad_sizes():
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 2, got 1"):
        log_importance_weights(1, 10)
    with pytest.raises(ValueError, match=r"dataset_size must be >= batch_size \(8\).*got 4"):
        log_importance_weights(8, 4)


def test_stratified_estimate_of_q_z_is_unbiased_over_all_stratified_draws():
    # Dataset of N = 6 posteriors split into M = 2 strata of 3; n* = 0 lives in
    # stratum {0, 1, 2}. Each draw takes n*, one of its stratum-mates {1, 2}
    # and one member of the other stratum {3, 4, 5}. Averaged over the 6
    # equally likely draws, the weighted sum must equal the exact q(z).
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(6, generator=g, dtype=torch.float64)
    std = torch.rand(6, generator=g, dtype=torch.float64) + 0.3
    z = torch.tensor(0.4, dtype=torch.float64)
    density = Normal(mu, std).log_prob(z).exp()
    exact = density.mean()
    w = log_importance_weights(3, 6, dtype=torch.float64).exp()[0]
    estimates = [
        (w * density[torch.tensor([0, mate, other])]).sum() for mate, other in itertools.product([1, 2], [3, 4, 5])
    ]
    assert torch.stack(estimates).mean().item() == pytest.approx(exact.item(), rel=1e-12)


# --- beta-TCVAE decomposition ------------------------------------------------


def _gaussian_population(seed, batch, correlated, sigma=0.5):
    """Posteriors N(μ_n, σ²) with μ_n ~ N(0, I) in two dimensions; for the
    correlated case μ_n2 = μ_n1. The aggregate posterior is then N(0, Σ)
    with Σ = I + σ²I (independent) or [[1+σ², 1], [1, 1+σ²]] (correlated)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, 2, generator=g)
    if correlated:
        mu[:, 1] = mu[:, 0]
    logvar = torch.full_like(mu, 2 * math.log(sigma))
    z = mu + sigma * torch.randn(batch, 2, generator=g)
    return _latent_output(mu, logvar, z)


def test_total_correlation_near_zero_for_independent_latents():
    x, out = _gaussian_population(0, 2000, correlated=False)
    terms = BetaTCVAE(beta=1.0, dataset_size=10**6)(x, out, 0)
    assert abs(terms["tc"].item()) < 0.03
    # MI of N(μ, ¼) with μ ~ N(0, 1): ½·log(1.25/0.25) per dimension.
    assert terms["mi"].item() == pytest.approx(math.log(5), abs=0.1)


def test_total_correlation_of_correlated_latents_matches_gaussian_value():
    # Aggregate correlation ρ = 1/1.25 = 0.8, so TC = -½·log(1 - ρ²) ≈ 0.511.
    x, out = _gaussian_population(1, 2000, correlated=True)
    terms = BetaTCVAE(beta=1.0, dataset_size=10**6)(x, out, 0)
    assert terms["tc"].item() == pytest.approx(-0.5 * math.log(1 - 0.8**2), abs=0.06)
    assert terms["tc"].item() > 0.3


def test_decomposition_sums_to_sampled_kl_and_approximates_mean_kl():
    x, out = _gaussian_population(2, 2000, correlated=True)
    terms = BetaTCVAE(beta=1.0, dataset_size=10**6)(x, out, 0)
    total = terms["mi"] + terms["tc"] + terms["dwkl"]
    posterior = Normal(out.mu, torch.exp(out.logvar / 2))
    sampled_kl = (posterior.log_prob(out.z) - Normal(0.0, 1.0).log_prob(out.z)).sum(1).mean()
    assert total.item() == pytest.approx(sampled_kl.item(), abs=1e-4)
    assert total.item() == pytest.approx(terms["kl"].item(), abs=0.1)
    assert terms["loss"].item() == pytest.approx(terms["rec"].item() + total.item(), rel=1e-5)


def test_beta_scales_only_the_total_correlation():
    x, out = _gaussian_population(3, 64, correlated=True)
    t1 = BetaTCVAE(beta=1.0, dataset_size=5000)(x, out, 0)
    t4 = BetaTCVAE(beta=4.0, dataset_size=5000)(x, out, 0)
    assert t4["loss"].item() - t1["loss"].item() == pytest.approx(3 * t1["tc"].item(), abs=1e-4)


def test_identical_posteriors_give_known_aggregate_estimates():
    # Every posterior is N(0.3, 0.5²): q(z) = q(z|x) exactly, so MI = TC = 0 for
    # stratified weights; weighted sampling divides by N·B but sums only B terms,
    # so it reports log q(z) - log N and MI = log N.
    b, n = 8, 100
    mu = torch.full((b, 3), 0.3)
    logvar = torch.full((b, 3), 2 * math.log(0.5))
    z = torch.randn(b, 3, generator=torch.Generator().manual_seed(4))
    x, out = _latent_output(mu, logvar, z)
    mss = BetaTCVAE(beta=2.0, dataset_size=n)(x, out, 0)
    mws = BetaTCVAE(beta=2.0, dataset_size=n, estimator="weighted")(x, out, 0)
    assert mss["mi"].item() == pytest.approx(0.0, abs=1e-5)
    assert mss["tc"].item() == pytest.approx(0.0, abs=1e-5)
    assert mws["mi"].item() == pytest.approx(math.log(n), abs=1e-4)
    # log q(z) - log N against Σ_j (log q(z_j) - log N): TC = (3 - 1)·log N.
    assert mws["tc"].item() == pytest.approx(2 * math.log(n), abs=1e-4)


# --- beta-VAE and Cbeta-VAE on hand-made posteriors ------------------------------


def _one_half_nat_output(batch=3):
    """KL = ½ per image (μ = 1, σ = 1 in one component, zero in the other)."""
    mu = torch.tensor([[1.0, 0.0]]).repeat(batch, 1)
    logvar = torch.zeros(batch, 2)
    return _latent_output(mu, logvar, mu.clone(), pixels=4)


def test_beta_vae_loss_hand_values():
    x, out = _one_half_nat_output()
    terms = BetaVAE(beta=3.0)(x, out, 0)
    rec = 4 * math.log(2)
    assert terms["rec"].item() == pytest.approx(rec)
    assert terms["kl"].item() == pytest.approx(0.5)
    torch.testing.assert_close(terms["kl_per_component"], torch.tensor([0.5, 0.0]))
    assert terms["loss"].item() == pytest.approx(rec + 3 * 0.5)


@pytest.mark.parametrize("step, c, gap", [(0, 0.0, 0.5), (50, 1.0, 0.5), (20, 0.4, 0.1), (400, 2.0, 1.5)])
def test_cbeta_vae_loss_hand_values(step, c, gap):
    x, out = _one_half_nat_output()
    terms = CapacityBetaVAE(beta=700.0, c_max=2.0, anneal_steps=100)(x, out, step)
    assert terms["capacity"].item() == pytest.approx(c)
    assert terms["loss"].item() == pytest.approx(4 * math.log(2) + 700 * gap, rel=1e-6)


# --- loss objects and the registry ----------------------------------------------


def test_registry_matches_classes_and_config_order():
    x, out = _one_half_nat_output()
    direct = CapacityBetaVAE(beta=10.0, c_max=1.0, anneal_steps=60)(x, out, 30)
    routed = make_loss("cbeta_vae", beta=10.0, c_max=1.0, anneal_steps=60)(x, out, 30)
    assert routed["loss"].item() == direct["loss"].item()
    assert BetaTCVAE.hyperparameter_names() == (("beta", "dataset_size"), ("estimator", "rec_kind"))
    assert FAMILIES is CONFIG_FAMILIES
    assert (
        tuple(LOSSES)
        == FAMILIES
        == (
            "beta_vae",
            "beta_tcvae",
            "cbeta_vae",
            "guided_beta_vae",
            "guided_beta_tcvae",
        )
    )
    assert all(cls.family == family and issubclass(cls, VAELoss) for family, cls in LOSSES.items())


def test_hyperparameters_are_bound_in_canonical_types():
    loss = make_loss("cbeta_vae", beta=700, c_max=6, anneal_steps=100)
    assert isinstance(loss, CapacityBetaVAE)
    assert loss.hyperparameters == {"beta": 700.0, "c_max": 6.0, "anneal_steps": 100, "rec_kind": "bernoulli"}
    assert isinstance(loss.beta, float) and isinstance(loss.c_max, float)
    tc = BetaTCVAE(4.0, 100, "weighted", rec_kind="gaussian")
    assert tc.hyperparameters == {"beta": 4.0, "dataset_size": 100, "estimator": "weighted", "rec_kind": "gaussian"}
    assert make_loss(tc.family, **tc.hyperparameters).hyperparameters == tc.hyperparameters
    assert repr(BetaVAE(2)) == "BetaVAE(beta=2.0, rec_kind='bernoulli')"
    with pytest.raises(AttributeError):
        loss.beta = -1.0  # bound once: no way around the check
    with pytest.raises(TypeError):
        VAELoss()  # abstract


@pytest.mark.parametrize(
    "family, hyper, message",
    [
        ("factor_vae", {"beta": 1.0}, r"family must be one of .*got 'factor_vae'"),
        ("beta_vae", {"beta": -1.0}, r"beta must be a finite number > 0.0, got -1.0"),
        ("beta_vae", {"beta": 0}, r"beta must be a finite number > 0.0, got 0"),
        ("beta_vae", {"beta": float("nan")}, r"beta must be a finite number > 0.0, got nan"),
        (
            "beta_vae",
            {"beta": 2.0, "c_max": 1.0},
            r"unknown hyperparameter\(s\) \('c_max',\) for family 'beta_vae'; allowed: \('beta', 'rec_kind'\)",
        ),
        (
            "cbeta_vae",
            {"beta": 700.0, "c_max": 6.0},
            r"family 'cbeta_vae' needs hyperparameter\(s\) \('anneal_steps',\); "
            r"allowed: \('beta', 'c_max', 'anneal_steps', 'rec_kind'\)",
        ),
        ("cbeta_vae", {"beta": 700.0, "c_max": -6.0, "anneal_steps": 10}, r"c_max must be .*>= 0.0, got -6.0"),
        ("cbeta_vae", {"beta": 700.0, "c_max": 6.0, "anneal_steps": 1.5}, r"anneal_steps must be an int"),
        ("beta_tcvae", {"beta": 4.0, "dataset_size": 0}, r"dataset_size must be an int >= 1, got 0"),
        ("beta_tcvae", {"beta": 4.0, "dataset_size": 100, "estimator": "mc"}, r"estimator must be one of"),
        ("beta_vae", {"beta": 1.0, "rec_kind": "l2"}, r"rec_kind must be one of"),
    ],
)
def test_make_loss_rejects_bad_family_and_hyperparameters(family, hyper, message):
    with pytest.raises(ValueError, match=message):
        make_loss(family, **hyper)


def test_loss_objects_validate_at_construction():
    with pytest.raises(ValueError, match=r"beta must be a finite number > 0.0, got -2.0"):
        BetaVAE(beta=-2.0)
    with pytest.raises(ValueError, match=r"c_max must be a finite number >= 0.0, got -1.0"):
        CapacityBetaVAE(beta=700.0, c_max=-1.0, anneal_steps=10)
    with pytest.raises(ValueError, match=r"estimator must be one of \('stratified', 'weighted'\), got 'mc'"):
        BetaTCVAE(beta=4.0, dataset_size=100, estimator="mc")
    with pytest.raises(ValueError, match=r"needs hyperparameter\(s\) \('dataset_size',\)"):
        make_loss("beta_tcvae", beta=4.0)


def test_calling_a_loss_does_not_revalidate_its_hyperparameters(monkeypatch):
    x, out = _one_half_nat_output()
    built = [
        make_loss("beta_vae", beta=4.0, rec_kind="gaussian"),
        make_loss("cbeta_vae", beta=700.0, c_max=6.0, anneal_steps=100),
        make_loss("beta_tcvae", beta=6.0, dataset_size=100),
        make_loss("beta_tcvae", beta=6.0, dataset_size=100, estimator="weighted"),
    ]
    expected = [loss(x, out, 7)["loss"].item() for loss in built]
    checked = []

    def refuse(name, *args, **kwargs):
        raise AssertionError(f"{name} re-validated on a call")

    def record_int(name, value, *args, **kwargs):
        checked.append(name)
        return value

    # Hyperparameters are reals and choices; only the step (an argument of the call) is an int checked per call.
    for module in (checks, losses_module):
        monkeypatch.setattr(module, "check_real", refuse)
        monkeypatch.setattr(module, "check_choice", refuse)
        monkeypatch.setattr(module, "check_int", record_int)
    assert [loss(x, out, 7)["loss"].item() for loss in built] == expected
    assert set(checked) == {"step"}


def test_batch_larger_than_the_dataset_is_rejected_per_call():
    x, out = _one_half_nat_output()
    loss = make_loss("beta_tcvae", beta=4.0, dataset_size=2)
    with pytest.raises(ValueError, match=r"dataset_size must be >= the batch size \(3\), got 2"):
        loss(x, out, 0)
    with pytest.raises(ValueError, match=r"step must be an int >= 0, got -1"):
        make_loss("beta_vae", beta=1.0)(x, out, -1)


def test_one_object_serves_batches_of_any_size_and_dtype():
    # The stratified weights are kept between calls; a new batch size or dtype must not reuse stale ones.
    loss = BetaTCVAE(beta=2.0, dataset_size=100)
    for batch, dtype in [(8, torch.float32), (5, torch.float32), (5, torch.float64), (8, torch.float32)]:
        x, out = _gaussian_population(6, batch, correlated=True)
        x, out = x.to(dtype), VAEOutput(*(t.to(dtype) for t in out))
        fresh = BetaTCVAE(beta=2.0, dataset_size=100)(x, out, 0)
        again = loss(x, out, 0)
        for key in fresh:
            assert again[key].dtype == dtype
            torch.testing.assert_close(again[key], fresh[key], rtol=0, atol=0)


def test_mismatched_output_is_rejected():
    x, out = _one_half_nat_output()
    with pytest.raises(ValueError, match=r"x and out.logits must have the same shape"):
        BetaVAE(beta=1.0)(x[:, :3], out, 0)


@pytest.mark.parametrize(
    "family, hyper",
    [
        ("beta_vae", {"beta": 4.0, "rec_kind": "gaussian"}),
        ("cbeta_vae", {"beta": 700.0, "c_max": 6.0, "anneal_steps": 100}),
        ("beta_tcvae", {"beta": 6.0, "dataset_size": 100}),
        ("beta_tcvae", {"beta": 6.0, "dataset_size": 100, "estimator": "weighted"}),
    ],
)
def test_gradients_reach_every_parameter_and_are_finite(family, hyper):
    torch.manual_seed(5)
    model = VAE(image_size=16, latent_dim=3)
    x = torch.rand(4, 3, 16, 16)
    terms = make_loss(family, **hyper)(x, model(x), 10)
    terms["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.encoder.parameters())


# --- guided families ----------------------------------------------------------------


def test_guided_loss_is_the_base_loss_plus_weighted_cross_entropy_of_the_head_by_hand():
    x, out = _one_half_nat_output()
    logits, bad = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 1.0, 0.0])
    bce = (math.log(2) + math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 3
    base = BetaVAE(beta=3.0)(x, out, 0)
    guided = make_loss("guided_beta_vae", beta=3.0, guide_weight=10.0)(x, out, 0, guide_logits=logits, guide_labels=bad)
    assert guided["guide_bce"].item() == pytest.approx(bce, rel=1e-6)
    assert guided["loss"].item() == pytest.approx(base["loss"].item() + 10 * bce, rel=1e-6)
    assert guided["rec"].item() == base["rec"].item() and guided["kl"].item() == base["kl"].item()
    tc = GuidedBetaTCVAE(beta=2.0, guide_weight=5.0, dataset_size=100)
    tc_terms = tc(x, out, 0, guide_logits=logits, guide_labels=bad)
    plain = BetaTCVAE(beta=2.0, dataset_size=100)(x, out, 0)
    assert tc_terms["loss"].item() == pytest.approx(plain["loss"].item() + 5 * bce, rel=1e-6)
    assert isinstance(make_loss("guided_beta_tcvae", **tc.hyperparameters), GuidedBetaTCVAE)
    assert tc.hyperparameters == {
        "beta": 2.0,
        "guide_weight": 5.0,
        "dataset_size": 100,
        "estimator": "stratified",
        "rec_kind": "bernoulli",
    }


def test_guided_loss_at_weight_zero_gives_the_base_familys_gradients_exactly():
    torch.manual_seed(0)
    model, head = VAE(image_size=16, latent_dim=3), GuideHead(0)
    x, x_guide = torch.rand(4, 3, 16, 16), torch.rand(5, 3, 16, 16)

    def grads(loss):
        model.zero_grad()
        torch.manual_seed(1)
        guide = {}
        if loss.guided:  # the head on the guide batch's component 0, a graph of its own each call
            guide = {"guide_logits": head(model.encode(x_guide)[0]), "guide_labels": torch.tensor([1.0, 0, 1, 0, 1])}
        loss(x, model(x), 0, **guide)["loss"].backward()
        return [p.grad.clone() for p in model.parameters()]

    for family_loss, guided_loss in (
        (BetaVAE(4.0), GuidedBetaVAE(4.0, guide_weight=0.0)),
        (BetaTCVAE(4.0, 10), GuidedBetaTCVAE(4.0, 0.0, 10)),
    ):
        assert all(torch.equal(a, b) for a, b in zip(grads(family_loss), grads(guided_loss)))
    weighted = grads(GuidedBetaVAE(4.0, guide_weight=1.0))
    assert not all(torch.equal(a, b) for a, b in zip(grads(BetaVAE(4.0)), weighted))


def test_guided_loss_needs_the_guide_batch_and_a_weight_of_zero_or_more():
    x, out = _one_half_nat_output()
    loss = GuidedBetaVAE(1.0, guide_weight=1.0)
    with pytest.raises(ValueError, match="guided_beta_vae needs guide_logits and guide_labels"):
        loss(x, out, 0)
    with pytest.raises(ValueError, match="two non-empty vectors of one length"):
        loss(x, out, 0, guide_logits=torch.zeros(3), guide_labels=torch.zeros(2))
    with pytest.raises(ValueError, match="guide_weight must be a finite number >= 0.0, got -1.0"):
        GuidedBetaVAE(1.0, guide_weight=-1.0)
    with pytest.raises(ValueError, match=r"family 'guided_beta_vae' needs hyperparameter\(s\) \('guide_weight',\)"):
        make_loss("guided_beta_vae", beta=1.0)
    assert not BetaVAE.guided and GuidedBetaVAE.guided


def test_guide_head_reads_one_component_and_starts_without_randomness():
    state = torch.get_rng_state()
    head = GuideHead(1)
    assert torch.equal(torch.get_rng_state(), state)
    mu = torch.tensor([[5.0, 2.0], [5.0, -1.0]])
    assert torch.equal(head(mu), torch.tensor([2.0, -1.0]))
    with pytest.raises(ValueError, match=r"mu must have shape \(batch, d\) with d > 1"):
        head(torch.zeros(2, 1))


def test_normalised_beta_by_hand():
    """β·d/N (Higgins et al.): the thesis's β = 4 at 64×64 is β = 1 at 32×32, with d = 10 and RGB."""
    assert normalised_beta(4.0, 10, 64) == pytest.approx(40 / 12288)
    assert normalised_beta(1.0, 10, 32) == pytest.approx(normalised_beta(4.0, 10, 64))
    assert normalised_beta(2.0, 5, 16, channels=1) == pytest.approx(10 / 256)
