"""The mixture-prior VAE: its enumerated component against the closed-form marginal.

With a linear Gaussian decoder x = W z + b + s eps and z | y = k ~ N(mu_k, diag(sigma_k^2)),
the marginal is p(x) = sum_k pi_k N(x; W mu_k + b, W diag(sigma_k^2) W^T + s^2 I) exactly.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch import nn

from ppvae import check, elbo_terms, log_likelihood
from ppvae.models import GaussianDecoder, MixturePriorVAE
from ppvae.models.sites import LATENT, data_plate

D, Q, K, S = 4, 2, 3, 0.4


@pytest.fixture
def model() -> MixturePriorVAE:
    torch.manual_seed(0)
    vae = MixturePriorVAE(GaussianDecoder(nn.Linear(Q, D), sigma=S), Q, K).double()
    with torch.no_grad():
        vae.logits_unconstrained.copy_(torch.tensor([0.0, 1.0, -0.5]))
        vae.locs_unconstrained.mul_(2.0)
    return vae


def exact_components(vae: MixturePriorVAE, x: torch.Tensor):
    """log pi_k N(x; W mu_k + b, C_k), and the posterior mean / covariance of z given y = k."""
    W, b = vae.decoder.net.weight.detach(), vae.decoder.net.bias.detach()
    locs, scales = vae.locs.detach(), vae.scales.detach()
    log_pi = vae.logits.detach().log_softmax(0)
    eye_d = torch.eye(D, dtype=x.dtype)
    joint, means, covs = [], [], []
    for k in range(K):
        C = W @ torch.diag(scales[k] ** 2) @ W.T + S**2 * eye_d
        joint.append(log_pi[k] + dist.MultivariateNormal(W @ locs[k] + b, C).log_prob(x))
        precision = torch.diag(scales[k] ** -2) + W.T @ W / S**2
        cov = torch.linalg.inv(precision)
        means.append((locs[k] / scales[k] ** 2 + (x - b) @ W / S**2) @ cov)
        covs.append(cov.expand(x.shape[0], Q, Q))
    return torch.stack(joint, -1), torch.stack(means, 1), torch.stack(covs, 1)


class MomentMatchedGuide:
    """q(z | x): the exact posterior's mean and twice its standard deviations (bounded weights)."""

    def __init__(self, vae):
        self.vae = vae

    def __call__(self, x, idx=None, num_data=None):
        joint, means, covs = exact_components(self.vae, x)
        r = joint.softmax(-1)[..., None]
        mean = (r * means).sum(1)
        second = (r[..., None] * (covs + means[..., None] * means[..., None, :])).sum(1)
        cov = second - mean[..., None] * mean[..., None, :]
        with data_plate(x, idx, num_data):
            pyro.sample(LATENT, dist.MultivariateNormal(mean, 4 * cov))


@pytest.fixture
def x(model) -> torch.Tensor:
    with torch.no_grad():
        return model(None, batch_size=30).double()


def test_sampling_draws_a_component_and_scoring_enumerates_it(model, x):
    assert x.shape == (30, D)
    check(model, MomentMatchedGuide(model), x, objective="enum")


def test_importance_sampled_log_px_matches_the_closed_form_marginal(model, x):
    exact = exact_components(model, x)[0].logsumexp(-1)
    ll = log_likelihood(model, MomentMatchedGuide(model), x, num_samples=2000)
    assert ((ll.log_px - exact).abs() < 4 * ll.stderr + 1e-9).all(), ll.log_px - exact
    se = ll.stderr.square().sum().sqrt() / len(x)
    assert abs(ll.log_px.mean() - exact.mean()) < 3 * se


def test_elbo_with_the_component_summed_out_equals_pyros_traceenum_elbo(model, x):
    guide = MomentMatchedGuide(model)
    pyro.set_rng_seed(3)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x)
    pyro.set_rng_seed(3)  # the same draw of z
    terms = elbo_terms(model, guide, x, analytic=False)
    assert -loss == pytest.approx(terms.elbo.sum().item(), rel=1e-10)
    exact = exact_components(model, x)[0].logsumexp(-1)
    assert (terms.elbo.mean() < exact.mean()).item()  # a bound, from one draw per example
