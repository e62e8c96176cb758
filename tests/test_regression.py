"""Bayesian linear regression written as Pyro's tutorial writes it, ``model(x, y=None)``,
trained by ``fit(model, guide, (x, y))`` and scored by ``evaluate`` against the exact answer.

w ~ N(0, s0^2 I) is a global latent and y_n | x_n, w ~ N(x_n w, s^2). With a global latent,
``evaluate``'s ``log_px`` is, per test row, the importance-sampled posterior predictive under
the guide, log E_{q(w)} p(y_n | x_n, w) (each row scored on its own, not the joint
log p(y_test | x_test)); for a Gaussian q(w) = N(m, C) it is exactly
log N(y_n; x_n m, s^2 + x_n C x_n^T), and for the exact posterior q it is the exact posterior
predictive log p(y_n | x_n, D_train).
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ppvae import FitConfig
from ppvae.data import Dataset
from ppvae.evaluation.metrics import evaluate
from ppvae.infer.fitting import fit

S0, S, W = 1.0, 0.5, torch.tensor([1.0, -0.5])


def model(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), S0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(x @ w, S), obs=y)


def guide(x, y=None):
    loc = pyro.param("loc", torch.zeros(2))
    tril = pyro.param("tril", 0.1 * torch.eye(2), constraint=constraints.lower_cholesky)
    pyro.sample("w", dist.MultivariateNormal(loc, scale_tril=tril))


def _rows(n, g):
    x = torch.randn(n, 2, generator=g)
    return x, x @ W + S * torch.randn(n, generator=g)


def predictive(x, y, m, c):
    """Mean over rows of log N(y_n; x_n m, s^2 + x_n C x_n^T)."""
    return dist.Normal(x @ m, (S**2 + ((x @ c) * x).sum(1)).sqrt()).log_prob(y).mean().item()


def test_evaluate_scores_the_exact_posterior_predictive_of_a_bayesian_regression():
    g = torch.Generator().manual_seed(0)
    (x, y), (u, v) = _rows(120, g), _rows(50, g)
    config = FitConfig(epochs=15, batch_size=40, lr=0.05, device="cpu")
    fit(model, guide, Dataset("blr", (x, y), (u, v), None), config)
    row = evaluate(model, guide, (u, v), num_samples=300)
    tril = pyro.param("tril").detach()
    under_q = predictive(u, v, pyro.param("loc").detach(), tril @ tril.T)
    assert abs(row.log_px.item() - under_q) < 3 * row.log_px_stderr.item()
    cov = torch.linalg.inv(torch.eye(2) / S0**2 + x.T @ x / S**2)  # the exact posterior
    exact = predictive(u, v, cov @ x.T @ y / S**2, cov)
    assert abs(row.log_px.item() - exact) < 0.02  # what SVI's q(w) leaves of the posterior
    assert row.kl.item() == 0.0  # no local latent: the ELBO's columns are per row, given w
