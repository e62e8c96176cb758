"""Reference solutions to the exercises: what each checker accepts, written as a student would.

Each function is the plain formula, not the fastest code; the checkers compare students'
answers with oracles (closed forms, ``torch.distributions``, scikit-learn, ``ppvae.baselines``),
never with these, and the tests check these against the checkers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, MultivariateNormal, Normal

LOG_2PI = math.log(2 * math.pi)


def gaussian_mle(X: Tensor) -> tuple[Tensor, Tensor]:
    """Maximum-likelihood mean (d,) and covariance (d, d) of the rows of ``X`` (N, d)."""
    mu = X.mean(0)
    Xc = X - mu
    return mu, Xc.T @ Xc / X.shape[0]


def gaussian_iid_log_likelihood(X: Tensor, mu: Tensor, Sigma: Tensor) -> Tensor:
    """``sum_n log N(x_n; mu, Sigma)`` for the rows of ``X`` (N, d): a scalar."""
    N, d = X.shape
    L = torch.linalg.cholesky(Sigma)
    y = torch.linalg.solve_triangular(L, (X - mu).T, upper=False)
    logdet = 2 * L.diagonal().log().sum()
    return -0.5 * (N * d * LOG_2PI + N * logdet + y.square().sum())


def gmm_em_step(X: Tensor, weights: Tensor, means: Tensor, covs: Tensor):
    """One EM step of a K-component Gaussian mixture: new ``(weights, means, covs)``.

    ``X`` (N, d), ``weights`` (K,), ``means`` (K, d), ``covs`` (K, d, d).
    """
    log_joint = weights.log() + MultivariateNormal(means, covs).log_prob(X[:, None, :])
    r = torch.softmax(log_joint, dim=1)  # responsibilities (N, K)
    Nk = r.sum(0)
    new_means = r.T @ X / Nk[:, None]
    Xc = X[:, None, :] - new_means  # (N, K, d), about the NEW means
    new_covs = torch.einsum("nk,nki,nkj->kij", r, Xc, Xc) / Nk[:, None, None]
    return Nk / X.shape[0], new_means, new_covs


def gaussian_log_likelihood(x: Tensor, loc: Tensor) -> Tensor:
    """``log N(x; loc, I)`` summed over the last dimension: (B, D) -> (B,)."""
    return -0.5 * ((x - loc).square() + LOG_2PI).sum(-1)


def gaussian_sigma_log_likelihood(x: Tensor, loc: Tensor, sigma: float) -> Tensor:
    """``log N(x; loc, sigma^2 I)`` summed over the last dimension: (B, D) -> (B,)."""
    return -0.5 * (((x - loc) / sigma).square() + LOG_2PI + math.log(sigma**2)).sum(-1)


def bernoulli_log_likelihood(x: Tensor, probs: Tensor) -> Tensor:
    """``log Bernoulli(x; probs)`` summed over the last dimension: (B, D) -> (B,)."""
    return (x * probs.log() + (1 - x) * (1 - probs).log()).sum(-1)


def kl_diagonal(mu: Tensor, sigma: Tensor) -> Tensor:
    """``KL(N(mu, diag sigma^2) || N(0, I))`` per row: (B, q) -> (B,)."""
    return 0.5 * (sigma.square() + mu.square() - 1 - sigma.square().log()).sum(-1)


def kl_full(mu0: Tensor, Sigma0: Tensor, mu1: Tensor, Sigma1: Tensor) -> Tensor:
    """``KL(N(mu0, Sigma0) || N(mu1, Sigma1))`` for (k,) means and (k, k) covariances."""
    k = mu0.shape[0]
    Sigma1_inv = torch.linalg.inv(Sigma1)
    diff = mu1 - mu0
    return 0.5 * (
        (Sigma1_inv @ Sigma0).trace()
        + diff @ Sigma1_inv @ diff
        - k
        + torch.logdet(Sigma1)
        - torch.logdet(Sigma0)
    )


def reparameterized_sample(mu: Tensor, sigma: Tensor, n: int) -> Tensor:
    """``n`` draws (n, q) from ``N(mu, diag sigma^2)`` that are differentiable in mu, sigma."""
    eps = torch.randn(n, *mu.shape, dtype=mu.dtype)
    return mu + sigma * eps


def gaussian_vae_elbo(
    x: Tensor, decoder: Callable, z_loc: Tensor, z_scale: Tensor, sigma: float
) -> Tensor:
    """One-sample ELBO of a Gaussian VAE, averaged over the batch: a scalar.

    ``p(z) = N(0, I)``, ``p(x | z) = N(decoder(z), sigma^2 I)``, ``q(z | x) = N(z_loc,
    diag z_scale^2)``; ``x`` (B, D), ``z_loc`` and ``z_scale`` (B, q).
    """
    z = z_loc + z_scale * torch.randn_like(z_loc)
    reconstruction = gaussian_sigma_log_likelihood(x, decoder(z), sigma)
    return (reconstruction - kl_diagonal(z_loc, z_scale)).mean()


def score_function_surrogate(f: Callable, loc: Tensor, scale: Tensor, n: int) -> Tensor:
    """A scalar whose gradient in (loc, scale) is the score-function (REINFORCE) estimate of
    the gradient of ``E_q[f(z)]``, ``q = N(loc, diag scale^2)``, from ``n`` draws."""
    q = Normal(loc, scale)
    z = q.sample((n,))  # no gradient flows through the draw itself
    return (f(z).detach() * q.log_prob(z).sum(-1)).mean()


def reparameterized_objective(f: Callable, loc: Tensor, scale: Tensor, n: int) -> Tensor:
    """The ``n``-draw estimate of ``E_q[f(z)]``, ``q = N(loc, diag scale^2)``, differentiable
    in (loc, scale) through ``z = loc + scale * eps``."""
    z = loc + scale * torch.randn(n, *loc.shape, dtype=loc.dtype)
    return f(z).mean()


def ppca_em_step(X: Tensor, W: Tensor, sigma2: Tensor) -> tuple[Tensor, Tensor]:
    """One EM step of PPCA on complete data (``mu`` is the sample mean): new ``(W, sigma2)``."""
    N, d = X.shape
    q = W.shape[1]
    Xc = X - X.mean(0)
    M = W.T @ W + sigma2 * torch.eye(q, dtype=X.dtype)
    M_inv = torch.linalg.inv(M)
    Ez = Xc @ W @ M_inv  # <z_n> as rows, (N, q)
    Ezz = N * sigma2 * M_inv + Ez.T @ Ez  # sum_n <z_n z_n^T>
    W_new = Xc.T @ Ez @ torch.linalg.inv(Ezz)
    sigma2_new = (
        Xc.square().sum() - 2 * (Ez * (Xc @ W_new)).sum() + (Ezz * (W_new.T @ W_new)).sum()
    ) / (N * d)
    return W_new, sigma2_new


def ppca_em_step_missing(X: Tensor, W: Tensor, mu: Tensor, sigma2: Tensor):
    """One exact EM step of PPCA with NaN at missing entries: new ``(W, mu, sigma2)``."""
    N, d = X.shape
    q = W.shape[1]
    observed = ~torch.isnan(X)
    A = torch.zeros(d, q + 1, q + 1, dtype=X.dtype)  # sum of <z~ z~^T> per observed dim
    b = torch.zeros(d, q + 1, dtype=X.dtype)  # sum of x_ni <z~_n> per observed dim
    posteriors = []
    for n in range(N):
        o = observed[n]
        Wo, xo = W[o], X[n, o] - mu[o]
        cov = sigma2 * torch.linalg.inv(Wo.T @ Wo + sigma2 * torch.eye(q, dtype=X.dtype))
        mean = cov @ Wo.T @ xo / sigma2
        z1 = torch.cat([mean, torch.ones(1, dtype=X.dtype)])
        zz1 = torch.outer(z1, z1)
        zz1[:q, :q] += cov
        A[o] += zz1
        b[o] += X[n, o, None] * z1
        posteriors.append((mean, cov))
    Wmu = torch.linalg.solve(A, b)
    W_new, mu_new = Wmu[:, :q], Wmu[:, q]
    total = torch.zeros((), dtype=X.dtype)
    for n, (mean, cov) in enumerate(posteriors):
        o = observed[n]
        resid = X[n, o] - W_new[o] @ mean - mu_new[o]
        total = total + resid.square().sum() + (W_new[o] @ cov * W_new[o]).sum()
    return W_new, mu_new, total / observed.sum()


def importance_sampled_log_px(x: Tensor, log_joint: Callable, q: Distribution, K: int):
    """``log (1/K) sum_k p(x, z_k) / q(z_k)``, ``z_k ~ q``, per row: (B,).

    ``q`` is a batch of B distributions over z, and ``log_joint(z)`` maps (K, B, q) draws to
    ``log p(x, z)`` of shape (K, B).
    """
    z = q.sample((K,))
    log_w = log_joint(z) - q.log_prob(z)
    return torch.logsumexp(log_w, dim=0) - math.log(K)


def ppca_elbo(x: Tensor, W: Tensor, mu: Tensor, sigma2: Tensor, q_loc: Tensor, q_cov: Tensor):
    """The analytic ELBO of PPCA for ``q(z | x_n) = N(q_loc[n], q_cov)``, per row: (B,)."""
    d = x.shape[1]
    q = W.shape[1]
    resid = x - q_loc @ W.T - mu
    expected_sq = resid.square().sum(-1) + (W.T @ W @ q_cov).trace()
    log_lik = -0.5 * (d * (LOG_2PI + torch.log(sigma2)) + expected_sq / sigma2)
    log_prior = -0.5 * (q * LOG_2PI + q_loc.square().sum(-1) + q_cov.trace())
    entropy = 0.5 * (q * (LOG_2PI + 1) + torch.logdet(q_cov))
    return log_lik + log_prior + entropy
