"""Objectives against worked-out answers on a tiny PPCA model, whose ELBO is known in closed form.

Monte Carlo estimates are compared with exact values (or with each other) by z-tests that use
their own sample standard errors; every generator is seeded, so the tests are deterministic.
"""

import pyro
import pytest
import torch
from torch import nn

from ppvae.baselines.ppca import ppca_log_prob
from ppvae.evaluation.metrics import elbo_terms
from ppvae.experiments.gradients import gradient_estimates
from ppvae.guides.amortized import AmortizedGuide, DiagonalNormalHead
from ppvae.models.ppca import PPCA
from ppvae.pairs.objectives import OBJECTIVES, LatentScale

Z = 4.0
"""z-score beyond which a Monte Carlo mean counts as disagreeing with its reference."""


def make_pair():
    """PPCA (D=3, q=2) with a deliberately poor linear guide, in float64, and 6 examples."""
    torch.manual_seed(1)
    model = PPCA(x_dim=3, z_dim=2, sigma=0.7).double()
    with torch.no_grad():
        model.decoder.net.weight.normal_()
    guide = AmortizedGuide(nn.Linear(3, 4), DiagonalNormalHead(2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    return model, guide, x


@pytest.fixture
def pair():
    return make_pair()


def exact_elbo(model, guide, x) -> torch.Tensor:
    """The ELBO summed over rows, in closed form (differentiable in the guide's parameters)."""
    return model.analytic_elbo(x, guide.encode(x)).sum()


def losses(key: str, model, guide, x, n: int, num_particles: int = 1) -> torch.Tensor:
    elbo = OBJECTIVES[key].build(num_particles)
    return torch.tensor([elbo.loss(model, guide, x) for _ in range(n)], dtype=torch.float64)


def z_score(samples: torch.Tensor, reference) -> float:
    return ((samples.mean() - reference) / (samples.std() / len(samples) ** 0.5)).item()


def test_analytic_and_monte_carlo_kl_agree_with_the_closed_form_elbo(pair):
    model, guide, x = pair
    exact = exact_elbo(model, guide, x).item()
    mc = -losses("trace", model, guide, x, 300, num_particles=10)
    analytic = -losses("mean-field", model, guide, x, 300, num_particles=10)
    assert abs(z_score(mc, exact)) < Z
    assert abs(z_score(analytic, exact)) < Z
    # the analytic KL removes the KL term's noise
    assert analytic.var() < mc.var()


def test_iwae_bound_lies_between_the_elbo_and_log_px_and_rises_with_k(pair):
    model, guide, x = pair
    elbo = exact_elbo(model, guide, x).item()
    log_px = ppca_log_prob(x, model.W, model.mu, model.sigma2).sum().item()
    means = {}
    for k in (1, 5, 50):
        bound = -losses("iwae", model, guide, x, 300, num_particles=k)
        means[k] = (bound.mean().item(), (bound.std() / 300**0.5).item())
    assert abs(means[1][0] - elbo) < Z * means[1][1]  # K = 1 is the ELBO
    for small, large in ((1, 5), (5, 50)):
        (m1, s1), (m2, s2) = means[small], means[large]
        assert m2 - m1 > Z * (s1**2 + s2**2) ** 0.5
    assert elbo < means[50][0] < log_px + Z * means[50][1]


def test_renyi_alpha_zero_with_one_particle_is_trace_elbo(pair):
    model, guide, x = pair
    grads = []
    for key in ("iwae", "trace"):
        pyro.set_rng_seed(7)
        loss = OBJECTIVES[key].build(num_particles=1).loss_and_grads(model, guide, x)
        grads.append((loss, [p.grad.clone() for p in guide.parameters()]))
        guide.zero_grad()
    (renyi, g_renyi), (trace, g_trace) = grads
    assert renyi == pytest.approx(trace, rel=1e-12)
    for a, b in zip(g_renyi, g_trace, strict=True):
        torch.testing.assert_close(a, b)


@pytest.fixture(scope="module")
def moments():
    """300 estimates per estimator, each averaging 10 particles (vectorized, so it is fast)."""
    model, guide, x = make_pair()
    return gradient_estimates(
        model,
        guide,
        x,
        objectives=("trace", "score", "score-baseline"),
        num_estimates=300,
        num_particles=10,
    )


def test_score_function_and_reparameterized_gradients_have_the_exact_mean(moments):
    model, guide, x = make_pair()
    exact = torch.autograd.grad(exact_elbo(model, guide, x), list(guide.parameters()))
    for key in ("trace", "score", "score-baseline"):
        m = moments[key]
        for (module_name, _), g in zip(guide.named_parameters(), exact, strict=True):
            # the param-store name: PyroModule 'guide', its nn.Module 'net' via pyro.module
            name = "guide." + module_name.replace(".", "$$$", 1)
            se = (m.var[name] / m.count).sqrt()
            z = (m.mean[name] - g) / se
            assert z.abs().max() < Z, (key, name, z)


def test_score_function_variance_is_larger_and_a_baseline_lowers_it(moments):
    total = {k: sum(v.sum() for v in m.var.values()).item() for k, m in moments.items()}
    assert total["score"] > 10 * total["trace"]
    assert total["score-baseline"] < total["score"]


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_latent_scale_multiplies_only_the_kl_term(pair, beta):
    model, guide, x = pair
    scale = LatentScale(beta)
    pyro.set_rng_seed(3)
    loss = OBJECTIVES["trace"].build().loss(scale(model), scale(guide), x)
    pyro.set_rng_seed(3)  # the same draw of z
    terms = elbo_terms(model, guide, x, analytic=False)
    expected = terms.reconstruction.sum() - beta * terms.kl.sum()
    assert -loss == pytest.approx(expected.item(), rel=1e-10)
