"""Checkers against PPCA's exact marginal likelihood: importance-sampled log p(x), and the
identity log p(x) - ELBO = KL(q || p(z | x))."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from ppvae.baselines import PPCAParams, ppca_log_prob, ppca_mle, ppca_posterior
from ppvae.exercises.verdict import (
    Verdict,
    Wrong,
    call,
    compare,
    compare_estimates,
    judge,
    seeded,
)

F64 = torch.float64


def _ppca(g: torch.Generator, B: int = 3, d: int = 5, q: int = 2):
    params = PPCAParams(
        torch.randn(d, q, generator=g, dtype=F64),
        torch.randn(d, generator=g, dtype=F64),
        torch.tensor(0.25, dtype=F64),
    )
    x = params.mu + torch.randn(B, q, generator=g, dtype=F64) @ params.W.T
    return x + 0.5 * torch.randn(B, d, generator=g, dtype=F64), params


def _log_joint(x: Tensor, params: PPCAParams) -> Callable[[Tensor], Tensor]:
    def log_joint(z: Tensor) -> Tensor:
        log_lik = Normal(z @ params.W.T + params.mu, params.sigma2.sqrt()).log_prob(x).sum(-1)
        return log_lik + Normal(0.0, 1.0).log_prob(z).sum(-1)

    return log_joint


def check_importance_sampled_log_px(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``importance_sampled_log_px(x, log_joint, q, K) -> (B,)``: the estimate
    ``log (1/K) sum_k p(x, z_k) / q(z_k)``, ``z_k ~ q``, for a batch ``x`` (B, d);
    ``q`` is a batch of B distributions over z (``q.sample((K,))`` is (K, B, q_dim)), and
    ``log_joint`` maps such draws to ``log p(x, z)`` (K, B). The exact answer is PPCA's
    closed-form log p(x).

    With the exact posterior as ``q`` every weight is p(x), so the estimate must be exact; with
    a wider ``q`` its mean over runs must be within 5 standard errors of log p(x).

    Examples
    --------
    >>> from ppvae.exercises import check_importance_sampled_log_px, solutions
    >>> check_importance_sampled_log_px(solutions.importance_sampled_log_px)
    correct: importance-sampled log p(x)
    """
    x, params = _ppca(seeded(seed))
    post = ppca_posterior(x, *params)
    log_px = ppca_log_prob(x, *params)
    K = 500

    def check() -> str:
        exact_q = MultivariateNormal(post.mean, post.cov)
        log_joint = _log_joint(x, params)
        got = call(student, x.clone(), log_joint, exact_q, K, name="estimate")
        missing_k = [
            (
                f"is log K too high: average the weights (subtract log K = {math.log(K):.3g})",
                log_px + math.log(K),
            )
        ]
        compare(got, log_px, "estimate", " with the exact posterior as q", missing_k)
        wide_q = MultivariateNormal(post.mean, 2.25 * post.cov)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if seed is None else seed)
            runs = torch.stack(
                [
                    torch.as_tensor(
                        call(student, x.clone(), _log_joint(x, params), wide_q, K, name="estimate")
                    ).detach()
                    for _ in range(40)
                ]
            )
        elbo = log_px - kl_divergence(wide_q, exact_q)
        mistakes = [
            (
                "averages the log weights (that is the ELBO): take the log of the average weight",
                elbo,
            )
        ]
        compare_estimates(
            runs.to(F64), log_px, "estimate", " with q wider than the posterior", mistakes
        )
        return "correct: importance-sampled log p(x)"

    return judge(check)


def check_ppca_elbo_identity(student: Callable, *, seed: int | None = None) -> Verdict:
    """Check ``ppca_elbo(x, W, mu, sigma2, q_loc, q_cov) -> (B,)``: the analytic ELBO of PPCA
    for ``q(z | x_n) = N(q_loc[n], q_cov)``, ``x`` (B, d), ``q_loc`` (B, q), ``q_cov`` (q, q),
    through the identity ``log p(x) - ELBO = KL(q || p(z | x))`` with PPCA's exact log p(x)
    and posterior, at the exact posterior (where the ELBO is log p(x)) and away from it.

    Examples
    --------
    >>> from ppvae.exercises import check_ppca_elbo_identity, solutions
    >>> check_ppca_elbo_identity(solutions.ppca_elbo)
    correct: log p(x) - ELBO = KL(q || p(z | x))
    """
    x, params = _ppca(seeded(seed))
    W, mu, sigma2 = params
    post = ppca_posterior(x, *params)
    log_px = ppca_log_prob(x, *params)
    d = x.shape[1]
    cases = [
        ("at the exact posterior", post.mean, post.cov),
        ("away from it", post.mean + 0.5, 0.5 * post.cov),
    ]

    def check() -> str:
        for where, q_loc, q_cov in cases:
            got = call(
                student,
                x.clone(),
                W.clone(),
                mu.clone(),
                sigma2.clone(),
                q_loc.clone(),
                q_cov.clone(),
                name="ELBO",
            )
            kl = kl_divergence(
                MultivariateNormal(q_loc, q_cov), MultivariateNormal(post.mean, post.cov)
            )
            exact = log_px - kl
            entropy = MultivariateNormal(q_loc, q_cov).entropy()
            mistakes = [
                (
                    "leaves out tr(W^T W q_cov) / (2 sigma2) from E_q||x - W z - mu||^2",
                    exact + (W.T @ W @ q_cov).trace() / (2 * sigma2),
                ),
                ("leaves out the entropy of q", exact - entropy),
                ("uses log sigma where log sigma^2 belongs", exact + d * sigma2.log() / 4),
            ]
            compare(
                got,
                exact,
                "ELBO",
                f" {where} (log p(x) - ELBO should be KL(q || p(z | x)))",
                mistakes,
            )
        return "correct: log p(x) - ELBO = KL(q || p(z | x))"

    return judge(check)


def check_beats_ppca(vae_log_px, train: Tensor, test: Tensor, q: int) -> Verdict:
    """Check that a trained VAE's mean test log p(x) (a float, nats per example) beats
    probabilistic PCA with ``q`` latent dimensions, fitted in closed form on ``train`` (N, D)
    and scored exactly on ``test`` (M, D).

    Examples
    --------
    >>> import torch
    >>> from ppvae.exercises import check_beats_ppca
    >>> X = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    >>> check_beats_ppca(-100.0, X[:100], X[100:], 2)  # doctest: +ELLIPSIS
    your VAE's test log p(x), -100.00 nats, is below PPCA's (q = 2), -6.0... nats
    """

    def check() -> str:
        ppca = ppca_log_prob(test, *ppca_mle(train, q)).mean().item()
        try:
            got = float(vae_log_px)
        except (TypeError, ValueError):
            raise Wrong(
                f"your VAE's test log p(x) should be a number, not {vae_log_px!r}"
            ) from None
        if not math.isfinite(got) or got <= ppca:
            below = f"is below PPCA's (q = {q}), {ppca:.2f} nats"
            raise Wrong(f"your VAE's test log p(x), {got:.2f} nats, {below}")
        return f"correct: the VAE beats PPCA (q = {q}) on the test set"

    return judge(check)
