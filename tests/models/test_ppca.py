"""PPCA inside Pyro: the exact-posterior identity ELBO = log p(x), and SVI reaching the MLE."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from ppvae.baselines import ppca_log_prob, ppca_mle, ppca_sample
from ppvae.config import ArchConfig, DataShape
from ppvae.guides import GUIDES, ExactPPCAGuide
from ppvae.infer.fitting import FitConfig, fit
from ppvae.models import PPCA

D, Q, N = 5, 2, 500


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    """(N, D) float64 draws from PPCA with orthogonal loadings of lengths 2 and 1, sigma 0.5.

    Distinct lengths give the posterior rotation some curvature, so SVI settles it quickly.
    """
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(D, Q, generator=g, dtype=torch.float64))
    W = U * torch.tensor([2.0, 1.0], dtype=torch.float64)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    return ppca_sample(N, W, mu, 0.25, generator=g)


@pytest.fixture(scope="module")
def mle_log_prob(x) -> float:
    """The closed-form maximum of the mean per-row log-likelihood."""
    return ppca_log_prob(x, *ppca_mle(x, Q)).mean().item()


def ppca_at_mle(x: torch.Tensor) -> PPCA:
    return PPCA(D, Q).double().set_params(*ppca_mle(x, Q))


def ppca_at_random(x: torch.Tensor) -> PPCA:
    g = torch.Generator().manual_seed(1)
    W = torch.randn(D, Q, generator=g, dtype=torch.float64)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    return PPCA(D, Q).double().set_params(W, mu, torch.tensor(0.3, dtype=torch.float64))


def model_log_prob(model: PPCA, x: torch.Tensor) -> torch.Tensor:
    """Closed-form log p(x) per row under the model's current parameters, shape (N,)."""
    with torch.no_grad():
        return ppca_log_prob(x, model.W, model.mu, model.sigma2)


@pytest.mark.parametrize("build", [ppca_at_mle, ppca_at_random])
def test_exact_guide_makes_trace_elbo_equal_log_px_for_every_seed(build, x):
    """log p(x, z) - log q(z | x) = log p(x) for every z, so each single-sample Trace_ELBO
    estimate is the closed-form log-likelihood, whatever the seed: zero variance."""
    model = build(x)
    guide = ExactPPCAGuide(model)
    exact = -model_log_prob(model, x).sum().item()
    losses = []
    for seed in range(5):
        pyro.set_rng_seed(seed)
        losses.append(Trace_ELBO().loss(model, guide, x))
    assert losses == pytest.approx([exact] * 5, rel=1e-8, abs=1e-8)
    assert torch.tensor(losses, dtype=torch.float64).std().item() <= 1e-8 * abs(exact)


def test_exact_guide_elbo_gradient_vanishes_at_the_mle(x):
    """With the exact guide the ELBO is log p(x) as a function of (W, mu, sigma), so its
    gradient is that of the log-likelihood, which is zero at the closed-form MLE."""
    model = ppca_at_mle(x)
    guide = ExactPPCAGuide(model)
    loss = Trace_ELBO().differentiable_loss(model, guide, x)
    assert loss.item() == pytest.approx(-model_log_prob(model, x).sum().item(), rel=1e-10)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    # the per-row scale of the loss is O(10) nats; round-off leaves ~1e-10 per row
    assert max(g.abs().max().item() for g in grads) < 1e-7 * N


def test_ppca_by_svi_with_the_exact_guide_reaches_the_mle(x, mle_log_prob):
    """Full-batch SVI with the exact guide is gradient ascent on log p(x) without noise."""
    torch.manual_seed(0)
    model = PPCA(D, Q)
    guide = ExactPPCAGuide(model)
    fit(model, guide, x, FitConfig(epochs=200, lr=0.05, batch_size=N, device="cpu"))
    assert model_log_prob(model, x).mean().item() == pytest.approx(mle_log_prob, abs=1e-6)


def test_linear_vae_by_svi_reaches_the_ppca_mle(x, mle_log_prob):
    """The linear VAE (PPCA model, linear diagonal guide) has the PPCA MLE as its optimum
    (Lucas et al. 2019): there W^T W is diagonal, so the diagonal guide can be exact. SVI is
    noisy, so the learning rate is cut tenfold for a second stage, and the trained model is
    judged by its analytic ELBO, not by the last loss."""
    torch.manual_seed(0)
    model = PPCA(D, Q)
    guide = GUIDES["linear"](ArchConfig(z_dim=Q), DataShape(D, None, N), model)
    for lr in (0.05, 0.005):
        config = FitConfig(
            epochs=200, lr=lr, batch_size=N, objective="mean-field", num_particles=16,
            device="cpu",
        )  # fmt: skip
        fit(model, guide, x, config)
    with torch.no_grad():
        elbo = model.analytic_elbo(x, guide.encode(x)).mean().item()
    log_px = model_log_prob(model, x).mean().item()
    assert elbo <= log_px + 1e-10 <= mle_log_prob + 2e-10
    assert elbo == pytest.approx(mle_log_prob, abs=5e-3)
